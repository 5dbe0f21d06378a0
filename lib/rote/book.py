"""Build the book: run every chapter with papermill, then `jupyter-book build`.

    python -m rote.book --profile tiny            # every chapter, then the HTML in _build/html
    python -m rote.book --only observation0 -p task=thr -p noise=0.1

The sources under book/ stay without outputs: executed copies go to _build/src/, which is what
Jupyter Book renders.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .config import PROFILES
from .store import REPO_ROOT


def chapters() -> list[Path]:
    """The notebooks of the table of contents, in order."""
    toc = (REPO_ROOT / "_toc.yml").read_text()
    files = [REPO_ROOT / f"{name}.ipynb" for name in re.findall(r"file:\s*(\S+)", toc)]
    return [f for f in files if f.exists()]


def run_chapter(notebook: Path, out: Path, parameters: dict, progress: bool = False) -> Path:
    """Execute one chapter with papermill into `out`."""
    import papermill

    out.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(notebook.parent),
                               kernel_name="python3", progress_bar=progress)
    return out


def build(profile: str = "cpu", parameters: dict | None = None, only: list[str] | None = None,
          root: Path = REPO_ROOT) -> Path:
    """Run the chapters with `profile` into `root`/_build/src and render the book into
    `root`/_build/html."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; allowed: {', '.join(PROFILES)}")
    parameters = {"profile": profile, **(parameters or {})}
    src = Path(root) / "_build" / "src"
    if src.exists():
        shutil.rmtree(src)
    (src / "book").mkdir(parents=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, src / name)
    for page in (REPO_ROOT / "book").glob("*.md"):
        shutil.copy(page, src / "book" / page.name)
    for notebook in chapters():
        if only and notebook.stem not in only:
            shutil.copy(notebook, src / "book" / notebook.name)
            continue
        print(f"running {notebook.relative_to(REPO_ROOT)} ({parameters})", flush=True)
        run_chapter(notebook, src / "book" / notebook.name, parameters)
    jb = Path(sys.executable).parent / "jupyter-book"
    subprocess.run([str(jb), "build", str(src), "--path-output", str(root), "--warningiserror",
                    "--keep-going"], check=True)
    return Path(root) / "_build" / "html"


def set_repository(url: str) -> None:
    """Point the Colab buttons (_config.yml) and every chapter's install cell at `url`."""
    config = REPO_ROOT / "_config.yml"
    config.write_text(re.sub(r"(repository:\n  url: )\S+", rf"\g<1>{url}", config.read_text()))
    for notebook in chapters():
        notebook.write_text(re.sub(r'rote @ git\+[^"\\]+', f"rote @ git+{url}", notebook.read_text()))


def _parameter(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    try:
        return name, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return name, value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="a chapter parameter (task, noise, seed, overrides)")
    parser.add_argument("--only", action="append", help="run only this chapter (by file stem)")
    parser.add_argument("--set-repository", metavar="URL", help="point launch buttons and install cells at URL")
    args = parser.parse_args(argv)
    if args.set_repository:
        set_repository(args.set_repository)
        return
    print(build(args.profile, dict(map(_parameter, args.parameter)), args.only))


if __name__ == "__main__":
    main()
