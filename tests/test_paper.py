"""`make paper` (rote.book.paper): its dry run on the CPU takes the whole path (train, analyse into
scorecard records, publish reference runs with their manifest, build a chapter), and without a GPU
or with a bad field it stops before any work."""
import json
import os
import subprocess
import sys

import pytest

import rote
from rote.book import paper
from rote.claims import from_record
from rote.observations import OBSERVATIONS
from rote.runs import reference
from rote.runs.model import verify


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """The dry run's folder and terminal output, run once as `make paper PAPER=--dry-run` runs it."""
    out = tmp_path_factory.mktemp("paper")
    env = {k: v for k, v in os.environ.items() if k not in ("ROTE_HOME", "ROTE_ALLOW_CPU")}
    run = subprocess.run([sys.executable, "-m", "rote.book.paper", "--dry-run", "--out", str(out)], env=env,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return out, run.stdout + run.stderr


def dry_configs(monkeypatch):
    monkeypatch.setenv("ROTE_ALLOW_CPU", "1")  # the paper profile's configs, made on this machine without a GPU
    return {t: rote.make_config(t, "paper", **paper.DRY_RUN) for t in ("fda", "thr")}


def test_dry_run_writes_every_observations_records_for_both_tasks(dry_run, monkeypatch):
    out, terminal = dry_run
    for task, config in dry_configs(monkeypatch).items():
        cell = out / "lib" / "rote" / "resources" / "scorecard" / "paper" / f"{task}-{rote.config_hash(config)}"
        info = json.loads((cell / "cell.json").read_text())
        assert (info["profile"], info["noise"], info["seed"]) == ("paper", paper.NOISE, paper.SEED)
        assert rote.Config(**json.loads((cell / "config.json").read_text())) == config
        records = [from_record(r) for r in json.loads((cell / "claims.json").read_text())]
        assert {r.observation for r in records} == {n for n, o in OBSERVATIONS.items() if task in o.tasks}
        assert f"{task}: training {task}-{rote.config_hash(config)} (paper profile)" in terminal


def test_dry_run_publishes_reference_runs_and_their_manifest(dry_run, monkeypatch):
    out, _ = dry_run
    manifest = json.loads((out / "lib" / "rote" / "resources" / reference.MANIFEST.name).read_text())
    assert sorted(manifest["runs"]) == ["fda-paper", "thr-paper"]
    for task, config in dry_configs(monkeypatch).items():
        published = out / "data" / "reference" / f"{task}-paper"
        assert sorted(p.name for p in published.iterdir()) == sorted(reference.PUBLISHED)
        verify(published / "final")  # every file of the model against its sha256.json
        entry = manifest["runs"][f"{task}-paper"]
        assert entry["config_hash"] == rote.config_hash(config)
        assert entry["files"]["metrics.csv"]["size"] == (published / "metrics.csv").stat().st_size
    assert not (out / "home" / "runs").is_symlink() and (out / "home" / "runs").is_dir()  # the runs stayed in scratch


def test_dry_run_builds_its_chapter_on_the_paper_profile(dry_run):
    out, terminal = dry_run
    page = (out / "_build" / "html" / "book" / "observation0.html").read_text()
    assert "profile <code" in page and "paper" in page and "analysed model at step 40" in page
    assert "observation0: running" in terminal and "book built in" in terminal


def test_without_a_gpu_it_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTE_ALLOW_CPU", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="profile paper needs a GPU"):
        paper.main(["--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []
    assert "ROTE_ALLOW_CPU" not in os.environ


@pytest.mark.parametrize("argv,message", [
    (["-o", "n_layr=2"], "n_layr"),
    (["-o", "n_layer=0"], "n_layer must be > 0"),
    (["--only", "observation9"], "unknown chapter"),
])
def test_a_bad_field_or_chapter_is_one_line_before_any_work(tmp_path, monkeypatch, argv, message):
    monkeypatch.setenv("ROTE_HOME", str(tmp_path / "home"))
    with pytest.raises(SystemExit, match=message) as err:
        paper.main(["--dry-run", "--out", str(tmp_path / "out"), *argv])
    assert len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "out" / "data").exists() and not (tmp_path / "out" / "home" / "runs").exists()
