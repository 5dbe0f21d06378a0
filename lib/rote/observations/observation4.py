"""Observation 4 (book/observation4.ipynb): memorization is distributed, not a look-up from one input key.

We change ONE input of a question at a time and ask the model again (`rote.observations.changes`): FDA one of
the 8 operand digits, THR the subject or one of the two relations, the chain recomputed from the
knowledge graph; changed questions whose true answer is the label, or that are themselves noisy
training instances, are left out.

Per change we measure (a) whether the label survives: greedy output equals the original label
("kept") and the change of the label's teacher-forced log-prob (mean over the scored tokens as in
`rote.observations.observation2`: FDA noisy instances the digits where label and true sum differ, clean ones all
four); FDA also per answer digit: of the noisy label's digits that differ from the original true
sum and from the changed question's true sum, the share the changed question's output still
writes ("noisy digit persists"); and whether the output is the changed question's true answer
("correct"); (b) whether the intermediate result moves with the input: the logit-lens readout at
an intermediate block layer (`readout_layer`) of the changed question ranks the *new* intermediate
result above the *old* one (THR: the new bridge over the old, where the bridge changes; FDA: the
changed question's correct digit over the original's, at the answer digits where they differ;
teacher-forced on the label).

(c) Dependence, per instance. A change or a removal *harms* the label when the label is lost
(greedy decoding no longer writes it) or its log-prob falls by more than `threshold` nats per
scored token. The label depends on an input when at least half of that input's replacements harm
it; on an intermediate result when the Observation 2 removal of it (`rote.observations.observation2`: THR the
bridge by projection or LEACE; FDA the correct digits by projection, the carries by LEACE) harms
it while the control removal does not, in one test per intermediate result fixed on the clean
reference (`fixed_tests`: the method and layer that take most from clean answers).

Two explicit look-ups give the reference, computed on the same changes by `lookup_effects`:
(i) keyed on the whole input: every change loses the label, the changed question is answered
correctly (a clean model's answer), and no intermediate result matters; (ii) keyed on one input
(FDA operand a, THR the subject): the label survives every change of the other inputs.

The control that can make "distributed" fail is a *trained* look-up (`lookup_model_config`): the
same model trained by the same code on a small held set of inputs with random labels (95% of its
training questions noisy, too few clean ones to learn the task from), so every label it writes is
looked up. Its memorized labels are measured as the analysed model's are (`lookup_model_counts`):
the same changes and the same removal tests. Whatever share of them the measure calls distributed
is what the measure finds in a look-up.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from rote.claims import above, compared, untestable
from rote.config import Config, validate
from rote.interp.instances import matched_partition, noisy_instances
from rote.interp.lens import logit_lens
from rote.interp.sites import hf, intermediate_layers
from rote.observations.changes import (
    INPUTS,
    LOOKUP_KEYS,
    change_effects,
    digit_persistence_by_place,
    intermediate_moves,
    lookup_effects,
    same_sum_effects,
    single_input_changes,
    two_input_effects,
)
from rote.observations.observation2 import Reliance, fit_erasers, informative_layers, reliance_of, removal_effects
from rote.runs.data import load_dataset
from rote.runs.train import get_or_train
from rote.stats import bootstrap_ci, independent_share_ci, wilson_interval

LOOKUP_MODEL = "trained look-up"
METHOD_RESULT = {("fda", "projection"): "correct digits", ("fda", "LEACE carry"): "carries",
                 ("thr", "projection"): "bridge", ("thr", "LEACE"): "bridge"}
GROUPS = ("memorized noisy", "clean")


# ---- dependence -------------------------------------------------------------------------------------

def harmed(lost, delta_logp, threshold: float):
    """A change or removal harms the label: it is lost, or its log-prob falls by more than
    `threshold` nats per scored token."""
    return np.asarray(lost, dtype=bool) | (np.asarray(delta_logp, dtype=float) < -threshold)


def input_dependence(effects: pd.DataFrame, threshold: float = 1.0) -> pd.DataFrame:
    """Per (group, id, input): replacements, the share that harm the label, and whether the label
    depends on that input (at least half of its replacements harm it)."""
    columns = ["group", "id", "input", "n_changes", "share_harmed", "depends"]
    if effects.empty:
        return pd.DataFrame(columns=columns)
    e = effects.assign(harmed=harmed(~effects["kept"].astype(bool), effects["delta_logp"], threshold))
    out = e.groupby(["group", "id", "input"], sort=False).agg(
        n_changes=("harmed", "size"), share_harmed=("harmed", "mean")).reset_index()
    out["depends"] = out["share_harmed"] >= 0.5
    return out[columns]


def fixed_tests(contrasts: pd.DataFrame, task: str, n_layer: int) -> dict:
    """Per intermediate result, the one removal test its dependence is read from, fixed on the clean
    reference before any noisy instance is read: of the methods that remove it, at the layers where
    they take something from clean answers (`rote.observations.observation2.informative_layers`),
    the (method, layer) that takes most. An intermediate result with no informative removal has no
    test."""
    best = {}
    for (t, method), result in METHOD_RESULT.items():
        if t != task:
            continue
        layers = informative_layers(contrasts, method, n_layer)
        if len(layers) and (result not in best or layers.min() < best[result][2]):
            best[result] = (method, int(layers.idxmin()), float(layers.min()))
    return {result: (method, layer) for result, (method, layer, _) in best.items()}


def intermediate_dependence(removals: pd.DataFrame, task: str, threshold: float = 1.0, tests: dict | None = None
                            ) -> pd.DataFrame:
    """Per (group, id, intermediate result) from Observation 2's removal table
    (`Reliance.effects`): whether the target removal harms the label and the control removal does
    not (`depends`), read from one test per intermediate result (`tests`: result -> (method,
    layer), `fixed_tests`), so an instance gets no more chances to depend than it has intermediate
    results; `n_layers`: at how many layers of any method it would (described only). Without
    `tests`, any layer and method counts."""
    columns = ["group", "id", "intermediate", "n_layers", "depends"]
    if removals.empty:
        return pd.DataFrame(columns=columns)
    r = removals.assign(harmed=harmed(removals["mem_before"].astype(bool) & ~removals["mem_after"].astype(bool),
                                      removals["delta_logp"], threshold))
    wide = r.pivot_table(index=["group", "id", "method", "layer"], columns="removed", values="harmed",
                         aggfunc="max").reset_index()
    wide["hit"] = wide["target"].astype(bool) & ~wide["control"].astype(bool)
    wide["intermediate"] = [METHOD_RESULT[(task, m)] for m in wide["method"]]
    if tests is not None:
        wide["fixed"] = [tests.get(i) == (m, int(layer))
                         for i, m, layer in zip(wide["intermediate"], wide["method"], wide["layer"])]
    else:
        wide["fixed"] = True
    wide["fixed_hit"] = wide["hit"] & wide["fixed"]
    per_layer = wide.groupby(["group", "id", "intermediate", "layer"]).agg(hit=("hit", "max"), fixed=("fixed_hit", "max"))
    out = per_layer.reset_index().groupby(["group", "id", "intermediate"]).agg(
        n_layers=("hit", "sum"), depends=("fixed", "max")).reset_index()
    out["depends"] = out["depends"].astype(bool)
    return out[columns]


def dependence_counts(inputs: pd.DataFrame, intermediates: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per (group, id): how many inputs were changed (those with at least one valid replacement),
    how many inputs and intermediate results the label depends on, and which pattern the instance
    shows: "distributed" (two or more inputs and at least one intermediate result), "like
    whole-input look-up" (every changed input and no intermediate result), "like one-input look-up"
    (only the inputs of one key, FDA the digits of one operand, THR one input, and no intermediate
    result). Whether changed questions are answered as a clean model would is compared per group
    (`answer_gap`), not per instance."""
    columns = ["group", "id", "n_changed", "n_inputs", "n_intermediate", "distributed",
               "like_whole_lookup", "like_one_lookup"]
    if inputs.empty:
        return pd.DataFrame(columns=columns)
    dep = inputs[inputs["depends"]]
    which = dep.groupby(["group", "id"])["input"].agg(set)
    rows = inputs.groupby(["group", "id"], sort=False).size().rename("n_changed").reset_index()
    sets = [which.get((g, i), set()) for g, i in zip(rows["group"], rows["id"])]
    rows["n_inputs"] = [len(s) for s in sets]
    mids = (intermediates[intermediates["depends"]].groupby(["group", "id"]).size() if len(intermediates)
            else pd.Series(dtype=int))
    rows["n_intermediate"] = [int(mids.get((g, i), 0)) for g, i in zip(rows["group"], rows["id"])]
    keys = [set(INPUTS["fda"][:4]), set(INPUTS["fda"][4:])] if task == "fda" else [{x} for x in INPUTS["thr"]]
    rows["distributed"] = (rows["n_inputs"] >= 2) & (rows["n_intermediate"] >= 1)
    rows["like_whole_lookup"] = (rows["n_inputs"] == rows["n_changed"]) & (rows["n_intermediate"] == 0)
    rows["like_one_lookup"] = [bool(s) and any(s <= k for k in keys) and m == 0
                               for s, m in zip(sets, rows["n_intermediate"])]
    return rows[columns]


# ---- the trained look-up -------------------------------------------------------------------------------

def lookup_model_config(config: Config) -> Config:
    """The trained look-up of `config`: the same task, model, training recipe and seed, on a small
    held set of inputs with random labels: 95% of its training questions noisy (FDA: 500 questions;
    THR: the world's people with 4 relations, half of its 800 two-hop questions in training, its
    one-hop facts clean). Too few clean questions to learn the task from: every label it writes is
    looked up. It trains until it writes 99% of them (whatever the recipe's own stop) or the recipe's
    steps run out; one config for every noise rate."""
    fields = dict(noise=0.95, stop_mem_noisy=0.99)
    if config.task == "fda":
        fields["n_train"] = min(config.n_train, 500)
    else:
        fields.update(n_relations=min(config.n_relations, 4), two_hop_train_fraction=0.5)
    return validate(replace(config, **fields))


def lookup_model_counts(model, tokenizer, frame: pd.DataFrame, task: str, tests: dict, n_replacements: int = 3,
                        threshold: float = 1.0, n_fit: int = 2000, seed: int = 0) -> pd.DataFrame:
    """`dependence_counts` of a trained look-up's memorized noisy instances (group `LOOKUP_MODEL`),
    measured as the analysed model's are: the same kind of single-input changes and the removal
    tests `tests` of the analysed model (`fixed_tests`; the look-up answers no clean question it
    could fix them on), its LEACE erasers fitted on up to `n_fit` of its held-out questions (their
    labels are true answers)."""
    noisy = noisy_instances(model, tokenizer, frame)
    rows = noisy[noisy["memorized"]].reset_index(drop=True)
    if rows.empty:
        return dependence_counts(pd.DataFrame(), pd.DataFrame(), task)
    held = frame[(frame["split"] == "test") & (frame["kind"] != "fact")]
    fit_rows = held.sample(min(n_fit, len(held)), random_state=seed).sort_values("id")
    partition = matched_partition(frame, seed) if task == "thr" else None
    fits = fit_erasers(model, tokenizer, fit_rows, task, sorted({layer for _, layer in tests.values()}), seed, partition)
    parts = [removal_effects(model, tokenizer, {LOOKUP_MODEL: rows}, task, [layer], fits, [method], seed)
             for method, layer in sorted(set(tests.values()))]
    removals = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    changes = change_effects(model, tokenizer, rows, single_input_changes(rows, frame, task, n_replacements, seed),
                             task, LOOKUP_MODEL)
    return dependence_counts(input_dependence(changes, threshold), intermediate_dependence(removals, task, threshold, tests),
                             task)


# ---- summaries ---------------------------------------------------------------------------------------

def survival(effects: pd.DataFrame, moves: pd.DataFrame, layer: int | None, n_resamples: int = 1000,
             seed: int = 0) -> pd.DataFrame:
    """Per (group, input): instances, changes, the share of changes that keep the label, that are
    answered correctly, FDA the share of eligible noisy digits that persist, the mean log-prob
    change, and the share where the intermediate result moves at `layer`; each a mean over
    instances of the per-instance mean, with a 95% bootstrap interval over instances."""
    rows = []
    if effects.empty:
        return pd.DataFrame(rows)
    e = effects.reset_index(drop=True)
    moved = moves[moves["layer"] == layer].set_index("change")["moved"] if layer is not None and len(moves) else {}
    e["moved"] = pd.Series(np.arange(len(e))).map(moved).astype(float)
    e["digit_share"] = np.where(e["digits_eligible"] > 0,
                                e["digits_persist"] / e["digits_eligible"].clip(lower=1), np.nan)
    measures = {"kept": "kept", "correct": "correct", "noisy_digit_persists": "digit_share",
                "delta_logp": "delta_logp", "moved": "moved"}
    for (group, name), g in e.groupby(["group", "input"], sort=False):
        row = {"group": group, "input": name, "instances": g["id"].nunique(), "changes": len(g)}
        for out, column in measures.items():
            per = g.assign(v=g[column].astype(float)).groupby("id")["v"].mean().dropna().to_numpy()
            if len(per) and not np.isfinite(per).all():  # a look-up: the label is lost (log-prob -inf)
                m = lo = hi = float(per.mean())
            else:
                m, lo, hi = bootstrap_ci(per, n_resamples, seed)
            row.update({out: m, f"{out}_lo": lo, f"{out}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def dependence_summary(counts: pd.DataFrame) -> pd.DataFrame:
    """Per group: instances, mean number of inputs changed, of inputs and of intermediate results
    the label depends on,
    and the share of instances of each pattern with a 95% Wilson interval."""
    rows = []
    for group, g in counts.groupby("group", sort=False):
        row = {"group": group, "instances": len(g), "mean_changed": float(g["n_changed"].mean()),
               "mean_inputs": float(g["n_inputs"].mean()),
               "mean_intermediate": float(g["n_intermediate"].mean())}
        for column in ("distributed", "like_whole_lookup", "like_one_lookup"):
            share = float(g[column].mean())
            lo, hi = wilson_interval(share, len(g))
            row.update({column: share, f"{column}_lo": lo, f"{column}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def readout_layer(model, tokenizer, clean: pd.DataFrame, task: str) -> int | None:
    """The intermediate block layer (0 .. n_layer - 2; 0 for one block) where the clean reference
    questions' intermediate result (THR the bridge; FDA the correct digit) is most often the top-1
    logit-lens readout: where `intermediate_moves` is summarized. None without clean questions."""
    if clean.empty:
        return None
    lens = logit_lens(model, tokenizer, clean, teacher_forcing="label")
    rank = "bridge_rank" if task == "thr" else "true_rank"
    blocks = lens[lens["layer"].isin(intermediate_layers(hf(model).config.n_layer) or [0])]
    share = blocks.assign(top=blocks[rank].eq(0).astype(float)).groupby("layer")["top"].mean()
    return int(share.idxmax())


# ---- one call per model -----------------------------------------------------------------------------

@dataclass
class Distributed:
    """Observation 4 for one model."""
    task: str
    n_layer: int
    reliance: Reliance  # Observation 2's removals on the same instances
    changes: pd.DataFrame  # per change, measured, model groups and look-ups (`change_effects`, `lookup_effects`)
    moves: pd.DataFrame  # `intermediate_moves` of the model groups' changes (index = row of `changes`)
    layer: int | None  # `readout_layer`
    inputs: pd.DataFrame  # `input_dependence`
    intermediates: pd.DataFrame  # `intermediate_dependence`
    counts: pd.DataFrame  # `dependence_counts`
    survival: pd.DataFrame  # `survival`
    dependence: pd.DataFrame  # `dependence_summary`
    two_changes: pd.DataFrame  # `two_input_effects` of both groups: the distance control
    same_sum: pd.DataFrame | None = None  # FDA: `same_sum_effects` of the memorized noisy instances
    threshold: float = 1.0
    config: Config | None = None

    @property
    def memorized(self) -> pd.DataFrame:
        return self.reliance.memorized


def distributed_encoding_of(model, tokenizer, frame: pd.DataFrame, task: str, n_replacements: int = 3,
                            threshold: float = 1.0, n_clean: int = 200, n_fit: int = 2000, seed: int = 0,
                            n_resamples: int = 1000, config: Config | None = None, lookup: tuple | None = None
                            ) -> Distributed:
    """`distributed_encoding` for a given model, tokenizer and instance table (no training);
    `lookup`: the trained look-up's (model, tokenizer, frame), measured with this model's removal
    tests (`lookup_model_counts`; its counts join `counts` as group `LOOKUP_MODEL`)."""
    if task not in INPUTS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(INPUTS)}")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 (nats per scored token), got {threshold}")
    rel = reliance_of(model, tokenizer, frame, task, n_clean, n_fit, seed, n_resamples, config)
    parts = []
    for group, rows in (("memorized noisy", rel.memorized.reset_index(drop=True)), ("clean", rel.clean)):
        changes = single_input_changes(rows, frame, task, n_replacements, seed)
        parts.append(change_effects(model, tokenizer, rows, changes, task, group))
    measured = pd.concat(parts, ignore_index=True)
    moves = intermediate_moves(model, tokenizer, measured, task)
    layer = readout_layer(model, tokenizer, rel.clean, task)
    noisy_changes = measured[measured["group"] == "memorized noisy"]
    lookups = [lookup_effects(noisy_changes, task, key) for key in LOOKUP_KEYS[task]]
    measured_all = pd.concat([measured, *lookups], ignore_index=True)
    inputs = input_dependence(measured_all, threshold)
    tests = fixed_tests(rel.contrasts, task, rel.n_layer)
    intermediates = intermediate_dependence(rel.effects, task, threshold, tests)
    counts = dependence_counts(inputs, intermediates, task)
    if lookup is not None:
        counts = pd.concat([counts, lookup_model_counts(*lookup, task, tests, n_replacements, threshold, n_fit, seed)],
                           ignore_index=True)
    two = pd.concat([two_input_effects(model, tokenizer, rows, frame, task, group, n_replacements, seed)
                     for group, rows in (("memorized noisy", rel.memorized), ("clean", rel.clean))], ignore_index=True)
    same = same_sum_effects(model, tokenizer, rel.memorized, frame, seed) if task == "fda" else None
    return Distributed(task, hf(model).config.n_layer, rel, measured_all, moves, layer, inputs, intermediates, counts,
                       survival(measured_all, moves, layer, n_resamples, seed), dependence_summary(counts), two, same,
                       threshold, config)


def distributed_encoding(config: Config, n_replacements: int = 3, threshold: float = 1.0, n_clean: int = 200,
                         n_fit: int = 2000, device: str | None = None, progress: bool = True) -> Distributed:
    """Train `config` (or load its finished run), change one input at a time of its memorized noisy
    instances and of up to `n_clean` correctly answered clean questions, and combine with
    Observation 2's removals into how many inputs and intermediate results each label depends on;
    the same for the trained look-up of `lookup_model_config` (trained too, once for every noise
    rate)."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    control = lookup_model_config(config)
    lookup = (*get_or_train(control, device=device, progress=progress), load_dataset(control))
    return distributed_encoding_of(model, tokenizer, load_dataset(config), config.task, n_replacements, threshold,
                                   n_clean, n_fit, config.seed, config=config, lookup=lookup)


# ---- claims ---------------------------------------------------------------------------------------------

def weaker(*verdicts: str) -> str:
    """The weakest of several verdicts of one rule's parts ("does not hold" < "holds in part" < "holds";
    "cannot be tested" when any part cannot be)."""
    order = ("cannot be tested", "does not hold", "holds in part", "holds")
    return min(verdicts, key=order.index)


def distance_shares(result: Distributed, group: str) -> pd.DataFrame:
    """Per instance of `group` with both kinds of change: the share of its single-input changes
    and of its two-input changes (`two_input_effects`) answered with the changed question's own
    true answer, and the share of two-input changes that keep the label."""
    one = result.changes[result.changes["group"] == group]
    two = result.two_changes[result.two_changes["group"] == group]
    if one.empty or two.empty:
        return pd.DataFrame(columns=["id", "correct_one", "correct_two", "kept_two"])
    a = one.assign(v=one["correct"].astype(float)).groupby("id")["v"].mean().rename("correct_one")
    b = two.assign(c=two["correct"].astype(float), k=two["kept"].astype(float)).groupby("id").agg(
        correct_two=("c", "mean"), kept_two=("k", "mean"))
    return pd.concat([a, b], axis=1, join="inner").reset_index()


_DISTRIBUTED = "share of memorized noisy instances that are distributed"
CLAIMS = {  # Observation 4's claims in words; the rules' thresholds are `distributed_claims` arguments
    "distributed": dict(claim="most noisy labels depend on several inputs and an intermediate result",
                        statistic=_DISTRIBUTED,
                        control="a trained look-up (the same model fitted to random labels only): its memorized labels, "
                                "same changes and removal tests",
                        rule="holds when the share lies above {min_share:.0%} and noisy minus look-up above {margin:g} "
                             "(95% intervals)"),
    "as clean": dict(claim="noisy labels are as distributed as computed answers", statistic=_DISTRIBUTED,
                     control="correctly answered clean questions, same changes and removals",
                     rule="counts where the clean share lies above {min_share:.0%}; holds when noisy minus clean lies "
                          "above -{clean_tolerance:g} (95% intervals)"),
    "distance": dict(claim="the noisy label's influence fades with distance",
                     statistic="share answered with their own answer, two-input minus single-input changes",
                     control="the same on correctly answered clean questions",
                     rule="holds when noisy minus clean lies above {distance_margin:g} (95% interval)"),
    "same sum": dict(claim="the noisy label survives inputs with the same sum",
                     statistic="share of same-sum inputs that keep the noisy label",
                     control="single-digit changes of the same instances",
                     rule="holds when same-sum minus single-change lies above {same_sum_margin:g} (95% interval)"),
    "place": dict(claim="a noisy digit rides on its place's computation",
                  statistic="share of noisy digits that persist where the true digit at that place is unchanged",
                  control="noisy digits where the change alters the true digit at that place",
                  rule="holds when unchanged minus altered lies above {place_margin:g} (95% interval)"),
}


def distributed_claims(result: Distributed, min_share: float = 0.5, margin: float = 0.0,
                       clean_tolerance: float = 0.1, distance_margin: float = 0.05, same_sum_margin: float = 0.0,
                       place_margin: float = 0.0, n_resamples: int = 1000) -> list:
    """Observation 4 as claims (`rote.claims`), each against a control computed the same way:

    (1) most memorized noisy labels are distributed (depend on two or more inputs and an
    intermediate result): the share's 95% interval lies above `min_share`, and the share minus the
    trained look-up's (`lookup_model_counts`: a model whose labels are looked up by construction,
    measured the same way) lies above `margin`. Where the measure calls the look-up's labels
    distributed as often, it does not tell memorizing by computation from a look-up.
    (2) noisy labels are as distributed as computed answers: the same share on correctly answered
    clean questions (same changes, same removals) is the matched control; holds when noisy minus
    clean lies above -`clean_tolerance` (95% interval). It counts only where the clean control is
    itself distributed on more than `min_share` (its interval above it): where the measure does not
    find computation in answers known to be computed, "as distributed as clean" passes for a
    look-up too, and the claim cannot be tested.
    (3) distance: a noisy label's influence fades with distance. Per instance, the share of changed
    questions answered with their own true answer after two-input changes minus after single-input
    changes; the same on clean questions is the control; holds when noisy minus clean lies above
    `distance_margin`. A look-up keyed on the whole input leaves every other question to the clean
    computation, so it shows no difference from clean at any distance.
    (4) FDA: inputs with the same sum (operands swapped, an offsetting change) keep the noisy label
    more often than single-digit changes of the same instances, by more than `same_sum_margin`: a
    label attached to the computed sum would survive them; one attached to the input itself would
    not.
    (5) FDA: a noisy digit persists more often after changes that leave the true digit at its place
    unchanged than after changes that alter it, by more than `place_margin`: the noisy digit rides
    on that place's computation, which no look-up keyed on the input (whole or one operand) shows.
    Neither (4) nor (5) separates a distributed encoding from a look-up keyed on the input plus
    per-place corrections."""
    task, seed = result.task, (result.config.seed if result.config else 0)
    margins = dict(min_share=min_share, margin=margin, clean_tolerance=clean_tolerance,
                   distance_margin=distance_margin, same_sum_margin=same_sum_margin, place_margin=place_margin)
    out = []

    def add(name: str, measured: tuple | None, why: str):
        """Claim `name` of CLAIMS from (comparison, verdict, note), or one that cannot be tested (`why`)."""
        fields = {**CLAIMS[name], "rule": CLAIMS[name]["rule"].format(**margins)}
        base = dict(observation=4, task=task, n=len(result.memorized), **fields)
        out.append(compared(measured[0], measured[1], note=measured[2], **base) if measured else untestable(why, **base))

    def ci(a, b):
        return independent_share_ci(a, b, n_resamples, seed)

    counts = result.counts
    share = lambda g: counts[counts["group"] == g]["distributed"].astype(float) if len(counts) else []  # noqa: E731
    noisy, look, clean = share("memorized noisy"), share(LOOKUP_MODEL), share("clean")
    measured = None
    if len(noisy) and len(look):
        cmp = ci(noisy, look)
        measured = (cmp, weaker(above(cmp.value, cmp.lo, min_share), above(cmp.difference, cmp.difference_lo, margin)),
                    f"the trained look-up's {len(look)} memorized labels")
    add("distributed", measured, "no memorized noisy instance" if not len(noisy) else
        "no trained look-up, or it memorized no label")
    measured = None
    if len(noisy) and len(clean):
        cmp = ci(noisy, clean)
        sensitive = above(cmp.control_value, cmp.control_lo, min_share) == "holds"
        measured = (cmp, above(cmp.difference, cmp.difference_lo, -clean_tolerance) if sensitive else "cannot be tested",
                    "" if sensitive else f"the measure finds only {cmp.control_value:.1%} distributed among clean "
                    "answers, which the model computes: it does not separate computation from a look-up in this run")
    add("as clean", measured, "no memorized noisy instance or no clean control")
    dn, dc = distance_shares(result, "memorized noisy"), distance_shares(result, "clean")
    measured = None
    if len(dn) and len(dc):
        cmp = ci(dn["correct_two"] - dn["correct_one"], dc["correct_two"] - dc["correct_one"])
        measured = (cmp, above(cmp.difference, cmp.difference_lo, distance_margin),
                    f"own answer after one change {dn['correct_one'].mean():.1%}, after two "
                    f"{dn['correct_two'].mean():.1%} (clean: {dc['correct_one'].mean():.1%}, "
                    f"{dc['correct_two'].mean():.1%}); the noisy label kept after two changes {dn['kept_two'].mean():.1%}")
    add("distance", measured, "no two-input change of a memorized noisy or a clean question")
    if task != "fda":
        return out
    same = result.same_sum if result.same_sum is not None else pd.DataFrame()
    single = result.changes[result.changes["group"] == "memorized noisy"]
    measured = None
    if len(same) and len(single):
        cmp = ci(same.groupby("id")["kept"].mean(), single.groupby("id")["kept"].mean().astype(float))
        by = same.groupby("kind")["kept"].mean()
        measured = (cmp, above(cmp.difference, cmp.difference_lo, same_sum_margin),
                    "kept " + ", ".join(f"{v:.1%} {k}" for k, v in by.items()) + "; the same-sum input is answered "
                    f"with its (unchanged) true sum on {float(same['correct'].mean()):.1%}")
    add("same sum", measured, "no same-sum input")
    per = digit_persistence_by_place(single) if len(single) else pd.DataFrame()
    measured = None
    if len(per) and per["place_unchanged"].any() and (~per["place_unchanged"]).any():
        persists = lambda rows: rows.groupby("id")["persists"].mean().astype(float)  # noqa: E731
        cmp = ci(persists(per[per["place_unchanged"]]), persists(per[~per["place_unchanged"]]))
        measured = (cmp, above(cmp.difference, cmp.difference_lo, place_margin),
                    "a look-up keyed on the input (whole or one operand) keeps neither")
    add("place", measured, "no eligible noisy digit in both kinds of change")
    return out


# ---- tables for reading -----------------------------------------------------------------------------

def survival_table(result: Distributed, digits: int = 3) -> pd.DataFrame:
    """`result.survival` for reading, rounded; columns empty for this task left out."""
    if result.survival.empty:
        return pd.DataFrame({"note": ["no changes: no memorized noisy instance and no clean reference"]})
    return result.survival.dropna(axis=1, how="all").round(digits)


def dependence_table(result: Distributed, digits: int = 3) -> pd.DataFrame:
    """`result.dependence` for reading, rounded."""
    if result.dependence.empty:
        return pd.DataFrame({"note": ["no instances to count dependences on"]})
    return result.dependence.round(digits)
