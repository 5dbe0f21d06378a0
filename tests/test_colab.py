"""The Colab path, as a user takes it: the package installed from a git URL (a wheel, no editable
install, no repository on the path) carries the data it needs. A chapter runs with papermill on the
tiny profile with task="both" (THR needs the packaged name list), its nnsight core step included;
the scorecard chapter shows the committed verdicts; a reference run is downloaded (from a local URL),
checked against the packaged manifest and loaded instead of trained."""
from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from rote.book import tables
from rote.grid import scorecard, sweep
from rote.runs import reference
from rote.store import REPO_ROOT, RESOURCES

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO_ROOT / ".git").exists(),
                                reason="needs git and a checkout")


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with only the wheel of this checkout's committed HEAD installed,
    and the environment of a user's shell there; returns (its python, that environment, the wheel)."""
    tmp = tmp_path_factory.mktemp("colab")
    # The wheel pip builds from a git URL of this checkout, as `%pip install "rote @ git+..."`.
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "wheels", f"rote @ git+file://{REPO_ROOT}")
    wheel = next((tmp / "wheels").glob("rote-*.whl"))

    # Its dependencies (torch, transformers, papermill, ...) are borrowed from the test's environment
    # through a .pth line, which adds that site-packages folder but not the editable install of `rote`
    # it holds (.pth files of an added folder are not read), so `rote` can only come from the wheel.
    fresh = tmp / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", fresh)
    python = fresh / "bin" / "python"
    fresh_site = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    (Path(fresh_site) / "borrowed.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    where = run(python, "-c", "import rote; print(rote.__file__)", cwd=tmp).stdout.strip()
    assert where.startswith(str(fresh)), where

    env = {"PATH": f"{fresh / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "ROTE_HOME": str(tmp / "home"),
           "JUPYTER_PATH": str(fresh / "share" / "jupyter"), "OMP_NUM_THREADS": "1"}
    run(python, "-m", "ipykernel", "install", "--prefix", fresh, "--name", "python3", env=env)
    return python, env, wheel


def test_the_wheel_carries_the_data_but_not_the_weights(installed):
    names = set(zipfile.ZipFile(installed[2]).namelist())
    assert {"rote/resources/names.txt", "rote/resources/thr_map/runs.csv", "rote/resources/reference.json"} <= names
    records = {f"rote/{p.relative_to(RESOURCES.parent).as_posix()}" for p in (RESOURCES / "scorecard").rglob("*") if p.is_file()}
    assert len(records) == 4 * 15 and records <= names  # per run of the committed grid: cell, config, claims, metrics
    assert not [n for n in names if n.endswith(".safetensors")]


def papermill(installed, chapter: Path, folder: Path, *parameters) -> list:
    """Run `chapter` with papermill in the fresh environment; its cells, after checking none raised."""
    python, env, _ = installed
    folder.mkdir(exist_ok=True)
    shutil.copy(chapter, folder)
    out = folder / f"{chapter.stem}-out.ipynb"
    run(python, "-m", "papermill", folder / chapter.name, out, *parameters, "-k", "python3", cwd=folder, env=env)
    cells = json.loads(out.read_text())["cells"]
    assert not [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"], chapter.name
    return cells


def test_a_chapter_runs_from_the_wheel(installed, tmp_path):
    # Observation 1's core step is an nnsight trace, which reads its `with` block from the cell's source.
    for name in ("observation0", "observation1"):
        cells = papermill(installed, REPO_ROOT / "book" / f"{name}.ipynb", tmp_path, "-p", "profile", "tiny",
                          "-p", "task", "both")
        core = [c for c in cells if "core-step" in c.get("metadata", {}).get("tags", [])]
        assert core and core[0]["outputs"], name
    assert sorted(p.name.split("-")[0] for p in (Path(installed[1]["ROTE_HOME"]) / "runs").iterdir()) == ["fda", "thr"]


def test_the_scorecard_shows_the_committed_verdicts(installed, tmp_path):
    # The chapter's own parameters: the committed grid (cpu profile), read, not run.
    cells = papermill(installed, REPO_ROOT / "book" / "scorecard.ipynb", tmp_path, "-p", "profile", "cpu",
                      "-p", "task", "both", "-p", "run_sweep", "False")
    table = next(c for c in cells if "scorecard.verdict_table(" in "".join(c["source"]))
    shown = "".join(table["outputs"][0]["data"]["text/html"])
    expected = scorecard.verdict_table(scorecard.scorecard(scorecard.default_cells()).verdicts)  # this checkout's
    # "not run yet" only in the rows of observations that some committed cell has no records of yet
    missing = {n for c in scorecard.default_cells() for n in sweep.missing_observations(c)}
    not_run = expected[expected.map(lambda v: "not run yet" in str(v)).any(axis=1)]
    assert set(not_run["observation"]) == missing
    caption = "Verdict counts per observation, task and noise rate"
    assert shown == tables.html_table(expected, caption)  # the same table, shown as the chapter shows it


def test_a_reference_run_is_downloaded_and_loaded_not_trained(installed, serve, tmp_path):
    url, requested = serve(REPO_ROOT)
    python, env, _ = installed
    script = ("import sys, rote, rote.runs.train as t\n"
              "t._train = lambda *a: sys.exit('trained')\n"
              "c = rote.make_config('thr', 'cpu')\n"
              "rote.get_or_train(c, device='cpu', progress=False)\n"
              "print(rote.metrics(c).to_json())\n")
    done = run(python, "-c", script, env={**env, "ROTE_HOME": str(tmp_path / "home"), reference.URL_VARIABLE: url})
    assert "installing the reference run thr-cpu" in done.stderr and len(requested) == len(
        reference.packaged()["runs"]["thr-cpu"]["files"])
    committed = pd.read_csv(reference.REFERENCE_DIR / "thr-cpu" / "metrics.csv")
    assert json.loads(done.stdout) == json.loads(committed.to_json())
