"""Where things are kept, and how they are written: atomically, so a crash leaves no partial file."""
from __future__ import annotations

import json
import os
import sys
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"  # committed data of the repository: the reference runs
# Committed data the package needs wherever it is installed (a pip install from git, as in Colab):
# the name list, the frozen dataset manifests, the THR regime map.
RESOURCES = Path(__file__).resolve().parent / "resources"


def home() -> Path:
    """Root of generated datasets and training runs: $ROTE_HOME, else `runs/` in a source checkout,
    else ~/.cache/rote (a pip install, as in Colab)."""
    if os.environ.get("ROTE_HOME"):
        return Path(os.environ["ROTE_HOME"])
    if (REPO_ROOT / "_toc.yml").exists():
        return REPO_ROOT / "runs"
    return Path.home() / ".cache" / "rote"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success move it into place in one rename, readable
    as any file the user creates (mkstemp's 0600 would hide it from a colleague or a web server)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_csv(path: Path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def readable(path: Path) -> None:
    """Give `path` and everything under it the modes of a file or folder the user creates (the
    umask's), as libraries that write through private temporary files (safetensors: 0600) do not."""
    path = Path(path)
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_umask())


@contextmanager
def atomic_dir(path: Path):
    """Yield a temporary directory beside `path`; on success it replaces `path` whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        readable(tmp)  # mkdtemp's 0700, like any new folder instead
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def locked(directory: Path):
    """Hold an exclusive lock on `directory` (a `.lock` file in it) for the duration: two processes
    asked for the same run never train it at the same time; the second waits, then finds the run
    finished. The lock is the kernel's (flock), so a killed holder releases it."""
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the process that holds {directory} ...", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
