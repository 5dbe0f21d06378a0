"""Shared fixtures: every test gets its own empty ROTE_HOME, and torch runs on one thread (the
test machine has two cores shared with other jobs; two threads there are >10x slower)."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def rote_home(monkeypatch, tmp_path_factory):
    """A fresh, not yet existing ROTE_HOME for each test: nothing is written into the repo."""
    home = tmp_path_factory.mktemp("home") / "rote_home"
    monkeypatch.setenv("ROTE_HOME", str(home))
    return home
