"""Observation 0 (book/observation0.ipynb): generalization comes before memorization.

For every noisy training instance, the evaluation at which the model first answered it correctly
(the true answer) and the first at which it output its noisy label. If the model generalizes
first, most memorized instances were answered correctly before they were memorized.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rote.claims import exceeds, untestable
from rote.config import Config
from rote.runs.data import load_dataset
from rote.runs.train import first_reached, metrics, noisy_predictions, train
from rote.stats import paired_share_ci


@dataclass
class TrainingDynamics:
    """Observation 0 for one run: its evaluations and each noisy instance's first answers."""
    config: Config
    metrics: pd.DataFrame  # one row per evaluation
    first: pd.DataFrame  # one row per noisy instance: first correct and first noisy evaluation
    predictions: pd.DataFrame | None = None  # per evaluation and noisy instance: the model's answer


def first_answers(predictions: pd.DataFrame, instances: pd.DataFrame) -> pd.DataFrame:
    """Per noisy instance: the first evaluation step at which the model output the true answer,
    the first at which it output the noisy label (NaN: never), and its answer at the last one."""
    noisy = instances[instances["noisy"]].set_index("id")[["prompt", "label", "true"]]
    p = predictions.join(noisy, on="id")
    p["said_true"] = p["prediction"] == p["true"]
    p["said_noisy"] = p["prediction"] == p["label"]
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


def stable_onsets(predictions: pd.DataFrame, instances: pd.DataFrame, min_streak: int = 2) -> pd.DataFrame:
    """Per noisy instance, robust to chance hits: `stable_noisy`, the first evaluation that starts
    a streak of at least `min_streak` consecutive evaluations answered with the noisy label, or the
    start of the final streak when the label is held through the last evaluation (NaN: neither);
    `first_correct` as in `first_answers`; `order` of the two ("correct first", "memorized first",
    "never memorized"); and `chance_hits`/`chance_evals`, the evaluations before the stable onset
    (all, without one) that gave the noisy label, and how many there were."""
    noisy = instances[instances["noisy"]].set_index("id")[["label", "true"]]
    p = predictions.join(noisy, on="id").sort_values(["id", "step"])
    last_step = p["step"].max()
    rows = []
    for i, g in p.groupby("id", sort=True):
        said = (g["prediction"] == g["label"]).to_numpy()
        steps = g["step"].to_numpy()
        correct = steps[(g["prediction"] == g["true"]).to_numpy()]
        onset, run_start = np.nan, None
        for j, hit in enumerate(said):
            if hit and run_start is None:
                run_start = j
            if not hit:
                run_start = None
            elif j - run_start + 1 >= min_streak or steps[j] == last_step:
                onset = steps[run_start]
                break
        before = said[steps < onset] if onset == onset else said
        first_correct = float(correct.min()) if len(correct) else np.nan
        order = ("never memorized" if onset != onset else
                 "correct first" if first_correct == first_correct and first_correct < onset else "memorized first")
        rows.append({"id": i, "first_correct": first_correct, "stable_noisy": onset, "order": order,
                     "chance_hits": int(before.sum()), "chance_evals": len(before)})
    return pd.DataFrame(rows, columns=["id", "first_correct", "stable_noisy", "order", "chance_hits", "chance_evals"])


def dynamics_claims(result: TrainingDynamics, min_streak: int = 2, margin: float = 0.0,
                    n_resamples: int = 1000) -> list:
    """Observation 0 as a claim (`rote.claims`): among noisy instances memorized at some point
    (`stable_onsets`: the noisy label held for `min_streak` consecutive evaluations, or through the
    last one), the share answered correctly before that onset, against the share memorized before
    (or without) a correct answer, on the same instances; holds when the difference's 95% interval
    (paired bootstrap over instances) lies above `margin`. The note gives the chance rate (the
    noisy label said at one evaluation outside a stable streak) and the share by the
    single-evaluation definition (`first_answers`)."""
    c, nan = result.config, float("nan")
    claim = "noisy instances are answered correctly before their noisy label is memorized"
    rule = (f"noisy label memorized from the first streak of >= {min_streak} evaluations (or the final streak); "
            f"holds when correct-first minus memorized-first lies above {margin:g} (95% interval)")
    base = dict(observation=0, task=c.task, claim=claim, statistic="share of memorized noisy instances answered correctly first",
                control="share memorized first (same instances)", rule=rule)
    if result.predictions is None or result.predictions.empty:
        return [untestable("the run kept no per-evaluation answers (noisy_predictions.csv)", **base)]
    onsets = stable_onsets(result.predictions, load_dataset(c), min_streak)
    mem = onsets[onsets["order"] != "never memorized"]
    chance = onsets["chance_hits"].sum() / max(onsets["chance_evals"].sum(), 1)
    single = result.first[result.first["order"] != "never memorized"]
    single_share = float((single["order"] == "correct first").mean()) if len(single) else nan
    note = (f"chance rate: the noisy label said at {chance:.1%} of evaluations outside a stable streak; "
            f"by the first single evaluation that gave the noisy label, {single_share:.1%} correct first")
    if mem.empty:
        return [untestable("no noisy label was held; " + note, n=0, **base)]
    cmp = paired_share_ci((mem["order"] == "correct first").astype(float),
                          (mem["order"] == "memorized first").astype(float), n_resamples, c.seed)
    return [exceeds(cmp, margin, n=len(mem), note=note, **base)]


def training_dynamics(config: Config, device: str | None = None, progress: bool = True) -> TrainingDynamics:
    """Train `config` (or load its finished run) and measure the order in which each noisy
    instance got its correct answer and its noisy label."""
    train(config, device=device, progress=progress)
    table = metrics(config)
    predictions = noisy_predictions(config)
    return TrainingDynamics(config, table, first_answers(predictions, load_dataset(config)), predictions)


def _milestone(name: str, hit: dict | None) -> str:
    if hit is None:
        return f"{name} was not reached"
    return f"{name} was reached at step {hit['step']:,} ({hit['minutes']:.1f} min)"


def run_summary(result: TrainingDynamics) -> str:
    """What this run is, computed from it: task, noise and seed, the noisy instances, the final
    test accuracy, Mem-Noisy and Mem-Corrected, and when 95% test accuracy and 99% Mem-Noisy were
    reached."""
    c, table = result.config, result.metrics
    last = table.iloc[-1]
    return (f"In this {c.task.upper()} run ({c.noise:.0%} noise, seed {c.seed}), {len(result.first):,} training "
            f"instances carry a noisy label. At the last evaluation (step {last['step']:,.0f}) test "
            f"accuracy is {last['test_acc']:.1%}, Mem-Noisy {last['mem_noisy']:.1%} and "
            f"Mem-Corrected {last['mem_corrected']:.1%}; "
            f"{_milestone('95% test accuracy', first_reached(table, 'test_acc', 0.95))}, "
            f"{_milestone('99% Mem-Noisy', first_reached(table, 'mem_noisy', 0.99))}.")
