"""The published reference runs (`data/reference/<task>-<profile>/`): finished runs of this
repository, committed so that readers and checkers get the exact models the book was built from,
and so that publishing the book does not retrain.

    python -m rote.runs.reference            # install them as finished runs under ROTE_HOME (or runs/)

Each holds its `config.json`, `metrics.csv`, `noisy_predictions.csv` (where recorded) and `final/`;
installed under the run directory of its config, `rote.get_or_train` loads it instead of training.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from rote.config import Config, validate
from rote.runs.model import verify
from rote.store import DATA_DIR, atomic_dir, locked

REFERENCE_DIR = DATA_DIR / "reference"


def reference_runs(root: Path = REFERENCE_DIR) -> dict[Path, Config]:
    """Each committed reference run and its config."""
    return {config.parent: validate(Config(**json.loads(config.read_text())))
            for config in sorted(Path(root).glob("*/config.json"))}


def install(root: Path = REFERENCE_DIR) -> list[Path]:
    """Copy every reference run that is not there yet into its run directory (under the run's lock,
    so never under a trainer of the same config); return those run directories."""
    from rote.runs.train import run_dir

    installed = []
    for path, config in reference_runs(root).items():
        verify(path / "final")
        target = run_dir(config)
        if not (target / "final" / "model.safetensors").exists():
            with locked(target):  # a trainer of the same config finishes (or is killed) first
                if not (target / "final" / "model.safetensors").exists():
                    with atomic_dir(target) as tmp:  # an unfinished run of the same config is replaced
                        shutil.copytree(path, tmp, dirs_exist_ok=True)
        installed.append(target)
    return installed


if __name__ == "__main__":
    for run in install():
        print(f"reference run installed: {run}")
