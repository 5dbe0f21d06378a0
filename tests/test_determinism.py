"""The compiled training step on two threads: the same config gives the same losses and weights on
every run, and a run killed mid-training and resumed ends with the weights of an uninterrupted one.

Each run is a fresh process (as two `make book`s are), on two torch threads with the step compiled:
the setting whose atomic adds made every run another draw before `kernels="deterministic"`."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import rote
from rote.config import make_config
from rote.runs.model import load

CONFIG = make_config("fda", "cpu", n_layer=2, n_embd=64, n_train=1_000, n_test=200, n_eval=200, max_steps=200, eval_every=40,
                     checkpoint_every=200, stop_mem_noisy=None)
TRAINER = """
import json, sys, torch, rote
torch.set_num_threads(2)
rote.train(rote.Config(**json.loads(sys.argv[1])), device="cpu", progress=False, compile=True)
"""


def start(home, config=CONFIG) -> subprocess.Popen:
    env = {**os.environ, "ROTE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-c", TRAINER, json.dumps(dataclasses.asdict(config))], env=env)


def trained(home, config=CONFIG) -> tuple[pd.DataFrame, dict]:
    """The losses and final weights of `config` trained to the end in a fresh process in `home`."""
    assert start(home, config).wait(timeout=600) == 0
    return result(home, config)


def result(home, config=CONFIG) -> tuple[pd.DataFrame, dict]:
    run = home / "runs" / rote.run_dir(config).name
    model, _ = load(run / "final")
    return pd.read_csv(run / "metrics.csv")[["step", "loss", "test_acc", "mem_noisy"]], model.state_dict()


def assert_same(a, b):
    pd.testing.assert_frame_equal(a[0], b[0], check_exact=True)
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        assert torch.equal(a[1][key], b[1][key]), key


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("first"))


def test_two_runs_of_one_config_on_two_threads_are_bit_identical(first, tmp_path):
    assert CONFIG.kernels == "deterministic" and CONFIG.precision == "bf16"
    assert first[0]["loss"].iloc[1:].notna().all()
    assert_same(first, trained(tmp_path))


def test_a_killed_two_thread_run_resumes_to_the_same_weights(first, tmp_path):
    trainer = start(tmp_path)
    metrics = tmp_path / "runs" / rote.run_dir(CONFIG).name / "metrics.csv"
    deadline = time.monotonic() + 600
    while not (metrics.exists() and pd.read_csv(metrics)["step"].max() >= 2 * CONFIG.eval_every):  # state.pt >= 40
        assert trainer.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait()
    run = metrics.parent
    assert not (run / "final").exists(), "the trainer finished before it was killed"
    assert 0 < torch.load(run / "state.pt", weights_only=True)["step"] < CONFIG.max_steps
    assert_same(first, trained(tmp_path))


@pytest.mark.parametrize("kernels,during", [("deterministic", True), ("fast", False)])
def test_kernels_hold_only_while_training(kernels, during, monkeypatch):
    """Deterministic algorithms are on while a run trains and off again after it (a notebook's
    later analyses run as torch's defaults say); `fast` leaves them as they were."""
    seen = []
    train_module = sys.modules["rote.runs.train"]
    real = train_module._train
    monkeypatch.setattr(train_module, "_train",
                        lambda *args: (seen.append(torch.are_deterministic_algorithms_enabled()), real(*args)))
    rote.train(make_config("fda", "tiny", max_steps=20, kernels=kernels), device="cpu", progress=False)
    assert seen == [during] and not torch.are_deterministic_algorithms_enabled()
