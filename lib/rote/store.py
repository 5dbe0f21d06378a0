"""Where things are kept, and how they are written: atomically, so a crash leaves no partial file."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from rote.config import OneLineError, config_hash

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"  # committed data of the repository: the reference runs
# Committed data the package needs wherever it is installed (a pip install from git, as in Colab):
# the name list, the frozen dataset manifests, the THR regime map.
RESOURCES = Path(__file__).resolve().parent / "resources"


class StoreError(OneLineError, OSError):
    """A folder the package may not write through (a symbolic link) or cannot write (permissions)."""


def home() -> Path:
    """Root of generated datasets and training runs: $ROTE_HOME, else `runs/` in a source checkout,
    else ~/.cache/rote (a pip install, as in Colab). A relative ROTE_HOME is made absolute once and
    put back in the environment, so that a chapter run with another working directory (the book
    runs them in book/) finds the same runs."""
    if os.environ.get("ROTE_HOME"):
        path = Path(os.environ["ROTE_HOME"]).expanduser()
        if not path.is_absolute():
            path = Path(os.path.abspath(path))
            os.environ["ROTE_HOME"] = str(path)
        return path
    if (REPO_ROOT / "_toc.yml").exists():
        return REPO_ROOT / "runs"
    return Path.home() / ".cache" / "rote"


def run_dir(config) -> Path:
    """Where `config`'s run lives: its checkpoints, metrics and claim records."""
    return home() / "runs" / f"{config.task}-{config_hash(config)}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _refuse_links(path: Path) -> None:
    """A one-line error if `path`, or a folder between ROTE_HOME and it, is a symbolic link: a
    colleague who can write to a shared run directory must not redirect the package's writes (or
    chmods, or deletes) to files outside it."""
    base = home()
    for p in [path, *path.parents]:
        if p == base or p == p.parent:
            return
        if p.is_symlink():
            raise StoreError(f"refusing to write through {p}: it is a symbolic link (to {os.readlink(p)}); "
                             "remove the link and rerun")
        if not p.is_relative_to(base):
            return  # outside ROTE_HOME (records, the book's _build): the folder itself is checked


def checked_dir(path: Path) -> Path:
    """Create folder `path` (and its parents) and return it, refusing symbolic links (`_refuse_links`)
    and saying in one line what to do when the folder cannot be written."""
    path = Path(path)
    _refuse_links(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"cannot create the folder {path}: a file of that name is in the way; remove it and rerun") from None
    except PermissionError:
        raise StoreError(f"cannot write in {path.parent} (permission denied): a store that is read-only to you; "
                         "set ROTE_HOME to a folder of your own (a finished run can be copied there)") from None
    _refuse_links(path)
    if not os.access(path, os.W_OK):
        raise StoreError(f"cannot write in {path} (permission denied): a store that is read-only to you; "
                         "set ROTE_HOME to a folder of your own (a finished run can be copied there)")
    return path


def _chmod(path: Path, mode: int) -> None:
    """chmod that never follows a symbolic link (Linux has no lchmod: open with O_NOFOLLOW, then fchmod)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path):
    """Yield a fresh temporary path beside `path` (created with O_EXCL); on success move it into
    place in one rename, readable as any file the user creates (mkstemp's 0600 would hide it from a
    colleague or a web server). A symbolic link at `path` is replaced, never written through."""
    path = Path(path)
    checked_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _chmod(Path(tmp), 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
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
    umask's), as libraries that write through private temporary files (safetensors: 0600) do not.
    Symbolic links are skipped, never followed: nothing outside `path` changes mode."""
    path = Path(path)
    if path.is_symlink():
        return
    if not path.is_dir():
        _chmod(path, 0o666 & ~_umask())
        return
    for folder, _, files in os.walk(path):  # os.walk does not descend into linked folders
        _chmod(Path(folder), 0o777 & ~_umask())
        for name in files:
            if not os.path.islink(os.path.join(folder, name)):
                _chmod(Path(folder, name), 0o666 & ~_umask())


@contextmanager
def atomic_dir(path: Path):
    """Yield a fresh temporary directory beside `path`; on success it replaces `path` whole: the old
    `path` (a folder, or a link, never followed) is renamed aside first, then deleted."""
    path = Path(path)
    checked_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        readable(tmp)  # mkdtemp's 0700, like any new folder instead
        aside = None
        if os.path.lexists(path):
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except OSError:
            if aside is not None:  # put the old folder back
                os.replace(aside / path.name, path)
                aside.rmdir()
            raise
        if aside is not None:
            shutil.rmtree(aside)  # removes links, never what they point to
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def locked(directory: Path):
    """Hold an exclusive lock on `directory` (a `.lock` file in it) for the duration: two processes
    asked for the same run never train it at the same time; the second waits, then finds the run
    finished. The lock is the kernel's (flock), so a killed holder releases it."""
    import fcntl

    directory = checked_dir(directory)
    try:
        fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as err:  # ELOOP: the lock file is a symbolic link
        raise StoreError(f"cannot open the lock file {directory / '.lock'} ({err.strerror}); "
                         "if it is a symbolic link, remove it and rerun") from None
    with open(fd, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for the process that holds {directory} ...", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
