"""The Colab path, as a user takes it: the package installed from a git URL (a wheel, no editable
install, no repository on the path) carries the data it needs, and a chapter runs with papermill
on the tiny profile with task="both" (THR needs the packaged name list), its nnsight core step included."""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rote.store import REPO_ROOT


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kwargs)


@pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(), reason="needs git and a checkout")
def test_wheel_from_git_url_runs_a_chapter(tmp_path):
    # The wheel pip builds from a git URL of this checkout (its committed HEAD), as `%pip install "rote @ git+..."`.
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp_path / "wheels",
        f"rote @ git+file://{REPO_ROOT}")
    wheel = next((tmp_path / "wheels").glob("rote-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rote/resources/names.txt" in names and "rote/resources/thr_map/runs.csv" in names

    # A fresh virtual environment with only the wheel installed in it. Its dependencies (torch,
    # transformers, papermill, ...) are borrowed from the test's environment through a .pth line,
    # which adds that site-packages folder but not the editable install of `rote` it holds (.pth
    # files of an added folder are not read), so `rote` can only come from the wheel.
    fresh = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", fresh)
    python = fresh / "bin" / "python"
    fresh_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(fresh_site) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    where = run(python, "-c", "import rote; print(rote.__file__)", cwd=tmp_path).stdout.strip()
    assert where.startswith(str(fresh)), where

    chapter = tmp_path / "chapter"
    chapter.mkdir()
    env = {"PATH": f"{fresh / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "ROTE_HOME": str(tmp_path / "home"),
           "JUPYTER_PATH": str(fresh / "share" / "jupyter"), "OMP_NUM_THREADS": "1"}
    run(python, "-m", "ipykernel", "install", "--prefix", fresh, "--name", "python3", env=env)
    # Observation 1's core step is an nnsight trace, which reads its `with` block from the cell's source.
    for name in ("observation0", "observation1"):
        shutil.copy(REPO_ROOT / "book" / f"{name}.ipynb", chapter)
        run(python, "-m", "papermill", chapter / f"{name}.ipynb", chapter / f"{name}-out.ipynb", "-p", "profile", "tiny",
            "-p", "task", "both", "-k", "python3", cwd=chapter, env=env)
        cells = json.loads((chapter / f"{name}-out.ipynb").read_text())["cells"]
        assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], name
        core = [c for c in cells if "core-step" in c.get("metadata", {}).get("tags", [])]
        assert core and core[0]["outputs"], name
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "home" / "runs").iterdir()) == ["fda", "thr"]
