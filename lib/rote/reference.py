"""The published reference runs (`data/reference/<task>-<profile>/`): finished runs of this
repository, committed so that readers and checkers get the exact models the book was built from,
and so that publishing the book does not retrain.

    python -m rote.reference            # install them as finished runs under ROTE_HOME (or runs/)

Each holds its `config.json`, `metrics.csv`, `noisy_predictions.csv` (where recorded) and `final/`;
installed under the run directory of its config, `rote.get_or_train` loads it instead of training.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import Config, validate
from .store import DATA_DIR, atomic_dir

REFERENCE_DIR = DATA_DIR / "reference"


def reference_runs(root: Path = REFERENCE_DIR) -> dict[Path, Config]:
    """Each committed reference run and its config."""
    return {config.parent: validate(Config(**json.loads(config.read_text())))
            for config in sorted(Path(root).glob("*/config.json"))}


def install(root: Path = REFERENCE_DIR) -> list[Path]:
    """Copy every reference run that is not there yet into its run directory; return those run
    directories."""
    from .train import run_dir

    installed = []
    for path, config in reference_runs(root).items():
        target = run_dir(config)
        if not (target / "final" / "model.safetensors").exists():
            if target.exists():
                shutil.rmtree(target)  # an unfinished run of the same config: the reference replaces it
            with atomic_dir(target) as tmp:
                shutil.copytree(path, tmp, dirs_exist_ok=True)
        installed.append(target)
    return installed


if __name__ == "__main__":
    for run in install():
        print(f"reference run installed: {run}")
