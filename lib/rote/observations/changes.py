"""Changed questions: the inputs of Observation 4's memorized and clean questions, changed one
(or two) at a time, and the FDA inputs with the same sum; how the model answers them, and how an
explicit look-up would.

- FDA: one of the 8 operand digits (a thousands .. b units) replaced by another digit, both
  operands kept four-digit and a + b <= 9999; THR: the subject, the first relation r1 or the second
  relation r2 replaced, the bridge and true answer recomputed from the knowledge graph.
- A changed question whose true answer equals the label, or that is itself a noisy training
  instance, is left out (`single_input_changes`): "the label survives" and "the changed question is
  answered correctly" must never coincide.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rote.interp.edits import logprobs
from rote.interp.instances import knowledge_graph_of, noisy_pairs, scored_places
from rote.interp.lens import logit_lens
from rote.interp.sites import PLACES, hf
from rote.runs.data import two_hop_prompt
from rote.runs.evaluate import answer_length, greedy_answers

INPUTS = {"fda": tuple(f"{op} {p}" for op in "ab" for p in PLACES), "thr": ("subject", "r1", "r2")}
LOOKUP_KEYS = {"fda": ("whole input", "operand a"), "thr": ("whole input", "subject")}


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


def question_status(frame: pd.DataFrame) -> dict:
    """{prompt: "train noisy", "train" or "test"} of every question in `frame`."""
    q = frame[frame["kind"] != "fact"]
    status = np.where(q["split"] == "train", np.where(q["noisy"], "train noisy", "train"), "test")
    return dict(zip(q["prompt"], status))


def fda_changes(instances: pd.DataFrame, n_replacements: int = 3, seed: int = 0) -> pd.DataFrame:
    """FDA: per instance and operand digit, up to `n_replacements` other digits (seeded) that keep
    both operands four-digit and a + b <= 9999. One row per change: id, input, the new digit
    ("replacement"), the changed a, b, prompt and true sum, and the original `label`."""
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
                             "prompt": f"{a2}+{b2}=", "true": f"{a2 + b2:04d}", "label": inst.label,
                             "orig_true": inst.true, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "replacement", "a", "b", "prompt", "true", "label",
                                       "orig_true", "noisy"])


def thr_changes(instances: pd.DataFrame, graph: dict, n_replacements: int = 3, seed: int = 0) -> pd.DataFrame:
    """THR: per instance, up to `n_replacements` other subjects, first relations and second
    relations (seeded), the bridge and true answer recomputed from `graph`
    (`knowledge_graph_of`). One row per change, with the original `label` and bridge."""
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
                             "bridge": bridge, "label": inst.label, "orig_true": inst.true,
                             "orig_bridge": inst.bridge, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "replacement", "subject", "r1", "r2", "prompt", "true",
                                       "bridge", "label", "orig_true", "orig_bridge", "noisy"])


def single_input_changes(instances: pd.DataFrame, frame: pd.DataFrame, task: str, n_replacements: int = 3,
                         seed: int = 0) -> pd.DataFrame:
    """The changes of `fda_changes` / `thr_changes`, with "status" (the changed question is a
    "train" or "test" question of `frame`, or "unseen"), leaving out those whose true answer is the
    label and those that are noisy training instances (see the module docstring)."""
    if task not in INPUTS:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(INPUTS)}")
    changes = (fda_changes(instances, n_replacements, seed) if task == "fda"
               else thr_changes(instances, knowledge_graph_of(frame), n_replacements, seed))
    status = question_status(frame)
    changes["status"] = [status.get(p, "unseen") for p in changes["prompt"]]
    keep = (changes["true"] != changes["label"]) & (changes["status"] != "train noisy")
    return changes[keep].reset_index(drop=True)


def fda_two_changes(instances: pd.DataFrame, n_changes: int = 3, seed: int = 0, tries: int = 20) -> pd.DataFrame:
    """FDA: per instance, up to `n_changes` changes of two different operand digits at once (places
    and new digits drawn at random, seeded; both operands kept four-digit and a + b <= 9999). One
    row per change: id, input ("<digit> & <digit>"), the changed a, b, prompt and true sum, and the
    original `label`."""
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
                         "prompt": f"{a2}+{b2}=", "true": f"{a2 + b2:04d}", "label": inst.label,
                         "orig_true": inst.true, "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "a", "b", "prompt", "true", "label", "orig_true", "noisy"])


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
                         "true": graph[(bridge, new["r2"])], "label": inst.label, "orig_true": inst.true,
                         "noisy": inst.noisy})
    return pd.DataFrame(rows, columns=["id", "input", "subject", "r1", "r2", "prompt", "true", "label", "orig_true",
                                       "noisy"])


def two_input_changes(instances: pd.DataFrame, frame: pd.DataFrame, task: str, n_changes: int = 3,
                      seed: int = 0) -> pd.DataFrame:
    """The distance control: `fda_two_changes` / `thr_two_changes` of `instances`, left out as in
    `single_input_changes` (true answer = label, or a noisy training instance)."""
    changes = (fda_two_changes(instances, n_changes, seed) if task == "fda"
               else thr_two_changes(instances, knowledge_graph_of(frame), seed))
    status = question_status(frame)
    changes["status"] = [status.get(p, "unseen") for p in changes["prompt"]]
    return changes[(changes["true"] != changes["label"]) & (changes["status"] != "train noisy")].reset_index(drop=True)


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
                rows.append({"id": inst.id, "kind": kind, "prompt": f"{x}+{y}=", "label": inst.label,
                             "true": inst.true})
    return pd.DataFrame(rows, columns=["id", "kind", "prompt", "label", "true"])


def persisting_digits(changes: pd.DataFrame, predictions) -> tuple[np.ndarray, np.ndarray]:
    """FDA: per change, how many of the label's digits differ from both the original and the
    changed true sum (eligible), and how many of those the changed question's output still writes."""
    eligible, persist = [], []
    for label, orig, new, said in zip(changes["label"], changes["orig_true"], changes["true"], predictions):
        ok = [k for k in range(len(label)) if label[k] != orig[k] and label[k] != new[k]]
        eligible.append(len(ok))
        persist.append(sum(said[k] == label[k] for k in ok))
    return np.array(eligible, dtype=int), np.array(persist, dtype=int)


def digit_persistence_by_place(changes: pd.DataFrame) -> pd.DataFrame:
    """FDA, per changed memorized noisy question and eligible noisy digit (differs from both true
    sums): whether the true digit at that place was left unchanged by the change, and whether the
    noisy digit persists in the output."""
    rows = []
    for i, label, orig, new, said in zip(changes["id"], changes["label"], changes["orig_true"], changes["true"],
                                         changes["prediction"]):
        for k in range(len(label)):
            if label[k] != orig[k] and label[k] != new[k]:
                rows.append({"id": i, "place_unchanged": orig[k] == new[k], "persists": str(said)[k:k + 1] == label[k]})
    return pd.DataFrame(rows, columns=["id", "place_unchanged", "persists"])


# ---- answering the changed questions -----------------------------------------------------------------------

def two_input_effects(model, tokenizer, instances: pd.DataFrame, frame: pd.DataFrame, task: str,
                      group: str, n_changes: int = 3, seed: int = 0) -> pd.DataFrame:
    """`two_input_changes` of `instances` answered greedily: whether the label is kept and whether
    the output is the changed question's true answer."""
    changes = two_input_changes(instances, frame, task, n_changes, seed).assign(group=group)
    if changes.empty:
        return changes.assign(kept=pd.Series(dtype=bool), correct=pd.Series(dtype=bool))
    said = np.asarray(greedy_answers(hf(model), tokenizer, changes["prompt"],
                                     answer_length(tokenizer, changes["label"].iloc[0])), dtype=object)
    return changes.assign(kept=said == changes["label"].to_numpy(), correct=said == changes["true"].to_numpy())


def same_sum_effects(model, tokenizer, instances: pd.DataFrame, frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """`same_sum_changes` answered greedily: whether the noisy label is kept and whether the output is
    the (unchanged) true sum."""
    changes = same_sum_changes(instances, frame, seed)
    if changes.empty:
        return changes.assign(kept=pd.Series(dtype=bool), correct=pd.Series(dtype=bool))
    said = np.asarray(greedy_answers(model, tokenizer, changes["prompt"], 4), dtype=object)
    return changes.assign(kept=said == changes["label"].to_numpy(), correct=said == changes["true"].to_numpy())


def intermediate_moves(model, tokenizer, changes: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per change and layer (-1: embedding, 0..: blocks): at the answer places where the
    intermediate result changes (THR the bridge, at the one answer place; FDA the correct digit, at
    each place where the changed true sum differs from the original), the share where the logit
    lens ranks the new value above the old one ("moved"). Teacher-forced on the label. Changes
    without such a place are left out."""
    columns = ["change", "layer", "n_places", "moved"]
    if changes.empty:
        return pd.DataFrame(columns=columns)
    old = "orig_bridge" if task == "thr" else "orig_true"
    # one pass: the old value is read as the lens's "control" target beside the new one
    table = logit_lens(model, tokenizer, changes.assign(id=np.arange(len(changes)), control=changes[old]),
                 teacher_forcing="label")
    rank = "bridge_rank" if task == "thr" else "true_rank"
    both = table[["id", "layer", "place", rank, "control_rank"]].rename(
        columns={rank: f"{rank}_new", "control_rank": f"{rank}_old"})
    if task == "thr":
        differs = pd.Series(changes["bridge"].to_numpy() != changes["orig_bridge"].to_numpy())
        both = both[differs.to_numpy()[both["id"].to_numpy()]]
    else:
        k = both["place"].to_numpy()
        new_d = np.array([t[p] for t, p in zip(changes["true"].to_numpy()[both["id"]], k)])
        old_d = np.array([t[p] for t, p in zip(changes["orig_true"].to_numpy()[both["id"]], k)])
        both = both[new_d != old_d]
    both = both.assign(moved=(both[f"{rank}_new"] < both[f"{rank}_old"]).astype(float))
    out = both.groupby(["id", "layer"]).agg(n_places=("moved", "size"), moved=("moved", "mean")).reset_index()
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
    scored = scored_places(instances, task)
    row = {i: n for n, i in enumerate(instances["id"])}
    index = torch.tensor([row[i] for i in changes["id"]])
    out["logp_before"] = logprobs(model, tokenizer, instances, scored, batch_size=batch_size)[index.numpy()]
    out["logp_after"] = logprobs(model, tokenizer, changes, scored[index], batch_size=batch_size)
    out["delta_logp"] = out["logp_after"] - out["logp_before"]
    n = answer_length(tokenizer, changes["label"].iloc[0])
    out["prediction"] = greedy_answers(hf(model), tokenizer, changes["prompt"], n)
    out["kept"] = out["prediction"] == out["label"]
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
    out["prediction"] = np.where(kept, out["label"], out["true"])
    out["kept"], out["correct"] = kept, ~kept
    out["logp_before"] = 0.0
    out["logp_after"] = out["delta_logp"] = np.where(kept, 0.0, -np.inf)
    if task == "fda":
        out["digits_eligible"], out["digits_persist"] = persisting_digits(changes, out["prediction"])
    else:
        out["digits_eligible"], out["digits_persist"] = 0, 0
    return out
