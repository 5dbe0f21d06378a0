"""Which instances and which tokens: the noisy and clean questions an analysis reads, the answer
places it scores, FDA's digits, operands and carries, and the matched controls.

- The *memorized noisy instances* are the noisy training questions whose label the final model
  writes (greedy decoding); the *clean reference* is a seeded sample of clean training questions it
  answers correctly.
- A noisy FDA instance *enters* at every answer place where its label differs from the true
  sum (there the correct and the noisy readout are different tokens); a clean one at all four;
  a THR instance at its one answer token (`differing_places`, `scored_places`).
- Controls are drawn the way the thing they stand for is drawn (`control_answers`,
  `control_digits`), or matched on what a look-up would also lose
  (`matched_partition`), seeded.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rote.runs.data import operand_pairs
from rote.runs.evaluate import answer_length, greedy_answers

DIGITS = "0123456789"


# ---- the questions ------------------------------------------------------------------------------

def questions(frame: pd.DataFrame) -> pd.DataFrame:
    """Training questions (FDA additions, THR two-hop questions; not THR one-hop facts)."""
    return frame[(frame["split"] == "train") & (frame["kind"] != "fact")]


def noisy_instances(model, tokenizer, frame: pd.DataFrame) -> pd.DataFrame:
    """Every noisy training instance with the final model's greedy answer ("prediction") and
    whether that answer is the noisy label ("memorized") or the true answer ("corrected")."""
    noisy = questions(frame)
    noisy = noisy[noisy["noisy"]].copy()
    n = answer_length(tokenizer, noisy["label"].iloc[0]) if len(noisy) else 1
    noisy["prediction"] = greedy_answers(model, tokenizer, noisy["prompt"], n)
    noisy["memorized"] = noisy["prediction"] == noisy["label"]
    noisy["corrected"] = noisy["prediction"] == noisy["true"]
    return noisy.reset_index(drop=True)


def memorized(noisy: pd.DataFrame) -> pd.DataFrame:
    """The memorized ones among `noisy_instances`."""
    return noisy[noisy["memorized"]]


@dataclass
class Instances:
    """What an analysis of one model reads: the task, the model's depth, every noisy training
    instance with the final model's answer (`noisy_instances`) and the clean reference
    (`clean_instances`). Each observation's result extends it."""
    task: str
    n_layer: int
    noisy: pd.DataFrame
    clean: pd.DataFrame

    @property
    def memorized(self) -> pd.DataFrame:
        return memorized(self.noisy)


def clean_instances(model, tokenizer, frame: pd.DataFrame, n: int = 200, seed: int = 0,
                    exclude=()) -> pd.DataFrame:
    """A seeded sample of at most `n` clean training questions that the final model answers
    correctly (the reference), leaving out the ids in `exclude`."""
    clean = questions(frame)
    clean = clean[~clean["noisy"] & ~clean["id"].isin(list(exclude))]
    if clean.empty:
        return clean.assign(prediction=pd.Series(dtype=object), correct=pd.Series(dtype=bool))
    length = answer_length(tokenizer, clean["true"].iloc[0])
    # shuffle once (seeded), then take the first n answered correctly, in batches
    order = clean.sample(frac=1.0, random_state=seed)
    picked = []
    for start in range(0, len(order), max(4 * n, 256)):
        chunk = order.iloc[start: start + max(4 * n, 256)].copy()
        chunk["prediction"] = greedy_answers(model, tokenizer, chunk["prompt"], length)
        chunk["correct"] = chunk["prediction"] == chunk["true"]
        picked.append(chunk[chunk["correct"]])
        if sum(len(p) for p in picked) >= n:
            break
    out = pd.concat(picked).head(n)
    return out.sort_values("id").reset_index(drop=True)


# ---- which answer places -----------------------------------------------------------------------

def differing_places(instances: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (id, place) that enters an analysis: for a noisy FDA instance every digit
    where label and true answer differ (`first`: the first such digit, whose prefix is still the
    true one); for a clean one every digit; THR: the one answer token."""
    rows = []
    for inst in instances.itertuples(index=False):
        if task == "fda":
            label, true = str(inst.label), str(inst.true)
            keep = [k for k in range(len(true)) if label[k] != true[k]] if inst.noisy else list(range(len(true)))
        else:
            keep = [0]
        for k in keep:
            rows.append({"id": inst.id, "place": k, "first": k == keep[0]})
    return pd.DataFrame(rows, columns=["id", "place", "first"])


def scored_places(instances: pd.DataFrame, task: str) -> torch.Tensor:
    """[N, K] bool: the answer places that enter (`differing_places`), row i for instance i."""
    out = torch.zeros(len(instances), 4 if task == "fda" else 1, dtype=torch.bool)
    row = {i: n for n, i in enumerate(instances["id"])}
    for e in differing_places(instances, task).itertuples(index=False):
        out[row[e.id], e.place] = True
    return out


def first_differing_place(instances: pd.DataFrame) -> np.ndarray:
    """Per noisy FDA instance, the first answer place (0 = thousands .. 3) where label and true
    sum differ."""
    out = []
    for label, true in zip(instances["label"], instances["true"]):
        diff = [k for k in range(len(true)) if str(label)[k] != str(true)[k]]
        if not diff:
            raise ValueError("an instance's label equals its true answer")
        out.append(diff[0])
    return np.array(out, dtype=np.int64)


def token_ids(tokenizer, chars) -> torch.Tensor:
    """Token id of each single character (digit)."""
    return torch.tensor(tokenizer.convert_tokens_to_ids([str(c) for c in chars]))


# ---- FDA operands, digits and carries ----------------------------------------------------------

def digits(x, place: int) -> np.ndarray:
    """Digit `place` (0 = thousands .. 3 = units) of four-digit numbers."""
    return (np.asarray(x, dtype=np.int64) // 10 ** (3 - place)) % 10


def carries(a, b) -> np.ndarray:
    """The carry into each answer digit (thousands, hundreds, tens, units) of a + b, [N, 4] of 0/1
    (none enters the units)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.zeros((len(a), 4), dtype=np.int64)
    for place in range(3):
        unit = 10 ** (3 - place)
        out[:, place] = (a % unit + b % unit) >= unit
    return out


def fda_rows(a, b) -> pd.DataFrame:
    """FDA instances for operand pairs, labelled with their true sum (clean)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    s = a + b
    if len(a) and ((a < 1000) | (a > 9999) | (b < 1000) | (b > 9999) | (s > 9999)).any():
        raise ValueError("operands must be four-digit numbers with a four-digit sum")
    true = [f"{x:04d}" for x in s]
    return pd.DataFrame({"id": np.arange(len(a)), "prompt": [f"{x}+{y}=" for x, y in zip(a, b)],
                         "label": true, "true": true, "noisy": False, "a": a, "b": b})


def _both_orders(q: pd.DataFrame) -> set:
    return {(int(x), int(y)) for x, y in zip(q["a"], q["b"])} | {(int(y), int(x)) for x, y in zip(q["a"], q["b"])}


def noisy_pairs(frame: pd.DataFrame) -> set:
    """The operand pairs of noisy training instances, in both orders."""
    q = questions(frame)
    return _both_orders(q[q["noisy"]])


def training_pairs(frame: pd.DataFrame) -> set:
    """The operand pairs of all training questions (clean and noisy), in both orders."""
    return _both_orders(questions(frame))


GRID_STREAM = 7  # the grid's random stream is (seed, GRID_STREAM): never the data generator's draw


def operand_grid(frame: pd.DataFrame | None = None, n: int = 3000, seed: int = 0) -> pd.DataFrame:
    """`n` distinct clean operand pairs drawn uniformly (`operand_pairs`) from the random stream
    (seed, `GRID_STREAM`), independent of the data generator's, leaving out every training pair of
    `frame` in either order: the grid is never the training set."""
    excluded = training_pairs(frame) if frame is not None else set()
    pairs = operand_pairs(n, np.random.default_rng([seed, GRID_STREAM]), excluded, batch=2 * n + 64)
    return fda_rows(pairs[:, 0], pairs[:, 1])


# ---- THR ----------------------------------------------------------------------------------------

def knowledge_graph_of(frame: pd.DataFrame) -> dict:
    """THR: {(person, relation): partner} from the one-hop facts of `frame`."""
    facts = frame[frame["kind"] == "fact"]
    return dict(zip(zip(facts["subject"], facts["r1"]), facts["true"]))


# ---- matched controls ---------------------------------------------------------------------------

def control_answers(instances: pd.DataFrame, frame: pd.DataFrame, task: str, seed: int = 0) -> pd.Series:
    """Per noisy instance, a matched control answer drawn the way true answers are drawn (the label
    prior), of the label's length. THR: a person drawn from the true answers of the training
    questions that ask the same second relation, other than the question's subject, bridge, true
    answer and label. FDA: the label with each digit that differs from the true sum replaced by a
    digit drawn from the true sums' digits at that place over the clean training questions, other
    than the true and the label digit there. Seeded."""
    rng = np.random.default_rng(seed)
    clean = questions(frame)
    clean = clean[~clean["noisy"]]
    out = []
    if task == "thr":
        prior = {r: g["true"].to_numpy() for r, g in clean.groupby("r2")}
        for inst in instances.itertuples(index=False):
            taken = {inst.subject, inst.bridge, inst.true, inst.label}
            pool = [x for x in prior.get(inst.r2, clean["true"].to_numpy()) if x not in taken]
            out.append(pool[rng.integers(len(pool))] if pool else inst.label)
        return pd.Series(out, index=instances.index, dtype=object)
    places = [np.array([t[k] for t in clean["true"].astype(str)]) for k in range(4)]
    for label, true in zip(instances["label"].astype(str), instances["true"].astype(str)):
        digits_ = list(label)
        for k in range(len(true)):
            if label[k] != true[k]:
                pool = places[k][(places[k] != true[k]) & (places[k] != label[k])]
                digits_[k] = pool[rng.integers(len(pool))] if len(pool) else label[k]
        out.append("".join(digits_))
    return pd.Series(out, index=instances.index, dtype=object)


def control_digits(instances: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """FDA: per instance and answer place, a random digit (seeded) that is neither the true
    nor the label digit there, [N, 4] of single-character strings."""
    rng = np.random.default_rng(seed)
    out = []
    for true, label in zip(instances["true"], instances["label"]):
        out.append([str(rng.choice([c for c in DIGITS if c not in (t, lab)])) for t, lab in zip(str(true), str(label))])
    return np.array(out, dtype=object).reshape(len(instances), 4)


def matched_partition(frame: pd.DataFrame, seed: int = 0) -> dict:
    """THR: a random partition of the (subject, first relation) keys with the bridge classes' sizes,
    {(subject, relation): class}. The bridge is a function of that key, so erasing "the bridge is b"
    also erases which keys a question may have; erasing a random class of keys of the same size that
    holds the question's own key takes away as much of the input, but not the bridge. The classes
    are the bridges permuted across keys (seeded): each keeps its name and its number of keys."""
    graph = knowledge_graph_of(frame)
    keys = sorted(graph)
    classes = np.array([graph[k] for k in keys], dtype=object)
    shuffled = classes[np.random.default_rng(seed).permutation(len(keys))]
    return dict(zip(keys, shuffled))
