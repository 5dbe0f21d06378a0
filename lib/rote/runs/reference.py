"""The published reference runs (`data/reference/<task>-<profile>/`): finished runs of this
repository, committed so that readers and checkers get the exact models the book was built from,
and so that publishing the book does not retrain.

    python -m rote.runs.reference              # install them as finished runs under ROTE_HOME (or runs/)
    python -m rote.runs.reference --manifest   # write the manifest of data/reference into the package

Each holds its `config.json`, `metrics.csv`, `noisy_predictions.csv` (where recorded) and `final/`;
installed under the run directory of its config, `rote.get_or_train` loads it instead of training,
and `rote.train` installs the reference run of its config before it would train.

The package carries their manifest (`MANIFEST`: per run its config, its hash and every file's
size and sha256) but not their weights: in a checkout a run is copied from `data/reference/`;
elsewhere (a pip install, as in Colab) each file is downloaded from the repository at the installed
version (`base_url`; $ROTE_REFERENCE_URL overrides the base). Every file is checked against the
manifest before anything is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.request
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from rote.config import Config, OneLineError, config_hash, validate
from rote.runs.model import CheckpointError, verify
from rote.store import DATA_DIR, REPO_ROOT, RESOURCES, atomic_dir, locked, run_dir, write_text

REFERENCE_DIR = DATA_DIR / "reference"
MANIFEST = RESOURCES / "reference.json"
URL_VARIABLE = "ROTE_REFERENCE_URL"  # a base URL (or file://) holding data/reference/<run>/<file>
CHUNK = 1 << 20


class ReferenceRunError(OneLineError, OSError):
    """A reference run that cannot be fetched, or a file of it that does not match the manifest."""


def reference_runs(root: Path = REFERENCE_DIR) -> dict[Path, Config]:
    """Each committed reference run and its config."""
    return {config.parent: validate(Config(**json.loads(config.read_text())))
            for config in sorted(Path(root).glob("*/config.json"))}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def repository() -> str:
    """The repository URL of _config.yml (which `python -m rote.book --set-repository` rewrites)."""
    return re.search(r"repository:\n  url: (\S+)", (REPO_ROOT / "_config.yml").read_text()).group(1)


def manifest(root: Path = REFERENCE_DIR) -> dict:
    """The manifest of the reference runs under `root`: the repository URL, and per run its task,
    config, config hash and every file's size and sha256 (paths relative to the run's folder)."""
    runs = {}
    for path, config in reference_runs(root).items():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        runs[path.name] = {"task": config.task, "config_hash": config_hash(config), "config": asdict(config),
                           "files": {p.relative_to(path).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p)}
                                     for p in files}}
    return {"repository": repository(), "runs": runs}


def manifest_text(obj: dict) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def write_manifest(root: Path = REFERENCE_DIR, path: Path = MANIFEST) -> Path:
    """The manifest of the reference runs under `root`, written to `path` (the package's)."""
    write_text(path, manifest_text(manifest(root)))
    return path


PUBLISHED = ("config.json", "metrics.csv", "noisy_predictions.csv", "final")  # what a chapter reads of a run


def publish(config: Config, name: str, root: Path = REFERENCE_DIR) -> Path:
    """The finished run of `config` as reference run `name` under `root`: the files a chapter reads
    (`PUBLISHED`), copied into a fresh folder that replaces `root`/`name` in one rename; links
    are copied as links, never followed."""
    run = run_dir(config)
    if not (run / "final" / "model.safetensors").exists():
        raise ReferenceRunError(f"{run} is not a finished run (no final/model.safetensors); train it first")
    verify(run / "final")
    Path(root).mkdir(parents=True, exist_ok=True)
    with atomic_dir(Path(root) / name) as tmp:
        for part in PUBLISHED:
            source = run / part
            if source.is_symlink():
                raise ReferenceRunError(f"{source} is a link; a reference run holds files only")
            if source.is_dir():
                shutil.copytree(source, tmp / part, symlinks=True)
            elif source.exists():
                shutil.copy2(source, tmp / part)
    return Path(root) / name


def packaged() -> dict:
    """The manifest the package carries."""
    return json.loads(MANIFEST.read_text())


def base_url() -> str:
    """Where the reference runs are downloaded from: $ROTE_REFERENCE_URL, else the repository's raw
    files at the installed commit (pip records it for a `git+https` install of the manifest's
    repository) or at the tag `v<version>` of the package."""
    if os.environ.get(URL_VARIABLE):
        return os.environ[URL_VARIABLE].rstrip("/")
    repo = packaged()["repository"].rstrip("/").removesuffix(".git")
    try:
        dist = metadata.distribution("rote")
    except metadata.PackageNotFoundError:
        raise ReferenceRunError(f"cannot tell the installed version of rote; set {URL_VARIABLE} to a copy of "
                                "the repository at this version") from None
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    commit = origin.get("vcs_info", {}).get("commit_id")
    same = origin.get("url", "").rstrip("/").removesuffix(".git") == repo
    ref = commit if commit and same else f"v{dist.version}"
    github = re.fullmatch(r"https://github\.com/([^/]+)/([^/]+)", repo)
    return f"https://raw.githubusercontent.com/{github[1]}/{github[2]}/{ref}" if github else f"{repo}/raw/{ref}"


def _source(name: str) -> str | Path:
    """Where run `name` is taken from: $ROTE_REFERENCE_URL when set, else data/reference in a
    checkout, else `base_url()`."""
    if not os.environ.get(URL_VARIABLE) and (REFERENCE_DIR / name).is_dir():
        return REFERENCE_DIR / name
    return f"{base_url()}/data/reference/{name}"


def _fetch(source: str | Path, relative: str, expected: dict, target: Path) -> None:
    """Copy or download file `relative` of a run into `target`, refusing it unless its size and
    sha256 are the manifest's (`expected`)."""
    where = source / relative if isinstance(source, Path) else f"{source}/{relative}"
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    try:
        with (open(where, "rb") if isinstance(where, Path) else urllib.request.urlopen(where, timeout=60)) as stream, \
                open(target, "wb") as out:
            while (chunk := stream.read(CHUNK)) and size <= expected["size"]:
                size += len(chunk)
                digest.update(chunk)
                out.write(chunk)
    except (OSError, http.client.HTTPException, ValueError) as err:
        reason = f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else \
            getattr(err, "reason", None) or str(err).strip().splitlines()[0][:120] or type(err).__name__
        raise ReferenceRunError(f"cannot fetch {where} ({reason}); nothing installed") from None
    if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
        raise ReferenceRunError(f"{where} does not match the reference manifest (size {size}, expected "
                                f"{expected['size']}; sha256 {digest.hexdigest()[:12]}..., expected "
                                f"{expected['sha256'][:12]}...): changed or corrupt; nothing installed")


def install_run(name: str) -> Path:
    """Install reference run `name` of the manifest as the finished run of its config unless one is
    there: every file fetched (`_source`) and checked first, then moved into place in one rename,
    under the run's lock (so never under a trainer of the same config). Returns its run directory."""
    entry = packaged()["runs"][name]
    target = run_dir(validate(Config(**entry["config"])))
    if (target / "final" / "model.safetensors").exists():
        return target
    with locked(target):  # a trainer of the same config finishes (or is killed) first
        if not (target / "final" / "model.safetensors").exists():
            source = _source(name)
            megabytes = sum(f["size"] for f in entry["files"].values()) / 1e6
            print(f"installing the reference run {name} ({megabytes:.1f} MB) from {source}", file=sys.stderr, flush=True)
            with atomic_dir(target) as tmp:  # an unfinished run of the same config is replaced
                for relative, expected in entry["files"].items():
                    if ".." in Path(relative).parts or Path(relative).is_absolute():
                        raise ReferenceRunError(f"{MANIFEST} names {relative!r}: not a path inside the run")
                    _fetch(source, relative, expected, tmp / relative)
                try:
                    verify(tmp / "final")
                except CheckpointError as err:
                    raise ReferenceRunError(f"{err} (in the reference run {name}); nothing installed") from None
    return target


def install() -> list[Path]:
    """Install every reference run that is not there yet (`install_run`); return their run directories."""
    return [install_run(name) for name in packaged()["runs"]]


def matching(config: Config) -> str | None:
    """The name of the reference run of `config` (the same config hash), or None."""
    wanted = (config.task, config_hash(config))
    return next((name for name, entry in packaged()["runs"].items()
                 if (entry["task"], entry["config_hash"]) == wanted), None)


def install_for(config: Config) -> bool:
    """Install the reference run of `config` if there is one; False when there is none or it cannot
    be installed (a network error, a file that does not match: one line saying so, then training)."""
    name = matching(config)
    if name is None:
        return False
    try:
        install_run(name)
    except ReferenceRunError as err:
        print(f"{err}; training instead", file=sys.stderr, flush=True)
        return False
    return True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Install the reference runs as finished runs.")
    parser.add_argument("--manifest", action="store_true", help=f"write {MANIFEST.name} from data/reference instead")
    args = parser.parse_args(argv)
    if args.manifest:
        print(f"written: {write_manifest()}")
        return
    try:
        for run in install():
            print(f"reference run installed: {run}")
    except OneLineError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
