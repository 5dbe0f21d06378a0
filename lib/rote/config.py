"""One experiment = one `Config`: task, noise, data sizes, model shape and training recipe.

Profiles (`tiny`, `cpu`, `paper`) are named sets of defaults per task; any field can be overridden.
A run directory is keyed by `config_hash`, a hash of every field, so two configs that differ in
anything never share a run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


class OneLineError(Exception):
    """An error the user can fix from its message alone. In a notebook it shows as its one line, not
    as a traceback through the library (IPython calls `_render_traceback_`)."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class ConfigError(OneLineError, ValueError):
    """A bad config value or name."""


class DeviceError(OneLineError, RuntimeError):
    """A profile that needs a GPU, on a machine without one."""


TASKS = ("fda", "thr")
PROFILES = ("tiny", "cpu", "paper")
SCHEDULES = ("constant", "cosine", "wsd")
PRECISIONS = ("fp32", "bf16")
KERNELS = ("deterministic", "fast")


# The THR world: its relations and people (a config's n_relations and n_entities take the first ones).
RELATIONS = ("mother", "father", "neighbor", "debtor", "teacher", "boss", "doctor", "lawyer",
             "mentor", "landlord", "coach", "partner", "dentist", "banker", "tutor", "colleague",
             "friend", "roommate", "sponsor", "editor")


def names() -> list[str]:
    """The committed name list (lib/rote/resources/names.txt), most common first."""
    lines = (Path(__file__).parent / "resources" / "names.txt").read_text().splitlines()
    return [line for line in lines if line and not line.startswith("#")]


@dataclass(frozen=True)
class Config:
    """Every field of a run. The defaults are the base every profile starts from (`PROFILE_DEFAULTS`
    lists what each profile changes): small batches give each noisy instance many updates per
    minute, the cosine decay steadies test accuracy while the noise is being fitted, and training
    stops once 99% of noisy labels are fitted."""
    task: str = "fda"
    noise: float = 0.05  # share of (two-hop) training instances whose label is replaced
    seed: int = 0
    # data: FDA
    n_train: int = 5_000  # FDA training questions
    n_test: int = 2_000  # FDA held-out questions
    # data: THR
    n_entities: int = 100
    n_relations: int = 10
    two_hop_train_fraction: float = 0.5  # share of all two-hop questions put in training
    fact_repeats: int = 1  # THR: times each one-hop fact appears per epoch of training
    facts_first_steps: int = 0  # THR curriculum: train on the one-hop facts alone for this many steps
    # model: GPT-2 shape
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    # training
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    schedule: str = "cosine"  # after warmup: constant, cosine to 0 at max_steps, or wsd (below)
    decay_steps: int = 0  # wsd (warmup-stable-decay): constant, then cosine to 0 over the last decay_steps
    weight_decay: float = 0.0
    decay_weight_decay: float | None = None  # wsd: the weight decay of the decay phase (None: weight_decay)
    decay_when_train_acc: float | None = None  # wsd: decay from the first evaluation with this train-clean accuracy
    grad_clip: float = 1.0
    precision: str = "fp32"  # bf16: forward under bf16 autocast (weights and AdamW stay fp32), plain attention
    kernels: str = "deterministic"  # fast: the compiled step's atomic adds on several threads (not reproducible)
    max_steps: int = 12_000
    eval_every: int = 200
    checkpoint_every: int = 2_000  # keep an HF checkpoint every this many steps (and the final one)
    n_eval: int = 2_000  # at most this many test / train-clean questions per evaluation
    stop_mem_noisy: float | None = 0.99  # stop once Mem-Noisy reaches this (None: run max_steps)

    def __post_init__(self):
        # 0 and 0.0, or 1 and np.int64(1), are the same setting: store every field as its declared
        # type, so that equal configs hash equally.
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                if isinstance(value, bool):
                    raise TypeError
                object.__setattr__(self, f.name, _CAST[f.type](value))
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{f.name} must be of type {f.type}, got {value!r}") from None


def _int(value) -> int:
    """`value` as an int, refusing a number with a fraction (seed 1.5 is not seed 1)."""
    number = int(value)
    if not isinstance(value, str) and number != value:
        raise ValueError(value)
    return number


_CAST = {"int": _int, "float": float, "str": str, "float | None": lambda v: None if v is None or v == "None" else float(v)}


# Per task and profile: the fields that differ from the defaults above.
PROFILE_DEFAULTS: dict[str, dict[str, dict]] = {
    "fda": {
        "tiny": dict(n_train=600, n_test=200, n_layer=2, n_embd=32, n_head=2, batch_size=64,
                     lr=3e-3, warmup_steps=10, schedule="constant", max_steps=60, eval_every=20,
                     checkpoint_every=40, n_eval=200, stop_mem_noisy=None),
        # Twice the default width, a learning rate of 2e-3, a weight decay of 0.6 and the whole cosine over
        # 10,000 steps: 256 wide it passes 97% test accuracy before the noise is fitted, and fitting 10% noise
        # costs it 5-10 points at first; the weight decay, with the rest of the cosine after the noise is
        # fitted, wins most of them back. At 2e-3 it generalizes more slowly and fits the noise later than at
        # 1e-3: at 10% noise it ends at 93.45-95.75% (1e-3: 90.6-95.85%), at 2% and 5% at 96.45-99.3%
        # (bench/README.md, the lever frontier: stopping once 99% of the noise is fitted left 88-96%).
        # bf16 makes its steps about as fast as the narrow model's in fp32.
        "cpu": dict(n_embd=256, n_head=8, lr=2e-3, weight_decay=0.6, max_steps=10_000, precision="bf16", stop_mem_noisy=None),
        "paper": dict(n_train=50_000, n_test=5_000, n_layer=8, n_embd=512, n_head=8,
                      batch_size=256, max_steps=100_000, eval_every=500, checkpoint_every=10_000,
                      n_eval=5_000, precision="bf16"),
    },
    "thr": {
        "tiny": dict(n_entities=30, n_relations=4, n_layer=2, n_embd=32, n_head=2, batch_size=64,
                     lr=3e-3, warmup_steps=10, schedule="constant", max_steps=60, eval_every=20,
                     checkpoint_every=40, n_eval=200, stop_mem_noisy=None),
        # Composes before it memorizes (the THR regime appendix): 18 two-hop training questions per fact, each
        # fact 5 times per epoch, small batches; a weight decay of 0.7 holds the noise back while the model
        # composes; once 80% of the clean training questions are answered (composition under way: when it sets
        # in varies by thousands of steps with seed and thread count) the rate decays over 8,000 steps with a
        # weight decay of 0.5 and the noise is fitted (warmup-stable-decay; the decay starts at step 24,000 at
        # the latest; training stops once 99% of the noise is fitted). Stronger weight decay stalls some runs
        # before they store the one-hop facts (1.0: one run in four at 10% noise; 0.75: seed 3 at 5%); weaker
        # lets the noise in while a late run composes (0.5 and 0.6 at 10%); kept at 0.75 in the decay, the
        # noise was not all fitted before the rate ran out; 0.7 then 0.5 composed first with margin on every
        # run of its robustness check at 2%, 5% and 10% noise, and on seeds 3, 4 and 5 at each. Trained in
        # bf16 (2.35x the naive loop's rate on a CPU with bf16 units, 1.14x in fp32).
        "cpu": dict(n_entities=50, n_relations=20, two_hop_train_fraction=0.9, fact_repeats=5, weight_decay=0.7,
                    schedule="wsd", decay_steps=8_000, decay_weight_decay=0.5, decay_when_train_acc=0.8,
                    max_steps=32_000, eval_every=250, checkpoint_every=5_000, precision="bf16"),
        # The cpu profile's levers at the paper's scale; no run of it is recorded (it needs a GPU).
        "paper": dict(n_entities=1_000, n_relations=20, two_hop_train_fraction=0.9, fact_repeats=5,
                      weight_decay=0.1, n_layer=8, n_embd=512, n_head=8, batch_size=256, max_steps=100_000,
                      eval_every=500, checkpoint_every=10_000, n_eval=5_000, precision="bf16"),
    },
}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


def validate(config: Config) -> Config:
    """Raise a one-line ValueError naming the allowed values if any field is out of range."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
    _choice("task", config.task, TASKS)
    _choice("schedule", config.schedule, SCHEDULES)
    _choice("precision", config.precision, PRECISIONS)
    _choice("kernels", config.kernels, KERNELS)
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"seed must be in [0, 2**32), got {config.seed}")
    if not 0 <= config.noise < 1:
        raise ConfigError(f"noise must be in [0, 1), got {config.noise}")
    if not 0 < config.two_hop_train_fraction < 1:
        raise ConfigError(f"two_hop_train_fraction must be in (0, 1), got {config.two_hop_train_fraction}")
    if config.facts_first_steps < 0 or config.decay_steps < 0:
        raise ConfigError("facts_first_steps and decay_steps must be >= 0")
    if config.task == "fda" and config.facts_first_steps:
        raise ConfigError("facts_first_steps is for thr (fda has no one-hop facts); allowed for fda: 0")
    if config.decay_weight_decay is not None and (config.schedule != "wsd" or config.decay_weight_decay < 0):
        raise ConfigError(f"decay_weight_decay must be >= 0 and needs schedule wsd, got {config.decay_weight_decay} "
                          f"with schedule {config.schedule}")
    if config.decay_when_train_acc is not None and (config.schedule != "wsd" or not 0 < config.decay_when_train_acc <= 1):
        raise ConfigError(f"decay_when_train_acc must be in (0, 1] and needs schedule wsd, got "
                          f"{config.decay_when_train_acc} with schedule {config.schedule}")
    if config.schedule == "wsd" and not 0 < config.decay_steps <= config.max_steps:
        raise ConfigError(f"schedule wsd needs 0 < decay_steps <= max_steps ({config.max_steps}), got {config.decay_steps}")
    positive = ("n_train", "n_test", "n_entities", "n_relations", "fact_repeats", "n_layer", "n_embd", "n_head",
                "batch_size", "max_steps", "eval_every", "checkpoint_every", "n_eval")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name} must be > 0, got {getattr(config, name)}")
    if config.lr <= 0 or config.weight_decay < 0 or config.warmup_steps < 0 or config.grad_clip < 0:
        raise ConfigError("lr must be > 0; weight_decay, warmup_steps and grad_clip must be >= 0")
    if config.n_embd % config.n_head:
        raise ConfigError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
    if config.task == "thr":
        if not 3 <= config.n_entities <= len(names()):
            raise ConfigError(f"n_entities must be in [3, {len(names())}] for thr (the names in "
                              f"lib/rote/resources/names.txt), got {config.n_entities}")
        if config.n_relations > len(RELATIONS):
            raise ConfigError(f"n_relations must be in [1, {len(RELATIONS)}] for thr (rote.config.RELATIONS), "
                              f"got {config.n_relations}")
    if config.task == "fda" and config.n_train + config.n_test > 1_000_000:
        raise ConfigError("n_train + n_test must be <= 1,000,000 for fda")
    if config.stop_mem_noisy is not None and not 0 < config.stop_mem_noisy <= 1:
        raise ConfigError(f"stop_mem_noisy must be in (0, 1] or None, got {config.stop_mem_noisy}")
    return config


def make_config(task: str = "fda", profile: str = "cpu", **overrides) -> Config:
    """The config of `profile` for `task`, with `overrides` applied and every field checked. Every
    entry point (a chapter, the scorecard, the sweep) makes its configs here, so the `paper`
    profile's GPU check (`check_device`) is here too."""
    config = _profile_config(task, profile, overrides)
    check_device(profile)
    return config


def _profile_config(task: str, profile: str, overrides: dict) -> Config:
    _choice("task", task, TASKS)
    _choice("profile", profile, PROFILES)
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    values = {**PROFILE_DEFAULTS[task][profile], **overrides, "task": task}
    return validate(Config(**values))


ALLOW_CPU = "ROTE_ALLOW_CPU"  # set to 1: run the paper profile without a GPU


def check_device(profile: str) -> None:
    """The `paper` profile wants a GPU (on a few CPU cores its runs take days): without one, a
    one-line error before any work, unless ROTE_ALLOW_CPU=1 (which `--allow-cpu` sets)."""
    if profile != "paper" or os.environ.get(ALLOW_CPU) == "1":
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceError("profile paper needs a GPU and none was found (a paper run on a few CPU cores takes "
                          f"days); run it anyway with {ALLOW_CPU}=1 or --allow-cpu (make book PROFILE=paper ALLOW_CPU=1)")


def check_overrides(overrides, own=("task", "noise", "seed", "profile")) -> dict:
    """`overrides` as a dict of Config fields, refusing the names that are parameters of their own
    (`own`): a chapter's or a sweep's noise is not also an override."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"overrides must be a dict of rote.Config fields, got {overrides!r}")
    clash = [k for k in own if k in overrides]
    if clash:
        raise ConfigError(f"overrides cannot set {', '.join(clash)}: a parameter of its own "
                          f"({', '.join(own)}); allowed in overrides: the other rote.Config fields")
    return overrides


# Fields left out of the hash at these values, so that the recorded runs that do not name them (the
# regime map, the scorecard, the reference runs) are the runs of their configs. On one thread the
# deterministic kernels compute what the fast ones do, bit for bit; a recorded run on several
# threads is a draw of the fast kernels.
HASH_DEFAULTS = {"precision": "fp32", "kernels": "deterministic"}


def config_hash(config: Config) -> str:
    """A short, stable hash of every field (a `HASH_DEFAULTS` field only when set away from its
    value there): the name of the config's run directory."""
    values = {k: v for k, v in dataclasses.asdict(config).items() if HASH_DEFAULTS.get(k, object()) != v}
    text = json.dumps(values, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def data_fields(config: Config) -> dict:
    """The fields that determine the dataset (a model change must not regenerate data)."""
    names = ["task", "noise", "seed"]
    names += ["n_train", "n_test"] if config.task == "fda" else ["n_entities", "n_relations", "two_hop_train_fraction"]
    return {name: getattr(config, name) for name in names}


def profile_table() -> pd.DataFrame:
    """Every field of every task's profile, one row per field: what `make_config(task, profile)`
    gives before overrides."""
    import pandas as pd

    unused = {"fda": ("n_entities", "n_relations", "two_hop_train_fraction", "fact_repeats"), "thr": ("n_train", "n_test")}
    columns = {}
    for task in TASKS:
        for profile in PROFILES:
            values = dataclasses.asdict(_profile_config(task, profile, {}))  # no GPU needed to read it
            columns[f"{task} {profile}"] = {k: ("" if k in unused[task] else v) for k, v in values.items()}
    return pd.DataFrame(columns).drop(index="task").rename_axis("field")
