"""Observation 0: generalization comes before memorization.

For every noisy training instance, the evaluation at which the model first answered it correctly
(the true answer) and the first at which it output its noisy label. If the model generalizes
first, most memorized instances were answered correctly before they were memorized.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .config import Config
from .data import load_dataset
from .train import metrics, noisy_predictions, train


@dataclass
class TrainingDynamics:
    config: Config
    metrics: pd.DataFrame  # one row per evaluation
    first: pd.DataFrame  # one row per noisy instance: first correct and first noisy evaluation
    summary: dict


def first_answers(predictions: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
    """Per noisy instance: the first evaluation step at which the model output the true answer,
    the first at which it output the noisy label (NaN: never), and its answer at the last one."""
    noisy = instances[instances["noisy"]].set_index("id")[["prompt", "answer", "true"]]
    p = predictions.join(noisy, on="id")
    p["said_true"] = p["prediction"] == p["true"]
    p["said_noisy"] = p["prediction"] == p["answer"]
    first_true = p[p["said_true"]].groupby("id")["step"].min()
    first_noisy = p[p["said_noisy"]].groupby("id")["step"].min()
    last = p[p["step"] == p["step"].max()].set_index("id")["prediction"]
    table = noisy.assign(first_correct=first_true, first_noisy=first_noisy, final_prediction=last)
    table["order"] = np.select(
        [table["first_noisy"].isna(),
         table["first_correct"] < table["first_noisy"],
         table["first_correct"].isna() | (table["first_noisy"] < table["first_correct"])],
        ["never memorized", "correct first", "memorized first"], default="same evaluation")
    return table.reset_index()


def first_row(table: pd.DataFrame, column: str, threshold: float) -> pd.Series | None:
    """The first evaluation (metrics row) at which `column` reached `threshold` (None: never)."""
    hit = table[table[column] >= threshold]
    return None if hit.empty else hit.iloc[0]


def first_reached(table: pd.DataFrame, column: str, threshold: float) -> dict | None:
    """The first evaluation at which `column` reached `threshold`: its step and minutes, and the
    test accuracy and Mem-Noisy there."""
    row = first_row(table, column, threshold)
    if row is None:
        return None
    return {"step": int(row["step"]), "minutes": float(row["seconds"]) / 60,
            **{k: float(row[k]) for k in ("test_acc", "mem_noisy") if k in row}}


def training_dynamics(config: Config, device: str | None = None, progress: bool = True) -> TrainingDynamics:
    """Train `config` (or load its finished run) and measure the order in which each noisy
    instance got its correct answer and its noisy label."""
    train(config, device=device, progress=progress)
    table = metrics(config)
    first = first_answers(noisy_predictions(config), load_dataset(config))
    memorized = first[first["order"] != "never memorized"]
    last = table.iloc[-1]
    summary = {
        "n_noisy": len(first),
        "n_memorized": len(memorized),
        "n_correct_first": int((memorized["order"] == "correct first").sum()),
        "share_correct_first": float((memorized["order"] == "correct first").mean()) if len(memorized) else float("nan"),
        "final": {k: float(last[k]) for k in ("step", "test_acc", "mem_noisy", "mem_corrected")},
        "test_95": first_reached(table, "test_acc", 0.95),
        "mem_99": first_reached(table, "mem_noisy", 0.99),
        "peak_mem_corrected": float(table["mem_corrected"].max()),
    }
    return TrainingDynamics(config, table, first, summary)


def _milestone(name: str, hit: dict | None) -> str:
    if hit is None:
        return f"{name} was not reached"
    return f"{name} was reached at step {hit['step']:,} ({hit['minutes']:.1f} min)"


def verdict(result: TrainingDynamics) -> str:
    """Observation 0 for this run, in plain words, computed from its numbers."""
    s, c = result.summary, result.config
    head = (f"In this {c.task.upper()} run ({c.noise:.0%} noise, seed {c.seed}), {s['n_noisy']:,} training "
            f"instances carry a noisy label. At the last evaluation (step {s['final']['step']:,.0f}) test "
            f"accuracy is {s['final']['test_acc']:.1%}, Mem-Noisy {s['final']['mem_noisy']:.1%} and "
            f"Mem-Corrected {s['final']['mem_corrected']:.1%}; {_milestone('95% test accuracy', s['test_95'])}, "
            f"{_milestone('99% Mem-Noisy', s['mem_99'])}. ")
    if s["n_noisy"] == 0:
        return head + "Without noisy instances Observation 0 cannot be tested."
    if s["n_memorized"] == 0:
        return head + ("The model never output a noisy label, so the order of generalization and "
                       "memorization cannot be read off this run: train longer.")
    share = s["share_correct_first"]
    body = (f"The model output the noisy label of {s['n_memorized']:,} of them at some evaluation; "
            f"{s['n_correct_first']:,} of these ({share:.1%}) had been answered correctly at an earlier "
            "evaluation. ")
    if share >= 0.9:
        return head + body + "The paper's Observation 0 holds in this run: generalization came first."
    if share >= 0.5:
        return head + body + "The paper's Observation 0 holds for most, but not all, noisy instances here."
    return head + body + ("The paper's Observation 0 does not hold in this run: most noisy labels were "
                          "memorized before the model answered those questions correctly.")
