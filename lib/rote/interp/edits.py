"""Editing the model: the one place where every intervention of the package is built and run.

An edit is `{(layer, point): fn}` (points, pos and places: `rote.interp.sites`): `fn` maps the tensor at
that point to its replacement, or returns it unchanged after reading it (`read`). `run` applies
the edits with nnsight, one trace per batch; inside `with plain_hooks():` every edit of the
package runs with plain torch forward hooks instead: the reference the tests compare nnsight
with, switched in one place rather than through every signature.

The edits the chapters use:
- `Removal`: x <- x - A B^T (x - mu) of a block output at chosen answer places (or everywhere):
  projecting out directions (`projection`, A = B = an orthonormal basis, mu = 0), removing as
  much along other directions (`redirected`) and LEACE erasure (`erasure`: the eraser's factors);
- `set_at`: given neurons set to given values at one pos per row (patching to a mean);
- skipped blocks (`run`'s `skip`): a block not run, its output given (a neuron's mean ablation
  is a known change of its block's output, so only the blocks after it need to run).

Effects are measured under teacher forcing with `score` (the one log-prob function): the mean
log-prob of the answer's scored tokens and whether greedy decoding writes the whole answer.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import pandas as pd
import torch

from rote.interp.sites import POINTS, hf, prompt_batch, readout_pos, traced

_HOOKS = ContextVar("plain_hooks", default=False)


@contextmanager
def plain_hooks():
    """Within this block every `run` uses plain torch hooks instead of nnsight (the reference)."""
    token = _HOOKS.set(True)
    try:
        yield
    finally:
        _HOOKS.reset(token)


# ---- running a model with edits -------------------------------------------------------------------

def _ordered(edits: dict, skip: dict) -> list:
    """The edits and the skipped blocks in forward order (nnsight must meet them in that order)."""
    inside = [key for key in edits if key[0] in skip and key[1] != "embed"]
    if inside:
        raise ValueError(f"edits {inside} are inside skipped blocks {sorted(skip)}; a skipped block is not run")
    items = list(edits.items()) + [((layer, "skip"), out) for layer, out in skip.items()]
    order = POINTS + ("skip",)
    return sorted(items, key=lambda item: (item[0][1] != "embed", item[0][0], order.index(item[0][1])))


def _run_nnsight(model, ids, edits, grad, model_kwargs, skip):
    nm = traced(model)
    with torch.set_grad_enabled(grad), nm.trace(ids, **model_kwargs):
        for (layer, point), fn in _ordered(edits, skip):
            if point == "embed":
                nm.transformer.drop.output = fn(nm.transformer.drop.output)
                continue
            block = nm.transformer.h[layer]
            if point == "skip":
                block.skip(fn)  # fn: the block's output, given
            elif point == "head":
                block.attn.c_proj.input = fn(block.attn.c_proj.input)
            elif point == "neuron":
                block.mlp.act.output = fn(block.mlp.act.output)
            else:
                block.output = fn(block.output)
        logits = nm.output.logits.save()
    return logits


def _run_hooks(model, ids, edits, grad, model_kwargs, skip):
    _ordered(edits, skip)  # the same check
    model, handles = hf(model), []
    for (layer, point), fn in edits.items():
        if point == "head":
            hook = lambda mod, args, fn=fn: (fn(args[0]), *args[1:])  # noqa: E731
            handles.append(model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(hook))
            continue
        module = {"embed": lambda: model.transformer.drop, "neuron": lambda: model.transformer.h[layer].mlp.act,
                  "resid": lambda: model.transformer.h[layer]}[point]()
        handles.append(module.register_forward_hook(lambda mod, args, out, fn=fn: fn(out)))
    blocks = {layer: model.transformer.h[layer] for layer in skip}
    saved = {layer: vars(block).get("forward") for layer, block in blocks.items()}  # nnsight may have wrapped it
    for layer, out in skip.items():  # the block's forward replaced by its given output
        blocks[layer].forward = lambda *args, out=out, **kwargs: out
    try:
        with torch.set_grad_enabled(grad):
            return model(ids, **model_kwargs).logits
    finally:
        for handle in handles:
            handle.remove()
        for layer, block in blocks.items():
            if saved[layer] is None:
                del block.forward
            else:
                block.forward = saved[layer]


def run(model, ids: torch.Tensor, edits: dict, grad: bool = False, skip: dict | None = None,
        **model_kwargs) -> torch.Tensor:
    """Logits [B, T, V] of the model on `ids` with `edits` applied (nnsight, one trace; plain hooks
    inside `plain_hooks()`); without edits, a plain forward pass. With `grad`, differentiable.
    `skip` {layer: output [B, T, d]}: those blocks are not run and give that output instead
    (nothing may edit inside them). `model_kwargs` go to the HF forward (e.g. a `cache` of an
    unedited prefix: then `ids` are the tokens after it)."""
    skip = skip or {}
    if not edits and not skip:
        with torch.set_grad_enabled(grad):
            return hf(model)(ids, **model_kwargs).logits
    runner = _run_hooks if _HOOKS.get() else _run_nnsight
    return runner(model, ids, edits, grad, model_kwargs, skip)


def read(model, ids: torch.Tensor, keys, select=lambda h: h, grad: bool = False,
         **model_kwargs) -> tuple[dict, torch.Tensor]:
    """Read the tensors at `keys` [(layer, point)] in one run: ({key: select(tensor)}, logits).
    With `grad` the tensors stay in the graph (for attributions); `model_kwargs` as in `run`."""
    store = {}

    def keep(key):
        def fn(h):
            store[key] = select(h) if grad else select(h).detach().clone()
            return h
        return fn
    logits = run(model, ids, {key: keep(key) for key in keys}, grad=grad, **model_kwargs)
    return store, logits


# ---- teacher-forced scores -----------------------------------------------------------------------

def answer_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each answer token under teacher forcing, [B, answer length]."""
    lengths = mask.sum(1)
    if (lengths != lengths[0]).any():
        raise ValueError("answers of different lengths in one batch")
    lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp[mask[:, 1:]].view(len(ids), -1)


def score(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, scored: torch.Tensor | None = None):
    """Per row: the mean log-prob of the answer tokens where `scored` [B, K] is set (default: all)
    under teacher forcing, and whether greedy decoding writes the whole answer."""
    lp = answer_logprobs(logits, ids, mask).double()
    sel = torch.ones_like(lp) if scored is None else scored.to(lp.device).double()
    pred = logits[:, :-1].argmax(-1)
    match = ((pred == ids[:, 1:]) | ~mask[:, 1:]).all(1)
    return ((lp * sel).sum(1) / sel.sum(1).clamp(min=1)).cpu().numpy(), match.cpu().numpy()


@torch.no_grad()
def effects(model, tokenizer, rows: pd.DataFrame, make_edits=None, column: str = "label",
            scored: torch.Tensor | None = None, batch_size: int = 256, before: pd.DataFrame | None = None) -> pd.DataFrame:
    """Teacher-forced on `column`: one row per instance with logp_before/after (`score`: mean
    log-prob of the scored tokens) and match_before/after (greedy decoding writes the answer),
    without and with the edits that `make_edits(index, prompt_lengths, length)` builds for each
    batch (index: the batch rows' indices in `rows`). Without `make_edits` only the "before"
    columns. `before`: those columns from an earlier call on the same rows (not run again)."""
    device, out = hf(model).device, []
    for start in range(0, len(rows), batch_size):
        part = rows.iloc[start: start + batch_size]
        index = torch.arange(start, start + len(part))
        ids, mask, plen = prompt_batch(tokenizer, part, column)
        ids, mask = ids.to(device), mask.to(device)
        sel = None if scored is None else scored[index]
        table = {"id": part["id"].to_numpy()}
        if before is None:
            table["logp_before"], table["match_before"] = score(run(model, ids, {}), ids, mask, sel)
        else:
            table["logp_before"] = before["logp_before"].to_numpy()[start: start + len(part)]
            table["match_before"] = before["match_before"].to_numpy()[start: start + len(part)]
        if make_edits is not None:
            logits = run(model, ids, make_edits(index, plen, ids.shape[1]))
            table["logp_after"], table["match_after"] = score(logits, ids, mask, sel)
        out.append(pd.DataFrame(table))
    columns = ["id", "logp_before", "logp_after", "match_before", "match_after"]
    columns = columns if make_edits is not None else ["id", "logp_before", "match_before"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def logprobs(model, tokenizer, rows: pd.DataFrame, scored: torch.Tensor | None = None, column: str = "label",
             batch_size: int = 256):
    """Per row, the mean teacher-forced log-prob of its `column` tokens where `scored` is set
    (`score`), without edits."""
    return effects(model, tokenizer, rows, None, column, scored, batch_size)["logp_before"].to_numpy()


# ---- removing directions and erasing --------------------------------------------------------------

@dataclass
class Removal:
    """Per instance i and answer place k, the edit x <- x - A B^T (x - mu) of a block output
    (A, B [N, K, d, r]; mu [N, K, d]), applied at the readout pos of place k where `where` [N, K]
    is set, or, with `every_pos`, at every pos (K = 1)."""
    A: torch.Tensor
    B: torch.Tensor
    mu: torch.Tensor
    where: torch.Tensor
    every_pos: bool = False

    def edit(self, rows: torch.Tensor, plen: torch.Tensor, device, dtype):
        """The edit fn for the instances `rows` of a batch with prompt lengths `plen`."""
        A, B = self.A[rows].to(device, dtype), self.B[rows].to(device, dtype)
        mu, where = self.mu[rows].to(device, dtype), self.where[rows].to(device)
        pos = readout_pos(plen.to(device)[:, None], torch.arange(A.shape[1], device=device))
        every = self.every_pos

        def fn(h):
            if every:
                coef = torch.einsum("btd,bdr->btr", h - mu[:, 0, None], B[:, 0]) * where[:, 0, None, None]
                return h - torch.einsum("btr,bdr->btd", coef, A[:, 0])
            batch = torch.arange(h.shape[0], device=h.device)
            delta = torch.zeros_like(h)
            for k in range(A.shape[1]):
                x = h[batch, pos[:, k]]
                coef = torch.einsum("bd,bdr->br", x - mu[:, k], B[:, k]) * where[:, k, None]
                delta[batch, pos[:, k]] = torch.einsum("br,bdr->bd", coef, A[:, k])
            return h - delta
        return fn


def projection(basis: torch.Tensor, where: torch.Tensor, every_pos: bool = False) -> Removal:
    """Projecting out orthonormal `basis` [N, K, d, r]: A = B = basis, mu = 0."""
    return Removal(basis, basis, torch.zeros(basis.shape[:-1]), where, every_pos)


def redirected(basis: torch.Tensor, directions: torch.Tensor, where: torch.Tensor, every_pos: bool = False) -> Removal:
    """Removing, along `directions` [N, K, d, r], as much as projecting out `basis` removes:
    x <- x - D B^T x (A = directions, B = basis, mu = 0). With orthonormal directions orthogonal to the
    basis the removed vector has the projection's norm at every pos, but not its direction."""
    return Removal(directions, basis, torch.zeros(basis.shape[:-1]), where, every_pos)


def erasure(factors: list, n: int, where: torch.Tensor) -> Removal:
    """The erasers of each answer place, `factors[k]` = (mean, A, B) of `Eraser.factors` (ranks
    may differ: zero-padded), for every one of `n` instances."""
    d = factors[0][0].shape[0]
    r = max([1] + [f[1].shape[1] for f in factors])
    A, B = torch.zeros(len(factors), d, r), torch.zeros(len(factors), d, r)
    for k, (_, a, b) in enumerate(factors):
        A[k, :, : a.shape[1]], B[k, :, : b.shape[1]] = a, b
    mu = torch.stack([f[0] for f in factors])
    return Removal(A.expand(n, *A.shape).clone(), B.expand(n, *B.shape).clone(), mu.expand(n, *mu.shape).clone(), where)


def apply_removal(model, tokenizer, rows: pd.DataFrame, layers, removal: Removal, scored=None,
                    batch_size: int = 256, before: pd.DataFrame | None = None) -> pd.DataFrame:
    """`effects` of `removal` applied to the block outputs of `layers`, teacher-forced on the label
    in data."""
    dtype = hf(model).dtype

    def make_edits(index, plen, length):
        fn = removal.edit(index, plen, hf(model).device, dtype)
        return {(layer, "resid"): fn for layer in layers}
    return effects(model, tokenizer, rows, make_edits, "label", scored, batch_size, before)


@torch.no_grad()
def resids_at(model, tokenizer, rows: pd.DataFrame, layers, places=(0,), column: str = "label",
              batch_size: int = 512) -> dict:
    """The block outputs of `layers` at the readout pos of answer `places`, teacher-forced on
    `column`, one run per batch: {(layer, place): [N, d]} (the data LEACE is fitted on)."""
    out = {(layer, k): [] for layer in layers for k in places}
    device = hf(model).device
    for start in range(0, len(rows), batch_size):
        ids, _, plen = prompt_batch(tokenizer, rows.iloc[start: start + batch_size], column)
        batch = torch.arange(len(ids))
        pos = {k: readout_pos(plen, k) for k in places}
        store, _ = read(model, ids.to(device), [(layer, "resid") for layer in layers])
        for (layer, k) in out:
            out[(layer, k)].append(store[(layer, "resid")][batch, pos[k]].cpu())
    return {key: torch.cat(v) for key, v in out.items()}


# ---- setting neurons --------------------------------------------------------------------------------

def set_at(pos: torch.Tensor, mask: torch.Tensor, values: torch.Tensor):
    """Edit fn: in row i at pos[i], the entries where mask[i] is set take values[i]; rows whose pos
    lies outside the sequence are left alone (with a cache, pos counts from the first token run)."""
    def fn(h):
        c = pos.to(h.device)
        ok = (c >= 0) & (c < h.shape[1])
        rows = torch.arange(len(h), device=h.device)[ok]
        h = h.clone()
        h[rows, c[ok]] = torch.where(mask[ok].to(h.device), values[ok].to(h), h[rows, c[ok]])
        return h
    return fn


def neurons_set(pos: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> dict:
    """Edits that set, in row i at pos[i], the neurons where mask [N, n_layer, M] is set to
    values [N, n_layer, M] (only layers with something to set are edited)."""
    return {(layer, "neuron"): set_at(pos, mask[:, layer], values[:, layer])
            for layer in range(mask.shape[1]) if mask[:, layer].any()}
