"""rote: the companion package of "Reason to Rote: Rethinking Memorization in Reasoning".

Its folders are its layers; a module imports only from its own layer or the ones above it in this
list (tests/test_layers.py keeps it so):

    rote/           config, store, stats, claims, parameters: the ground every layer stands on
    rote/runs/      data, model, evaluate, train, reference: datasets and trained models
    rote/interp/    sites, edits, lens, leace, instances, eap: reading and editing a model
    rote/observations/   the paper's observations 0-4, the shared circuits, their building blocks and registry
    rote/grid/      sweep, scorecard, regimes: many runs at once
    rote/book/      build, check, charts, vega, explorer, sphinxext: the published book

The names below are the ones a chapter or a user reaches for first.
"""
from rote.config import Config, config_hash, make_config
from rote.runs.data import load_dataset, manifest
from rote.runs.train import get_or_train, metrics, noisy_predictions, run_dir, train

__all__ = ["Config", "config_hash", "make_config", "load_dataset", "manifest", "get_or_train",
           "metrics", "noisy_predictions", "run_dir", "train"]
