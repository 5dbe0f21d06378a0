"""Observation 2: predicting the noisy label relies on computing the correct reasoning.

We remove an intermediate result of the correct computation from one block's output and measure
what happens to the memorized noisy label: its teacher-forced log-probability and whether greedy
decoding still writes it (memorization accuracy). Every removal has a control of the same shape
that removes something the instance does not need, and the same removal is measured on clean
questions that the model answers correctly (there the label is the true answer).

THR, the bridge entity (the person the first hop leads to):
- "projection": the bridge's embedding direction (= its unembedding direction: tied weights) is
  projected out of the block output at every position; control: a random other person's
  direction (not the subject, bridge, true answer or label of that question).
- "LEACE": a rank-1 LEACE eraser of "the bridge is b" (b: the question's own bridge), fitted on
  the block output at the last prompt position of clean training questions held out from the
  evaluation, applied there; control: the eraser of the random person of "projection".

FDA, the intermediate results of the addition, at the readout positions of the scored digits
(noisy instances: the digits where the noisy label differs from the true sum; clean ones: all four):
- "projection": the correct digit's embedding direction is projected out; control: a random digit
  that is neither the correct nor the label digit.
- "LEACE carry": a rank-1 LEACE eraser of the carry into that digit, fitted per position on held-out
  clean questions (teacher-forced on the true sum); control: an eraser fitted on shuffled carries.
  (No carry enters the units digit: its eraser is empty, and so is its control's.)

Measures per instance: `logp`, the mean log-prob of the label's scored tokens (THR: the one answer
token), before and after; `mem`, whether greedy decoding gives the whole label. Effect sizes are
means over instances with 95% percentile-bootstrap confidence intervals (seeded resampling of
instances; paired where target and control are measured on the same instances).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import load_dataset
from .interventions import (answer_logprobs, control_entities, entity_basis, fit_leace, prompt_batch,
                            relabel, resid_at, resids_at, run_edited, run_edited_hooks)
from .lens import hf
from .override import (clean_instances, differing_positions, final_test_accuracy, noisy_instances, questions,
                       reasoning_caveat)
from .train import get_or_train

METHODS = {"thr": ("projection", "LEACE"), "fda": ("projection", "LEACE carry")}
REMOVED = {("thr", "projection"): ("bridge", "random person"), ("thr", "LEACE"): ("bridge", "random person"),
           ("fda", "projection"): ("correct digit", "random digit"),
           ("fda", "LEACE carry"): ("carry", "shuffled carry")}
GROUPS = ("memorized noisy", "clean")


# ---- bootstrap --------------------------------------------------------------------------------------

def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and its percentile-bootstrap confidence interval (resampling the values
    with replacement, seeded). NaN for an empty input."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def bootstrap_diff_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) of two independent samples and its percentile-bootstrap interval (each
    sample resampled on its own, seeded)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(1)
             - b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(1))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(a.mean() - b.mean()), float(lo), float(hi)


# ---- low-rank affine edits ------------------------------------------------------------------------

@dataclass
class Removal:
    """Per instance i and answer position k, the edit x <- x - A B^T (x - mu) of the block output
    (A, B [N, K, d, r]; mu [N, K, d]); applied at the readout position of answer token k where
    `where` [N, K] is set, or, with `every_position`, at every position (K = 1)."""
    A: torch.Tensor
    B: torch.Tensor
    mu: torch.Tensor
    where: torch.Tensor
    every_position: bool = False

    def edit(self, rows: torch.Tensor, plen: torch.Tensor, device, dtype):
        A, B = self.A[rows].to(device, dtype), self.B[rows].to(device, dtype)
        mu, where = self.mu[rows].to(device, dtype), self.where[rows].to(device)
        cols = (plen.to(device) - 1)[:, None] + torch.arange(A.shape[1], device=device)
        every = self.every_position

        def fn(h):
            if every:
                coef = torch.einsum("btd,bdr->btr", h - mu[:, 0, None], B[:, 0]) * where[:, 0, None, None]
                return h - torch.einsum("btr,bdr->btd", coef, A[:, 0])
            batch = torch.arange(h.shape[0], device=h.device)
            delta = torch.zeros_like(h)
            for k in range(A.shape[1]):
                x = h[batch, cols[:, k]]
                coef = torch.einsum("bd,bdr->br", x - mu[:, k], B[:, k]) * where[:, k, None]
                delta[batch, cols[:, k]] = torch.einsum("br,bdr->bd", coef, A[:, k])
            return h - delta
        return fn


def projection_removal(basis: torch.Tensor, where: torch.Tensor, every_position: bool = False) -> Removal:
    """Projecting out orthonormal `basis` [N, K, d, r]: A = B = basis, mu = 0."""
    return Removal(basis, basis, torch.zeros(basis.shape[:-1]), where, every_position)


def eraser_factors(eraser, tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An `Eraser` x -> x - P (x - mean) as mean and factors A, B [d, rank] with P = A B^T."""
    u, s, vh = torch.linalg.svd(eraser.proj.double())
    keep = s > tol * s.max().clamp(min=1e-30)
    return eraser.mean.float(), (u[:, keep] * s[keep]).float(), vh[keep].T.float()


def binary_leace(x: torch.Tensor, labels, classes, tol: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each class c of `classes`, the rank-1 LEACE eraser of "label == c" fitted on x [N, d]
    (the same as `fit_leace(x, labels == c)`, computed together): mean [d], A and B [C, d] with
    the eraser x -> x - A_c (B_c . (x - mean)). A class absent from `labels` gets A_c = B_c = 0."""
    x = x.detach().double().cpu()
    labels = np.asarray(labels)
    mean = x.mean(0)
    xc = x - mean
    val, vec = torch.linalg.eigh(xc.T @ xc / len(x))
    keep = val > tol * val.max()
    v, val = vec[:, keep], val[keep]
    w, w_pinv = v @ torch.diag(val.rsqrt()) @ v.T, v @ torch.diag(val.sqrt()) @ v.T
    z = torch.tensor(np.stack([labels == c for c in classes], 1), dtype=torch.float64)
    cov = xc.T @ (z - z.mean(0)) / len(x)  # [d, C]
    u = w @ cov
    norm = u.norm(dim=0)
    ok = norm > tol * norm.max().clamp(min=1e-30) if norm.numel() else norm > 0
    u = torch.where(ok, u / norm.clamp(min=1e-30), torch.zeros_like(u))
    return mean.float(), (w_pinv @ u).T.float(), (w @ u).T.float()


# ---- running a removal ------------------------------------------------------------------------------

@torch.no_grad()
def label_effects(model, tokenizer, instances: pd.DataFrame, layer: int, removal: Removal,
                  scored: torch.Tensor, batch_size: int = 256, hooks: bool = False,
                  before: pd.DataFrame | None = None) -> pd.DataFrame:
    """Run `instances` (teacher-forced on the label in data) with `removal` applied to block
    `layer`'s output. One row per instance: logp_before/after (mean log-prob of the label's tokens
    where `scored` [N, K] is set) and mem_before/after (greedy decoding gives the whole label).
    `before`: the unedited columns of an earlier call on the same instances (not run again)."""
    model_hf, run = hf(model), (run_edited_hooks if hooks else run_edited)
    device, out = model_hf.device, []
    for start in range(0, len(instances), batch_size):
        rows = instances.iloc[start: start + batch_size]
        index = torch.arange(start, start + len(rows))
        ids, mask, plen = prompt_batch(tokenizer, rows, "answer")
        ids, mask = ids.to(device), mask.to(device)
        edits = {(layer, "resid"): removal.edit(index, plen, device, model_hf.dtype)}
        sel = scored[index].to(device).double()
        table = {"id": rows["id"].to_numpy()}
        runs = [("after", lambda: run(model, ids, edits))]
        if before is None:
            runs.insert(0, ("before", lambda: model_hf(ids).logits))
        else:
            table["logp_before"] = before["logp_before"].to_numpy()[start: start + len(rows)]
            table["mem_before"] = before["mem_before"].to_numpy()[start: start + len(rows)]
        for name, forward in runs:
            logits = forward()
            lp = answer_logprobs(logits, ids, mask).double()
            table[f"logp_{name}"] = ((lp * sel).sum(1) / sel.sum(1).clamp(min=1)).cpu().numpy()
            pred = logits[:, :-1].argmax(-1)
            table[f"mem_{name}"] = ((pred == ids[:, 1:]) | ~mask[:, 1:]).all(1).cpu().numpy()
        out.append(pd.DataFrame(table))
    columns = ["id", "logp_before", "logp_after", "mem_before", "mem_after"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def carries(instances: pd.DataFrame) -> np.ndarray:
    """FDA: the carry into each answer digit (thousands, hundreds, tens, units), [N, 4] of 0/1."""
    a = np.asarray(instances["a"], dtype=np.int64)
    b = np.asarray(instances["b"], dtype=np.int64)
    out = np.zeros((len(a), 4), dtype=np.int64)
    carry = np.zeros(len(a), dtype=np.int64)
    for k, unit in ((2, 1), (1, 10), (0, 100)):  # carry into tens, hundreds, thousands
        carry = ((a // unit) % 10 + (b // unit) % 10 + carry >= 10).astype(np.int64)
        out[:, k] = carry
    return out


def scored_positions(instances: pd.DataFrame, task: str) -> torch.Tensor:
    """[N, K] bool: the answer tokens that are scored and edited (see the module docstring)."""
    k = 4 if task == "fda" else 1
    out = torch.zeros(len(instances), k, dtype=torch.bool)
    entries = differing_positions(instances, task)
    row = {i: n for n, i in enumerate(instances["id"])}
    for e in entries.itertuples(index=False):
        out[row[e.id], e.position] = True
    return out


@dataclass
class Fits:
    """LEACE erasers fitted on held-out clean questions, per block layer (see `fit_erasers`)."""
    task: str
    layers: list
    leace: dict  # layer -> (mean, A, B): THR per entity [E, d]; FDA per position [4, d] target, control
    entities: list  # THR: the entities with an eraser (the classes of A, B); FDA: []
    n_fit: int


def fit_erasers(model, tokenizer, fit_rows: pd.DataFrame, task: str, layers, seed: int = 0,
                hooks: bool = False) -> Fits:
    """THR: per layer, rank-1 LEACE erasers of "the bridge is b" for every person b that is a
    bridge in `fit_rows`, on the block output at the last prompt position. FDA: per layer and
    answer position, rank-1 LEACE of the carry into that digit (and of shuffled carries, the
    control), on the block output at that digit's readout position (teacher-forced on the true
    sum; `fit_rows` must be clean)."""
    leace, entities = {}, []
    if task == "thr":
        entities = sorted(set(fit_rows["bridge"]))
    plen = len(tokenizer(fit_rows["prompt"].iloc[0], add_special_tokens=False)["input_ids"]) if len(fit_rows) else 0
    positions = [-1] if task == "thr" else [plen - 1 + k for k in range(4)]
    resids = resids_at(model, tokenizer, fit_rows, layers, positions, hooks=hooks) if len(fit_rows) >= 2 else {}
    for layer in layers:
        if len(fit_rows) < 2:
            leace[layer] = None
            continue
        if task == "thr":
            x = resids[(layer, -1)]
            leace[layer] = binary_leace(x, fit_rows["bridge"].to_numpy(), entities)
        else:
            z = torch.tensor(carries(fit_rows))
            target, control = [], []
            for k in range(4):
                x = resids[(layer, plen - 1 + k)]
                target.append(eraser_factors(fit_leace(x, z[:, k])))
                control.append(eraser_factors(fit_leace(x, relabel(z[:, k], seed=seed + k))))
            leace[layer] = (target, control)
    return Fits(task, list(layers), leace, entities, len(fit_rows))


def _stack_factors(factors, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position (mean, A, B) of varying rank -> mu [K, d], A and B [K, d, r] (zero-padded)."""
    r = max([1] + [f[1].shape[1] for f in factors])
    A, B = torch.zeros(len(factors), d, r), torch.zeros(len(factors), d, r)
    for k, (_, a, b) in enumerate(factors):
        A[k, :, : a.shape[1]], B[k, :, : b.shape[1]] = a, b
    return torch.stack([f[0] for f in factors]), A, B


def removals(model, tokenizer, instances: pd.DataFrame, task: str, method: str, layer: int,
             fits: Fits | None, controls) -> tuple[Removal, Removal]:
    """The target removal and its control for `instances` (see the module docstring). `controls`:
    THR, one person per instance; FDA, one digit per instance and answer position."""
    n, d = len(instances), hf(model).config.n_embd
    where = scored_positions(instances, task)
    if task == "thr" and method == "projection":
        basis = lambda names: entity_basis(model, tokenizer, names)[:, None]  # noqa: E731
        return (projection_removal(basis(instances["bridge"]), where, True),
                projection_removal(basis(controls), where, True))
    if task == "thr" and method == "LEACE":
        fit = fits.leace.get(layer) if fits else None
        out = []
        for names in (list(instances["bridge"]), list(controls)):
            A, B, mu = torch.zeros(n, 1, d, 1), torch.zeros(n, 1, d, 1), torch.zeros(n, 1, d)
            if fit is not None:
                mean, a, b = fit
                index = {e: i for i, e in enumerate(fits.entities)}
                for i, name in enumerate(names):
                    if name in index:
                        A[i, 0, :, 0], B[i, 0, :, 0], mu[i, 0] = a[index[name]], b[index[name]], mean
            out.append(Removal(A, B, mu, where))
        return tuple(out)
    if task == "fda" and method == "projection":
        digits = lambda table: entity_basis(model, tokenizer, table.ravel()).view(n, 4, d, -1)  # noqa: E731
        true = np.array([list(str(t)) for t in instances["true"]]).reshape(n, 4)
        return (projection_removal(digits(true), where),
                projection_removal(digits(np.asarray(controls).reshape(n, 4)), where))
    if task == "fda" and method == "LEACE carry":
        fit = fits.leace.get(layer) if fits else None
        out = []
        for which in range(2):
            if fit is None:
                mu, A, B = torch.zeros(4, d), torch.zeros(4, d, 1), torch.zeros(4, d, 1)
            else:
                mu, A, B = _stack_factors(fit[which], d)
            out.append(Removal(A.expand(n, *A.shape).clone(), B.expand(n, *B.shape).clone(),
                               mu.expand(n, *mu.shape).clone(), where))
        return tuple(out)
    raise ValueError(f"unknown method {method!r} for {task}; allowed: {', '.join(METHODS[task])}")


def control_digits(instances: pd.DataFrame, seed: int = 0) -> np.ndarray:
    """FDA: per instance and answer position, a random digit (seeded) that is neither the true
    nor the label digit there, [N, 4] of single-character strings."""
    rng = np.random.default_rng(seed)
    out = []
    for true, label in zip(instances["true"], instances["answer"]):
        row = []
        for t, lab in zip(str(true), str(label)):
            allowed = [c for c in "0123456789" if c not in (t, lab)]
            row.append(str(rng.choice(allowed)))
        out.append(row)
    return np.array(out, dtype=object).reshape(len(instances), 4)


def removal_effects(model, tokenizer, groups: dict, task: str, layers, fits: Fits | None,
                    methods=None, pool=None, seed: int = 0, batch_size: int = 256,
                    hooks: bool = False) -> pd.DataFrame:
    """Every removal of `methods` at every layer of `layers`, target and control, on each group
    of instances ({"memorized noisy": rows, "clean": rows}). One row per (method, layer, group,
    removed, id): logp_before/after, delta_logp, mem_before/after. `pool`: THR, the people to draw
    control persons from (default: those with a fitted eraser)."""
    methods = list(methods or METHODS[task])
    columns = ["method", "layer", "group", "removed", "id", "logp_before", "logp_after", "delta_logp",
               "mem_before", "mem_after"]
    parts = []
    for group, rows in groups.items():
        if rows is None or rows.empty:
            continue
        rows = rows.reset_index(drop=True)
        if task == "thr":
            people = pool if pool is not None else (fits.entities if fits and fits.entities else None)
            controls = control_entities(rows, people, seed=seed)
        else:
            controls = control_digits(rows, seed=seed)
        scored, before = scored_positions(rows, task), None  # the unedited run is the same for every removal
        for method in methods:
            for layer in layers:
                pair = removals(model, tokenizer, rows, task, method, layer, fits, controls)
                for removed, removal in zip(("target", "control"), pair):
                    t = label_effects(model, tokenizer, rows, layer, removal, scored, batch_size, hooks, before)
                    before = t if before is None else before
                    parts.append(t.assign(method=method, layer=layer, group=group, removed=removed))
    if not parts:
        return pd.DataFrame(columns=columns)
    table = pd.concat(parts, ignore_index=True)
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
class Reliance:
    """Observation 2 for one model."""
    task: str
    n_layer: int
    noisy: pd.DataFrame  # every noisy training instance, with the final prediction
    clean: pd.DataFrame  # clean questions answered correctly (evaluation reference)
    effects: pd.DataFrame  # per instance (`removal_effects`)
    sizes: pd.DataFrame  # `effect_sizes`
    contrasts: pd.DataFrame  # `contrasts`
    fits: Fits | None = None
    config: Config | None = None
    extra: dict = field(default_factory=dict)

    @property
    def memorized(self) -> pd.DataFrame:
        return self.noisy[self.noisy["memorized"]]


def reliance_of(model, tokenizer, frame: pd.DataFrame, task: str, n_clean: int = 200, n_fit: int = 2000,
                seed: int = 0, n_resamples: int = 1000, hooks: bool = False,
                config: Config | None = None) -> Reliance:
    """`reliance` for a given model, tokenizer and instance table (no training)."""
    model_hf = hf(model)
    layers = list(range(model_hf.config.n_layer))
    noisy = noisy_instances(model, tokenizer, frame)
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    rest = questions(frame)
    rest = rest[~rest["noisy"] & ~rest["id"].isin(clean["id"])]
    fit_rows = rest.sample(min(n_fit, len(rest)), random_state=seed).sort_values("id") if len(rest) else rest
    fits = fit_erasers(model, tokenizer, fit_rows, task, layers, seed, hooks)
    pool = None
    if task == "thr":
        people = sorted(set(frame.loc[frame["kind"] == "fact", "subject"]))
        pool = [p for p in people if p in set(fits.entities)] or people
    groups = {"memorized noisy": noisy[noisy["memorized"]], "clean": clean}
    effects = removal_effects(model, tokenizer, groups, task, layers, fits, pool=pool, seed=seed, hooks=hooks)
    return Reliance(task, len(layers), noisy, clean, effects, effect_sizes(effects, n_resamples, seed),
                    contrasts(effects, n_resamples, seed), fits, config, {"pool": pool})


def reliance(config: Config, n_clean: int = 200, n_fit: int = 2000, device: str | None = None,
             progress: bool = True) -> Reliance:
    """Train `config` (or load its finished run) and measure every removal at every layer on its
    memorized noisy instances and on up to `n_clean` correctly answered clean questions."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    result = reliance_of(model, tokenizer, load_dataset(config), config.task, n_clean, n_fit, config.seed,
                         config=config)
    result.extra["test_acc"] = final_test_accuracy(config)
    return result


# ---- in words -------------------------------------------------------------------------------------

def _fmt_ci(m, lo, hi, digits=2) -> str:
    return f"{m:+.{digits}f} (95% CI {lo:+.{digits}f} to {hi:+.{digits}f})"


def strongest(result: Reliance) -> pd.DataFrame:
    """Per method, the layer where the target removal lowers the memorized noisy label's log-prob
    most beyond the control (the most negative paired contrast), with its interval, the accuracy
    before and after the target and the control removal, and the clean questions' change there."""
    c = result.contrasts
    paired = c[(c["comparison"] == "target - control") & (c["group"] == "memorized noisy")]
    rows = []
    for method, g in paired.groupby("method", sort=False):
        best = g.loc[g["delta_logp"].idxmin()]
        s = result.sizes.set_index(["method", "layer", "group", "removed"])
        pick = lambda group, removed: s.loc[(method, best["layer"], group, removed)] if (method, best["layer"], group, removed) in s.index else None  # noqa: E731
        t, k, cl = pick("memorized noisy", "target"), pick("memorized noisy", "control"), pick("clean", "target")
        rows.append({"method": method, "layer": int(best["layer"]), "contrast": best["delta_logp"],
                     "lo": best["lo"], "hi": best["hi"], "n": int(best["n"]),
                     "acc_before": t["acc_before"], "acc_target": t["acc_after"], "acc_control": k["acc_after"],
                     "delta_target": t["delta_logp"], "delta_control": k["delta_logp"],
                     "clean_delta": cl["delta_logp"] if cl is not None else float("nan"),
                     "clean_lo": cl["delta_logp_lo"] if cl is not None else float("nan"),
                     "clean_hi": cl["delta_logp_hi"] if cl is not None else float("nan"),
                     "clean_acc_after": cl["acc_after"] if cl is not None else float("nan"),
                     "significant_layers": int((g["hi"] < 0).sum()), "n_layers": len(g)})
    return pd.DataFrame(rows)


def verdict(result: Reliance) -> str:
    """Observation 2 for this run, in plain words (see `_verdict`), with a caveat when the model
    has hardly learned the task (test accuracy below 50%)."""
    return _verdict(result) + reasoning_caveat(result.extra.get("test_acc"), result.task)


def _verdict(result: Reliance) -> str:
    """Observation 2 for this run, in plain words, computed from the effect sizes.

    It holds when for some method and layer removing the correct intermediate result lowers the
    memorized noisy label's log-prob more than the control does (paired 95% interval below zero)
    and leaves fewer noisy labels memorized than the control does; it holds in part when only the
    log-prob drops beyond the control; otherwise it does not hold. Log-probs are in nats per
    scored answer token."""
    task, c = result.task, result.config
    what = "the bridge entity" if task == "thr" else "the correct digit or the carry"
    control = "a random person" if task == "thr" else "a random digit or a shuffled carry"
    where = f"In this {task.upper()} run" + (f" ({c.noise:.0%} noise, seed {c.seed})" if c else "")
    n_mem, n_clean = len(result.memorized), len(result.clean)
    head = (f"{where}, {n_mem:,} of {len(result.noisy):,} noisy training instances are memorized; "
            + (f"{n_clean:,} correctly answered clean questions are the reference. " if n_clean != 1
               else "1 correctly answered clean question is the reference. "))
    if len(result.noisy) == 0:
        return head + "Without noisy instances Observation 2 cannot be tested."
    if n_mem == 0:
        sizes = result.sizes
        clean = sizes[(sizes["group"] == "clean") & (sizes["removed"] == "target")]
        text = ""
        if len(clean):
            worst = clean.loc[clean["delta_logp"].idxmin()]
            text = (f"On the clean questions, removing {what} changes the correct answer's log-prob by at most "
                    + _fmt_ci(worst["delta_logp"], worst["delta_logp_lo"], worst["delta_logp_hi"])
                    + f" ({worst['method']}, layer {int(worst['layer'])}). ")
        return head + text + "With no memorized noisy label, Observation 2 cannot be tested in this run: train longer."
    parts = []
    for b in strongest(result).itertuples(index=False):
        t_name, k_name = REMOVED[(task, b.method)]
        clean = ("" if b.clean_delta != b.clean_delta else
                 f"; on clean questions the same removal changes the correct answer's log-prob by "
                 + _fmt_ci(b.clean_delta, b.clean_lo, b.clean_hi)
                 + f", accuracy {b.clean_acc_after:.0%} after")
        parts.append(
            f"Removing the {t_name} ({b.method}), at its strongest layer ({b.layer}): the noisy label's log-prob "
            f"changes by {b.delta_target:+.2f} against {b.delta_control:+.2f} for a {k_name}, a difference of "
            + _fmt_ci(b.contrast, b.lo, b.hi)
            + f", and memorization accuracy falls from {b.acc_before:.0%} to {b.acc_target:.0%} ({k_name}: "
            f"{b.acc_control:.0%}){clean}. The difference is below zero at {b.significant_layers} of "
            f"{b.n_layers} layers. ")
    c = result.contrasts
    paired = c[(c["comparison"] == "target - control") & (c["group"] == "memorized noisy")]
    below = paired[paired["hi"] < 0]
    if len(below) and (below["acc"] < 0).any():
        end = (f"The paper's Observation 2 holds in this run: memorizing the noisy label relies on computing "
               f"{what}, beyond what removing {control} does.")
    elif len(below):
        end = (f"The paper's Observation 2 holds only in part here: removing {what} lowers the noisy label's "
               "log-prob beyond the control, but no more noisy labels are lost than with the control.")
    else:
        end = (f"The paper's Observation 2 does not hold in this run: removing {what} hurts the noisy label no "
               f"more than removing {control} does.")
    return head + "".join(parts) + end


# ---- claims ---------------------------------------------------------------------------------------------

def reliance_claims(result: Reliance, min_clean_effect: float = 0.1, margin: float = 0.0) -> list:
    """Observation 2 as claims (`rote.claims`), one per method. A removal counts only at layers
    where it removes something from the clean reference: there its paired contrast (target minus
    control) on the correct answer's log-prob lies below -`min_clean_effect` nats (95% interval).
    At the informative layer where it is strongest on memorized noisy instances, the claim holds
    when the noisy label's paired contrast lies below -`margin` (95% interval), holds in part when
    only its mean does, and does not hold otherwise; with no informative layer the removal is
    uninformative and the claim cannot be tested."""
    from .claims import Claim, below
    c = result.contrasts
    paired = c[c["comparison"] == "target - control"] if len(c) else c
    out = []
    for method in METHODS[result.task]:
        target, control = REMOVED[(result.task, method)]
        claim = f"removing the {target} ({method}) harms the memorized noisy label"
        rule = (f"counts at layers where the clean reference's contrast lies below -{min_clean_effect:g} nats; "
                f"holds when the noisy label's contrast there lies below {0 - margin:g} (95% interval)")
        base = dict(observation=2, task=result.task, claim=claim, control=f"removing a {control}", rule=rule)
        nan = float("nan")
        m = paired[paired["method"] == method] if len(paired) else paired
        clean = m[m["group"] == "clean"].set_index("layer") if len(m) else m
        noisy = m[m["group"] == "memorized noisy"].set_index("layer") if len(m) else m
        informative = clean[clean["hi"] < -min_clean_effect].index if len(clean) else []
        usable = [layer for layer in informative if layer in noisy.index]
        if not usable:
            why = ("no memorized noisy instance" if len(noisy) == 0 else
                   "uninformative: at no layer does it remove anything from the clean reference"
                   + (f" (largest clean contrast {clean['delta_logp'].min():+.2f} nats)" if len(clean) else ""))
            out.append(Claim(statistic="noisy label's log-prob change (nats per token)", value=nan, lo=nan, hi=nan,
                             control_value=nan, control_lo=nan, control_hi=nan, difference=nan, difference_lo=nan,
                             difference_hi=nan, verdict="cannot be tested", note=why, n=len(result.memorized), **base))
            continue
        layer = min(usable, key=lambda layer: noisy.loc[layer, "delta_logp"])
        s = result.sizes.set_index(["method", "layer", "group", "removed"])
        t, k = s.loc[(method, layer, "memorized noisy", "target")], s.loc[(method, layer, "memorized noisy", "control")]
        row, cl = noisy.loc[layer], clean.loc[layer]
        out.append(Claim(statistic=f"noisy label's log-prob change (nats per token, layer {layer})",
                         value=float(t["delta_logp"]), lo=float(t["delta_logp_lo"]), hi=float(t["delta_logp_hi"]),
                         control_value=float(k["delta_logp"]), control_lo=float(k["delta_logp_lo"]),
                         control_hi=float(k["delta_logp_hi"]), difference=float(row["delta_logp"]),
                         difference_lo=float(row["lo"]), difference_hi=float(row["hi"]),
                         verdict=below(float(row["delta_logp"]), float(row["hi"]), margin), n=int(row["n"]),
                         note=(f"memorization accuracy {t['acc_before']:.0%} to {t['acc_after']:.0%} "
                               f"({control}: {k['acc_after']:.0%}); clean contrast there {cl['delta_logp']:+.2f} "
                               f"[{cl['lo']:+.2f}, {cl['hi']:+.2f}]; informative at {len(usable)} of {len(clean)} layers"),
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
    """`result.contrasts`, rounded: `delta_logp` [lo, hi] is the log-prob contrast, `acc` [acc_lo,
    acc_hi] the accuracy contrast."""
    if result.contrasts.empty:
        return pd.DataFrame({"note": ["no contrasts: nothing was removed"]})
    return result.contrasts.round(digits)
