"""Observation 4: memorization is distributed, not a look-up from one input key.

We change ONE input of a question at a time and ask the model again:

- FDA: one of the 8 operand digits (a thousands .. a units, b thousands .. b units) is replaced by
  another digit, keeping both operands four-digit and a + b <= 9999; several replacements per
  position (seeded).
- THR: the subject is replaced by another person, or the first relation r1 or the second relation
  r2 by another relation; the bridge and the true answer are recomputed from the knowledge graph
  (the one-hop facts).

A changed question whose true answer equals the label (noisy: the noisy label; clean: the true
answer of the original) is left out, so that "the label survives" and "the changed question is
answered correctly" never coincide; so is a changed question that is itself a noisy training
instance (its own noisy label would be the right thing for the model to say).

Per change we measure (a) whether the label survives: greedy output equals the original label
("kept") and the change of the label's teacher-forced log-prob (mean over the scored tokens as in
`rote.reliance`: FDA noisy instances the digits where label and true sum differ, clean ones all
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
it; on an intermediate result when the Observation 2 removal of it (`rote.reliance`: THR the
bridge by projection or LEACE; FDA the correct digits by projection, the carries by LEACE) harms
it at some layer while the control removal there does not.

Two explicit look-ups give the reference, computed on the same changes by `lookup_effects`:
(i) keyed on the whole input: every change loses the label, the changed question is answered
correctly (a clean model's answer), and no intermediate result matters; (ii) keyed on one input
(FDA operand a, THR the subject): the label survives every change of the other inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import load_dataset, two_hop_prompt
from .evaluate import answer_length, greedy_answers
from .heuristics import noisy_pairs
from .interventions import answer_logprobs, prompt_batch
from .lens import hf, logit_lens, logit_lens_hooks
from .override import final_test_accuracy, reasoning_caveat, wilson_interval
from .reliance import Reliance, bootstrap_ci, bootstrap_diff_ci, reliance_of, scored_positions
from .train import get_or_train

PLACES = ("thousands", "hundreds", "tens", "units")
INPUTS = {"fda": tuple(f"{op} {p}" for op in "ab" for p in PLACES), "thr": ("subject", "r1", "r2")}
INTERMEDIATES = {"fda": ("correct digits", "carries"), "thr": ("bridge",)}
METHOD_RESULT = {("fda", "projection"): "correct digits", ("fda", "LEACE carry"): "carries",
                 ("thr", "projection"): "bridge", ("thr", "LEACE"): "bridge"}
LOOKUP_KEYS = {"fda": ("whole input", "operand a"), "thr": ("whole input", "subject")}
GROUPS = ("memorized noisy", "clean")


def lookup_name(key: str) -> str:
    """The group name of a look-up baseline keyed on `key`."""
    return "look-up on " + {"whole input": "the whole input", "subject": "the subject"}.get(key, key)


def key_inputs(task: str, key: str) -> tuple:
    """The inputs a look-up keyed on `key` reads: "whole input" all of them, "operand a" (FDA) its
    four digits, "subject" (THR) the subject."""
    keys = {"whole input": INPUTS[task], "operand a": INPUTS["fda"][:4], "subject": ("subject",)}
    if key not in LOOKUP_KEYS[task]:
        raise ValueError(f"unknown look-up key {key!r} for {task}; allowed: {', '.join(LOOKUP_KEYS[task])}")
    return keys[key]


# ---- the single-input changes --------------------------------------------------------------------

def knowledge_graph_of(frame: pd.DataFrame) -> dict:
    """THR: {(person, relation): partner} from the one-hop facts of `frame`."""
    facts = frame[frame["kind"] == "fact"]
    return dict(zip(zip(facts["subject"], facts["r1"]), facts["true"]))


def _question_status(frame: pd.DataFrame) -> dict:
    """{prompt: "train noisy", "train" or "test"} of every question in `frame`."""
    q = frame[frame["kind"] != "fact"]
    status = np.where(q["split"] == "train", np.where(q["noisy"], "train noisy", "train"), "test")
    return dict(zip(q["prompt"], status))


def fda_changes(instances: pd.DataFrame, n_replacements: int = 3, seed: int = 0) -> pd.DataFrame:
    """FDA: per instance and operand digit, up to `n_replacements` other digits (seeded) that keep
    both operands four-digit and a + b <= 9999. One row per change: id, input, the new digit
    ("replacement"), the changed a, b, prompt and true sum, and the original label ("answer")."""
    rng = np.random.default_rng(seed)
    rows = []
    for inst in instances.itertuples(index=False):
        a, b = int(inst.a), int(inst.b)
        for k, name in enumerate(INPUTS["fda"]):
            unit = 10 ** (3 - k % 4)
            x, y = (a, b) if k < 4 else (b, a)
            old = x // unit % 10
            allowed = [d for d in range(1 if unit == 1000 else 0, 10)
                       if d != old and x + (d - old) * unit + y <= 9999]
            for d in rng.permutation(allowed)[:n_replacements]:
                x2 = x + (int(d) - old) * unit
                a2, b2 = (x2, y) if k < 4 else (y, x2)
                rows.append({"id": inst.id, "input": name, "replacement": str(d), "a": a2, "b": b2,
                             "prompt": f"{a2}+{b2}=", "true": f"{a2 + b2:04d}", "answer": inst.answer,
                             "orig_true": inst.true, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "replacement", "a", "b", "prompt", "true", "answer",
                                       "orig_true", "noisy"])


def thr_changes(instances: pd.DataFrame, graph: dict, n_replacements: int = 3, seed: int = 0) -> pd.DataFrame:
    """THR: per instance, up to `n_replacements` other subjects, first relations and second
    relations (seeded), the bridge and true answer recomputed from `graph`
    (`knowledge_graph_of`). One row per change, with the original label ("answer") and bridge."""
    people = sorted({s for s, _ in graph})
    relations = sorted({r for _, r in graph})
    rng = np.random.default_rng(seed)
    rows = []
    for inst in instances.itertuples(index=False):
        for name, pool, old in (("subject", people, inst.subject), ("r1", relations, inst.r1),
                                ("r2", relations, inst.r2)):
            others = [x for x in pool if x != old]
            for new in rng.permutation(others)[:n_replacements]:
                s, r1, r2 = (str(new) if name == "subject" else inst.subject, str(new) if name == "r1" else inst.r1,
                             str(new) if name == "r2" else inst.r2)
                bridge = graph[(s, r1)]
                rows.append({"id": inst.id, "input": name, "replacement": str(new), "subject": s, "r1": r1,
                             "r2": r2, "prompt": two_hop_prompt(r1, r2, s), "true": graph[(bridge, r2)],
                             "bridge": bridge, "answer": inst.answer, "orig_true": inst.true,
                             "orig_bridge": inst.bridge, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "replacement", "subject", "r1", "r2", "prompt", "true",
                                       "bridge", "answer", "orig_true", "orig_bridge", "noisy"])


def single_input_changes(instances: pd.DataFrame, frame: pd.DataFrame, task: str, n_replacements: int = 3,
                         seed: int = 0) -> pd.DataFrame:
    """The changes of `fda_changes` / `thr_changes`, with "status" (the changed question is a
    "train" or "test" question of `frame`, or "unseen"), leaving out those whose true answer is the
    label and those that are noisy training instances (see the module docstring)."""
    if task not in INPUTS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(INPUTS)}")
    changes = (fda_changes(instances, n_replacements, seed) if task == "fda"
               else thr_changes(instances, knowledge_graph_of(frame), n_replacements, seed))
    status = _question_status(frame)
    changes["status"] = [status.get(p, "unseen") for p in changes["prompt"]]
    keep = (changes["true"] != changes["answer"]) & (changes["status"] != "train noisy")
    return changes[keep].reset_index(drop=True)


# ---- measuring the changes -----------------------------------------------------------------------

@torch.no_grad()
def label_logprob(model, tokenizer, rows: pd.DataFrame, scored: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """Mean teacher-forced log-prob of the `answer` tokens after `prompt`, over the tokens where
    `scored` [N, K] is set (plain forward pass)."""
    model_hf, out = hf(model), []
    for start in range(0, len(rows), batch_size):
        ids, mask, _ = prompt_batch(tokenizer, rows.iloc[start: start + batch_size], "answer")
        lp = answer_logprobs(model_hf(ids.to(model_hf.device)).logits, ids, mask.to(model_hf.device)).double().cpu()
        sel = scored[start: start + batch_size].double()
        out.append(((lp * sel).sum(1) / sel.sum(1).clamp(min=1)).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def persisting_digits(changes: pd.DataFrame, predictions) -> tuple[np.ndarray, np.ndarray]:
    """FDA: per change, how many of the label's digits differ from both the original and the
    changed true sum (eligible), and how many of those the changed question's output still writes."""
    eligible, persist = [], []
    for label, orig, new, said in zip(changes["answer"], changes["orig_true"], changes["true"], predictions):
        ok = [k for k in range(len(label)) if label[k] != orig[k] and label[k] != new[k]]
        eligible.append(len(ok))
        persist.append(sum(said[k] == label[k] for k in ok))
    return np.array(eligible, dtype=int), np.array(persist, dtype=int)


def fda_two_changes(instances: pd.DataFrame, n_changes: int = 3, seed: int = 0, tries: int = 20) -> pd.DataFrame:
    """FDA: per instance, up to `n_changes` changes of two different operand digits at once (places
    and new digits drawn at random, seeded; both operands kept four-digit and a + b <= 9999). One
    row per change: id, input ("<digit> & <digit>"), the changed a, b, prompt and true sum, and the
    original label ("answer")."""
    rng, rows = np.random.default_rng([seed, 2]), []
    for inst in instances.itertuples(index=False):
        a, b, made = int(inst.a), int(inst.b), 0
        for _ in range(n_changes * tries):
            if made == n_changes:
                break
            k1, k2 = sorted(rng.choice(8, 2, replace=False).tolist())
            ops = [a, b]
            for k in (k1, k2):
                unit = 10 ** (3 - k % 4)
                old = ops[k // 4] // unit % 10
                d = int(rng.choice([x for x in range(1 if unit == 1000 else 0, 10) if x != old]))
                ops[k // 4] += (d - old) * unit
            a2, b2 = ops
            if a2 + b2 > 9999:
                continue
            made += 1
            rows.append({"id": inst.id, "input": f"{INPUTS['fda'][k1]} & {INPUTS['fda'][k2]}", "a": a2, "b": b2,
                         "prompt": f"{a2}+{b2}=", "true": f"{a2 + b2:04d}", "answer": inst.answer,
                         "orig_true": inst.true, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "a", "b", "prompt", "true", "answer", "orig_true", "noisy"])


def thr_two_changes(instances: pd.DataFrame, graph: dict, seed: int = 0) -> pd.DataFrame:
    """THR: per instance, one change of each pair of inputs (subject & r1, subject & r2, r1 & r2),
    the replacements drawn at random (seeded), the chain recomputed from `graph`."""
    people = sorted({s for s, _ in graph})
    relations = sorted({r for _, r in graph})
    rng, rows = np.random.default_rng([seed, 2]), []
    for inst in instances.itertuples(index=False):
        for pair in (("subject", "r1"), ("subject", "r2"), ("r1", "r2")):
            new = {"subject": inst.subject, "r1": inst.r1, "r2": inst.r2}
            for name in pair:
                pool = people if name == "subject" else relations
                new[name] = str(rng.choice([x for x in pool if x != new[name]]))
            bridge = graph[(new["subject"], new["r1"])]
            rows.append({"id": inst.id, "input": " & ".join(pair), **new,
                         "prompt": two_hop_prompt(new["r1"], new["r2"], new["subject"]),
                         "true": graph[(bridge, new["r2"])], "answer": inst.answer, "orig_true": inst.true,
                         "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "subject", "r1", "r2", "prompt", "true", "answer", "orig_true",
                                       "noisy"])


def two_input_effects(model, tokenizer, instances: pd.DataFrame, frame: pd.DataFrame, task: str,
                      group: str, n_changes: int = 3, seed: int = 0) -> pd.DataFrame:
    """The distance control: `fda_two_changes` / `thr_two_changes` of `instances`, left out as in
    `single_input_changes` (true answer = label, or a noisy training instance), answered greedily:
    whether the label is kept and whether the output is the changed question's true answer."""
    changes = (fda_two_changes(instances, n_changes, seed) if task == "fda"
               else thr_two_changes(instances, knowledge_graph_of(frame), seed))
    status = _question_status(frame)
    changes["status"] = [status.get(p, "unseen") for p in changes["prompt"]]
    changes = changes[(changes["true"] != changes["answer"]) & (changes["status"] != "train noisy")]
    changes = changes.reset_index(drop=True).assign(group=group)
    if changes.empty:
        return changes.assign(kept=pd.Series(dtype=bool), correct=pd.Series(dtype=bool))
    said = np.asarray(greedy_answers(hf(model), tokenizer, changes["prompt"],
                                     answer_length(tokenizer, changes["answer"].iloc[0])), dtype=object)
    return changes.assign(kept=said == changes["answer"].to_numpy(), correct=said == changes["true"].to_numpy())


def same_sum_changes(instances: pd.DataFrame, frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """FDA: per instance, inputs with the same sum: the operands swapped ("swap"), and one
    offsetting change a + d*10^p, b - d*10^p at a random place p and digit step d that keeps both
    operands four-digit ("offset"; seeded); other noisy training pairs left out."""
    rng, excluded = np.random.default_rng(seed), noisy_pairs(frame)
    rows = []
    for inst in instances.itertuples(index=False):
        a, b = int(inst.a), int(inst.b)
        options = [(a + d * 10 ** p, b - d * 10 ** p) for p in range(4) for d in (-3, -2, -1, 1, 2, 3)]
        options = [(x, y) for x, y in options if 1000 <= x <= 8999 and 1000 <= y <= 8999 and (x, y) != (a, b)]
        picks = [("swap", (b, a))] + ([("offset", options[rng.integers(len(options))])] if options else [])
        for kind, (x, y) in picks:
            if (x, y) not in excluded or {x, y} == {a, b}:  # the swap of a noisy pair is not itself in the data
                rows.append({"id": inst.id, "kind": kind, "prompt": f"{x}+{y}=", "answer": inst.answer,
                             "true": inst.true})
    return pd.DataFrame(rows, columns=["id", "kind", "prompt", "answer", "true"])


def same_sum_effects(model, tokenizer, instances: pd.DataFrame, frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """`same_sum_changes` answered greedily: whether the noisy label is kept and whether the output is
    the (unchanged) true sum."""
    changes = same_sum_changes(instances, frame, seed)
    if changes.empty:
        return changes.assign(kept=pd.Series(dtype=bool), correct=pd.Series(dtype=bool))
    said = np.asarray(greedy_answers(model, tokenizer, changes["prompt"], 4), dtype=object)
    return changes.assign(kept=said == changes["answer"].to_numpy(), correct=said == changes["true"].to_numpy())


def digit_persistence_by_place(changes: pd.DataFrame) -> pd.DataFrame:
    """FDA, per changed memorized noisy question and eligible noisy digit (differs from both true
    sums): whether the true digit at that place was left unchanged by the change, and whether the
    noisy digit persists in the output."""
    rows = []
    for i, label, orig, new, said in zip(changes["id"], changes["answer"], changes["orig_true"], changes["true"],
                                         changes["prediction"]):
        for k in range(len(label)):
            if label[k] != orig[k] and label[k] != new[k]:
                rows.append({"id": i, "place_unchanged": orig[k] == new[k], "persists": str(said)[k:k + 1] == label[k]})
    return pd.DataFrame(rows, columns=["id", "place_unchanged", "persists"])


def intermediate_moves(model, tokenizer, changes: pd.DataFrame, task: str, hooks: bool = False) -> pd.DataFrame:
    """Per change and layer (-1: embedding, 0..: blocks): at the readout positions where the
    intermediate result changes (THR the bridge, at the answer position; FDA the correct digit, at
    each digit where the changed true sum differs from the original), the share where the logit lens
    ranks the new value above the old one ("moved"). Teacher-forced on the label. Changes without
    such a position are left out."""
    columns = ["change", "layer", "n_positions", "moved"]
    if changes.empty:
        return pd.DataFrame(columns=columns)
    lens = logit_lens_hooks if hooks else logit_lens
    old = "orig_bridge" if task == "thr" else "orig_true"
    # one pass: the old value is read as the lens's "control" target beside the new one
    table = lens(model, tokenizer, changes.assign(id=np.arange(len(changes)), control=changes[old]),
                 teacher_forcing="answer")
    rank = "bridge_rank" if task == "thr" else "true_rank"
    both = table[["id", "layer", "position", rank, "control_rank"]].rename(
        columns={rank: f"{rank}_new", "control_rank": f"{rank}_old"})
    if task == "thr":
        differs = pd.Series(changes["bridge"].to_numpy() != changes["orig_bridge"].to_numpy())
        both = both[differs.to_numpy()[both["id"].to_numpy()]]
    else:
        k = both["position"].to_numpy()
        new_d = np.array([t[p] for t, p in zip(changes["true"].to_numpy()[both["id"]], k)])
        old_d = np.array([t[p] for t, p in zip(changes["orig_true"].to_numpy()[both["id"]], k)])
        both = both[new_d != old_d]
    both = both.assign(moved=(both[f"{rank}_new"] < both[f"{rank}_old"]).astype(float))
    out = both.groupby(["id", "layer"]).agg(n_positions=("moved", "size"), moved=("moved", "mean")).reset_index()
    return out.rename(columns={"id": "change"})[columns]


def change_effects(model, tokenizer, instances: pd.DataFrame, changes: pd.DataFrame, task: str,
                   group: str = "memorized noisy", batch_size: int = 512) -> pd.DataFrame:
    """Every change of `changes` measured (see the module docstring): logp_before (the label on the
    original question), logp_after (on the changed one), delta_logp, prediction, kept, correct,
    and FDA digits_eligible / digits_persist. `instances` are the originals (for the scored tokens
    and logp_before)."""
    out = changes.copy()
    out["group"] = group
    if changes.empty:
        for c in ("logp_before", "logp_after", "delta_logp", "digits_eligible", "digits_persist"):
            out[c] = pd.Series(dtype=float)
        out["prediction"] = pd.Series(dtype=object)
        out["kept"], out["correct"] = pd.Series(dtype=bool), pd.Series(dtype=bool)
        return out
    scored = scored_positions(instances, task)
    row = {i: n for n, i in enumerate(instances["id"])}
    index = torch.tensor([row[i] for i in changes["id"]])
    before = label_logprob(model, tokenizer, instances, scored, batch_size)
    out["logp_before"] = before[index.numpy()]
    out["logp_after"] = label_logprob(model, tokenizer, changes, scored[index], batch_size)
    out["delta_logp"] = out["logp_after"] - out["logp_before"]
    n = answer_length(tokenizer, changes["answer"].iloc[0])
    out["prediction"] = greedy_answers(hf(model), tokenizer, changes["prompt"], n)
    out["kept"] = out["prediction"] == out["answer"]
    out["correct"] = out["prediction"] == out["true"]
    if task == "fda":
        out["digits_eligible"], out["digits_persist"] = persisting_digits(changes, out["prediction"])
    else:
        out["digits_eligible"], out["digits_persist"] = 0, 0
    return out


def lookup_effects(changes: pd.DataFrame, task: str, key: str) -> pd.DataFrame:
    """What an explicit look-up keyed on `key` (`key_inputs`) would do on `changes` of memorized
    noisy instances: the label where the key is unchanged, else the changed question's true answer
    (a clean model's answer). Log-prob change 0 where the label is kept, -inf where it is lost."""
    key_set = set(key_inputs(task, key))
    out = changes.copy()
    out["group"] = lookup_name(key)
    kept = ~out["input"].isin(key_set).to_numpy()
    out["prediction"] = np.where(kept, out["answer"], out["true"])
    out["kept"], out["correct"] = kept, ~kept
    out["logp_before"] = 0.0
    out["logp_after"] = out["delta_logp"] = np.where(kept, 0.0, -np.inf)
    if task == "fda":
        out["digits_eligible"], out["digits_persist"] = persisting_digits(changes, out["prediction"])
    else:
        out["digits_eligible"], out["digits_persist"] = 0, 0
    return out


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


def intermediate_dependence(removals: pd.DataFrame, task: str, threshold: float = 1.0) -> pd.DataFrame:
    """Per (group, id, intermediate result) from Observation 2's removal table
    (`Reliance.effects`): whether at some layer the target removal harms the label and the control
    removal there does not (`depends`), and at how many layers."""
    columns = ["group", "id", "intermediate", "n_layers", "depends"]
    if removals.empty:
        return pd.DataFrame(columns=columns)
    r = removals.assign(harmed=harmed(removals["mem_before"].astype(bool) & ~removals["mem_after"].astype(bool),
                                      removals["delta_logp"], threshold))
    wide = r.pivot_table(index=["group", "id", "method", "layer"], columns="removed", values="harmed",
                         aggfunc="max").reset_index()
    wide["hit"] = wide["target"].astype(bool) & ~wide["control"].astype(bool)
    wide["intermediate"] = [METHOD_RESULT[(task, m)] for m in wide["method"]]
    per_layer = wide.groupby(["group", "id", "intermediate", "layer"]).agg(hit=("hit", "max")).reset_index()
    out = per_layer.groupby(["group", "id", "intermediate"]).agg(n_layers=("hit", "sum")).reset_index()
    out["depends"] = out["n_layers"] > 0
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


def readout_layer(model, tokenizer, clean: pd.DataFrame, task: str, hooks: bool = False) -> int | None:
    """The intermediate block layer (0 .. n_layer - 2; 0 for one block) where the clean reference
    questions' intermediate result (THR the bridge; FDA the correct digit) is most often the top-1
    logit-lens readout: where `intermediate_moves` is summarized. None without clean questions."""
    if clean.empty:
        return None
    n_layer = hf(model).config.n_layer
    lens = (logit_lens_hooks if hooks else logit_lens)(model, tokenizer, clean, teacher_forcing="answer")
    rank = "bridge_rank" if task == "thr" else "true_rank"
    blocks = lens[(lens["layer"] >= 0) & (lens["layer"] <= max(n_layer - 2, 0))]
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
    threshold: float = 1.0
    config: Config | None = None
    extra: dict = field(default_factory=dict)

    @property
    def memorized(self) -> pd.DataFrame:
        return self.reliance.memorized


def distributed_encoding_of(model, tokenizer, frame: pd.DataFrame, task: str, n_replacements: int = 3,
                            threshold: float = 1.0, n_clean: int = 200, n_fit: int = 2000, seed: int = 0,
                            n_resamples: int = 1000, hooks: bool = False, config: Config | None = None) -> Distributed:
    """`distributed_encoding` for a given model, tokenizer and instance table (no training)."""
    if task not in INPUTS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(INPUTS)}")
    if threshold <= 0:
        raise ValueError(f"threshold must be > 0 (nats per scored token), got {threshold}")
    rel = reliance_of(model, tokenizer, frame, task, n_clean, n_fit, seed, n_resamples, hooks, config)
    parts = []
    for group, rows in (("memorized noisy", rel.memorized.reset_index(drop=True)), ("clean", rel.clean)):
        changes = single_input_changes(rows, frame, task, n_replacements, seed)
        parts.append(change_effects(model, tokenizer, rows, changes, task, group))
    measured = pd.concat(parts, ignore_index=True)
    moves = intermediate_moves(model, tokenizer, measured, task, hooks)
    layer = readout_layer(model, tokenizer, rel.clean, task, hooks)
    noisy_changes = measured[measured["group"] == "memorized noisy"]
    lookups = [lookup_effects(noisy_changes, task, key) for key in LOOKUP_KEYS[task]]
    effects = pd.concat([measured, *lookups], ignore_index=True)
    inputs = input_dependence(effects, threshold)
    intermediates = intermediate_dependence(rel.effects, task, threshold)
    counts = dependence_counts(inputs, intermediates, task)
    extra = {"two_changes": pd.concat([two_input_effects(model, tokenizer, rows, frame, task, group, n_replacements, seed)
                                       for group, rows in (("memorized noisy", rel.memorized), ("clean", rel.clean))],
                                      ignore_index=True)}
    if task == "fda":
        extra["same_sum"] = same_sum_effects(model, tokenizer, rel.memorized, frame, seed)
    return Distributed(task, hf(model).config.n_layer, rel, effects, moves, layer, inputs, intermediates, counts,
                       survival(effects, moves, layer, n_resamples, seed), dependence_summary(counts), threshold,
                       config, extra)


def distributed_encoding(config: Config, n_replacements: int = 3, threshold: float = 1.0, n_clean: int = 200,
                         n_fit: int = 2000, device: str | None = None, progress: bool = True) -> Distributed:
    """Train `config` (or load its finished run), change one input at a time of its memorized noisy
    instances and of up to `n_clean` correctly answered clean questions, and combine with
    Observation 2's removals into how many inputs and intermediate results each label depends on."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    result = distributed_encoding_of(model, tokenizer, load_dataset(config), config.task, n_replacements, threshold,
                                     n_clean, n_fit, config.seed, config=config)
    result.extra["test_acc"] = final_test_accuracy(config)
    return result


# ---- in words ---------------------------------------------------------------------------------------

def _pct(m, lo, hi) -> str:
    return f"{m:.0%} (95% CI {lo:.0%} to {hi:.0%})"


def _per_instance(result: Distributed, group: str, column: str) -> np.ndarray:
    """Per instance of `group`: the mean of `column` over its changes (FDA "noisy_digit_persists":
    over the eligible digits of all its changes)."""
    g = result.changes[result.changes["group"] == group]
    if column == "noisy_digit_persists":
        g = g[g["digits_eligible"] > 0]
        g = g.assign(noisy_digit_persists=g["digits_persist"] / g["digits_eligible"])
    return g.assign(v=g[column].astype(float)).groupby("id")["v"].mean().to_numpy()


def overall(result: Distributed, group: str, column: str, n_resamples: int = 1000) -> tuple[float, float, float]:
    """Mean over the instances of `group` of each instance's mean of `column` over all its changes,
    with a 95% bootstrap interval over instances."""
    seed = result.config.seed if result.config else 0
    return bootstrap_ci(_per_instance(result, group, column), n_resamples, seed)


def answer_gap(result: Distributed, n_resamples: int = 1000) -> tuple[float, float, float]:
    """Share of changed memorized noisy questions answered with their own true answer minus that of
    changed clean questions (per-instance means; 95% bootstrap interval). A look-up on the whole
    input, with the clean computation for everything else, would give 0."""
    seed = result.config.seed if result.config else 0
    return bootstrap_diff_ci(_per_instance(result, "memorized noisy", "correct"),
                             _per_instance(result, "clean", "correct"), n_resamples, seed)


def _by_status(result: Distributed, min_changes: int = 20) -> str:
    """The changed noisy questions' correct answers split by what they are in the data (training,
    test or unseen questions), when at least two kinds have `min_changes` changes or more."""
    g = result.changes[result.changes["group"] == "memorized noisy"]
    table = g.groupby("status")["correct"].agg(["size", "mean"])
    table = table[table["size"] >= min_changes]
    if len(table) < 2:
        return ""
    names = {"train": "training", "test": "held-out test", "unseen": "unseen"}
    parts = [f"{share:.0%} of the {n:,} that are {names[status]} questions" for status, n, share in table.itertuples()]
    return "By kind of changed question: " + "; ".join(parts) + ". "


def _intermediate_shares(result: Distributed) -> str:
    """" (the bridge on 4% of the instances, ...)": how often each intermediate result matters."""
    i = result.intermediates
    i = i[i["group"] == "memorized noisy"] if len(i) else i
    if i.empty:
        return ""
    shares = i.groupby("intermediate", sort=False)["depends"].mean()
    return " (" + ", ".join(f"the {name} on {share:.0%}" for name, share in shares.items()) + " of the instances)"


def verdict(result: Distributed) -> str:
    """Observation 4 for this run, in plain words (see `_verdict`), with a caveat when the model has
    hardly learned the task (test accuracy below 50%)."""
    return _verdict(result) + reasoning_caveat(result.extra.get("test_acc"), result.task)


def _verdict(result: Distributed) -> str:
    """Observation 4 for this run, computed from the dependence counts: it holds when the share of
    memorized noisy instances whose label depends on two or more inputs and on at least one
    intermediate result ("distributed") has a 95% Wilson interval above one half; it does not hold
    when that interval is below one half; otherwise it holds only in part."""
    task, c, rel = result.task, result.config, result.reliance
    where = f"In this {task.upper()} run" + (f" ({c.noise:.0%} noise, seed {c.seed})" if c else "")
    n_mem, n_clean = len(rel.memorized), len(rel.clean)
    head = (f"{where}, {n_mem:,} of {len(rel.noisy):,} noisy training instances are memorized; "
            + (f"{n_clean:,} correctly answered clean questions are the reference. " if n_clean != 1
               else "1 correctly answered clean question is the reference. "))
    clean = ""
    if n_clean and (result.changes["group"] == "clean").any():
        clean = ("Changing one input of a clean question gives the changed question's true answer on "
                 + _pct(*overall(result, "clean", "correct")) + " of the changes. ")
    if len(rel.noisy) == 0:
        return head + clean + "Without noisy instances Observation 4 cannot be tested."
    if n_mem == 0:
        return head + clean + "With no memorized noisy label, Observation 4 cannot be tested in this run: train longer."
    s = result.survival[result.survival["group"] == "memorized noisy"]
    lo_in, hi_in = s.loc[s["kept"].idxmin()], s.loc[s["kept"].idxmax()]
    body = ("Changing one input of a memorized noisy question keeps the noisy label on "
            + _pct(*overall(result, "memorized noisy", "kept"))
            + f" of the changes (per input from {lo_in['kept']:.0%} for {lo_in['input']} to {hi_in['kept']:.0%} for "
            f"{hi_in['input']}), and the changed question gets its own true answer on "
            + _pct(*overall(result, "memorized noisy", "correct")) + ". ")
    if clean:
        gap = answer_gap(result)
        points, side = round(abs(gap[0]) * 100), "below" if gap[0] < 0 else "above"
        body += (f"That is {points} percentage point{'' if points == 1 else 's'} {side} the changed clean questions "
                 f"(difference {gap[0] * 100:+.0f}, 95% CI {gap[1] * 100:+.0f} to {gap[2] * 100:+.0f}); "
                 "a look-up on the whole input, with the clean computation for every other question, would show no "
                 "difference. ")
    body += _by_status(result)
    if task == "fda":
        d = overall(result, "memorized noisy", "noisy_digit_persists")
        if d[0] == d[0]:
            body += ("Of the noisy label's digits that differ from both true sums, " + _pct(*d)
                     + " still appear in the changed question's output. ")
    mid = "bridge" if task == "thr" else "correct digit"
    if result.layer is not None and s["moved"].notna().any():
        moved = s.dropna(subset=["moved"])
        body += (f"At layer {result.layer} the logit lens ranks the changed question's {mid} above the original's "
                 f"on {moved['moved'].min():.0%} to {moved['moved'].max():.0%} of the changes per input. ")
    d = result.dependence.set_index("group")
    m = d.loc["memorized noisy"]
    n_mid, nats = len(INTERMEDIATES[task]), f"{result.threshold:g} nat" + ("" if result.threshold == 1 else "s")
    body += (f"Counting a change or removal as harmful when the label is lost or its log-prob falls by more than "
             f"{nats}, the noisy label depends on {m['mean_inputs']:.1f} of the "
             f"{m['mean_changed']:.1f} inputs changed and on {m['mean_intermediate']:.1f} of {n_mid} intermediate "
             "result" + ("s" if n_mid > 1 else "") + " on average" + _intermediate_shares(result)
             + "; it depends on two or more inputs and at least one "
             "intermediate result (distributed) on " + _pct(m["distributed"], m["distributed_lo"], m["distributed_hi"])
             + f" of the instances, looks like a look-up on the whole input on {m['like_whole_lookup']:.0%} and like "
             f"a look-up on one input on {m['like_one_lookup']:.0%}. ")
    whole, one = lookup_name("whole input"), lookup_name(LOOKUP_KEYS[task][1])
    if whole in d.index and one in d.index:
        body += (f"For reference, on the same changes a {whole} would keep no noisy label, answer every changed "
                 f"question as a clean model does and depend on all {d.loc[whole, 'mean_inputs']:.1f} inputs changed; "
                 f"a {one} "
                 f"would keep the label under every change of the other inputs and depend on "
                 f"{d.loc[one, 'mean_inputs']:.1f}; neither depends on an intermediate result. ")
    if m["distributed_lo"] > 0.5:
        end = ("The paper's Observation 4 holds in this run: the noisy label is produced from many inputs and "
               "intermediate results, not looked up from one input key.")
    elif m["distributed_hi"] < 0.5:
        end = ("The paper's Observation 4 does not hold in this run: most noisy labels do not depend on several "
               "inputs and an intermediate result together"
               + ("; they behave like look-ups keyed on the whole question." if m["like_whole_lookup_lo"] > 0.5
                  else "."))
    else:
        end = ("The paper's Observation 4 holds only in part here: the distributed pattern is neither clearly the "
               "rule nor clearly the exception.")
    return head + clean + body + end


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
    two = result.extra.get("two_changes", pd.DataFrame(columns=["group", "id", "correct", "kept"]))
    two = two[two["group"] == group]
    if one.empty or two.empty:
        return pd.DataFrame(columns=["id", "correct_one", "correct_two", "kept_two"])
    a = one.assign(v=one["correct"].astype(float)).groupby("id")["v"].mean().rename("correct_one")
    b = two.assign(c=two["correct"].astype(float), k=two["kept"].astype(float)).groupby("id").agg(
        correct_two=("c", "mean"), kept_two=("k", "mean"))
    return pd.concat([a, b], axis=1, join="inner").reset_index()


def distributed_claims(result: Distributed, min_share: float = 0.5, margin: float = 0.0,
                       clean_tolerance: float = 0.1, distance_margin: float = 0.05, same_sum_margin: float = 0.0,
                       place_margin: float = 0.0, n_resamples: int = 1000) -> list:
    """Observation 4 as claims (`rote.claims`), each against a control computed the same way:

    (1) most memorized noisy labels are distributed (depend on two or more inputs and an
    intermediate result): the share's 95% interval lies above `min_share` and above the
    whole-input look-up's share on the same changes by more than `margin`. The look-up's share is 0
    by construction, so `min_share` is what this claim can fail on.
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
    from .claims import Claim, above, independent_share_ci
    nan, task, seed = float("nan"), result.task, (result.config.seed if result.config else 0)
    base = dict(observation=4, task=task, n=len(result.memorized))
    empty = dict(value=nan, lo=nan, hi=nan, control_value=nan, control_lo=nan, control_hi=nan, difference=nan,
                 difference_lo=nan, difference_hi=nan, verdict="cannot be tested")
    out = []
    counts, whole = result.counts, lookup_name("whole input")
    share = lambda g: counts[counts["group"] == g]["distributed"].astype(float) if len(counts) else []  # noqa: E731
    noisy, look, clean = share("memorized noisy"), share(whole), share("clean")
    statistic = "share of memorized noisy instances that are distributed"
    c1 = dict(claim="most noisy labels depend on several inputs and an intermediate result", statistic=statistic,
              control=f"a {whole}, same changes",
              rule=(f"holds when the share lies above {min_share:.0%} and noisy minus look-up above {margin:g} "
                    "(95% intervals)"))
    c2 = dict(claim="noisy labels are as distributed as computed answers", statistic=statistic,
              control="correctly answered clean questions, same changes and removals",
              rule=(f"counts where the clean share lies above {min_share:.0%}; holds when noisy minus clean lies "
                    f"above -{clean_tolerance:g} (95% intervals)"))
    if len(noisy) and len(look):
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(noisy, look, n_resamples, seed)
        out.append(Claim(value=a, lo=alo, hi=ahi, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi,
                         verdict=weaker(above(a, alo, min_share), above(d, dlo, margin)),
                         note=("the look-up depends on every input too and on no intermediate result: its share is 0 "
                               f"by construction, so the {min_share:.0%} bar is what can fail"), **c1, **base))
    else:
        out.append(Claim(note="no memorized noisy instance", **empty, **c1, **base))
    if len(noisy) and len(clean):
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(noisy, clean, n_resamples, seed)
        sensitive = above(b, blo, min_share) == "holds"
        note = "" if sensitive else (
            f"the measure finds only {b:.1%} distributed among clean answers, which the model computes: it does not "
            "separate computation from a look-up in this run")
        out.append(Claim(value=a, lo=alo, hi=ahi, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi,
                         verdict=above(d, dlo, -clean_tolerance) if sensitive else "cannot be tested", note=note,
                         **c2, **base))
    else:
        out.append(Claim(note="no memorized noisy instance or no clean control", **empty, **c2, **base))
    c3 = dict(claim="the noisy label's influence fades with distance",
              statistic="share answered with their own answer, two-input minus single-input changes",
              control="the same on correctly answered clean questions",
              rule=f"holds when noisy minus clean lies above {distance_margin:g} (95% interval)")
    dn, dc = distance_shares(result, "memorized noisy"), distance_shares(result, "clean")
    if len(dn) and len(dc):
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(
            dn["correct_two"] - dn["correct_one"], dc["correct_two"] - dc["correct_one"], n_resamples, seed)
        out.append(Claim(value=a, lo=alo, hi=ahi, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi, verdict=above(d, dlo, distance_margin),
                         note=(f"own answer after one change {dn['correct_one'].mean():.1%}, after two "
                               f"{dn['correct_two'].mean():.1%} (clean: {dc['correct_one'].mean():.1%}, "
                               f"{dc['correct_two'].mean():.1%}); the noisy label kept after two changes "
                               f"{dn['kept_two'].mean():.1%}"), **c3, **base))
    else:
        out.append(Claim(note="no two-input change of a memorized noisy or a clean question", **empty, **c3, **base))
    if task != "fda":
        return out
    c4 = dict(claim="the noisy label survives inputs with the same sum",
              statistic="share of same-sum inputs that keep the noisy label",
              control="single-digit changes of the same instances",
              rule=f"holds when same-sum minus single-change lies above {same_sum_margin:g} (95% interval)")
    same = result.extra.get("same_sum", pd.DataFrame())
    single = result.changes[result.changes["group"] == "memorized noisy"]
    if len(same) and len(single):
        own = float(same["correct"].mean())
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(
            same.groupby("id")["kept"].mean(), single.groupby("id")["kept"].mean().astype(float), n_resamples, seed)
        by = same.groupby("kind")["kept"].mean()
        out.append(Claim(value=a, lo=alo, hi=ahi, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi, verdict=above(d, dlo, same_sum_margin),
                         note=("kept " + ", ".join(f"{v:.1%} {k}" for k, v in by.items())
                               + f"; the same-sum input is answered with its (unchanged) true sum on {own:.1%}"),
                         **c4, **base))
    else:
        out.append(Claim(note="no same-sum input", **empty, **c4, **base))
    c5 = dict(claim="a noisy digit rides on its place's computation",
              statistic="share of noisy digits that persist where the true digit at that place is unchanged",
              control="noisy digits where the change alters the true digit at that place",
              rule=f"holds when unchanged minus altered lies above {place_margin:g} (95% interval)")
    per = digit_persistence_by_place(single) if len(single) else pd.DataFrame()
    if len(per) and per["place_unchanged"].any() and (~per["place_unchanged"]).any():
        u = per[per["place_unchanged"]].groupby("id")["persists"].mean().astype(float)
        v = per[~per["place_unchanged"]].groupby("id")["persists"].mean().astype(float)
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(u, v, n_resamples, seed)
        out.append(Claim(value=a, lo=alo, hi=ahi, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi, verdict=above(d, dlo, place_margin),
                         note="a look-up keyed on the input (whole or one operand) keeps neither", **c5, **base))
    else:
        out.append(Claim(note="no eligible noisy digit in both kinds of change", **empty, **c5, **base))
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
