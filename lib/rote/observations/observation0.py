"""Observation 0 (book/observation0.ipynb): generalization comes before memorization.

For every noisy training instance, the evaluation from which the model held the true answer and
the one from which it held its noisy label (one onset rule for both: a streak of evaluations). If
the model generalizes first, most memorized instances held the true answer before they were
memorized, and more often than they held a label-prior decoy answer, which a model that tries
many answers before it memorizes would also say.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from rote.claims import exceeds, untestable
from rote.config import Config
from rote.interp.instances import control_answers, questions
from rote.runs.data import load_dataset
from rote.runs.train import first_reached, metrics, noisy_predictions, train
from rote.stats import paired_share_ci

MIN_STREAK = 2  # an answer is held from the first streak of this many evaluations that give it


@dataclass
class TrainingDynamics:
    """Observation 0 for one run: its evaluations and each noisy instance's onsets."""
    config: Config
    metrics: pd.DataFrame  # one row per evaluation
    first: pd.DataFrame  # one row per noisy instance: first correct and first noisy evaluation (single ones)
    predictions: pd.DataFrame | None = None  # per evaluation and noisy instance: the model's answer
    onsets: pd.DataFrame | None = None  # per noisy instance: `stable_onsets` of its answers, with its decoy


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


def streak_onset(said: np.ndarray, steps: np.ndarray, min_streak: int) -> float:
    """The step that starts the first streak of at least `min_streak` consecutive evaluations where
    `said` holds, or the start of the final streak when it holds through the last evaluation (NaN:
    neither). One rule for every answer: the true one, the noisy label, a decoy."""
    start = None
    for j, hit in enumerate(said):
        if not hit:
            start = None
            continue
        start = j if start is None else start
        if j - start + 1 >= min_streak or j == len(said) - 1:
            return float(steps[start])
    return np.nan


def stable_onsets(predictions: pd.DataFrame, instances: pd.DataFrame, min_streak: int = MIN_STREAK,
                  decoys: pd.Series | None = None) -> pd.DataFrame:
    """Per noisy instance, robust to chance hits, by one onset rule (`streak_onset`): `stable_noisy`
    for the noisy label, `stable_correct` for the true answer and, with `decoys` (per instance id, a
    label-prior answer), `stable_decoy`; `order` of the correct and the noisy onsets ("correct
    first", "memorized first", "never memorized"), `decoy_first` (the decoy's onset before the noisy
    label's); and `chance_hits`/`chance_evals`, the evaluations before the noisy onset (all, without
    one) that gave the noisy label, and how many there were."""
    noisy = instances[instances["noisy"]].set_index("id")[["label", "true"]]
    p = predictions.join(noisy, on="id").sort_values(["id", "step"])
    rows = []
    for i, g in p.groupby("id", sort=True):
        said, steps = g["prediction"].astype(str).to_numpy(), g["step"].to_numpy()
        label, true = str(g["label"].iloc[0]), str(g["true"].iloc[0])
        onset = streak_onset(said == label, steps, min_streak)
        correct = streak_onset(said == true, steps, min_streak)
        decoy = streak_onset(said == str(decoys[i]), steps, min_streak) if decoys is not None else np.nan
        before = (said == label)[steps < onset] if onset == onset else said == label
        order = ("never memorized" if onset != onset else
                 "correct first" if correct == correct and correct < onset else "memorized first")
        rows.append({"id": i, "stable_correct": correct, "stable_noisy": onset, "stable_decoy": decoy, "order": order,
                     "decoy_first": bool(onset == onset and decoy == decoy and decoy < onset),
                     "chance_hits": int(before.sum()), "chance_evals": len(before)})
    return pd.DataFrame(rows, columns=["id", "stable_correct", "stable_noisy", "stable_decoy", "order", "decoy_first",
                                       "chance_hits", "chance_evals"])


def decoy_answers(config: Config) -> pd.Series:
    """Per noisy instance id, a label-prior answer (`rote.interp.instances.control_answers`: THR a
    true answer of another question with the same second relation, FDA the label with its wrong
    digits drawn from the true sums' digits at their place): what the model might say before it
    memorizes, without reasoning."""
    frame = load_dataset(config)
    noisy = questions(frame)
    noisy = noisy[noisy["noisy"]]
    return pd.Series(control_answers(noisy, frame, config.task, config.seed).to_numpy(), index=noisy["id"].to_numpy())


def dynamics_claims(result: TrainingDynamics, min_streak: int = MIN_STREAK, margin: float = 0.0,
                    n_resamples: int = 1000) -> list:
    """Observation 0 as a claim (`rote.claims`): among noisy instances memorized at some point, the
    share whose true answer was held (a streak of `min_streak` evaluations, or the final streak:
    `stable_onsets`) before the noisy label was, against the share whose label-prior decoy answer
    (`decoy_answers`) was held before it, by the same rule on the same instances: a model that said
    many answers before it memorized would say the decoy first as often as the truth. Holds when the
    difference's 95% interval (paired bootstrap over instances) lies above `margin`. The note gives
    the chance rate (the noisy label said at one evaluation outside a stable streak), the share
    memorized first, and the share by the single-evaluation definition (`first_answers`)."""
    c, nan = result.config, float("nan")
    claim = "noisy instances are answered correctly before their noisy label is memorized"
    rule = (f"an answer's onset is the first streak of >= {min_streak} evaluations that give it (or the final streak), "
            f"for the true answer, the noisy label and the decoy alike; holds when correct-first minus decoy-first "
            f"lies above {margin:g} (95% interval)")
    base = dict(observation=0, task=c.task, claim=claim,
                statistic="share of memorized noisy instances whose true answer was held before the noisy label",
                control="share whose label-prior decoy answer was held before it (same instances)", rule=rule)
    if result.predictions is None or result.predictions.empty:
        return [untestable("the run kept no per-evaluation answers (noisy_predictions.csv)", **base)]
    onsets = stable_onsets(result.predictions, load_dataset(c), min_streak, decoy_answers(c))
    mem = onsets[onsets["order"] != "never memorized"]
    chance = onsets["chance_hits"].sum() / max(onsets["chance_evals"].sum(), 1)
    single = result.first[result.first["order"] != "never memorized"]
    single_share = float((single["order"] == "correct first").mean()) if len(single) else nan
    first = float((mem["order"] == "memorized first").mean()) if len(mem) else nan
    note = f"chance rate: the noisy label said at {chance:.1%} of evaluations outside a stable streak"
    if mem.empty:  # no share to give: "nan%" would be all it could say
        return [untestable("no noisy label was held; " + note, n=0, **base)]
    note += (f"; {first:.1%} memorized before (or without) a held true answer; "
             f"by the first single evaluation that gave the noisy label, {single_share:.1%} correct first")
    cmp = paired_share_ci((mem["order"] == "correct first").astype(float), mem["decoy_first"].astype(float),
                          n_resamples, c.seed)
    return [exceeds(cmp, margin, n=len(mem), note=note, **base)]


def training_dynamics(config: Config, device: str | None = None, progress: bool = True) -> TrainingDynamics:
    """Train `config` (or load its finished run) and measure, per noisy instance, when the model
    first said and when it held its true answer, its noisy label and its label-prior decoy."""
    train(config, device=device, progress=progress)
    table, predictions, frame, decoys = metrics(config), noisy_predictions(config), load_dataset(config), decoy_answers(config)
    first = first_answers(predictions, frame)
    onsets = stable_onsets(predictions, frame, MIN_STREAK, decoys).merge(first[["id", "prompt", "label", "true"]], on="id")
    return TrainingDynamics(config, table, first, predictions, onsets.assign(decoy=onsets["id"].map(decoys)))


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
