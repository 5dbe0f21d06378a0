"""The MLP neurons that drive a logit difference at one answer place, their activations on
clean neighbouring inputs, and patching them back (the tools of Observation 3).

- Attribution: a * dD/da for every post-GELU neuron a at the readout pos, D a logit difference
  there (full backpropagation through the later layers; `neuron_attribution`).
- Clean neighbours of an FDA operand pair: one of its 8 operand digits changed to another value,
  both operands kept in 1000..8999, the sum <= 9999, other noisy training pairs left out
  (`neighbours`); their activations at the same answer place give each neuron's mean and
  spread (`neighbour_stats`).
- Patching: chosen neurons set to given values (their neighbours' mean) at one pos per row,
  teacher-forced (`patch_drivers`) and while decoding greedily (`patched_greedy`).
- The drivers' table: per instance and picked neuron its attribution, shift z against the
  neighbours and category (`neuron_table`); `clean_drivers` computes the same on correctly
  answered clean questions, the matched control.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from rote.interp.edits import neurons_set, read, run
from rote.interp.instances import clean_instances, digits, fda_rows, noisy_pairs, token_ids
from rote.interp.sites import hf, prompt_batch, readout_pos
from rote.observations.heuristics import DEDICATED, Heuristics, driver_category

K = 10  # driving neurons per instance
KS = (5, 10, 20, 50, 100, 200)  # numbers of top neurons patched for the rescue curve


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


def neuron_attribution(model, ids: torch.Tensor, pos: torch.Tensor, plus: torch.Tensor, minus: torch.Tensor):
    """Per row i, at pos[i]: every layer's post-GELU activations a [N, n_layer, M], the
    gradient of D_i = logit(plus[i]) - logit(minus[i]) at that pos with respect to them, and
    D [N]. Attribution = a * gradient. One run (`rote.interp.edits.read` with gradients)."""
    n_layer, device = hf(model).config.n_layer, hf(model).device
    keys = [(layer, "neuron") for layer in range(n_layer)]
    ids, pos = ids.to(device), pos.to(device)
    rows = torch.arange(len(ids), device=device)
    with torch.enable_grad():
        store, logits = read(model, ids, keys, grad=True)
        at = logits[rows, pos]
        diff = at[rows, plus.to(device)] - at[rows, minus.to(device)]
        grads = torch.autograd.grad(diff.sum(), [store[key] for key in keys])
    acts = torch.stack([store[key][rows, pos] for key in keys], 1)
    grad = torch.stack([g[rows, pos] for g in grads], 1)
    return acts.detach().cpu(), grad.detach().cpu(), diff.detach().cpu()


@torch.no_grad()
def activations_at(model, ids: torch.Tensor, pos: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Post-GELU activations of every layer at pos[i] of row i: [N, n_layer, M]. Rows run in order
    of their pos, and tokens after a batch's last pos are not run (a causal model's activations
    there do not see them)."""
    keys = [(layer, "neuron") for layer in range(hf(model).config.n_layer)]
    order = torch.argsort(torch.as_tensor(pos), stable=True)
    ids, pos, out = ids[order], torch.as_tensor(pos)[order], []
    for start in range(0, len(ids), batch_size):
        c = pos[start:start + batch_size]
        x = ids[start:start + batch_size, : int(c.max()) + 1]
        pick = lambda h, c=c: h[torch.arange(len(h), device=h.device), c.to(h.device)]  # noqa: E731
        store, _ = read(model, x.to(hf(model).device), keys, select=pick)
        out.append(torch.stack([store[key].cpu() for key in keys], 1))
    return torch.cat(out).float()[torch.argsort(order)] if out else torch.zeros(0)


@torch.no_grad()
def patched_greedy(model, prompt_ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, values: torch.Tensor,
                   n_tokens: int = 4) -> torch.Tensor:
    """Greedy decoding of `n_tokens` with the neurons set as in `rote.interp.edits.neurons_set` (each row's
    pos is edited when the decoding reaches it): the generated ids [N, n_tokens]. Each step runs
    only the new token, with the keys and values of the earlier ones cached (edited where they were)."""
    model_hf = hf(model)
    step, cache, offset, out = prompt_ids.to(model_hf.device), DynamicCache(config=model_hf.config), 0, []
    for _ in range(n_tokens):
        logits = run(model, step, neurons_set(pos - offset, mask, values), cache=cache, use_cache=True)
        offset += step.shape[1]
        step = logits[:, -1].argmax(-1, keepdim=True)
        out.append(step)
    return torch.cat(out, 1).cpu()


@torch.no_grad()
def neighbour_stats(model, tokenizer, instances: pd.DataFrame, places: np.ndarray, excluded=frozenset(),
                    chunk: int = 32):
    """Per instance, over its clean neighbours (teacher-forced on their true sums) at the readout
    pos of its analysis place `places[i]`: mean and sample std (ddof=1) of every neuron [I, n_layer, M] (NaN with
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
        acts = activations_at(model, ids, readout_pos(plen[0], places[of]))
        for i in np.unique(of):
            x = acts[torch.as_tensor(of == i)].double()
            mean[i] = x.mean(0).float()
            if len(x) > 1:
                std[i] = x.std(0, unbiased=True).float()
    return mean, std, count


def control_picks(picks: np.ndarray, m: int, seed: int) -> np.ndarray:
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


def patch_drivers(model, tokenizer, inst, pos, picks, values, greedy: bool = True):
    """D at the analysis pos `pos` (teacher-forced on the label), whether the true digit is written
    there, the greedy answer (empty without `greedy`) and whether the digit written there changed,
    with the picked neurons set to `values` [I, n_layer, M]."""
    ids, _, plen = prompt_batch(tokenizer, inst, "label")
    mask = torch.zeros(values.shape, dtype=torch.bool)
    rows = np.repeat(np.arange(len(inst)), picks.shape[1])
    mask[rows, picks[..., 0].reshape(-1), picks[..., 1].reshape(-1)] = True
    logits = run(model, ids.to(hf(model).device), neurons_set(pos, mask, values)).cpu()
    r = torch.arange(len(inst))
    at = logits[r, pos]
    plus = ids[r, pos + 1]
    minus = token_ids(tokenizer, [t[k] for t, k in zip(inst["true"], pos - int(plen[0]) + 1)])
    d = (at[r, plus] - at[r, minus]).numpy()
    digit = (at.argmax(-1) == minus).numpy()
    answers = [""] * len(inst)
    if greedy:
        gen = patched_greedy(model, ids[:, : int(plen[0])], pos, mask, values, 4)
        answers = [tokenizer.decode(row) for row in gen.tolist()]
    return d, digit, answers, (at.argmax(-1) != plus).numpy()


# ---- the drivers' table, and the clean answers' drivers (the matched control) -------------------------

NEURON_COLUMNS = ["id", "place", "rank", "layer", "neuron", "attribution", "act", "grad", "nbr_mean", "nbr_std",
                  "z", "toward_noisy", "clean_high_share", "type", "family", "eta2", "matters", "category"]


def neuron_table(inst, place, picks, acts, grad, mean, std, grid_acts, heur: Heuristics, dedicated: float):
    """One row per (instance, picked neuron): picks [I, k, 2] of (layer, neuron), read at answer
    place `place[i]`."""
    n_layer, m = acts.shape[1], acts.shape[2]
    i = np.repeat(np.arange(len(inst)), picks.shape[1])
    layer, neuron = picks[..., 0].reshape(-1), picks[..., 1].reshape(-1)
    k = place[i]
    a, g = acts[i, layer, neuron].numpy(), grad[i, layer, neuron].numpy()
    mu, sd = mean[i, layer, neuron].numpy(), std[i, layer, neuron].numpy()
    z = np.where(sd > 1e-6, (a - mu) / np.where(sd > 1e-6, sd, 1.0), np.nan)
    grid = grid_acts[:, k, layer, neuron].numpy()  # [N_grid, rows]
    high = np.where(a > 0, (grid >= a / 2).mean(0), np.nan)
    unit = heur.table.iloc[(k * n_layer + layer) * m + neuron]
    typ = unit["type"].to_numpy()
    category = driver_category(a, high, typ, dedicated)
    return pd.DataFrame({"id": inst["id"].to_numpy()[i], "place": k, "rank": np.tile(np.arange(picks.shape[1]), len(inst)),
                         "layer": layer, "neuron": neuron, "attribution": a * g, "act": a, "grad": g,
                         "nbr_mean": mu, "nbr_std": sd, "z": z, "toward_noisy": (a - mu) * g > 0,
                         "clean_high_share": high, "type": typ, "family": unit["family"].to_numpy(),
                         "eta2": unit["eta2"].to_numpy(), "matters": unit["matters"].to_numpy(),
                         "category": category}, columns=NEURON_COLUMNS)


def clean_drivers(model, tokenizer, frame: pd.DataFrame, places: np.ndarray, heur: Heuristics, k: int = K,
                  ks=KS, n_clean: int = 200, seed: int = 0, dedicated: float = DEDICATED) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The matched control of the driving neurons: the same analysis on up to `n_clean` clean
    training questions that the model answers correctly, each read at an answer place drawn from
    the noisy instances' `places` (seeded). Their driving neurons push the written (true) digit
    over the runner-up digit (D = logit(true) - logit(runner-up), teacher-forced on the true sum);
    the same neighbour statistics, categories and shift are computed, and the same patch (top kk
    drivers set to their neighbours' mean) counts whether the digit written there changes.
    Returns (neurons: NEURON_COLUMNS of the top `k`, per instance: id, place, D_before and
    `changed_<kk>` for each kk)."""
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    if clean.empty or len(places) == 0:
        return pd.DataFrame(columns=NEURON_COLUMNS), pd.DataFrame(columns=["id", "place", "D_before"])
    clean = clean.assign(a=clean["a"].astype(int), b=clean["b"].astype(int)).reset_index(drop=True)
    place = np.random.default_rng(seed).choice(np.asarray(places), len(clean))
    ids, _, plen = prompt_batch(tokenizer, clean, "label")
    pos = readout_pos(plen[0], torch.as_tensor(place))
    r = torch.arange(len(clean))
    with torch.no_grad():
        logits = hf(model)(ids.to(hf(model).device)).logits.cpu()[r, pos]
    true_tok = ids[r, pos + 1]
    digit_ids = token_ids(tokenizer, "0123456789")
    masked = logits[:, digit_ids].clone()
    masked[digit_ids[None, :] == true_tok[:, None]] = -float("inf")
    runner = digit_ids[masked.argmax(-1)]
    acts, grad, diff = neuron_attribution(model, ids, pos, true_tok, runner)
    m = acts.shape[2]
    attribution = (acts * grad).reshape(len(clean), -1)
    ks = sorted({k, *[x for x in ks if x <= attribution.shape[1] // 4]})
    top = attribution.topk(min(max(ks), attribution.shape[1]), dim=1).indices.numpy()
    picks = np.stack([top // m, top % m], -1)
    mean, std, _ = neighbour_stats(model, tokenizer, clean, place, noisy_pairs(frame))
    values = torch.where(torch.isnan(mean), acts, mean)
    neurons = neuron_table(clean, place, picks[:, :k], acts, grad, mean, std, heur.acts, heur, dedicated)
    table = pd.DataFrame({"id": clean["id"].to_numpy(), "place": place, "D_before": diff.numpy()})
    for kk in ks:
        table[f"changed_{kk}"] = patch_drivers(model, tokenizer, clean, pos, picks[:, :kk], values, greedy=False)[3]
    return neurons, table
