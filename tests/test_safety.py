"""Probes of a careful user and of a hostile colleague on a shared file system, on the tiny profile:
no write, chmod or delete follows a planted symbolic link; a tampered file is never reused; bad input
stops in one line before any work; a paper run never starts on a CPU by accident."""
from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import papermill
import pytest
import torch

import rote
from rote import claims, parameters, store
from rote.book import build
from rote.config import ConfigError, DeviceError
from rote.grid import scorecard, sweep
from rote.runs import reference
from rote.runs.data import DataError, dataset_dir, load_dataset
from rote.runs.model import CHECKSUMS, CheckpointError, load, record_checksums
from rote.runs.train import RunError, run_dir
from rote.store import REPO_ROOT


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


# ---- symbolic links --------------------------------------------------------------------------------------

def _outside(tmp_path: Path) -> dict[Path, tuple[bytes, int]]:
    """Files outside every run: a colleague's notes and a private key (0600)."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes\n")
    (folder / "id_key").write_text("PRIVATE KEY\n")
    os.chmod(folder / "id_key", 0o600)
    return {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}


def _plant(folder: Path, names, outside: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    notes, key = sorted(outside, key=lambda p: p.name != "notes.txt")
    for name in names:
        (folder / name).symlink_to(notes)
    (folder / "leak").symlink_to(key)


def test_planted_links_are_never_written_through_or_chmodded(tmp_path):
    outside = _outside(tmp_path)
    config = rote.make_config("fda", "tiny")
    run, data = run_dir(config), dataset_dir(config)
    _plant(run, ["config.json", "metrics.csv", "noisy_predictions.csv"], outside)
    _plant(run / "checkpoints" / "step-000040", ["tokenizer.json", "model.safetensors", "config.json"], outside)
    _plant(run / "final", ["tokenizer.json", "config.json"], outside)
    _plant(run / "claims", ["observation0.json"], outside)
    _plant(data, ["instances.csv"], outside)
    old = os.umask(0o022)
    try:
        rote.train(config, progress=False)
        claims.save([], run, 0)
    finally:
        os.umask(old)
    assert {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in outside} == outside
    assert not (run / "final" / "leak").exists() and not (run / "checkpoints" / "step-000040" / "leak").exists()
    model, _ = load(run / "final")  # the trained model, not a link
    assert (run / "final" / "model.safetensors").stat().st_mode & 0o044 == 0o044


@pytest.mark.parametrize("where", ["run", "claims", "checkpoints", "lock"])
def test_a_linked_folder_or_lock_is_refused_in_one_line(tmp_path, where):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    config = rote.make_config("fda", "tiny")
    run = run_dir(config)
    if where == "run":
        run.parent.mkdir(parents=True)
        run.symlink_to(outside)
    else:
        run.mkdir(parents=True)
        (run / {"claims": "claims", "checkpoints": "checkpoints", "lock": ".lock"}[where]).symlink_to(outside)
    with pytest.raises(store.StoreError) as err:
        rote.train(config, progress=False)
        claims.save([], run, 0)
    assert "symbolic link" in _one_line(err) and "remove" in str(err.value)
    assert list(outside.iterdir()) == []


def test_atomic_dir_renames_the_old_folder_aside_before_deleting_it(tmp_path, monkeypatch):
    target = tmp_path / "cell"
    target.mkdir()
    (target / "old.txt").write_text("old")
    seen, rmtree = [], store.shutil.rmtree

    def watched(path, *args, **kwargs):
        seen.append(sorted(p.name for p in target.iterdir()))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(store.shutil, "rmtree", watched)
    with store.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert seen == [["new.txt"]]  # the new folder was in place when the old one was deleted
    assert [p.name for p in tmp_path.iterdir()] == ["cell"]


# ---- integrity -------------------------------------------------------------------------------------------

def test_a_changed_label_in_the_dataset_is_refused(tmp_path):
    config = rote.make_config("fda", "tiny")
    frame = load_dataset(config)
    path = dataset_dir(config) / "instances.csv"
    frame.loc[frame["split"] == "train", "label"] = "0000"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        rote.train(config, progress=False)
    assert "instances.csv does not match the sha256" in _one_line(err) and f"delete {path.parent}" in str(err.value)
    assert not (run_dir(config) / "metrics.csv").exists()  # nothing trained on it
    path.write_text("id,split\n0,train\n")  # a corrupt file: the same one line, not a KeyError
    with pytest.raises(DataError):
        load_dataset(config)


@pytest.mark.parametrize("folder", ["final", "checkpoints/step-000040"])
@pytest.mark.parametrize("tamper", ["weights", "config"])
def test_a_tampered_model_folder_is_refused(folder, tamper):
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, progress=False)
    path = run / folder
    saved = {p.name: p.read_bytes() for p in path.iterdir()}
    if tamper == "weights":
        data = bytearray((path / "model.safetensors").read_bytes())
        data[-8:] = b"\xff" * 8
        (path / "model.safetensors").write_bytes(bytes(data))
    else:
        gpt2 = json.loads((path / "config.json").read_text())
        gpt2["activation_function"] = "relu"
        (path / "config.json").write_text(json.dumps(gpt2))
    with pytest.raises(CheckpointError) as err:
        load(path)
    name = "model.safetensors" if tamper == "weights" else "config.json"
    assert f"{path / name} does not match its sha256" in _one_line(err)
    if folder == "final":  # what the message says to do: deleting final/ rebuilds it from state.pt
        assert "rebuilt from" in str(err.value)
        metrics = (run / "metrics.csv").read_bytes()
        shutil.rmtree(path)
        rote.train(config, progress=False)
        load(path)
        assert {p.name: p.read_bytes() for p in path.iterdir()} == saved  # the same model
        assert (run / "metrics.csv").read_bytes() == metrics  # not trained again (its timings would differ)
    else:
        assert f"delete {path}" in str(err.value)


def test_a_run_of_an_older_version_without_checksums_says_how_to_record_them():
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, progress=False)
    for checksum in run.rglob(CHECKSUMS):
        checksum.unlink()
    with pytest.raises(CheckpointError) as err:
        load(run / "checkpoints" / "step-000040")
    assert f"no {CHECKSUMS} in" in _one_line(err) and f"python -m rote.runs.model --checksum {run}" in str(err.value)
    assert sorted(p.name for p in record_checksums(run)) == ["final", "step-000040", "step-000060"]
    load(run / "final")
    load(run / "checkpoints" / "step-000040")


def test_reference_runs_are_installed_with_their_checksums():
    for run in reference.install():
        load(run / "final")


# ---- the paper profile on a CPU -------------------------------------------------------------------------

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="probes a machine without a GPU")
PAPER_LINE = "profile paper needs a GPU and none was found"


@no_gpu
def test_papermill_with_the_paper_profile_stops_at_its_first_cell(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTE_ALLOW_CPU", raising=False)
    with pytest.raises(papermill.PapermillExecutionError) as err:
        build.run_chapter(REPO_ROOT / "book" / "observation0.ipynb", tmp_path / "out.ipynb", {"profile": "paper"})
    assert err.value.ename == "DeviceError" and PAPER_LINE in err.value.evalue and "ROTE_ALLOW_CPU=1" in err.value.evalue
    assert err.value.traceback == [f"DeviceError: {err.value.evalue}"]
    assert not Path(os.environ["ROTE_HOME"]).exists()


def test_scorecard_sweep_and_sweep_function_stop_on_a_cpu(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTE_ALLOW_CPU", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    namespace = {"task": "both", "profile": "paper", "noises": [0.05], "seeds": None, "overrides": {},
                 "run_sweep": True}
    with pytest.raises(DeviceError) as err:
        scorecard.check_parameters(namespace)
    assert PAPER_LINE in _one_line(err)
    with pytest.raises(DeviceError):
        sweep.grid(["fda"], [0.05], [0], "paper")
    monkeypatch.setenv("ROTE_ALLOW_CPU", "1")  # the flag: the grid is made (nothing is trained here)
    assert len(scorecard.check_parameters(namespace)) == 5  # fda seeds 0-2, thr seeds 0-1
    assert not Path(os.environ["ROTE_HOME"]).exists()


def test_sweep_command_with_the_paper_profile_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("ROTE_ALLOW_CPU", raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as err:
        sweep.main(["--profile", "paper", "--records", str(tmp_path / "r")])
    assert str(err.value.code).startswith(f"error: {PAPER_LINE}") and "\n" not in str(err.value.code)
    assert not (tmp_path / "r").exists() and not Path(os.environ["ROTE_HOME"]).exists()


# ---- bad input: one line, before any work -----------------------------------------------------------------

@pytest.mark.parametrize("task,fields,expected", [
    ("fda", {"lr": float("nan")}, "lr must be a finite number, got nan"),
    ("fda", {"lr": float("inf")}, "lr must be a finite number, got inf"),
    ("fda", {"weight_decay": float("inf")}, "weight_decay must be a finite number"),
    ("fda", {"stop_mem_noisy": float("nan")}, "stop_mem_noisy must be a finite number"),
    ("fda", {"seed": 1.5}, "seed must be of type int, got 1.5"),
    ("fda", {"max_steps": float("inf")}, "max_steps must be of type int, got inf"),
    ("thr", {"n_relations": 21}, "n_relations must be in [1, 20] for thr"),
    ("thr", {"n_entities": 100_000}, "n_entities must be in [3, "),
])
def test_bad_fields_are_refused_where_the_config_is_made(task, fields, expected):
    with pytest.raises(ConfigError) as err:
        rote.make_config(task, "tiny", **fields)
    assert expected in _one_line(err)
    assert rote.make_config("fda", "tiny", seed=2.0).seed == 2  # a whole number is the same seed


def test_an_out_of_range_thr_config_leaves_no_lock_behind():
    values = {**rote.config.PROFILE_DEFAULTS["thr"]["tiny"], "task": "thr", "n_relations": 21}
    with pytest.raises(ConfigError):
        rote.train(rote.Config(**values), progress=False)
    assert not Path(os.environ["ROTE_HOME"]).exists()


@pytest.mark.parametrize("name", ["noise", "seed", "task"])
def test_overrides_naming_a_parameter_are_one_line(name):
    namespace = {"task": "fda", "noise": 0.05, "seed": 0, "profile": "tiny", "overrides": {name: 0}}
    with pytest.raises(ConfigError) as err:
        parameters.check(namespace)
    assert f"overrides cannot set {name}" in _one_line(err)
    with pytest.raises(ConfigError):
        sweep.grid(["fda"], [0.05], [0], "tiny", {name: 0})


@pytest.mark.parametrize("change,expected", [
    ({"noises": ["0.1"]}, "noise rates must be a list of numbers, got '0.1'"),
    ({"noises": "0.1"}, "noise rates must be a list of numbers, got '0.1'"),
    ({"seeds": [1.5]}, "seeds must be a list of whole numbers, got 1.5"),
    ({"seeds": {"fda": [0], "tHr": [1]}}, "unknown task 'tHr' in seeds; allowed: fda, thr"),
    ({"seeds": {"fda": [0]}}, "seeds has no entry for thr"),
])
def test_scorecard_parameters_refuse_strings_and_misspelled_tasks(change, expected):
    namespace = {"task": "both", "profile": "tiny", "noises": [0.05], "seeds": None, "overrides": {},
                 "run_sweep": False, **change}
    with pytest.raises(ConfigError) as err:
        scorecard.check_parameters(namespace)
    assert expected in _one_line(err)


@pytest.mark.parametrize("argv,expected", [(["--threads", "0"], "error: --threads must be a whole number >= 1, got 0"),
                                           (["--workers", "-1"], "error: --workers must be a whole number >= 1, got -1")])
def test_sweep_command_refuses_zero_threads_and_negative_workers(tmp_path, argv, expected):
    with pytest.raises(SystemExit) as err:
        sweep.main(["--profile", "tiny", "--records", str(tmp_path / "r"), *argv])
    assert err.value.code == expected
    assert not (tmp_path / "r").exists() and not Path(os.environ["ROTE_HOME"]).exists()


def test_sweep_command_refuses_a_slurm_option_with_a_line_break(tmp_path):
    with pytest.raises(SystemExit) as err:
        sweep.main(["--profile", "tiny", "--slurm", "--walltime", "01:00:00\nrm -rf ~", "--records", str(tmp_path)])
    assert str(err.value.code).startswith("error: a Slurm option must be one line")


def test_book_refuses_an_unknown_chapter_before_any_work(tmp_path):
    with pytest.raises(ConfigError) as err:
        build.build("tiny", only=["observation9"], root=tmp_path)
    assert "unknown chapter(s) observation9; allowed: " in _one_line(err)
    assert list(tmp_path.iterdir()) == []


def test_sweep_without_records_writes_under_rote_home_not_the_package():
    assert sweep.default_records() == Path(os.environ["ROTE_HOME"]) / "scorecard"
    assert not sweep.default_records().is_relative_to(REPO_ROOT)
    assert sweep.RECORDS.is_relative_to(Path(sweep.__file__).parents[1])  # the committed records: package data


def test_slurm_script_quotes_rote_home(tmp_path):
    home = tmp_path / "a home; touch pwned"
    cluster = sweep.slurm_cluster(jobs=0, rote_home=str(home))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"export ROTE_HOME='{home}'" in script


# ---- errors that say what to do ---------------------------------------------------------------------------

def test_broken_metrics_or_missing_predictions_on_resume_say_how_to_restart():
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, stop_after=30, progress=False)
    predictions = (run / "noisy_predictions.csv").read_bytes()
    (run / "noisy_predictions.csv").unlink()
    with pytest.raises(RunError) as err:
        rote.train(config, progress=False)
    assert "noisy_predictions.csv is missing" in _one_line(err) and f"delete {run / 'state.pt'}" in str(err.value)
    (run / "noisy_predictions.csv").write_bytes(predictions)
    (run / "metrics.csv").write_text("garbage\n1\n")
    with pytest.raises(RunError) as err:
        rote.train(config, progress=False)
    assert "metrics.csv lacks the column(s) step" in _one_line(err)
    (run / "state.pt").unlink()  # what the message says
    rote.train(config, progress=False)
    assert list(rote.metrics(config)["step"]) == [0, 20, 40, 60]
    (run / "noisy_predictions.csv").unlink()  # of a finished run: only training again writes it
    with pytest.raises(RunError) as err:
        rote.noisy_predictions(config)
    assert f"delete {run} and rerun" in _one_line(err)


def test_a_state_of_another_config_is_one_line_not_a_traceback():
    config, other = rote.make_config("fda", "tiny"), rote.make_config("fda", "tiny", n_embd=64)
    run = rote.train(config, stop_after=30, progress=False)
    shutil.copy(rote.train(other, stop_after=30, progress=False) / "state.pt", run / "state.pt")
    with pytest.raises(RunError) as err:
        rote.train(config, progress=False)
    assert "state.pt does not fit this run's config" in _one_line(err)


def test_a_read_only_store_is_one_line_naming_rote_home(monkeypatch):
    config = rote.make_config("fda", "tiny")
    run = rote.train(config, progress=False)
    os.chmod(run, 0o555)
    if os.geteuid() == 0:  # root writes anyway: refuse as the kernel would for anyone else
        monkeypatch.setattr(os, "access", lambda path, mode, **kw: False)
        monkeypatch.setattr(Path, "mkdir", lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "denied")))
    try:
        with pytest.raises(store.StoreError) as err:
            claims.save([], run, 0)
        assert "permission denied" in _one_line(err) and "ROTE_HOME" in str(err.value)
        rote.get_or_train(config, progress=False)  # reading a finished run needs no write
    finally:
        os.chmod(run, 0o755)


# ---- the home, the reference install, the book ------------------------------------------------------------

def test_a_relative_rote_home_is_made_absolute_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ROTE_HOME", "relhome")
    assert store.home() == tmp_path / "relhome" and os.environ["ROTE_HOME"] == str(tmp_path / "relhome")
    monkeypatch.chdir(REPO_ROOT / "book")  # a chapter's working directory: the same home
    assert store.home() == tmp_path / "relhome"


def test_reference_install_waits_for_a_trainer_of_the_same_run():
    config = next(c for c in reference.reference_runs().values() if c.task == "fda")
    run = run_dir(config)
    installed = []
    with store.locked(run):
        worker = threading.Thread(target=lambda: installed.append(reference.install()))
        worker.start()
        worker.join(timeout=2)
        assert worker.is_alive() and not (run / "final").exists()  # waits while the run is held
    worker.join(timeout=120)
    assert installed and (run / "final" / "model.safetensors").exists()


def _stub_build(monkeypatch):
    """build.build with the chapter runs, the Vega bundle and the HTML render stubbed out: only its
    cache and lock are under test."""
    monkeypatch.setattr(build, "run_chapter", lambda notebook, out, parameters: shutil.copy(notebook, out))
    monkeypatch.setattr(build, "provenance", lambda configs, parameters: "how it was run")
    monkeypatch.setattr(build.vega, "write_bundle", lambda folder: None)
    monkeypatch.setattr(build.subprocess, "run", lambda *a, **k: None)


def test_a_broken_cache_entry_is_run_again_with_a_line_saying_so(tmp_path, monkeypatch, capsys):
    _stub_build(monkeypatch)
    build.build("tiny", only=["data"], root=tmp_path)
    [cached] = (tmp_path / "_build" / "cache").glob("data-*.ipynb")
    cached.write_text("")  # a broken copy, as a kill mid-copy leaves it
    build.build("tiny", only=["data"], root=tmp_path)
    said = capsys.readouterr().out
    assert f"data: the cached copy {cached} is broken (NotJSONError" in said and "data: running" in said
    assert build.notebook_error(cached) == ""


def test_only_shows_the_other_chapters_cached_runs_not_their_sources(tmp_path, monkeypatch, capsys):
    """A build of one chapter (`--only`) keeps the other pages executed where a run of theirs with the
    same parameters is cached, and says in the terminal which pages have none."""
    _stub_build(monkeypatch)
    build.build("tiny", only=["data"], root=tmp_path)
    capsys.readouterr()
    build.build("tiny", only=["protocol"], root=tmp_path)
    said = capsys.readouterr().out
    page = json.loads((tmp_path / "_build" / "src" / "book" / "data.ipynb").read_text())
    assert [c["source"] for c in page["cells"] if c.get("id") == "provenance"] == [["how it was run"]]
    assert "data: not in --only; its cached run with these parameters reused" in said
    assert "observation0: not in --only; never run with these parameters" in said
    build.build("tiny", {"seed": 1}, only=["protocol"], root=tmp_path)  # another seed: data's run is not it
    page = json.loads((tmp_path / "_build" / "src" / "book" / "data.ipynb").read_text())
    assert "data: not in --only; never run with these parameters" in capsys.readouterr().out
    assert not [c for c in page["cells"] if c.get("id") == "provenance"]


def test_two_builds_of_one_root_are_serialized(tmp_path, monkeypatch):
    _stub_build(monkeypatch)
    (tmp_path / "_build").mkdir()
    with store.locked(tmp_path / "_build"):
        other = threading.Thread(target=build.build, args=("tiny",), kwargs=dict(only=["data"], root=tmp_path))
        other.start()
        other.join(timeout=2)
        assert other.is_alive() and not (tmp_path / "_build" / "src").exists()
    other.join(timeout=60)
    assert (tmp_path / "_build" / "src" / "book" / "data.ipynb").exists()


def _repository_copy(tmp_path, monkeypatch) -> Path:
    for name in ("_config.yml", "_toc.yml", "CITATION.cff"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    shutil.copytree(REPO_ROOT / "book", tmp_path / "book")
    (tmp_path / "lib" / "rote" / "resources").mkdir(parents=True)
    shutil.copy(reference.MANIFEST, tmp_path / "lib" / "rote" / "resources")
    monkeypatch.setattr(build, "REPO_ROOT", tmp_path)
    return tmp_path


@pytest.mark.parametrize("url", ['https://github.com/me/rote"', "https://github.com/me/\\1", "http://example.org/x",
                                 "https://example.org/a b", "file:///etc/passwd"])
def test_set_repository_refuses_a_bad_url_and_changes_nothing(tmp_path, monkeypatch, url):
    root = _repository_copy(tmp_path, monkeypatch)
    before = {p: p.read_bytes() for p in [root / "_config.yml", root / "CITATION.cff", *root.glob("book/*.ipynb"),
                                          *root.glob("lib/rote/resources/*.json")]}
    with pytest.raises(SystemExit) as err:
        build.main(["--set-repository", url])
    assert str(err.value.code).startswith("error: repository URL must be https://host/path")
    assert "\n" not in str(err.value.code)
    assert {p: p.read_bytes() for p in before} == before


def test_set_repository_edits_the_notebooks_as_json(tmp_path, monkeypatch):
    import nbformat
    import yaml

    root = _repository_copy(tmp_path, monkeypatch)
    url = "https://git.example.org:8443/group/rote-fork.git"
    build.set_repository(url)
    assert yaml.safe_load((root / "_config.yml").read_text())["repository"]["url"] == url
    assert yaml.safe_load((root / "CITATION.cff").read_text())["repository-code"] == url
    runs = json.loads((root / "lib" / "rote" / "resources" / reference.MANIFEST.name).read_text())
    assert runs == {**reference.packaged(), "repository": url}  # the reference runs are downloaded from there
    for notebook in root.glob("book/*.ipynb"):
        nb = nbformat.read(notebook, as_version=4)
        nbformat.validate(nb)
        source = "".join(c.source for c in nb.cells)
        if "rote @ git+" in source:
            assert f'"rote @ git+{url}"' in source, notebook
