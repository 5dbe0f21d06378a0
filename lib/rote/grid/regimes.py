"""Which THR set-ups compose: the regime of a run, and the map of runs made so far.

Trained on two-hop questions with noisy labels, a model can generalize to held-out two-hop
questions and later memorize the noisy labels (the paper's order), memorize without ever
composing, compose without memorizing (within its budget of steps), or do neither. `regime` reads
which from a run's metrics. `bench/thr_map.py` trains set-ups and `record` saves each one's
configuration, outcome and metrics under `lib/rote/resources/thr_map/`, so the map appendix redraws without
training.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd

from rote.claims import percent
from rote.config import Config, config_hash
from rote.runs.data import load_dataset
from rote.runs.train import first_row
from rote.store import RESOURCES, write_csv, write_json

COMPOSED = 0.90  # held-out two-hop accuracy that counts as composing
MEMORIZED = 0.90  # Mem-Noisy that counts as having memorized the noise
HALFWAY = 0.50  # which came first is read where each rose through this: held-out accuracy or Mem-Noisy
MARGIN = 0.25  # composed first with margin: held-out accuracy >= COMPOSED while Mem-Noisy <= MARGIN
FITTED = 0.99  # ... and later Mem-Noisy >= FITTED with held-out accuracy still >= COMPOSED
REGIMES = ("generalize, then memorize", "memorize, then generalize", "generalize only", "memorize only", "neither")
MAP_DIR = RESOURCES / "thr_map"
VARIED = ("n_entities", "n_relations", "two_hop_train_fraction", "fact_repeats", "facts_first_steps",
          "n_layer", "n_embd", "n_head",
          "batch_size", "lr", "warmup_steps", "schedule", "decay_steps", "weight_decay", "decay_weight_decay",
          "decay_when_train_acc", "max_steps",
          "noise", "seed")


def regime(metrics: pd.DataFrame) -> str:
    """One of REGIMES: did held-out accuracy reach COMPOSED, did Mem-Noisy reach MEMORIZED, and if
    both, which rose through HALFWAY first? (Both rise over many epochs and overlap; their
    midpoints say which came first. `outcome` also keeps Mem-Noisy at 95% held-out accuracy.)"""
    composed = first_row(metrics, "test_acc", COMPOSED)
    memorized = first_row(metrics, "mem_noisy", MEMORIZED)
    if composed is not None and memorized is not None:
        half_composed, half_memorized = first_row(metrics, "test_acc", HALFWAY), first_row(metrics, "mem_noisy", HALFWAY)
        return REGIMES[0] if half_composed["step"] < half_memorized["step"] else REGIMES[1]
    if composed is not None:
        return REGIMES[2]
    return REGIMES[3] if memorized is not None else REGIMES[4]


def analysed_regime(metrics: pd.DataFrame) -> str:
    """The regime of the model that the analyses load. `final/` holds the weights of the last
    evaluation, so that row decides whether the model generalizes (test accuracy >= COMPOSED) and
    has memorized its noise (Mem-Noisy >= MEMORIZED); if it does both, `regime` says which came first.
    A run that did both at an earlier evaluation but not at its last is judged by its last."""
    last = metrics.iloc[-1]
    generalizes, memorized = last["test_acc"] >= COMPOSED, last["mem_noisy"] >= MEMORIZED
    if generalizes and memorized:
        return regime(metrics)
    if generalizes:
        return REGIMES[2]
    return REGIMES[3] if memorized else REGIMES[4]


def in_regime(metrics: pd.DataFrame) -> bool:
    """Whether the analysed model both generalizes and has memorized its noise (`analysed_regime`):
    the model the paper's observations are about."""
    return analysed_regime(metrics) in REGIMES[:2]


def analysed_model(metrics: pd.DataFrame) -> str:
    """"step 7,400: test accuracy 95.75%, Mem-Noisy 100.0%, in regime (generalize, then memorize)": the
    analysed model's evaluation and regime, as the pages and the scorecard say it."""
    last, regime_ = metrics.iloc[-1], analysed_regime(metrics)
    judged = "in regime" if regime_ in REGIMES[:2] else "out of regime"
    return (f"step {int(last['step']):,}: test accuracy {_share(last['test_acc'])}, Mem-Noisy {_share(last['mem_noisy'])}, "
            f"{judged} ({regime_})")


def composes_first_with_margin(metrics: pd.DataFrame) -> bool:
    """The robustness check's order: an evaluation with held-out accuracy >= COMPOSED and Mem-Noisy
    <= MARGIN, and a later one with Mem-Noisy >= FITTED and held-out accuracy still >= COMPOSED."""
    early = metrics[(metrics["test_acc"] >= COMPOSED) & (metrics["mem_noisy"] <= MARGIN)]
    if early.empty:
        return False
    later = metrics[(metrics["step"] > early["step"].iloc[0]) & (metrics["mem_noisy"] >= FITTED)
                    & (metrics["test_acc"] >= COMPOSED)]
    return not later.empty


def two_hop_per_fact(config: Config) -> float:
    """Two-hop training questions per one-hop fact: how often each fact is used as a hop."""
    frame = load_dataset(config)
    two_hop = (frame["kind"] == "two_hop") & (frame["split"] == "train")
    return two_hop.sum() / (frame["kind"] == "fact").sum()


def _at(row: pd.Series | None, column: str) -> float:
    return float("nan") if row is None else float(row[column])


def outcome(config: Config, metrics: pd.DataFrame) -> dict:
    """A run's set-up and what it reached: regime, the minutes and epochs to each milestone, and
    the final scores."""
    test_95, test_90 = first_row(metrics, "test_acc", 0.95), first_row(metrics, "test_acc", COMPOSED)
    test_50 = first_row(metrics, "test_acc", HALFWAY)
    mem_99 = first_row(metrics, "mem_noisy", 0.99)
    last = metrics.iloc[-1]
    return {
        "run": config_hash(config), **{k: getattr(config, k) for k in VARIED},
        "two_hop_per_fact": round(two_hop_per_fact(config), 2), "regime": regime(metrics),
        "with_margin": composes_first_with_margin(metrics),
        "min_to_test_95": _at(test_95, "seconds") / 60, "epoch_to_test_95": _at(test_95, "epoch"),
        "mem_noisy_at_test_95": _at(test_95, "mem_noisy"), "min_to_test_90": _at(test_90, "seconds") / 60,
        "mem_noisy_at_test_90": _at(test_90, "mem_noisy"), "mem_noisy_at_test_50": _at(test_50, "mem_noisy"),
        "min_to_mem_99": _at(mem_99, "seconds") / 60, "epoch_to_mem_99": _at(mem_99, "epoch"),
        "test_at_mem_99": _at(mem_99, "test_acc"), "peak_test": float(metrics["test_acc"].max()),
        "final_test": float(last["test_acc"]), "final_mem_noisy": float(last["mem_noisy"]),
        "final_facts": float(last["facts_acc"]), "steps": int(last["step"]), "epochs": float(last["epoch"]),
        "minutes": float(last["seconds"]) / 60,
    }


def record_name(config: Config, threads: int) -> str:
    """A recorded run's name in the map: its config hash, and the torch thread count when it is not
    1 (the same config on another thread count is another floating-point path: another record)."""
    return config_hash(config) if threads == 1 else f"{config_hash(config)}-{threads}threads"


def record(config: Config, metrics: pd.DataFrame, note: str = "", root: Path = MAP_DIR,
           threads: int | None = None) -> dict:
    """Save `config`'s outcome (a row of runs.csv, replacing an earlier one of the same run and
    thread count), its whole config and its metrics (<run>/config.json, <run>/metrics.csv) under `root`."""
    import torch

    threads = threads or torch.get_num_threads()
    row = {**outcome(config, metrics), "run": record_name(config, threads), "threads": threads, "note": note}
    write_json(root / row["run"] / "config.json", dataclasses.asdict(config))
    write_csv(root / row["run"] / "metrics.csv", metrics)
    path = root / "runs.csv"
    runs = pd.read_csv(path) if path.exists() else pd.DataFrame()
    if len(runs):
        runs = runs[runs["run"] != row["run"]]
    write_csv(path, pd.concat([runs, pd.DataFrame([row])], ignore_index=True))
    return row


def runs_map(root: Path = MAP_DIR) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every recorded run (one row each) and their metrics (one row per evaluation, with `run`)."""
    runs = pd.read_csv(root / "runs.csv").fillna({"facts_first_steps": 0, "decay_steps": 0})  # blank: the default, 0
    curves = pd.concat([pd.read_csv(root / r / "metrics.csv").assign(run=r) for r in runs["run"]],
                       ignore_index=True)
    runs["regime"] = [regime(curves[curves["run"] == r]) for r in runs["run"]]  # from its curve, by `regime`
    runs["with_margin"] = [composes_first_with_margin(curves[curves["run"] == r]) for r in runs["run"]]
    return runs, curves


def recorded_config(run: str, root: Path = MAP_DIR) -> Config:
    """The whole config of a recorded run: train it again with `rote.train(recorded_config(run))`."""
    return Config(**json.loads((root / run / "config.json").read_text()))


def robustness_check(runs: pd.DataFrame, curves: pd.DataFrame, config: Config, root: Path = MAP_DIR) -> pd.DataFrame:
    """The robustness check of `config`'s set-up: every recorded run of it on any seed or thread
    count, one row each, with the evaluation where held-out accuracy first reached COMPOSED (and
    Mem-Noisy there), the step at which the wsd decay began, the evaluation where Mem-Noisy first
    reached FITTED (and held-out accuracy there), and whether the run composed first with margin."""
    from rote.runs.train import decay_start

    rows = []
    for name in runs["run"]:
        recorded = recorded_config(name, root)
        if dataclasses.replace(recorded, seed=config.seed) != config:
            continue
        m = curves[curves["run"] == name]
        composed, fitted = first_row(m, "test_acc", COMPOSED), first_row(m, "mem_noisy", FITTED)
        run = runs[runs["run"] == name].iloc[0]
        rows.append({"run": name, "seed": recorded.seed, "threads": run["threads"],
                     "decay_from": decay_start(recorded, m.to_dict("records")) if recorded.schedule == "wsd" else None,
                     "composed_step": _at(composed, "step"), "mem_noisy_there": _at(composed, "mem_noisy"),
                     "fitted_step": _at(fitted, "step"), "held_out_accuracy_there": _at(fitted, "test_acc"),
                     "with_margin": composes_first_with_margin(m), "minutes": round(float(run["minutes"]), 1)})
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).astype({"threads": "Int64"}).sort_values(["seed", "threads"]).set_index("run")


def robustness_text(check: pd.DataFrame) -> str:
    """The robustness check in one sentence: on how many runs the set-up composed first with margin,
    and which runs did not, with why (`why_without_margin`)."""
    if check.empty:
        return "No run of this set-up is in the map yet: its robustness check was not run."
    where = lambda r: f"seed {r.seed} on {r.threads} thread{'' if r.threads == 1 else 's'}"  # noqa: E731
    text = (f"Composed first with margin on {int(check['with_margin'].sum())} of {len(check)} runs of this set-up "
            f"({', '.join(where(r) for r in check.itertuples())}).")
    failed = check[~check["with_margin"]]
    if len(failed):
        text += f" Without margin: {'; '.join(f'{where(r)} ({why_without_margin(r)})' for r in failed.itertuples())}."
    return text


def why_without_margin(row) -> str:
    """Why a row of `robustness_check` did not compose first with margin, in a few words."""
    if pd.isna(row.composed_step):
        return f"held-out accuracy never reached {COMPOSED:.0%}"
    if row.mem_noisy_there > MARGIN:
        return f"composed with {_share(row.mem_noisy_there)} of the noise fitted"
    if pd.isna(row.fitted_step):
        return f"Mem-Noisy never reached {FITTED:.0%}"
    return f"held-out accuracy {_share(row.held_out_accuracy_there)} where Mem-Noisy reached {FITTED:.0%}"


def thresholds_text() -> str:
    return (f"Composed: held-out two-hop accuracy >= {COMPOSED:.0%}. Memorized: Mem-Noisy >= {MEMORIZED:.0%}. "
            f"Generalized first: held-out accuracy reached {HALFWAY:.0%} at an earlier evaluation than Mem-Noisy did. "
            f"The regimes: {', '.join(REGIMES)}. Composed first *with margin* (the robustness check every seed and "
            f"thread count of the profile must pass): held-out accuracy >= {COMPOSED:.0%} at an evaluation where "
            f"Mem-Noisy <= {MARGIN:.0%}, then Mem-Noisy >= {FITTED:.0%} with held-out accuracy still >= {COMPOSED:.0%}.")


def runs_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The map's runs for reading: set-up, regime, milestones, final scores."""
    columns = ["run", "noise", "n_entities", "n_relations", "two_hop_per_fact", "n_layer", "n_embd", "batch_size", "lr",
               "schedule", "weight_decay", "max_steps", "seed", "threads", "regime", "with_margin",
               "mem_noisy_at_test_50", "mem_noisy_at_test_90", "min_to_test_95", "mem_noisy_at_test_95", "min_to_mem_99",
               "test_at_mem_99", "peak_test", "final_test", "final_mem_noisy", "final_facts", "epochs", "minutes", "note"]
    table = runs[[c for c in columns if c in runs]].rename(columns=READING)
    return table.astype({"threads": "Int64"} if "threads" in table else {}).set_index("run")  # counts, not 1.0


# runs_table's headers: counts named for what they count, and the noise rate and the held-out two-hop
# accuracies as what they are (shown in percent)
READING = {"noise": "noise_rate", "n_entities": "people", "n_relations": "relations", "n_layer": "layers", "n_embd": "width",
           "test_at_mem_99": "held_out_accuracy_at_mem_99", "peak_test": "peak_held_out_accuracy",
           "final_test": "final_held_out_accuracy", "final_facts": "final_facts_accuracy"}


def _minutes(value: float) -> str:
    return "never" if pd.isna(value) else f"after {value:.1f} min"


def _share(value: float) -> str:
    """A share as the tables show it (`rote.claims.percent`): 95.75%, 100.0%; a dash if missing."""
    return "–" if pd.isna(value) else percent(value)


def _then(name: str, value: float) -> str:
    return "" if pd.isna(value) else f" ({name} then {_share(value)})"


def summary(runs: pd.DataFrame, config: Config | None = None) -> str:
    """The map in sentences: how many runs fell in each regime, the one that came closest to
    composing, and what this build's run of `config` did (`this_build`)."""
    counts = runs["regime"].value_counts()
    parts = [f"{len(runs)} runs: " + ", ".join(f"{counts[r]} {r}" for r in REGIMES if r in counts) + "."]
    best = runs.sort_values(["peak_test", "final_test"], ascending=False).iloc[0]
    parts.append(f"Highest held-out two-hop accuracy: {_share(best['peak_test'])} (run {best['run']}, "
                 f"{best['n_entities']} people x {best['n_relations']} relations, {best['two_hop_per_fact']:g} two-hop "
                 f"questions per fact, {best['n_layer']} layers x {best['n_embd']}; {best['regime']}).")
    if config is not None:
        parts.append(this_build(runs, config))
    return " ".join(parts)


def this_build(runs: pd.DataFrame, config: Config) -> str:
    """What this build's own run of `config` did, read from its metrics (not from the map: the same
    set-up can land elsewhere on another machine), and how it compares with the map's recorded run."""
    from rote.runs.train import run_dir

    path = run_dir(config) / "metrics.csv"
    if not path.exists():
        return f"This build has no THR run of its set-up (run {config_hash(config)}) yet: it was not trained here."
    r = outcome(config, pd.read_csv(path))
    text = (f"This build's THR run ({r['run']}) is '{r['regime']}': Mem-Noisy was "
            f"{_share(r['mem_noisy_at_test_50'])} when held-out accuracy first reached 50% and "
            f"{_share(r['mem_noisy_at_test_90'])} when it reached 90%; 95% held-out accuracy "
            f"{_minutes(r['min_to_test_95'])}{_then('Mem-Noisy', r['mem_noisy_at_test_95'])}, 99% "
            f"Mem-Noisy {_minutes(r['min_to_mem_99'])}{_then('held-out accuracy', r['test_at_mem_99'])}.")
    recorded = runs[runs["run"] == r["run"]]
    if len(recorded) and recorded.iloc[0]["regime"] != r["regime"]:
        text += (f" The map's recorded run of the same set-up was '{recorded.iloc[0]['regime']}': the order "
                 "depends on the floating-point path (machine, thread count).")
    return text
