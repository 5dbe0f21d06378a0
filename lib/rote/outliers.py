"""Observation 3: FDA noisy labels are fitted by shifting heuristic neurons ("outlier heuristics").

For every memorized noisy FDA instance (the final model's greedy answer is the noisy label):

- Where: the answer position k of the first digit where the noisy label differs from the true
  sum, read at its readout position (the token before digit k; column 9 + k of "abcd+efgh=" plus
  the answer), teacher-forced on the noisy label. Before k the label and the true sum agree, so
  the prefix there is the true one and the same position can be read on clean operand pairs.
- The driving neurons: every MLP neuron of every layer at that position gets the attribution
  a * dD/da, its post-GELU activation a times the gradient of D = logit(noisy digit k) -
  logit(true digit k) at that position (full backpropagation through the later layers). The `K`
  = 10 neurons with the largest attribution (argument `k`; all positive on the cpu model) are the
  driving neurons of the instance.
- Heuristic or dedicated: with the clean operand grid of `rote.heuristics` (activations at the
  same answer position, teacher-forced on the true sums), a driving neuron is "dedicated" (the
  look-up alternative) when it is on for the noisy instance (a > 0) and reaches half of that
  activation on fewer than `DEDICATED` = 1% of the grid; otherwise it is "heuristic" when its type
  at that position is one of the heuristic kinds of `rote.heuristics` (eta^2 >= 0.5 and active on
  at least 1% of the grid), else "other".
- The shift: clean neighbours of the instance are the operand pairs with exactly one of the 8
  operand digits changed to another value (72 at most), kept when both operands stay in 1000..8999,
  the sum stays <= 9999 and the pair is not a noisy training pair; each is teacher-forced on its
  own true sum and read at the same position. The shift of a neuron is
  z = (a - mean of the neighbours) / (sample standard deviation of the neighbours, ddof=1),
  NaN when that deviation is below 1e-6; its direction is "toward the noisy label" when
  (a - neighbour mean) * dD/da > 0.
- Patching: the driving neurons are set to their neighbour means at that position only (the
  rest of the run is unchanged); an instance is rescued when the model then writes the true digit
  there (argmax of the patched logits at that position, teacher-forced on the label, whose prefix
  is the true one: what greedy decoding writes). We also decode the whole answer greedily with the
  patch in place at every step and report how often it is the true sum: the later digits are
  recalled at their own positions, which are not patched. Control: for each driving neuron a
  random other neuron of the same layer (seeded, not a driving neuron of the instance), patched
  to its neighbour mean in the same way. The rescue curve repeats this with the top 5, 10, 20, 50,
  100 and 200 neurons by attribution (those up to a quarter of all neurons; as many random ones,
  control seed = seed + number patched, and seed itself for K).

Intervals: shares and medians over driving neurons are bootstrapped over instances (1,000
resamples of instances, neurons kept with their instance; percentile intervals); rescue rates
have Wilson intervals; rescue minus control is a paired bootstrap over instances.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import load_dataset
from .heuristics import (KINDS, PLACES, Heuristics, answer_activations, classify, digits, fda_rows, neuron_heuristics,
                         noisy_pairs, operand_grid, pattern_families, range_edges)
from .interventions import prompt_batch, run_edited, run_edited_hooks
from .lens import hf
from .override import final_test_accuracy, noisy_instances, reasoning_caveat, wilson_interval
from .reliance import bootstrap_ci
from .train import get_or_train

K = 10  # driving neurons per instance
KS = (5, 10, 20, 50, 100, 200)  # numbers of top neurons patched for the rescue curve
DEDICATED = 0.01  # a neuron on for the noisy instance that reaches half its activation on less than
#                   this share of the clean grid is dedicated to the instance
CATEGORIES = ("heuristic", "dedicated", "other")


# ---- where and with what ------------------------------------------------------------------------

def analysis_position(instances: pd.DataFrame) -> np.ndarray:
    """Per noisy instance, the first answer digit (0 = thousands .. 3) where label and true sum
    differ."""
    out = []
    for label, true in zip(instances["answer"], instances["true"]):
        diff = [k for k in range(len(true)) if str(label)[k] != str(true)[k]]
        if not diff:
            raise ValueError("an instance's label equals its true answer")
        out.append(diff[0])
    return np.array(out, dtype=np.int64)


def neighbours(a: int, b: int, excluded=frozenset()) -> pd.DataFrame:
    """Clean neighbours of (a, b): one operand digit changed (module docstring). Columns a, b,
    operand ("a" or "b"), place (0 = thousands .. 3)."""
    rows = []
    for name, x, y in (("a", a, b), ("b", b, a)):
        for place in range(4):
            old = int(digits(x, place))
            for v in range(10):
                if v == old:
                    continue
                new = x + (v - old) * 10 ** (3 - place)
                pair = (new, y) if name == "a" else (y, new)
                if 1000 <= new <= 8999 and sum(pair) <= 9999 and pair not in excluded:
                    rows.append({"a": pair[0], "b": pair[1], "operand": name, "place": place})
    return pd.DataFrame(rows, columns=["a", "b", "operand", "place"])


def token_ids(tokenizer, chars) -> torch.Tensor:
    """Token id of each single character (digit)."""
    return torch.tensor(tokenizer.convert_tokens_to_ids([str(c) for c in chars]))


# ---- attribution ------------------------------------------------------------------------------------

def neuron_attribution(model, ids: torch.Tensor, cols: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor,
                       hooks: bool = False):
    """Per row i, at column cols[i]: every layer's post-GELU activations a [N, n_layer, M], the
    gradient of D_i = logit(plus[i]) - logit(minus[i]) at that column with respect to them, and
    D [N]. Attribution = a * gradient. One traced run (nnsight; `hooks`: plain torch hooks)."""
    n_layer = hf(model).config.n_layer
    store = {}

    def keep(layer):
        def fn(h):
            store[layer] = h
            return h
        return fn
    run = run_edited_hooks if hooks else run_edited
    device = hf(model).device
    ids, cols = ids.to(device), cols.to(device)
    rows = torch.arange(len(ids), device=device)
    with torch.enable_grad():
        logits = run(model, ids, {(layer, "neuron"): keep(layer) for layer in range(n_layer)}, grad=True)
        at = logits[rows, cols]
        diff = at[rows, plus.to(device)] - at[rows, minus.to(device)]
        grads = torch.autograd.grad(diff.sum(), [store[layer] for layer in range(n_layer)])
    acts = torch.stack([store[layer][rows, cols] for layer in range(n_layer)], 1)
    grad = torch.stack([g[rows, cols] for g in grads], 1)
    return acts.detach().cpu(), grad.detach().cpu(), diff.detach().cpu()


# ---- setting neurons ----------------------------------------------------------------------------------

def _set_edit(cols: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """Edit of one layer's neuron point: in row i at column cols[i], neurons where mask[i] is set
    take values[i]; rows whose column lies beyond the sequence are left alone."""
    def fn(h):
        c = cols.to(h.device)
        ok = c < h.shape[1]
        rows = torch.arange(len(h), device=h.device)[ok]
        h = h.clone()
        h[rows, c[ok]] = torch.where(mask[ok].to(h.device), values[ok].to(h), h[rows, c[ok]])
        return h
    return fn


@torch.no_grad()
def set_neurons(model, ids: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor, values: torch.Tensor,
                hooks: bool = False) -> torch.Tensor:
    """Logits [N, T, V] with, in row i at column cols[i], the neurons where mask [N, n_layer, M] is
    set replaced by values [N, n_layer, M] (only the layers with something to set are edited)."""
    run = run_edited_hooks if hooks else run_edited
    ids = ids.to(hf(model).device)
    edits = {(layer, "neuron"): _set_edit(cols, mask[:, layer], values[:, layer])
             for layer in range(mask.shape[1]) if mask[:, layer].any()}
    return run(model, ids, edits) if edits else hf(model)(ids).logits


@torch.no_grad()
def patched_greedy(model, prompt_ids: torch.Tensor, cols: torch.Tensor, mask: torch.Tensor, values: torch.Tensor,
                   n_tokens: int = 4, hooks: bool = False) -> torch.Tensor:
    """Greedy decoding of `n_tokens` with the neurons set as in `set_neurons` at every step (the
    edit applies once a row's column is inside the sequence): the generated ids [N, n_tokens]."""
    x = prompt_ids.to(hf(model).device)
    for _ in range(n_tokens):
        logits = set_neurons(model, x, cols, mask, values, hooks)
        x = torch.cat([x, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return x[:, -n_tokens:].cpu()


# ---- neighbours' activations --------------------------------------------------------------------------

@torch.no_grad()
def activations_at(model, ids: torch.Tensor, cols: torch.Tensor, batch_size: int = 1024,
                   hooks: bool = False) -> torch.Tensor:
    """Post-GELU activations of every layer at column cols[i] of row i: [N, n_layer, M]. Tokens
    after a batch's last column are not run (a causal model's activations there do not see them)."""
    n_layer, run, out = hf(model).config.n_layer, (run_edited_hooks if hooks else run_edited), []
    for start in range(0, len(ids), batch_size):
        c, store = cols[start:start + batch_size], {}
        x = ids[start:start + batch_size, : int(c.max()) + 1]

        def keep(layer, c=c, store=store):
            def fn(h):
                store[layer] = h[torch.arange(len(h), device=h.device), c.to(h.device)].detach().cpu()
                return h
            return fn
        run(model, x.to(hf(model).device), {(layer, "neuron"): keep(layer) for layer in range(n_layer)})
        out.append(torch.stack([store[layer] for layer in range(n_layer)], 1))
    return torch.cat(out).float()


@torch.no_grad()
def neighbour_stats(model, tokenizer, instances: pd.DataFrame, positions: np.ndarray, excluded=frozenset(),
                    chunk: int = 32, hooks: bool = False):
    """Per instance, over its clean neighbours (teacher-forced on their true sums) at the column of
    its analysis position: mean and sample std (ddof=1) of every neuron [I, n_layer, M] (NaN with
    fewer than 2 neighbours), and the number of neighbours [I]."""
    config = hf(model).config
    n_layer, m = config.n_layer, config.n_inner or 4 * config.n_embd
    mean = torch.full((len(instances), n_layer, m), float("nan"))
    std = torch.full((len(instances), n_layer, m), float("nan"))
    count = np.zeros(len(instances), dtype=np.int64)
    for start in range(0, len(instances), chunk):
        parts = []
        for i in range(start, min(start + chunk, len(instances))):
            nb = neighbours(int(instances["a"].iloc[i]), int(instances["b"].iloc[i]), excluded)
            parts.append(nb.assign(of=i))
            count[i] = len(nb)
        nb = pd.concat(parts, ignore_index=True)
        if nb.empty:
            continue
        ids, _, plen = prompt_batch(tokenizer, fda_rows(nb["a"], nb["b"]), "true")
        of = nb["of"].to_numpy()
        acts = activations_at(model, ids, torch.as_tensor(int(plen[0]) - 1 + positions[of]), hooks=hooks)
        for i in np.unique(of):
            x = acts[torch.as_tensor(of == i)].double()
            mean[i] = x.mean(0).float()
            if len(x) > 1:
                std[i] = x.std(0, unbiased=True).float()
    return mean, std, count


# ---- other grids: the grid is a random choice too ------------------------------------------------------

N_GRIDS = 3  # independent grids drawn besides the main one, so that intervals cover the grid's draw


def categories_on_grid(model, tokenizer, frame: pd.DataFrame, tables: list[pd.DataFrame], heur: Heuristics,
                       n_grid: int, seed: int, dedicated: float, hooks: bool = False) -> list[np.ndarray]:
    """The `category` of every row of each neuron table in `tables` (NEURON_COLUMNS) recomputed on
    another grid (`operand_grid` with `seed`): the share of that grid reaching half the neuron's
    activation (dedicated below `dedicated`) and the unit's type classified on that grid, only for
    the units the tables use."""
    grid = operand_grid(frame, n_grid, seed)
    acts = answer_activations(model, tokenizer, grid, hooks=hooks)
    rows = pd.concat(tables, ignore_index=True)
    units = rows[["position", "layer", "neuron"]].astype(np.int64).drop_duplicates().reset_index(drop=True)
    x = acts[:, *(torch.tensor(units[c].to_numpy()) for c in units.columns)].numpy()
    typ = classify(x, pattern_families(grid["a"], grid["b"], range_edges(grid["a"], grid["b"])),
                   heur.match, heur.rare)["type"].to_numpy()
    where = {u: i for i, u in enumerate(units.itertuples(index=False, name=None))}
    out = []
    for t in tables:
        u = np.array([where[k] for k in t[["position", "layer", "neuron"]].astype(np.int64).itertuples(
            index=False, name=None)], dtype=np.int64)
        a = t["act"].to_numpy(float)
        high = np.where(a > 0, (x[:, u] >= a / 2).mean(0), np.nan) if len(u) else np.zeros(0)
        out.append(np.where((a > 0) & (high < dedicated), "dedicated",
                            np.where(np.isin(typ[u], KINDS), "heuristic", "other")))
    return out


# ---- one call per model --------------------------------------------------------------------------------

NEURON_COLUMNS = ["id", "position", "rank", "layer", "neuron", "attribution", "act", "grad", "nbr_mean", "nbr_std",
                  "z", "toward_noisy", "clean_high_share", "type", "family", "eta2", "matters", "category"]


@dataclass
class Outliers:
    """Observation 3 for one FDA model (see the module docstring)."""
    noisy: pd.DataFrame  # every noisy training instance, with the final prediction
    instances: pd.DataFrame  # the memorized ones analysed: position, D before and after each patch, rescue
    neurons: pd.DataFrame  # one row per (instance, driving neuron), NEURON_COLUMNS
    control: pd.DataFrame  # the same for the random control neurons (rank: of the driving neuron it stands for)
    heuristics: Heuristics
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # per instance, k patched and driving/control
    k: int = K
    dedicated: float = DEDICATED
    config: Config | None = None
    extra: dict = field(default_factory=dict)
    clean_neurons: pd.DataFrame = field(default_factory=pd.DataFrame)  # `clean_drivers`: the matched control
    clean_patch: pd.DataFrame = field(default_factory=pd.DataFrame)
    grids: dict = field(default_factory=dict)  # grid seed -> (categories of `neurons`, of `clean_neurons`)


def _neuron_table(inst, pos, picks, acts, grad, mean, std, grid_acts, heur: Heuristics, dedicated: float):
    """One row per (instance, picked neuron): picks [I, k, 2] of (layer, neuron)."""
    n_layer, m = acts.shape[1], acts.shape[2]
    i = np.repeat(np.arange(len(inst)), picks.shape[1])
    layer, neuron = picks[..., 0].reshape(-1), picks[..., 1].reshape(-1)
    k = pos[i]
    a, g = acts[i, layer, neuron].numpy(), grad[i, layer, neuron].numpy()
    mu, sd = mean[i, layer, neuron].numpy(), std[i, layer, neuron].numpy()
    z = np.where(sd > 1e-6, (a - mu) / np.where(sd > 1e-6, sd, 1.0), np.nan)
    grid = grid_acts[:, k, layer, neuron].numpy()  # [N_grid, rows]
    high = np.where(a > 0, (grid >= a / 2).mean(0), np.nan)
    unit = heur.table.iloc[(k * n_layer + layer) * m + neuron]
    typ = unit["type"].to_numpy()
    category = np.where((a > 0) & (high < dedicated), "dedicated", np.where(np.isin(typ, KINDS), "heuristic", "other"))
    return pd.DataFrame({"id": inst["id"].to_numpy()[i], "position": k, "rank": np.tile(np.arange(picks.shape[1]), len(inst)),
                         "layer": layer, "neuron": neuron, "attribution": a * g, "act": a, "grad": g,
                         "nbr_mean": mu, "nbr_std": sd, "z": z, "toward_noisy": (a - mu) * g > 0,
                         "clean_high_share": high, "type": typ, "family": unit["family"].to_numpy(),
                         "eta2": unit["eta2"].to_numpy(), "matters": unit["matters"].to_numpy(),
                         "category": category}, columns=NEURON_COLUMNS)


def _control_picks(picks: np.ndarray, m: int, seed: int) -> np.ndarray:
    """For each picked (layer, neuron), a random other neuron of the same layer, not picked for that
    instance (seeded; without replacement unless the layer has too few other neurons)."""
    rng, out = np.random.default_rng(seed), picks.copy()
    for i in range(len(picks)):
        for layer in np.unique(picks[i, :, 0]):
            sel = picks[i, :, 0] == layer
            pool = np.setdiff1d(np.arange(m), picks[i, sel, 1])
            pool = pool if len(pool) else np.arange(m)
            out[i, sel, 1] = rng.choice(pool, size=int(sel.sum()), replace=bool(sel.sum() > len(pool)))
    return out


def _patch(model, tokenizer, inst, cols, picks, values, hooks, greedy: bool = True):
    """D at the analysis column (teacher-forced on the label), whether the true digit is written
    there, the greedy answer (empty without `greedy`) and whether the digit written there changed,
    with the picked neurons set to `values` [I, n_layer, M]."""
    ids, _, plen = prompt_batch(tokenizer, inst, "answer")
    mask = torch.zeros(values.shape, dtype=torch.bool)
    rows = np.repeat(np.arange(len(inst)), picks.shape[1])
    mask[rows, picks[..., 0].reshape(-1), picks[..., 1].reshape(-1)] = True
    logits = set_neurons(model, ids, cols, mask, values, hooks).cpu()
    r = torch.arange(len(inst))
    at = logits[r, cols]
    plus = ids[r, cols + 1]
    minus = token_ids(tokenizer, [t[k] for t, k in zip(inst["true"], cols - int(plen[0]) + 1)])
    d = (at[r, plus] - at[r, minus]).numpy()
    digit = (at.argmax(-1) == minus).numpy()
    answers = [""] * len(inst)
    if greedy:
        gen = patched_greedy(model, ids[:, : int(plen[0])], cols, mask, values, 4, hooks)
        answers = [tokenizer.decode(row) for row in gen.tolist()]
    return d, digit, answers, (at.argmax(-1) != plus).numpy()


def clean_drivers(model, tokenizer, frame: pd.DataFrame, positions: np.ndarray, heur: Heuristics, k: int = K,
                  ks=KS, n_clean: int = 200, seed: int = 0, dedicated: float = DEDICATED,
                  hooks: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The matched control of the driving neurons: the same analysis on up to `n_clean` clean
    training questions that the model answers correctly, each read at an answer position drawn from
    the noisy instances' `positions` (seeded). Their driving neurons push the written (true) digit
    over the runner-up digit (D = logit(true) - logit(runner-up), teacher-forced on the true sum);
    the same neighbour statistics, categories and shift are computed, and the same patch (top kk
    drivers set to their neighbours' mean) counts whether the digit written there changes.
    Returns (neurons: NEURON_COLUMNS of the top `k`, per instance: id, position, D_before and
    `changed_<kk>` for each kk)."""
    from .override import clean_instances
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    if clean.empty or len(positions) == 0:
        return pd.DataFrame(columns=NEURON_COLUMNS), pd.DataFrame(columns=["id", "position", "D_before"])
    clean = clean.assign(a=clean["a"].astype(int), b=clean["b"].astype(int)).reset_index(drop=True)
    pos = np.random.default_rng(seed).choice(np.asarray(positions), len(clean))
    ids, _, plen = prompt_batch(tokenizer, clean, "answer")
    cols = torch.as_tensor(int(plen[0]) - 1 + pos)
    r = torch.arange(len(clean))
    with torch.no_grad():
        logits = hf(model)(ids.to(hf(model).device)).logits.cpu()[r, cols]
    true_tok = ids[r, cols + 1]
    digit_ids = token_ids(tokenizer, "0123456789")
    masked = logits[:, digit_ids].clone()
    masked[digit_ids[None, :] == true_tok[:, None]] = -float("inf")
    runner = digit_ids[masked.argmax(-1)]
    acts, grad, diff = neuron_attribution(model, ids, cols, true_tok, runner, hooks)
    m = acts.shape[2]
    attribution = (acts * grad).reshape(len(clean), -1)
    ks = sorted({k, *[x for x in ks if x <= attribution.shape[1] // 4]})
    top = attribution.topk(min(max(ks), attribution.shape[1]), dim=1).indices.numpy()
    picks = np.stack([top // m, top % m], -1)
    mean, std, _ = neighbour_stats(model, tokenizer, clean, pos, noisy_pairs(frame), hooks=hooks)
    values = torch.where(torch.isnan(mean), acts, mean)
    neurons = _neuron_table(clean, pos, picks[:, :k], acts, grad, mean, std, heur.acts, heur, dedicated)
    table = pd.DataFrame({"id": clean["id"].to_numpy(), "position": pos, "D_before": diff.numpy()})
    for kk in ks:
        table[f"changed_{kk}"] = _patch(model, tokenizer, clean, cols, picks[:, :kk], values, hooks, greedy=False)[3]
    return neurons, table


def outlier_heuristics_of(model, tokenizer, frame: pd.DataFrame, k: int = K, n_grid: int = 3000, n_ablate: int = 32,
                          seed: int = 0, dedicated: float = DEDICATED, hooks: bool = False,
                          heuristics: Heuristics | None = None, config: Config | None = None,
                          ks=KS, n_clean: int = 200, n_grids: int = N_GRIDS) -> Outliers:
    """`outlier_heuristics` for a given model, tokenizer and FDA instance table (no training);
    `n_grids` more grids (seeds seed + 1 ..) recompute the driving neurons' categories."""
    heur = heuristics or neuron_heuristics(model, tokenizer, frame, n_grid, n_ablate, seed, hooks=hooks)
    noisy = noisy_instances(model, tokenizer, frame)
    inst = noisy[noisy["memorized"]].reset_index(drop=True)
    n_layer, m = heur.acts.shape[2], heur.acts.shape[3]
    if inst.empty:
        empty = pd.DataFrame(columns=NEURON_COLUMNS)
        return Outliers(noisy, inst.assign(position=pd.Series(dtype=int)), empty, empty.copy(), heur,
                        k=k, dedicated=dedicated, config=config)
    pos = analysis_position(inst)
    ids, _, plen = prompt_batch(tokenizer, inst, "answer")
    cols = torch.as_tensor(int(plen[0]) - 1 + pos)
    plus = ids[torch.arange(len(inst)), cols + 1]
    minus = token_ids(tokenizer, [t[j] for t, j in zip(inst["true"], pos)])
    acts, grad, diff = neuron_attribution(model, ids, cols, plus, minus, hooks)
    attribution = (acts * grad).reshape(len(inst), -1)
    ks = sorted({k, *[x for x in ks if x <= attribution.shape[1] // 4]})  # at most a quarter of all neurons
    top = attribution.topk(min(max(ks), attribution.shape[1]), dim=1).indices.numpy()
    picks = np.stack([top // m, top % m], -1)
    excluded = noisy_pairs(frame)
    mean, std, count = neighbour_stats(model, tokenizer, inst, pos, excluded, hooks=hooks)
    values = torch.where(torch.isnan(mean), acts, mean)  # no neighbours: a neuron keeps its value
    ctrl = _control_picks(picks[:, :k], m, seed)
    neurons = _neuron_table(inst, pos, picks[:, :k], acts, grad, mean, std, heur.acts, heur, dedicated)
    control = _neuron_table(inst, pos, ctrl, acts, grad, mean, std, heur.acts, heur, dedicated)
    table = inst[["id", "prompt", "answer", "true", "a", "b"]].copy()
    table["position"], table["n_neighbours"], table["D_before"] = pos, count, diff.numpy()
    curve = []
    for kk in ks:
        ctrl_k = ctrl if kk == k else _control_picks(picks[:, :kk], m, seed + kk)
        for name, p in (("driving", picks[:, :kk]), ("control", ctrl_k)):
            d, digit, answers, _ = _patch(model, tokenizer, inst, cols, p, values, hooks)
            whole = np.array(answers) == table["true"].to_numpy()
            if kk == k:
                table[f"D_{name}"], table[f"rescued_{name}"] = d, digit
                table[f"answer_{name}"], table[f"answer_rescued_{name}"] = answers, whole
            curve.append(pd.DataFrame({"id": table["id"], "k": kk, "patched": name, "D": d, "rescued": digit,
                                       "answer_rescued": whole,
                                       "still_noisy": np.array(answers) == table["answer"].to_numpy()}))
    clean_neurons, clean_patch = clean_drivers(model, tokenizer, frame, pos, heur, k, ks, n_clean, seed, dedicated,
                                               hooks)
    grids = {seed: (neurons["category"].to_numpy(), clean_neurons["category"].to_numpy())}
    for j in range(1, n_grids + 1):
        grids[seed + j] = tuple(categories_on_grid(model, tokenizer, frame, [neurons, clean_neurons], heur,
                                                   len(heur.grid), seed + j, dedicated, hooks))
    return Outliers(noisy, table, neurons, control, heur, pd.concat(curve, ignore_index=True), k, dedicated, config,
                    clean_neurons=clean_neurons, clean_patch=clean_patch, grids=grids)


def outlier_heuristics(config: Config, k: int = K, n_grid: int = 3000, n_ablate: int = 32,
                       device: str | None = None, progress: bool = True) -> Outliers:
    """Train `config` (FDA; or load its finished run), read its neuron heuristics over a clean grid
    and analyse the neurons that drive each memorized noisy label."""
    if config.task != "fda":
        raise ValueError(f"Observation 3 is about FDA; task must be 'fda', got {config.task!r}")
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    result = outlier_heuristics_of(model, tokenizer, load_dataset(config), k, n_grid, n_ablate, config.seed,
                                   config=config)
    result.extra["test_acc"] = final_test_accuracy(config)
    return result


# ---- summary and verdict --------------------------------------------------------------------------------

def _by_instance(table: pd.DataFrame, column: str) -> pd.Series:
    return table.groupby("id", sort=True)[column].mean()


def cluster_median_ci(table: pd.DataFrame, column: str, n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Median of `column` over all rows and its percentile-bootstrap interval, resampling instances
    (ids) with their rows (seeded). NaN rows are left out."""
    t = table.dropna(subset=[column])
    if t.empty:
        return float("nan"), float("nan"), float("nan")
    groups = [g[column].to_numpy(float) for _, g in t.groupby("id", sort=True)]
    rng = np.random.default_rng(seed)
    meds = [np.median(np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))]))
            for _ in range(n_resamples)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(meds, [tail, 100 - tail])
    return float(np.median(t[column].to_numpy(float))), float(lo), float(hi)


def paired_diff_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a - b) over paired values and its percentile-bootstrap interval (`bootstrap_ci`)."""
    return bootstrap_ci(np.asarray(a, float) - np.asarray(b, float), n_resamples, seed, level)


def rescue_curve(result: Outliers, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per number k of patched neurons: the rescue rate (the first differing digit becomes the true
    digit) with the top-k driving neurons and with k random neurons of the same layers (Wilson 95%
    intervals), the paired difference (bootstrap), the share whose whole greedy answer becomes the
    true sum, the share still writing the noisy label, and mean D after."""
    columns = ["k", "rescue_driving", "driving_lo", "driving_hi", "rescue_control", "control_lo", "control_hi",
               "diff", "diff_lo", "diff_hi", "answer_driving", "answer_control", "still_noisy_driving",
               "still_noisy_control", "D_driving", "D_control"]
    rows = []
    for kk, g in result.curve.groupby("k", sort=True) if len(result.curve) else []:
        d, c = g[g["patched"] == "driving"].set_index("id"), g[g["patched"] == "control"].set_index("id")
        rd, rc = float(d["rescued"].mean()), float(c["rescued"].mean())
        diff = paired_diff_ci(d["rescued"].astype(float), c.loc[d.index, "rescued"].astype(float), n_resamples, seed)
        rows.append([int(kk), rd, *wilson_interval(rd, len(d)), rc, *wilson_interval(rc, len(c)), *diff,
                     float(d["answer_rescued"].mean()), float(c["answer_rescued"].mean()), float(d["still_noisy"].mean()),
                     float(c["still_noisy"].mean()), float(d["D"].mean()), float(c["D"].mean())])
    return pd.DataFrame(rows, columns=columns)


def summary(result: Outliers, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The numbers the verdict is computed from (module docstring): counts, category shares (95%
    bootstrap over instances), median |z| of driving and control neurons, the share shifted toward
    the noisy label, rescue rates (Wilson) and rescue minus control (paired bootstrap), and D
    before and after each patch."""
    inst, nr, ct = result.instances, result.neurons, result.control
    s = {"n_noisy": len(result.noisy), "n_memorized": len(inst), "k": result.k,
         "n_neurons": len(nr), "units_heuristic_share": float(np.isin(result.heuristics.table["type"], KINDS).mean())}
    if inst.empty:
        return s
    s["positive_attribution_share"] = float((nr["attribution"] > 0).mean())
    for cat in CATEGORIES:
        s[cat], s[f"{cat}_lo"], s[f"{cat}_hi"] = bootstrap_ci(_by_instance(nr.assign(x=nr["category"] == cat), "x"),
                                                            n_resamples, seed)
    s["heur_minus_ded"], s["hmd_lo"], s["hmd_hi"] = bootstrap_ci(
        _by_instance(nr.assign(x=(nr["category"] == "heuristic").astype(float)
                                - (nr["category"] == "dedicated").astype(float)), "x"), n_resamples, seed)
    s["matters_share"] = float(nr["matters"].mean())
    s["sparse_5pct"] = float((nr["clean_high_share"] < 0.05).mean())  # sensitivity of "dedicated" to its 1%
    for name, t in (("driving", nr), ("control", ct)):
        s[f"abs_z_{name}"], s[f"abs_z_{name}_lo"], s[f"abs_z_{name}_hi"] = cluster_median_ci(
            t.assign(absz=t["z"].abs()), "absz", n_resamples, seed)
    s["z_nan"] = int(nr["z"].isna().sum())
    s["toward_control"] = float(ct["toward_noisy"].mean())
    s["toward"], s["toward_lo"], s["toward_hi"] = bootstrap_ci(_by_instance(nr.assign(x=nr["toward_noisy"].astype(float)), "x"),
                                                             n_resamples, seed)
    n = len(inst)
    for name in ("driving", "control"):
        r = float(inst[f"rescued_{name}"].mean())
        s[f"rescue_{name}"], (s[f"rescue_{name}_lo"], s[f"rescue_{name}_hi"]) = r, wilson_interval(r, n)
        s[f"answer_rescue_{name}"] = float(inst[f"answer_rescued_{name}"].mean())
        s[f"still_noisy_{name}"] = float((inst[f"answer_{name}"] == inst["answer"]).mean())
        s[f"D_{name}"] = float(inst[f"D_{name}"].mean())
    s["D_before"] = float(inst["D_before"].mean())
    s["rescue_diff"], s["rescue_diff_lo"], s["rescue_diff_hi"] = paired_diff_ci(
        inst["rescued_driving"].astype(float), inst["rescued_control"].astype(float), n_resamples, seed)
    curve = rescue_curve(result, n_resamples, seed)
    s["curve_ks"] = [int(x) for x in curve["k"]]
    passed = curve[curve["diff_lo"] > 0]
    row = passed.iloc[0] if len(passed) else (curve.iloc[-1] if len(curve) else None)
    if row is not None:
        s["rescue_k_pass"] = bool(len(passed))
        for key in ("k", "rescue_driving", "driving_lo", "driving_hi", "rescue_control", "control_lo", "control_hi",
                    "diff", "diff_lo", "diff_hi", "answer_driving"):
            s[f"curve_{key}"] = float(row[key])
    return s


def verdict(result: Outliers) -> str:
    """Observation 3 for this run, in plain words (see `_verdict`), with a caveat when the model
    has hardly learned addition."""
    return _verdict(summary(result), result.config) + reasoning_caveat(result.extra.get("test_acc"), "fda")


def _verdict(s: dict, config: Config | None = None) -> str:
    """Observation 3, computed from `summary`. Three tests: (A) the driving neurons are heuristic
    neurons more often than dedicated ones (the 95% interval of the per-instance difference of
    shares lies above zero); (B) they are shifted toward the noisy label beyond chance (the
    interval of the share shifted toward it lies above one half); (C) patching the top driving
    neurons to their clean neighbours' means rescues more instances than patching as many random
    neurons of the same layers (the interval of the paired difference lies above zero) for some
    number of patched neurons in the rescue curve. It holds when all three pass, does not
    hold when dedicated neurons outnumber heuristic ones (interval below zero) or neither B nor C
    passes, and holds in part otherwise. B is partly a selection effect (neurons picked for a
    large activation x gradient tend to sit above their neighbours); C is the causal check: a
    neuron at its neighbours' level would not change when patched to it."""
    where = "In this FDA run" + (f" ({config.noise:.0%} noise, seed {config.seed})" if config else "")
    head = f"{where}, the final model answers {s['n_memorized']:,} of its {s['n_noisy']:,} noisy training instances with the noisy label. "
    if s["n_noisy"] == 0:
        return head + "Without noisy instances Observation 3 cannot be tested."
    if s["n_memorized"] == 0:
        return head + "No noisy label is memorized, so Observation 3 cannot be tested in this run: train longer."
    pct = lambda x: f"{x:.0%}"  # noqa: E731
    body = (f"Of the {s['k']} neurons that drive each noisy label (largest activation x gradient on the noisy-minus-correct "
            f"logit difference), {pct(s['heuristic'])} are heuristic neurons also active on clean questions (95% CI "
            f"{pct(s['heuristic_lo'])} to {pct(s['heuristic_hi'])}) and {pct(s['dedicated'])} are dedicated to the instance "
            f"({pct(s['dedicated_lo'])} to {pct(s['dedicated_hi'])}); the rest ({pct(s['other'])}) have no clear pattern. "
            f"Against its clean neighbours a driving neuron is shifted by a median |z| of {s['abs_z_driving']:.1f} "
            f"({s['abs_z_driving_lo']:.1f} to {s['abs_z_driving_hi']:.1f}; random neurons of the same layers: "
            f"{s['abs_z_control']:.1f}), toward the noisy label in {pct(s['toward'])} of cases ({pct(s['toward_lo'])} to "
            f"{pct(s['toward_hi'])}). Setting the driving neurons to their neighbours' mean makes the model write the "
            f"true digit at the first digit where the label differs on {pct(s['rescue_driving'])} of the instances ({pct(s['rescue_driving_lo'])} to "
            f"{pct(s['rescue_driving_hi'])}), against {pct(s['rescue_control'])} for as many random neurons "
            f"({pct(s['rescue_control_lo'])} to {pct(s['rescue_control_hi'])})")
    if "curve_k" in s and int(s["curve_k"]) != s["k"]:
        body += ((f"; the first number of patched top neurons at which patching rescues more than the control is "
                  if s["rescue_k_pass"] else "; even with the largest number of patched top neurons, ")
                 + f"{int(s['curve_k'])}: {pct(s['curve_rescue_driving'])} rescued ({pct(s['curve_driving_lo'])} to "
                 f"{pct(s['curve_driving_hi'])}) against {pct(s['curve_rescue_control'])} "
                 f"({pct(s['curve_control_lo'])} to {pct(s['curve_control_hi'])})")
    body += (f". Patching the {s['k']} driving neurons lowers the noisy-minus-correct logit difference from "
             f"{s['D_before']:.1f} to {s['D_driving']:.1f} on average (random neurons: {s['D_control']:.1f})")
    if "curve_k" in s:
        body += (f"; the whole greedy answer becomes the true sum on {pct(s['curve_answer_driving'])} with "
                 f"{int(s['curve_k'])} patched neurons (the later digits are recalled at their own, unpatched positions)")
    body += ". "
    a, b, c = s["hmd_lo"] > 0, s["toward_lo"] > 0.5, s.get("rescue_k_pass", False)
    if a and b and c:
        end = ("The paper's Observation 3 holds in this run: noisy labels are fitted by shifting heuristic neurons that "
               "also serve clean additions, not by dedicated look-up neurons.")
    elif s["hmd_hi"] < 0 or not (b or c):
        end = ("The paper's Observation 3 does not hold in this run: "
               + ("dedicated neurons outnumber heuristic ones among the driving neurons." if s["hmd_hi"] < 0 else
                  "the driving neurons are neither shifted toward the noisy label beyond chance nor does undoing "
                  "their shift rescue more instances than the control."))
    else:
        failed = [t for t, ok in (("heuristic neurons outnumber dedicated ones", a),
                                  ("the shift points toward the noisy label", b),
                                  ("undoing the shift rescues more than the control", c)) if not ok]
        end = "The paper's Observation 3 holds only in part here: not shown is that " + "; nor that ".join(failed) + "."
    return head + body + end


def matched_pairs(result: Outliers) -> np.ndarray:
    """For each analysed noisy instance, the index (row of `clean_patch`) of the clean control
    instance nearest in logit gap (noisy: noisy minus true digit; clean: written minus runner-up
    digit), with replacement."""
    gaps = result.clean_patch["D_before"].to_numpy(float)
    return np.abs(result.instances["D_before"].to_numpy(float)[:, None] - gaps[None, :]).argmin(1)


def outlier_claims(result: Outliers, rescue_margin: float = 0.0, shift_margin: float = 0.0,
                   dedicated_margin: float = 0.05, n_resamples: int = 1000, seed: int = 0) -> list:
    """Observation 3 as claims (`rote.claims`), each against the matched control of clean answers'
    own driving neurons (`clean_drivers`, computed the same way):

    (1) not dedicated: the share of noisy drivers that are dedicated (on for the instance, half
    that activation on under `result.dedicated` of the grid) exceeds the clean drivers' by less
    than `dedicated_margin` (holds when the 95% interval of noisy minus clean lies below it); the
    categories are recomputed on every grid of `result.grids` and the interval draws a grid and
    resamples instances (`grid_share_ci`); the note gives both shares at a 5% cut, the
    sensitivity of the cut.
    (2) shifted: the median |z| of noisy drivers exceeds the clean drivers' by more than
    `shift_margin` (instances resampled in both groups); the note gives the share shifted toward
    the noisy label beside the clean drivers' share toward their favoured digit.
    (3) undoing the shift rescues: at the smallest number of patched drivers where it is largest
    beyond the control, the rescue rate of noisy instances minus the change rate of clean
    instances matched on the logit gap (`matched_pairs`) exceeds `rescue_margin` (independent
    bootstrap over instances)."""
    from .claims import Claim, above, grid_share_ci, independent_share_ci
    nan = float("nan")
    base = dict(observation=3, task="fda", n=len(result.instances))
    empty = dict(value=nan, lo=nan, hi=nan, control_value=nan, control_lo=nan, control_hi=nan, difference=nan,
                 difference_lo=nan, difference_hi=nan, verdict="cannot be tested")
    tests = [("noisy labels are not fitted by dedicated look-up neurons",
              "share of driving neurons that are dedicated", "clean answers' driving neurons",
              f"holds when noisy minus clean lies below {dedicated_margin:g} (95% interval)"),
             ("driving neurons are shifted against their clean neighbours",
              "mean per instance of |z| of the driving neurons", "clean answers' driving neurons",
              f"holds when noisy minus clean lies above {shift_margin:g} (95% interval)"),
             ("undoing the shift gives back the true digit",
              "share of noisy instances rescued by patching the top drivers",
              "change rate of clean answers matched on logit gap, same patch",
              f"holds when noisy minus clean lies above {rescue_margin:g} (95% interval)")]
    if result.instances.empty or result.clean_patch.empty:
        return [Claim(claim=c, statistic=st, control=ct, rule=r, note="no memorized noisy instance or clean control",
                      **empty, **base) for c, st, ct, r in tests]
    nr, cn = result.neurons, result.clean_neurons
    out = []
    ded = lambda t, cut: _by_instance(t.assign(x=((t["act"] > 0) & (t["clean_high_share"] < cut)).astype(float)), "x")  # noqa: E731
    grids = result.grids or {seed: (nr["category"].to_numpy(), cn["category"].to_numpy())}
    per_grid = lambda t, j: np.stack([_by_instance(t.assign(x=(c[j] == "dedicated").astype(float)), "x").to_numpy()  # noqa: E731
                                      for c in grids.values()])
    a, alo, ahi, b, blo, bhi, d, dlo, dhi = grid_share_ci(per_grid(nr, 0), per_grid(cn, 1), n_resamples, seed)
    heur_range = [float((c[0] == "heuristic").mean()) for c in grids.values()]
    five = independent_share_ci(ded(nr, 0.05), ded(cn, 0.05), n_resamples, seed)
    heur = lambda t: float((t["category"] == "heuristic").mean())  # noqa: E731
    out.append(Claim(claim=tests[0][0], statistic=tests[0][1] + f" (cut: {result.dedicated:.0%} of the grid)",
                     value=a, lo=alo, hi=ahi, control=tests[0][2], control_value=b, control_lo=blo, control_hi=bhi,
                     difference=d, difference_lo=dlo, difference_hi=dhi, rule=tests[0][3],
                     verdict=above(-d, -dhi, -dedicated_margin),
                     note=(f"{len(grids)} grids (seeds {', '.join(map(str, grids))}), each with its instances resampled; "
                           f"at a 5% cut (main grid): {five[0]:.1%} against {five[3]:.1%}; heuristic {heur(nr):.0%} of "
                           f"noisy drivers ({min(heur_range):.0%}-{max(heur_range):.0%} over the grids), {heur(cn):.0%} "
                           "of clean ones"), **base))
    absz = lambda t: _by_instance(t.assign(x=t["z"].abs()), "x").dropna()  # noqa: E731
    toward = lambda t: float(t["toward_noisy"].mean())  # noqa: E731
    a, alo, ahi, b, blo, bhi, d, dlo, dhi = independent_share_ci(absz(nr), absz(cn), n_resamples, seed)
    out.append(Claim(claim=tests[1][0], statistic=tests[1][1], value=a, lo=alo, hi=ahi, control=tests[1][2],
                     control_value=b, control_lo=blo, control_hi=bhi, difference=d, difference_lo=dlo,
                     difference_hi=dhi, rule=tests[1][3], verdict=above(d, dlo, shift_margin),
                     note=(f"shifted toward the noisy label {toward(nr):.0%}; clean drivers toward their own digit "
                           f"{toward(cn):.0%} (a selection effect); random neurons' |z| median "
                           f"{result.control['z'].abs().median():.2f}"), **base))
    match = matched_pairs(result)
    best = None
    for kk, g in result.curve[result.curve["patched"] == "driving"].groupby("k", sort=True):
        col = f"changed_{int(kk)}"
        if col not in result.clean_patch:
            continue
        rescued = g.set_index("id").loc[result.instances["id"], "rescued"].astype(float).to_numpy()
        changed = result.clean_patch[col].to_numpy(float)[match]
        stats = independent_share_ci(rescued, changed, n_resamples, seed)
        if best is None or stats[7] > best[1][7]:
            best = (int(kk), stats)
    kk, (a, alo, ahi, b, blo, bhi, d, dlo, dhi) = best
    out.append(Claim(claim=tests[2][0], statistic=tests[2][1] + f" ({kk} neurons)", value=a, lo=alo, hi=ahi,
                     control=tests[2][2], control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                     difference_lo=dlo, difference_hi=dhi, rule=tests[2][3], verdict=above(d, dlo, rescue_margin),
                     note=(f"the number of neurons with the largest lower bound; {len(result.clean_patch)} clean "
                           "answers, matched with replacement"), **base))
    return out


def summary_table(result: Outliers, digits: int = 3) -> pd.DataFrame:
    """The verdict's numbers as a table: measure, value, 95% interval."""
    s = summary(result)
    if s["n_memorized"] == 0:
        return pd.DataFrame({"note": [f"no memorized noisy instance (of {s['n_noisy']} noisy)"]})
    rows = [("memorized noisy instances", s["n_memorized"], None, None),
            ("driving neurons per instance", s["k"], None, None),
            ("share with positive attribution", s["positive_attribution_share"], None, None)]
    rows += [(f"share {c}", s[c], s[f"{c}_lo"], s[f"{c}_hi"]) for c in CATEGORIES]
    rows += [("share heuristic - share dedicated", s["heur_minus_ded"], s["hmd_lo"], s["hmd_hi"]),
             ("share that matter on clean (ablation)", s["matters_share"], None, None),
             ("share reaching half their noisy activation on < 5% of the grid", s["sparse_5pct"], None, None),
             ("median |z| driving", s["abs_z_driving"], s["abs_z_driving_lo"], s["abs_z_driving_hi"]),
             ("median |z| control", s["abs_z_control"], s["abs_z_control_lo"], s["abs_z_control_hi"]),
             ("share shifted toward noisy", s["toward"], s["toward_lo"], s["toward_hi"]),
             ("share shifted toward noisy, random neurons", s["toward_control"], None, None),
             ("rescue rate (true digit), driving patched", s["rescue_driving"], s["rescue_driving_lo"], s["rescue_driving_hi"]),
             ("rescue rate (true digit), random patched", s["rescue_control"], s["rescue_control_lo"], s["rescue_control_hi"]),
             ("rescue driving - random", s["rescue_diff"], s["rescue_diff_lo"], s["rescue_diff_hi"]),
             ("whole answer = true sum, driving patched", s["answer_rescue_driving"], None, None),
             ("whole answer = true sum, random patched", s["answer_rescue_control"], None, None),
             ("still the noisy label, driving patched", s["still_noisy_driving"], None, None),
             ("still the noisy label, random patched", s["still_noisy_control"], None, None),
             ("mean D (noisy - correct logit) before", s["D_before"], None, None),
             ("mean D after patching driving", s["D_driving"], None, None),
             ("mean D after patching random", s["D_control"], None, None)]
    return pd.DataFrame(rows, columns=["measure", "value", "lo", "hi"]).round(digits)


# ---- figure data ---------------------------------------------------------------------------------------

def _place_of(family: str) -> int:
    """The operand digit place a family is about (the place the carry comes from; thousands for ranges)."""
    for d, place in enumerate(PLACES):
        if f"carry into {place}" == family:
            return d + 1
        if place in family:
            return d
    return 0


def example_neuron(result: Outliers) -> pd.Series | None:
    """The driving neuron with the largest attribution among heuristic ones shifted by z >= 1 (a
    visible shift), else among heuristic ones, else among all."""
    nr = result.neurons
    if nr.empty:
        return None
    heur = nr[nr["category"] == "heuristic"]
    shifted = heur[heur["z"] >= 1]
    pool = shifted if len(shifted) else heur if len(heur) else nr
    return pool.loc[pool["attribution"].idxmax()]


def heatmap_data(result: Outliers, row: pd.Series | None = None):
    """For one driving neuron (default `example_neuron`): its mean activation over the clean grid per
    (a digit, b digit) at the place its family is about, at the instance's analysis position; the
    noisy instance (its digits, its activation, the neighbour mean, z). Returns (cells, marks,
    description)."""
    row = example_neuron(result) if row is None else row
    if row is None:
        return None
    h, k, layer, j = result.heuristics, int(row["position"]), int(row["layer"]), int(row["neuron"])
    d = _place_of(str(row["family"]))
    x = h.acts[:, k, layer, j].numpy()
    cells = pd.DataFrame({"a digit": digits(h.grid["a"], d), "b digit": digits(h.grid["b"], d), "activation": x})
    cells = cells.groupby(["a digit", "b digit"]).agg(activation=("activation", "mean"), n=("activation", "size")).reset_index()
    inst = result.instances.set_index("id").loc[row["id"]]
    marks = pd.DataFrame({"a digit": [int(digits(inst["a"], d))], "b digit": [int(digits(inst["b"], d))],
                          "activation": [float(row["act"])], "neighbour mean": [float(row["nbr_mean"])],
                          "z": [float(row["z"])], "instance": [f"{inst['prompt']}{inst['answer']} (true {inst['true']})"]})
    desc = (f"layer {layer}, neuron {j}, at the {PLACES[k]} readout position: {row['family']} "
            f"(eta² = {row['eta2']:.2f}); digits at the {PLACES[d]} place")
    return cells, marks, desc
