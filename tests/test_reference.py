"""The published reference runs are runs of today's cpu profiles with every file a chapter reads,
and `rote.runs.reference.install` makes them finished runs that `get_or_train` loads."""
from __future__ import annotations

import pandas as pd

import rote
from rote.runs import reference
from rote.runs.train import is_finished


def test_reference_runs_are_the_cpu_profiles_with_every_file():
    runs = reference.reference_runs()
    assert sorted(c.task for c in runs.values()) == ["fda", "thr"]
    for path, config in runs.items():
        assert config == rote.make_config(config.task, "cpu"), f"{path.name} is not the current cpu profile"
        for name in ("final/model.safetensors", "final/tokenizer.json", "metrics.csv", "noisy_predictions.csv"):
            assert (path / name).exists(), f"{path.name} lacks {name}"
        metrics = pd.read_csv(path / "metrics.csv")
        predictions = pd.read_csv(path / "noisy_predictions.csv")
        assert sorted(predictions["step"].unique()) == sorted(metrics["step"])


def test_install_makes_finished_runs_once(rote_home):
    first = reference.install()
    assert all(is_finished(c) for c in reference.reference_runs().values())
    stamp = [(p / "final" / "model.safetensors").stat().st_mtime_ns for p in first]
    assert reference.install() == first
    assert [(p / "final" / "model.safetensors").stat().st_mtime_ns for p in first] == stamp
    model, tokenizer = rote.get_or_train(rote.make_config("fda", "cpu"))
    assert model.config.n_layer == rote.make_config("fda", "cpu").n_layer
