"""rote: the companion package of "Reason to Rote: Rethinking Memorization in Reasoning"."""
from .config import Config, config_hash, make_config
from .data import load_dataset, manifest
from . import vega  # noqa: F401 - the offline chart renderer `rote.book` executes the chapters with
from .train import get_or_train, metrics, noisy_predictions, run_dir, train

__all__ = ["Config", "config_hash", "make_config", "load_dataset", "manifest", "get_or_train",
           "metrics", "noisy_predictions", "run_dir", "train"]
