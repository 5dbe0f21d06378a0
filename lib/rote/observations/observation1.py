"""Observation 1 (book/observation1.ipynb): after memorization, the correct label is still computed, then overridden.

The logit lens (`rote.interp.lens`) reads every layer's residual stream at the answer places, under
teacher forcing of the label in data. On the *memorized noisy instances* (training questions with
a noisy label that the final model answers with that label) we count, per layer, how often the
top-1 readout is the correct label ("Mem-Corrected" readout) and how often it is the noisy label
("Mem-Noisy" readout), with the mean rank of each (0 = top). Clean training questions that the
model answers correctly give the reference curves. THR adds the bridge entity's share and rank.

FDA answers are four digit tokens. A memorized noisy instance enters at every answer place
whose noisy digit differs from the correct digit (teacher-forced on the noisy label, so at later
places the prefix is the noisy one); places where both agree are left out, since there the
correct and the noisy readout are the same token. Clean instances enter at all four places.
Summaries are per place and pooled ("all").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rote.claims import exceeds, untestable
from rote.config import Config
from rote.interp.instances import Instances, clean_instances, control_answers, differing_places, memorized, noisy_instances
from rote.interp.lens import logit_lens
from rote.interp.sites import intermediate_layers, place_name
from rote.runs.data import load_dataset
from rote.runs.model import load
from rote.runs.train import default_device, get_or_train, run_dir
from rote.stats import independent_share_ci, paired_share_ci

GROUPS = ("memorized noisy", "clean")


# ---- readout --------------------------------------------------------------------------------------

def readout_entries(lens: pd.DataFrame, entries: pd.DataFrame, group: str) -> pd.DataFrame:
    """The lens rows of the (id, place) `entries`, with the group and what the top-1 readout
    is: "correct" (the true answer's token), "noisy" (the label's token, on noisy instances),
    "bridge" (THR) or "other"."""
    if entries.empty:
        return lens.iloc[:0].assign(group=pd.Series(dtype=object), first=pd.Series(dtype=bool),
                                    readout=pd.Series(dtype=object))
    rows = lens.merge(entries, on=["id", "place"], how="inner")
    correct = rows["true_rank"].eq(0).fillna(False).to_numpy(bool)
    noisy = rows["label_rank"].eq(0).fillna(False).to_numpy(bool) & ~correct
    bridge = rows["bridge_rank"].eq(0).fillna(False).to_numpy(bool)
    rows["readout"] = np.select([correct, noisy, bridge], ["correct", "noisy", "bridge"], "other")
    rows["group"] = group
    return rows


def layer_shares(entries: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per group, answer place (and pooled: "all") and layer: how many readouts enter, the
    share whose top-1 is the correct label (Mem-Corrected readout), the noisy label (Mem-Noisy
    readout; NaN on clean instances, where both are the same token), the bridge (THR), the share
    where the correct label outranks the noisy one, and mean ranks (0 = top)."""
    columns = ["group", "place", "layer", "n", "share_correct", "share_noisy", "share_bridge",
               "share_correct_above_noisy", "mean_rank_correct", "mean_rank_noisy", "mean_rank_bridge"]
    if entries.empty:
        return pd.DataFrame(columns=columns)
    e = entries.assign(
        is_correct=entries["true_rank"].eq(0).astype(float),
        is_noisy=entries["label_rank"].eq(0).astype(float),
        is_bridge=entries["bridge_rank"].eq(0).astype(float),
        above=(entries["true_rank"] < entries["label_rank"]).astype(float),
        r_true=entries["true_rank"].astype(float), r_label=entries["label_rank"].astype(float),
        r_bridge=entries["bridge_rank"].astype(float))
    clean = e["group"] == "clean"
    e.loc[clean, ["is_noisy", "above", "r_label"]] = np.nan
    if task != "thr":
        e[["is_bridge", "r_bridge"]] = np.nan
    pooled = e.assign(place="all") if task == "fda" else e.iloc[:0]
    both = pd.concat([e.assign(place=e["place"].astype(object)), pooled], ignore_index=True)
    out = both.groupby(["group", "place", "layer"], sort=False).agg(
        n=("id", "size"), share_correct=("is_correct", "mean"), share_noisy=("is_noisy", "mean"),
        share_bridge=("is_bridge", "mean"), share_correct_above_noisy=("above", "mean"),
        mean_rank_correct=("r_true", "mean"), mean_rank_noisy=("r_label", "mean"),
        mean_rank_bridge=("r_bridge", "mean")).reset_index()
    order = {g: i for i, g in enumerate(GROUPS)}
    out["_g"] = out["group"].map(order)
    out["_p"] = out["place"].map(lambda p: 99 if p == "all" else int(p))
    return out.sort_values(["_g", "_p", "layer"]).drop(columns=["_g", "_p"]).reset_index(drop=True)[columns]


@dataclass
class LayerReadout(Instances):
    """Observation 1 for one model: the instances, every readout entry, and the per-layer table."""
    entries: pd.DataFrame  # lens rows that enter, with group and readout category
    shares: pd.DataFrame  # `layer_shares` of entries
    config: Config | None = None


def layer_readout_of(model, tokenizer, frame: pd.DataFrame, task: str, n_clean: int = 200,
                     seed: int = 0, config: Config | None = None) -> LayerReadout:
    """`layer_readout` for a given model, tokenizer and instance table (no training). Memorized
    noisy instances also rank their `control_answers` token (the label-prior base rate)."""
    noisy = noisy_instances(model, tokenizer, frame)
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    mem = memorized(noisy)
    mem = mem.assign(control=control_answers(mem, frame, task, seed)) if len(mem) else mem
    parts = []
    for group, rows in (("memorized noisy", mem), ("clean", clean)):
        if rows.empty:
            continue
        lens = logit_lens(model, tokenizer, rows, teacher_forcing="label")
        parts.append(readout_entries(lens, differing_places(rows, task), group))
    entries = (pd.concat(parts, ignore_index=True) if parts
               else readout_entries(pd.DataFrame(columns=["id", "layer", "place", "true_rank",
                                                          "label_rank", "bridge_rank"]),
                                    pd.DataFrame(), "clean"))
    n_layer = int(getattr(getattr(model, "config", None), "n_layer", 0) or entries["layer"].max() + 1)
    return LayerReadout(task, n_layer, noisy, clean, entries, layer_shares(entries, task), config)


def layer_readout(config: Config, n_clean: int = 200, device: str | None = None,
                  progress: bool = True) -> LayerReadout:
    """Train `config` (or load its finished run) and read out every layer on its memorized noisy
    instances and on up to `n_clean` correctly answered clean training questions."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    return layer_readout_of(model, tokenizer, load_dataset(config), config.task, n_clean,
                            config.seed, config=config)


# ---- along training (optional) -----------------------------------------------------------------

def checkpoints(config: Config) -> list[tuple[int, Path]]:
    """The saved checkpoints of `config`'s run: (step, path), in order."""
    base = run_dir(config) / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in base.glob("step-*") if (p / "model.safetensors").exists()]
    return sorted(found)


def readout_over_training(config: Config, instances: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """The layer readout of the final model's memorized noisy `instances` at every saved
    checkpoint: per step and layer, the share of readouts that are the correct label and the noisy
    label (FDA: pooled over the differing digits)."""
    columns = ["step", "layer", "n", "share_correct", "share_noisy"]
    if instances.empty:
        return pd.DataFrame(columns=columns)
    entries = differing_places(instances, config.task)
    rows = []
    for step, path in checkpoints(config):
        model, tok = load(path, device=device or default_device())
        lens = logit_lens(model, tok, instances, teacher_forcing="label")
        e = readout_entries(lens, entries, "memorized noisy")
        for layer, g in e.groupby("layer"):
            rows.append({"step": step, "layer": int(layer), "n": len(g),
                         "share_correct": float(g["true_rank"].eq(0).mean()),
                         "share_noisy": float(g["label_rank"].eq(0).mean())})
    return pd.DataFrame(rows, columns=columns)


# ---- claims ---------------------------------------------------------------------------------------------

def per_instance_layers(result: LayerReadout, group: str = "memorized noisy") -> pd.DataFrame:
    """Per instance of `group` and intermediate layer (not the embedding, not the last block), its
    readouts averaged over its entering answer places: whether the correct label, and the control
    answer, outrank the noisy label, and whether each is the top-1 readout (on clean questions only
    `correct_top` has a meaning)."""
    columns = ["id", "layer", "correct_above", "control_above", "correct_top", "control_top"]
    e = result.entries
    e = e[(e["group"] == group) & e["layer"].isin(intermediate_layers(result.n_layer))]
    if e.empty:
        return pd.DataFrame(columns=columns)
    nan = pd.Series(np.nan, index=e.index)
    t = e["true_rank"].astype(float)
    l = e["label_rank"].astype(float) if group != "clean" else nan
    c = e["control_rank"].astype(float) if "control_rank" in e and group != "clean" else nan
    return (e.assign(correct_above=(t < l).astype(float).where(l.notna()), control_above=(c < l).astype(float).where(c.notna()),
                     correct_top=(t == 0).astype(float), control_top=(c == 0).astype(float).where(c.notna()))
            .groupby(["id", "layer"])[columns[2:]].mean().reset_index())


def answer_layer(result: LayerReadout, share: float = 0.5) -> int | None:
    """The layer every claim reads, fixed on the clean reference alone, before the noisy instances
    are read: the first intermediate layer at which the correct label is the top-1 readout of at
    least `share` of the clean questions (where the model has computed its answer), else the
    intermediate layer where it is most often; None without clean questions."""
    clean = per_instance_layers(result, "clean")
    if clean.empty:
        return None
    by_layer = clean.groupby("layer")["correct_top"].mean()
    reached = by_layer[by_layer >= share]
    return int(reached.index[0] if len(reached) else by_layer.idxmax())


def override_claims(result: LayerReadout, margin: float = 0.05, top_margin: float = 0.02,
                    general_margin: float = 0.10, n_resamples: int = 1000, seed: int = 0) -> list:
    """Observation 1 as claims (`rote.claims`), at one layer fixed on clean questions
    (`answer_layer`), so no choice looks at the noisy instances' result.

    (1) The correct label outranks the noisy label on more memorized noisy instances than a control
    answer drawn the way true answers are drawn (`control_answers`, the label-prior base rate)
    does, by more than `margin`; (2) it is the top-1 readout more often than the control, by more
    than `top_margin` (both paired bootstraps over instances): the correct label is computed on some
    memorized instances. (3) The general reading, that the model computes the correct label on its
    memorized noisy instances as it does on clean questions: the share where it is the top-1
    readout is no more than `general_margin` below the clean questions' share at the same layer
    (independent bootstrap). (1) and (2) can hold while (3) fails: then the correct label is
    computed on a minority of memorized instances only."""
    per, layer = per_instance_layers(result), answer_layer(result)
    base = dict(observation=1, task=result.task, n=int(per["id"].nunique()) if len(per) else 0)
    what = ("a label-prior person (same second relation's true answers)" if result.task == "thr"
            else "a label-prior digit (true sums' digits at that place)")
    where = "at the clean questions' answer layer"
    tests = ((f"the correct label outranks the noisy label {where}",
              "share of memorized noisy instances where it outranks the noisy label", "correct_above",
              "control_above", margin),
             (f"the correct label is the top-1 readout {where}",
              "share of memorized noisy instances where it is top-1", "correct_top", "control_top", top_margin))
    chosen = ("layer: the first intermediate layer where the correct label is top-1 on half of the clean "
              "questions (else where it is most often), fixed before the noisy instances are read")
    out = []
    for claim, statistic, col, ctrl, m in tests:
        fields = dict(claim=claim, control=what, rule=f"{chosen}; holds when the 95% interval of correct minus "
                                                         f"control lies above {m:g}", **base)
        if per.empty or layer is None:
            out.append(untestable("no memorized noisy instance, no clean question or no intermediate layer",
                                  statistic=statistic, **fields))
            continue
        g = per[per["layer"] == layer]
        out.append(exceeds(paired_share_ci(g[col], g[ctrl], n_resamples, seed), m,
                           statistic=statistic + f" (layer {layer})", **fields))
    fields = dict(claim="the correct label is computed on memorized noisy instances as often as on clean questions",
                  statistic="share of memorized noisy instances where it is top-1",
                  control="share of clean questions where it is top-1 (same layer)",
                  rule=f"{chosen}; holds when the 95% interval of noisy minus clean lies above -{general_margin:g}",
                  **base)
    if per.empty or layer is None:
        out.append(untestable("no memorized noisy instance, no clean question or no intermediate layer", **fields))
        return out
    clean = per_instance_layers(result, "clean")
    c = independent_share_ci(per.loc[per["layer"] == layer, "correct_top"], clean.loc[clean["layer"] == layer, "correct_top"],
                             n_resamples, seed)
    fields["statistic"] += f" (layer {layer})"
    out.append(exceeds(c, -general_margin, note=f"on {c.value:.0%} of memorized noisy instances against "
                                                 f"{c.control_value:.0%} of clean questions", **fields))
    return out


def readout_table(result: LayerReadout, digits: int = 3) -> pd.DataFrame:
    """`result.shares` for reading: rounded, places named, columns that are empty for this task
    left out."""
    if result.shares.empty:
        return pd.DataFrame({"note": ["nothing to read out: no memorized noisy instance and no clean reference"]})
    table = result.shares.copy()
    table["place"] = [place_name(result.task, p) for p in table["place"]]
    table = table.dropna(axis=1, how="all")
    return table.round(digits).reset_index(drop=True)
