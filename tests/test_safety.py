"""Probes of a careful user and of a hostile colleague on a shared file system, on the tiny profile:
no write, chmod or delete follows a planted symbolic link; a tampered file is never reused; bad input
stops in one line before any work; a paper run never starts on a CPU by accident."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

import rote
from rote import claims, reference, store
from rote.data import DataError, dataset_dir, load_dataset
from rote.model import CheckpointError, load
from rote.train import RunError, run_dir


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
    frame.loc[frame["split"] == "train", "answer"] = "0000"
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
        import shutil
        shutil.rmtree(path)
        rote.train(config, progress=False)
        load(path)
    else:
        assert f"delete {path}" in str(err.value)


def test_reference_runs_are_installed_with_their_checksums():
    for run in reference.install():
        load(run / "final")
