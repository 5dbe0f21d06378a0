"""Build the book: train what the chapters need, run every chapter with papermill, then
`jupyter-book build`.

    python -m rote.book --profile tiny            # every chapter, then the HTML in _build/html
    python -m rote.book --only observation0 -p task=thr -p noise=0.1

The sources under book/ stay without outputs: executed copies go to _build/src/, which is what
Jupyter Book renders. The models are trained first, in this process, so that their progress shows
in the terminal; a chapter is executed again only when its cache key changes (`chapter_key`).
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rote.book import vega
from rote.config import ALLOW_CPU, PROFILES, TASKS, ConfigError, DeviceError, OneLineError, config_hash
from rote.config import check_device as config_check_device
from rote.grid import scorecard
from rote.observations import of_chapter
from rote.parameters import NAMES, check, parse
from rote.runs import reference
from rote.store import DATA_DIR, REPO_ROOT, atomic_path, home, locked, write_text

PAGE_ONLY_TAGS = ("parameters", "injected-parameters", "check-parameters")  # in the notebook, not on the page
WITHOUT_MODELS = {"data", "protocol", "thr_regimes", "scorecard"}  # chapters that read data or records, train nothing


def chapters() -> list[Path]:
    """The notebooks of the table of contents, in order."""
    toc = (REPO_ROOT / "_toc.yml").read_text()
    files = [REPO_ROOT / f"{name}.ipynb" for name in re.findall(r"file:\s*(\S+)", toc)]
    return [f for f in files if f.exists()]


def chapter_defaults(notebook: Path) -> dict:
    """The values of a chapter's `parameters` cell."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                    if isinstance(node, ast.Assign)}
    raise ValueError(f"{notebook.name} has no cell tagged 'parameters'")


def chapter_parameters(notebook: Path, parameters: dict) -> dict:
    """The build's `parameters` that apply to `notebook`: the scorecard, which has parameters of its
    own (a grid), does not take the observation chapters' noise and seed. Unknown names pass, to be
    refused by the chapter's check."""
    defaults = chapter_defaults(notebook)
    return {k: v for k, v in parameters.items() if k in defaults or k not in NAMES}


def chapter_configs(notebook: Path, parameters: dict) -> list:
    """The configs a chapter trains or loads with `parameters`, checked by the function its own
    check cell calls (none for a chapter without models)."""
    values = {**chapter_defaults(notebook), **chapter_parameters(notebook, parameters)}
    if notebook.stem == "scorecard":
        scorecard.check_parameters(values)  # a grid of its own: it reads records and trains nothing
        return []
    observation = of_chapter(notebook.stem)
    configs = check(values, observation.tasks if observation else TASKS)
    return [] if notebook.stem in WITHOUT_MODELS else list(configs.values())


def check_device(profile: str, allow_cpu: bool) -> None:
    """The `paper` profile wants a GPU: without one, stop before any work (`rote.config.check_device`),
    unless `allow_cpu`, which sets ROTE_ALLOW_CPU=1 (`build` sets it for its chapters, then back)."""
    if allow_cpu:
        os.environ[ALLOW_CPU] = "1"
    try:
        config_check_device(profile)
    except DeviceError as err:
        raise SystemExit(str(err)) from None


def chapters_named(only: list[str] | None) -> list[Path]:
    """The chapters named in `only` (file stems; every chapter when None), or a one-line error naming
    the allowed ones."""
    unknown = sorted(set(only or ()) - {n.stem for n in chapters()})
    if unknown:
        raise ConfigError(f"unknown chapter(s) {', '.join(unknown)}; allowed: {', '.join(n.stem for n in chapters())}")
    return [n for n in chapters() if not only or n.stem in only]


@contextlib.contextmanager
def device_checked(profile: str, allow_cpu: bool):
    """`check_device` first; inside, ROTE_ALLOW_CPU=1 where `allow_cpu` (for the chapters' kernels
    too), and as it was after: --allow-cpu holds for one build only."""
    before = os.environ.get(ALLOW_CPU)
    try:
        check_device(profile, allow_cpu)
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_CPU, None)
        else:
            os.environ[ALLOW_CPU] = before


def train_all(configs: list) -> None:
    """Train (or resume) every config that has no finished run, with progress in the terminal."""
    from rote.runs.train import is_finished, train

    todo = [c for c in dict.fromkeys(configs) if not is_finished(c)]
    for i, config in enumerate(todo, 1):
        print(f"training {i}/{len(todo)}: {config.task} {config_hash(config)} (profile fields: noise "
              f"{config.noise:g}, seed {config.seed}; resumes if interrupted)", flush=True)
        train(config, progress=True)


def tree_hash(paths) -> str:
    """sha256 over the names and bytes of files (folders walked in sorted order)."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for path in files:
            if "__pycache__" in path.parts:
                continue
            digest.update(str(path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def chapter_key(notebook: Path, parameters: dict, configs: list, package: str) -> str:
    """What a chapter's output depends on: its notebook, its parameters, the package source and
    committed data (`package`), and the weights of the models it loads."""
    from rote.runs.train import run_dir

    models = [tree_hash([run_dir(c) / "final" / "model.safetensors"]) if (run_dir(c) / "final").exists() else ""
              for c in configs]
    text = json.dumps([notebook.read_text(), parameters, package, models], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def kernel_config():
    """How the chapters' kernels talk to papermill: over local sockets (ipc), or, where zmq has
    none (Windows), over TCP encrypted with keys the kernel manager provisions; never over plain
    TCP, which ipykernel warns about in the terminal."""
    import zmq
    from traitlets.config import Config

    manager = {"transport": "ipc"} if zmq.has("ipc") else {"transport_encryption": "auto"}
    return Config({"KernelManager": manager})


def run_chapter(notebook: Path, out: Path, parameters: dict, progress: bool = False) -> Path:
    """Execute one chapter with papermill into `out` (the offline chart renderer on)."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get(vega.ENV)
    os.environ[vega.ENV] = "1"  # inherited by the kernel; restored after, so this process is unchanged
    try:
        papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(notebook.parent),
                                   kernel_name="python3", progress_bar=progress, config=kernel_config())
    finally:
        if before is None:
            del os.environ[vega.ENV]
        else:
            os.environ[vega.ENV] = before
    return out


def provenance(configs: list, parameters: dict) -> str:
    """One line saying how a page was run: parameters, config hashes, training minutes, the analysed
    model's step, scores and regime (`rote.grid.regimes.analysed_model`), machine."""
    import pandas as pd
    import torch

    from rote.grid.regimes import analysed_model
    from rote.runs.train import default_device, run_dir

    runs = []
    for c in configs:
        path = run_dir(c) / "metrics.csv"
        if path.exists():
            metrics = pd.read_csv(path)
            runs.append(f"{c.task.upper()} run `{config_hash(c)}` (trained in {metrics['seconds'].iloc[-1] / 60:.1f} min; "
                        f"analysed model at {analysed_model(metrics)})")
        else:
            runs.append(f"{c.task.upper()} run `{config_hash(c)}` (not trained)")
    said = ", ".join(f"{k} `{v}`" if not isinstance(v, (int, float)) or isinstance(v, bool) else f"{k} {v:g}"
                     for k, v in parameters.items() if k != "overrides" or v)
    device = default_device()
    where = torch.cuda.get_device_name(0) if device == "cuda" else f"{torch.get_num_threads()} CPU threads"
    return (f"*How this page was run:* {said}; {'; '.join(runs) or 'no trained model'}; on {platform.system()} "
            f"{platform.machine()}, {where}, torch {torch.__version__}.")


def for_readers(executed: Path, line: str) -> None:
    """Hide the parameter cells and the Colab install cell from the rendered page (they stay in the
    notebook) and put the provenance `line` in their place."""
    nb = json.loads(executed.read_text())
    first = None
    for i, cell in enumerate(nb["cells"]):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if set(tags) & set(PAGE_ONLY_TAGS) or "google.colab" in "".join(cell["source"]):
            tags.append("remove-cell")
            first = i if first is None else first
    note = {"cell_type": "markdown", "id": "provenance", "metadata": {"tags": ["provenance"]}, "source": [line]}
    nb["cells"].insert(first if first is not None else 1, note)
    with atomic_path(executed) as tmp:
        tmp.write_text(json.dumps(nb, indent=1))


def build(profile: str = "cpu", parameters: dict | None = None, only: list[str] | None = None,
          root: Path = REPO_ROOT, allow_cpu: bool = False) -> Path:
    """Train the models, run the chapters with `profile` into `root`/_build/src (reusing those whose
    cache key is unchanged) and render the book into `root`/_build/html."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    with device_checked(profile, allow_cpu):
        parameters = {"profile": profile, **(parameters or {})}
        notebooks = chapters_named(only)
        configs = {n: chapter_configs(n, parameters) for n in notebooks}  # checks every parameter first
        home()  # a relative ROTE_HOME made absolute before any chapter runs in book/
        with locked(Path(root) / "_build"):  # a second build waits for this one
            return _build(parameters, configs, root)


def _build(parameters: dict, configs: dict, root: Path) -> Path:
    started = time.perf_counter()
    train_all([c for cs in configs.values() for c in cs])

    build_dir = Path(root) / "_build"
    src, cache = build_dir / "src", build_dir / "cache"
    if src.exists():
        shutil.rmtree(src)
    (src / "book").mkdir(parents=True)
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, src / name)
    shutil.copytree(REPO_ROOT / "_static", src / "_static")
    vega.write_bundle(src / "_static")
    for page in (REPO_ROOT / "book").glob("*.md"):
        shutil.copy(page, src / "book" / page.name)
    package = tree_hash([REPO_ROOT / "lib" / "rote", DATA_DIR])
    for notebook in chapters():
        if notebook not in configs:  # not named in --only: its executed copy if one is cached, else its source
            kept = cached_run(notebook, parameters, package, cache)
            shutil.copy(kept or notebook, src / "book" / notebook.name)
            print(f"{notebook.stem}: not in --only; " + ("its cached run with these parameters reused" if kept else
                  "never run with these parameters, so its page shows the chapter without outputs"), flush=True)
            continue
        mine = chapter_parameters(notebook, parameters)
        cached = cache_path(cache, notebook, mine, configs[notebook], package)
        t0 = time.perf_counter()
        broken = cached.exists() and notebook_error(cached)
        if broken:
            print(f"{notebook.stem}: the cached copy {cached} is broken ({broken}); running it again", flush=True)
        if cached.exists() and not broken:
            print(f"{notebook.stem}: unchanged, reused", flush=True)
        else:
            print(f"{notebook.stem}: running ({mine}) ...", flush=True)
            run_chapter(notebook, src / "book" / notebook.name, mine)
            for_readers(src / "book" / notebook.name, provenance(configs[notebook], {**chapter_defaults(notebook), **mine}))
            with atomic_path(cached) as tmp:
                shutil.copyfile(src / "book" / notebook.name, tmp)
            print(f"{notebook.stem}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        shutil.copy(cached, src / "book" / notebook.name)
    print("rendering the HTML book ...", flush=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jb), "build", str(src), "--path-output", str(root), "--warningiserror",
                    "--keep-going", "--quiet"], check=True)
    print(f"book built in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return Path(root) / "_build" / "html"


def cache_path(cache: Path, notebook: Path, parameters: dict, configs: list, package: str) -> Path:
    """Where the executed copy of `notebook` with its `parameters` is kept (named by its `chapter_key`)."""
    return cache / f"{notebook.stem}-{chapter_key(notebook, parameters, configs, package)}.ipynb"


def cached_run(notebook: Path, parameters: dict, package: str, cache: Path) -> Path | None:
    """The valid cached copy of `notebook` run with the build's `parameters` on the models as they
    are now (None if there is none, or if the chapter refuses those parameters)."""
    try:
        configs = chapter_configs(notebook, parameters)
    except (ValueError, OneLineError):
        return None
    cached = cache_path(cache, notebook, chapter_parameters(notebook, parameters), configs, package)
    return cached if cached.exists() and not notebook_error(cached) else None


def notebook_error(path: Path) -> str:
    """Why `path` is not a valid notebook ("" when it is): a cached chapter is checked before reuse."""
    import nbformat

    try:
        nbformat.validate(nbformat.read(path, as_version=4))
    except Exception as err:  # noqa: BLE001 - any failure to read or validate means rerun the chapter
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else ''}"
    return ""


REPOSITORY = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~-]+)+")


def set_repository(url: str) -> None:
    """Point the Colab buttons (_config.yml), every chapter's install cell, CITATION.cff and the
    reference runs' manifest (where the package downloads them from) at `url`, after checking it:
    the notebooks are edited as JSON (nbformat), never as text."""
    import nbformat

    if not REPOSITORY.fullmatch(url):
        raise ConfigError(f"repository URL must be https://host/path (letters, digits and . _ ~ - in the host and "
                          f"each part of the path), got {url!r}")
    config = REPO_ROOT / "_config.yml"
    text, found = re.subn(r"(repository:\n  url: )\S+", lambda m: m.group(1) + url, config.read_text())
    if found != 1:
        raise ConfigError(f"{config} has no 'repository:' with a 'url:' line under it; allowed: one such block")
    citation = REPO_ROOT / "CITATION.cff"
    edited = {citation: re.sub(r'(?m)^(repository-code: )"[^"]*"', lambda m: f'{m.group(1)}"{url}"', citation.read_text())} \
        if citation.exists() else {}
    runs = REPO_ROOT / "lib" / "rote" / "resources" / reference.MANIFEST.name
    if runs.exists():
        edited[runs] = reference.manifest_text({**json.loads(runs.read_text()), "repository": url})
    for notebook in chapters():
        nb = nbformat.read(notebook, as_version=nbformat.NO_CONVERT)
        for cell in nb.cells:
            cell.source = re.sub(r'rote @ git\+[^"\s]+', lambda m: f"rote @ git+{url}", cell.source)
        nbformat.validate(nb)
        edited[notebook] = nbformat.writes(nb) + "\n"
    write_text(config, text)
    for notebook, source in edited.items():
        write_text(notebook, source)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a chapter parameter (task, noise, seed, overrides)")
    parser.add_argument("--only", action="append", help="run only this chapter (by file stem)")
    parser.add_argument("--allow-cpu", action="store_true", help="run the paper profile without a GPU")
    parser.add_argument("--set-repository", metavar="URL", help="point launch buttons and install cells at URL")
    args = parser.parse_args(argv)
    try:
        if args.set_repository:
            set_repository(args.set_repository)
            return
        html = build(args.profile, dict(map(parse, args.parameter)), args.only, allow_cpu=args.allow_cpu)
    except (ValueError, OneLineError) as err:
        raise SystemExit(f"error: {err}") from None
    print(html)


if __name__ == "__main__":
    main()
