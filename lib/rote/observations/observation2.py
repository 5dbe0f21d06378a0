"""Observation 2 (book/observation2.ipynb): predicting the noisy label relies on computing the correct reasoning.

We remove an intermediate result of the correct computation from one block's output and measure
what happens to the memorized noisy label: its teacher-forced log-probability and whether greedy
decoding still writes it (memorization accuracy). Every removal has a control of the same shape
that removes something the instance does not need, and the same removal is measured on clean
questions that the model answers correctly (there the label is the true answer).

THR, the bridge entity (the person the first hop leads to):
- "projection": the bridge's embedding direction (= its unembedding direction: tied weights) is
  projected out of the block output at every pos; control: as much removed at every pos along a
  random direction orthogonal to it (`rote.interp.edits.redirected`), so the control takes the same
  norm from the stream and differs only in what it points at.
- "LEACE": a rank-1 LEACE eraser of "the bridge is b" (b: the question's own bridge), fitted on
  the block output at the answer's readout pos (the last prompt token) of clean training questions
  held out from the evaluation, applied there; control: the eraser of the question's own class in a
  random partition of the (subject, first relation) keys with the bridge classes' sizes
  (`rote.interp.instances.matched_partition`). The bridge is a function of that key, so its eraser
  also erases part of the input a look-up would read; the control erases as much of the input, not
  the bridge.

FDA, the intermediate results of the addition, at the readout pos of the scored places
(noisy instances: the digits where the noisy label differs from the true sum; clean ones: all four):
- "projection": the correct digit's embedding direction is projected out; control: a random digit
  that is neither the correct nor the label digit.
- "LEACE carry": a rank-1 LEACE eraser of the carry into that digit, fitted per place on held-out
  clean questions (teacher-forced on the true sum); control: an eraser fitted on shuffled carries.
  (No carry enters the units digit: its eraser is empty, and so is its control's.)

Measures per instance: `logp`, the mean log-prob of the label's scored tokens (THR: the one answer
token), before and after; `mem`, whether greedy decoding gives the whole label. Effect sizes are
means over instances with 95% percentile-bootstrap confidence intervals (seeded resampling of
instances; paired where target and control are measured on the same instances).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rote.claims import below, compared, untestable
from rote.config import Config
from rote.interp.edits import Removal, apply_removal, erasure, projection, redirected, resids_at
from rote.interp.instances import (
    Instances,
    carries,
    clean_instances,
    control_digits,
    matched_partition,
    noisy_instances,
    questions,
    scored_places,
)
from rote.interp.leace import binary_leace, fit_leace, relabel
from rote.interp.sites import entity_basis, hf, intermediate_layers, random_orthogonal
from rote.runs.data import load_dataset
from rote.runs.train import get_or_train
from rote.stats import Comparison, bootstrap_ci, bootstrap_diff_ci

METHODS = {"thr": ("projection", "LEACE"), "fda": ("projection", "LEACE carry")}
REMOVED = {("thr", "projection"): ("bridge", "same-norm random direction"),
           ("thr", "LEACE"): ("bridge", "same-size random key class"),
           ("fda", "projection"): ("correct digit", "random digit"),
           ("fda", "LEACE carry"): ("carry", "shuffled carry")}
GROUPS = ("memorized noisy", "clean")


# ---- LEACE erasers fitted on held-out clean questions ------------------------------------------------

@dataclass
class Fits:
    """LEACE erasers fitted on held-out clean questions, per block layer (see `fit_erasers`); None
    at a layer when there were fewer than two questions to fit on."""
    task: str
    layers: list
    n_fit: int
    bridge: dict  # THR: layer -> (mean [d], A, B [E, d]): the rank-1 eraser of "the bridge is e" per entity
    entities: list  # THR: the entities e with an eraser (the rows of A, B); FDA: []
    carry: dict  # FDA: layer -> (target, control): per answer place, `Eraser.factors` of the carry into it
    #              and of shuffled carries
    partition: dict | None = None  # THR: (subject, relation) -> class, `matched_partition`
    classes: dict | None = None  # THR: layer -> (mean, A, B) of "the key's class is c" per class of `class_names`
    class_names: list | None = None


def fit_erasers(model, tokenizer, fit_rows: pd.DataFrame, task: str, layers, seed: int = 0,
                partition: dict | None = None) -> Fits:
    """THR: per layer, rank-1 LEACE erasers of "the bridge is b" for every person b that is a
    bridge in `fit_rows`, and of "the key's class is c" for every class c of `partition` (the
    control, `matched_partition`), on the block output at the answer's readout pos. FDA: per layer
    and answer place, rank-1 LEACE of the carry into that digit (and of shuffled carries, the
    control), on the block output at that digit's readout pos (teacher-forced on the true sum;
    `fit_rows` must be clean)."""
    entities = sorted(set(fit_rows["bridge"])) if task == "thr" else []
    keyed = [partition[k] for k in zip(fit_rows["subject"], fit_rows["r1"])] if task == "thr" and partition else []
    names = sorted(set(keyed))
    places = [0] if task == "thr" else list(range(4))
    enough = len(fit_rows) >= 2
    resids = resids_at(model, tokenizer, fit_rows, layers, places) if enough else {}
    bridge, classes, carry = {}, {}, {}
    for layer in layers:
        if task == "thr":
            bridge[layer] = binary_leace(resids[(layer, 0)], fit_rows["bridge"].to_numpy(), entities) if enough else None
            classes[layer] = binary_leace(resids[(layer, 0)], np.array(keyed, dtype=object), names) if enough and names else None
            continue
        if not enough:
            carry[layer] = None
            continue
        z = torch.tensor(carries(fit_rows["a"], fit_rows["b"]))
        target, control = [], []
        for k in places:
            x = resids[(layer, k)]
            target.append(fit_leace(x, z[:, k]).factors())
            control.append(fit_leace(x, relabel(z[:, k], seed=seed + k)).factors())
        carry[layer] = (target, control)
    return Fits(task, list(layers), len(fit_rows), bridge, entities, carry, partition, classes, names)


# ---- the removals ----------------------------------------------------------------------------------

def class_erasure(fit, names: list, classes: list, where: torch.Tensor, d: int) -> Removal:
    """Per instance i, the rank-1 eraser of class `names[i]` from `fit` = (mean, A, B) of
    `binary_leace` over `classes`; no edit for a name without an eraser."""
    n = len(names)
    A, B, mu = torch.zeros(n, 1, d, 1), torch.zeros(n, 1, d, 1), torch.zeros(n, 1, d)
    if fit is not None:
        mean, a, b = fit
        index = {c: i for i, c in enumerate(classes)}
        for i, name in enumerate(names):
            if name in index:
                A[i, 0, :, 0], B[i, 0, :, 0], mu[i, 0] = a[index[name]], b[index[name]], mean
    return Removal(A, B, mu, where)


def removals(model, tokenizer, instances: pd.DataFrame, task: str, method: str, layer: int,
             fits: Fits | None, seed: int = 0) -> tuple[Removal, Removal]:
    """The target removal and its control for `instances` (see the module docstring); the control's
    random draws (directions, digits) are seeded."""
    n, d = len(instances), hf(model).config.n_embd
    where = scored_places(instances, task)
    if task == "thr" and method == "projection":
        bridge = entity_basis(model, tokenizer, instances["bridge"])[:, None]
        return projection(bridge, where, True), redirected(bridge, random_orthogonal(bridge, seed), where, True)
    if task == "thr" and method == "LEACE":
        target = class_erasure(fits.bridge.get(layer) if fits else None, list(instances["bridge"]),
                               fits.entities if fits else [], where, d)
        partition = fits.partition if fits and fits.partition else {}
        keys = [partition.get(k) for k in zip(instances["subject"], instances["r1"])]
        control = class_erasure(fits.classes.get(layer) if fits and fits.classes else None, keys,
                                fits.class_names if fits else [], where, d)
        return target, control
    if task == "fda" and method == "projection":
        digits = lambda table: entity_basis(model, tokenizer, table.ravel()).view(n, 4, d, -1)  # noqa: E731
        true = np.array([list(str(t)) for t in instances["true"]]).reshape(n, 4)
        control = control_digits(instances, seed=seed)
        return projection(digits(true), where), projection(digits(np.asarray(control).reshape(n, 4)), where)
    if task == "fda" and method == "LEACE carry":
        fit = fits.carry.get(layer) if fits else None
        nothing = [(torch.zeros(d), torch.zeros(d, 1), torch.zeros(d, 1))] * 4
        return tuple(erasure(fit[which] if fit is not None else nothing, n, where) for which in range(2))
    raise ValueError(f"unknown method {method!r} for {task}; allowed: {', '.join(METHODS[task])}")


def removal_effects(model, tokenizer, groups: dict, task: str, layers, fits: Fits | None,
                    methods=None, seed: int = 0, batch_size: int = 256) -> pd.DataFrame:
    """Every removal of `methods` at every layer of `layers`, target and control, on each group
    of instances ({"memorized noisy": rows, "clean": rows}). One row per (method, layer, group,
    removed, id): logp_before/after, delta_logp, mem_before/after."""
    methods = list(methods or METHODS[task])
    columns = ["method", "layer", "group", "removed", "id", "logp_before", "logp_after", "delta_logp",
               "mem_before", "mem_after"]
    parts = []
    for group, rows in groups.items():
        if rows is None or rows.empty:
            continue
        rows = rows.reset_index(drop=True)
        scored, before = scored_places(rows, task), None  # the unedited run is the same for every removal
        for method in methods:
            for layer in layers:
                pair = removals(model, tokenizer, rows, task, method, layer, fits, seed)
                for removed, removal in zip(("target", "control"), pair):
                    t = apply_removal(model, tokenizer, rows, [layer], removal, scored, batch_size, before)
                    before = t if before is None else before
                    parts.append(t.assign(method=method, layer=layer, group=group, removed=removed))
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True).rename(columns={"match_before": "mem_before", "match_after": "mem_after"})
    table["delta_logp"] = table["logp_after"] - table["logp_before"]
    return table[columns]


# ---- effect sizes -------------------------------------------------------------------------------

def effect_sizes(effects: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, layer, group, removed): n, memorization accuracy of the label before and
    after, and the mean change in accuracy and in the label's log-prob, each with a 95% bootstrap
    interval over instances."""
    rows = []
    for (method, layer, group, removed), g in effects.groupby(["method", "layer", "group", "removed"], sort=False):
        change = g["mem_after"].astype(float) - g["mem_before"].astype(float)
        acc, acc_lo, acc_hi = bootstrap_ci(change, n_resamples, seed)
        d, d_lo, d_hi = bootstrap_ci(g["delta_logp"], n_resamples, seed)
        rows.append({"method": method, "layer": layer, "group": group, "removed": removed, "n": len(g),
                     "acc_before": float(g["mem_before"].mean()), "acc_after": float(g["mem_after"].mean()),
                     "acc_change": acc, "acc_change_lo": acc_lo, "acc_change_hi": acc_hi,
                     "delta_logp": d, "delta_logp_lo": d_lo, "delta_logp_hi": d_hi})
    return pd.DataFrame(rows, columns=["method", "layer", "group", "removed", "n", "acc_before", "acc_after",
                                       "acc_change", "acc_change_lo", "acc_change_hi", "delta_logp",
                                       "delta_logp_lo", "delta_logp_hi"])


def contrasts(effects: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (method, layer): for each group, the target removal's effect minus the control's on the
    same instances (paired: log-prob change and accuracy change, with 95% bootstrap intervals);
    and, comparison "noisy - clean", the target removal's mean log-prob change on memorized noisy
    instances minus that on clean ones (independent samples)."""
    rows = []
    for (method, layer), g in effects.groupby(["method", "layer"], sort=False):
        by_group = {}
        for group, h in g.groupby("group", sort=False):
            wide = h.pivot(index="id", columns="removed", values=["delta_logp", "mem_after"])
            if not {"target", "control"} <= set(wide.columns.get_level_values(1)):
                continue
            dl = wide["delta_logp"]["target"] - wide["delta_logp"]["control"]
            da = wide["mem_after"]["target"].astype(float) - wide["mem_after"]["control"].astype(float)
            m, lo, hi = bootstrap_ci(dl, n_resamples, seed)
            a, alo, ahi = bootstrap_ci(da, n_resamples, seed)
            rows.append({"method": method, "layer": layer, "comparison": "target - control", "group": group,
                         "n": len(dl), "delta_logp": m, "lo": lo, "hi": hi,
                         "acc": a, "acc_lo": alo, "acc_hi": ahi})
            by_group[group] = h[h["removed"] == "target"]
        if {"memorized noisy", "clean"} <= set(by_group):
            noisy, clean = by_group["memorized noisy"], by_group["clean"]
            m, lo, hi = bootstrap_diff_ci(noisy["delta_logp"], clean["delta_logp"], n_resamples, seed)
            a, alo, ahi = bootstrap_diff_ci(noisy["mem_after"].astype(float) - noisy["mem_before"].astype(float),
                                            clean["mem_after"].astype(float) - clean["mem_before"].astype(float),
                                            n_resamples, seed)
            rows.append({"method": method, "layer": layer, "comparison": "noisy - clean", "group": "both",
                         "n": len(noisy) + len(clean), "delta_logp": m, "lo": lo, "hi": hi,
                         "acc": a, "acc_lo": alo, "acc_hi": ahi})
    return pd.DataFrame(rows, columns=["method", "layer", "comparison", "group", "n", "delta_logp", "lo", "hi",
                                       "acc", "acc_lo", "acc_hi"])


# ---- one call per model ------------------------------------------------------------------------

@dataclass
class Reliance(Instances):
    """Observation 2 for one model: the instances, every removal's effect on each, and their sizes."""
    effects: pd.DataFrame  # per instance (`removal_effects`)
    sizes: pd.DataFrame  # `effect_sizes`
    contrasts: pd.DataFrame  # `contrasts`
    fits: Fits | None = None
    config: Config | None = None


def reliance_of(model, tokenizer, frame: pd.DataFrame, task: str, n_clean: int = 200, n_fit: int = 2000,
                seed: int = 0, n_resamples: int = 1000, config: Config | None = None) -> Reliance:
    """`reliance` for a given model, tokenizer and instance table (no training)."""
    model_hf = hf(model)
    layers = list(range(model_hf.config.n_layer))
    noisy = noisy_instances(model, tokenizer, frame)
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    rest = questions(frame)
    rest = rest[~rest["noisy"] & ~rest["id"].isin(clean["id"])]
    fit_rows = rest.sample(min(n_fit, len(rest)), random_state=seed).sort_values("id") if len(rest) else rest
    partition = matched_partition(frame, seed) if task == "thr" else None
    fits = fit_erasers(model, tokenizer, fit_rows, task, layers, seed, partition)
    groups = {"memorized noisy": noisy[noisy["memorized"]], "clean": clean}
    effects = removal_effects(model, tokenizer, groups, task, layers, fits, seed=seed)
    return Reliance(task, len(layers), noisy, clean, effects, effect_sizes(effects, n_resamples, seed),
                    contrasts(effects, n_resamples, seed), fits, config)


def reliance(config: Config, n_clean: int = 200, n_fit: int = 2000, device: str | None = None,
             progress: bool = True) -> Reliance:
    """Train `config` (or load its finished run) and measure every removal at every layer on its
    memorized noisy instances and on up to `n_clean` correctly answered clean questions."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    return reliance_of(model, tokenizer, load_dataset(config), config.task, n_clean, n_fit, config.seed,
                       config=config)


# ---- claims ---------------------------------------------------------------------------------------------

MIN_CLEAN_EFFECT = 0.1  # nats: a removal informs only where it takes at least this much from clean answers


def informative_layers(contrasts: pd.DataFrame, method: str, n_layer: int,
                       min_clean_effect: float = MIN_CLEAN_EFFECT) -> pd.Series:
    """Per intermediate layer (`rote.interp.sites.intermediate_layers`) where removal `method` takes
    something from the clean reference (its paired contrast's 95% interval below
    -`min_clean_effect` nats), that clean contrast."""
    c = contrasts
    if not len(c):
        return pd.Series(dtype=float)
    clean = c[(c["comparison"] == "target - control") & (c["method"] == method) & (c["group"] == "clean")
              & c["layer"].isin(intermediate_layers(n_layer))]
    clean = clean.set_index("layer")
    return clean.loc[clean["hi"] < -min_clean_effect, "delta_logp"]


def reliance_claims(result: Reliance, min_clean_effect: float = MIN_CLEAN_EFFECT, margin: float = 0.0) -> list:
    """Observation 2 as claims (`rote.claims`), one per method. A removal counts only at
    intermediate layers (every block but the last: there the correct digit of a clean question is its
    answer, and removing it removes the answer, not a step towards it) where it removes something
    from the clean reference: there its paired contrast (target minus
    control) on the correct answer's log-prob lies below -`min_clean_effect` nats (95% interval).
    The layer read is fixed on the clean reference alone, before the noisy instances are: the
    informative layer where the removal takes most from clean answers. There the claim holds when
    the noisy label's paired contrast lies below -`margin` (95% interval), holds in part when only
    its mean does, and does not hold otherwise; with no informative layer the removal is
    uninformative and the claim cannot be tested. The note gives the noisy contrast at the other
    informative layers (described, not tested)."""
    c = result.contrasts
    paired = c[c["comparison"] == "target - control"] if len(c) else c
    out = []
    for method in METHODS[result.task]:
        target, control = REMOVED[(result.task, method)]
        claim = f"removing the {target} ({method}) harms the memorized noisy label"
        rule = (f"counts at intermediate layers (not the last block) where the clean reference's contrast lies below "
                f"-{min_clean_effect:g} nats; read at the one where it is strongest on clean answers (chosen before the "
                f"noisy instances are read); holds when the noisy label's contrast there lies below {0 - margin:g} "
                f"(95% interval)")
        base = dict(observation=2, task=result.task, claim=claim, control=f"removing a {control}", rule=rule)
        m = paired[paired["method"] == method] if len(paired) else paired
        clean = m[m["group"] == "clean"].set_index("layer") if len(m) else m
        noisy = m[m["group"] == "memorized noisy"].set_index("layer") if len(m) else m
        informative = informative_layers(c, method, result.n_layer, min_clean_effect).index
        usable = [layer for layer in informative if layer in noisy.index]
        if not usable:
            why = ("no memorized noisy instance" if len(noisy) == 0 else
                   "uninformative: at no intermediate layer does it remove anything from the clean reference"
                   + (f" (largest clean contrast {clean['delta_logp'].min():+.2f} nats)" if len(clean) else ""))
            out.append(untestable(why, statistic="noisy label's log-prob change (nats per token)", n=len(result.memorized),
                                  **base))
            continue
        layer = min(usable, key=lambda layer: clean.loc[layer, "delta_logp"])
        others = "; ".join(f"layer {x}: {noisy.loc[x, 'delta_logp']:+.2f}" for x in usable if x != layer)
        s = result.sizes.set_index(["method", "layer", "group", "removed"])
        t, k = s.loc[(method, layer, "memorized noisy", "target")], s.loc[(method, layer, "memorized noisy", "control")]
        row, cl = noisy.loc[layer], clean.loc[layer]
        cmp = Comparison(*(float(x) for x in (t["delta_logp"], t["delta_logp_lo"], t["delta_logp_hi"], k["delta_logp"],
                                              k["delta_logp_lo"], k["delta_logp_hi"], row["delta_logp"], row["lo"], row["hi"])))
        out.append(compared(cmp, below(cmp.difference, cmp.difference_hi, margin),
                            statistic=f"noisy label's log-prob change (nats per token, layer {layer})", n=int(row["n"]),
                         note=(f"memorization accuracy {t['acc_before']:.0%} to {t['acc_after']:.0%} "
                               f"({control}: {k['acc_after']:.0%}); clean contrast there {cl['delta_logp']:+.2f} "
                               f"[{cl['lo']:+.2f}, {cl['hi']:+.2f}]; informative at {len(usable)} of "
                               f"{len(intermediate_layers(result.n_layer))} intermediate layers"
                               + (f" (noisy contrast at the others, not tested: {others})" if others else "")),
                         **base))
    return out


# ---- tables for reading -----------------------------------------------------------------------

def removed_names(task: str) -> dict:
    """{(method, "target" or "control"): what that removal removes} for `task`."""
    return {(m, which): name for (t, m), pair in REMOVED.items() if t == task
            for which, name in zip(("target", "control"), pair)}


def effects_table(result: Reliance, digits: int = 3) -> pd.DataFrame:
    """`result.sizes` for reading: what was removed named, rounded."""
    if result.sizes.empty:
        return pd.DataFrame({"note": ["no removals: no memorized noisy instance and no clean reference"]})
    table = result.sizes.copy()
    names = removed_names(result.task)
    table.insert(4, "what", [names[(m, r)] for m, r in zip(table["method"], table["removed"])])
    return table.round(digits)


def contrasts_table(result: Reliance, digits: int = 3) -> pd.DataFrame:
    """`result.contrasts`, rounded: `delta_logp` [lo, hi] is the log-prob contrast, `acc_change`
    [acc_change_lo, acc_change_hi] the accuracy contrast (a difference of accuracy changes, not an accuracy)."""
    if result.contrasts.empty:
        return pd.DataFrame({"note": ["no contrasts: nothing was removed"]})
    return result.contrasts.rename(columns={"acc": "acc_change", "acc_lo": "acc_change_lo",
                                            "acc_hi": "acc_change_hi"}).round(digits)
