"""Interventions: removing directions, erasing concepts (LEACE), patching and ablating components.

Every intervention is a set of edits, `{(layer, point): fn}`: `fn` maps the tensor at a hook point
of block `layer` to its replacement. The points, in forward order: "head" (the input of
`attn.c_proj`, heads side by side: head j is slice j*d_head:(j+1)*d_head), "neuron" (the MLP's
post-GELU activations `mlp.act.output`), "resid" (the block output, the residual stream).
`run_edited` applies edits with nnsight, one trace per batch; `run_edited_hooks` with plain torch
hooks: the reference every nnsight result is tested against.

Positions in the residual stream: None is every position; an int >= 0 is an absolute position; an
int < 0 counts back from the end of the prompt (-1: the last prompt token, which predicts the first
answer token). Effects are measured under teacher forcing of the label in data and of the true
answer: log-prob of the whole answer and whether greedy decoding would produce it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .lens import hf, traced
from .model import encode

POINTS = ("head", "neuron", "resid")


# ---- running a model with edits ---------------------------------------------------------------

def _ordered(edits: dict) -> list:
    return sorted(edits.items(), key=lambda item: (item[0][0], POINTS.index(item[0][1])))


def run_edited(model, ids: torch.Tensor, edits: dict, grad: bool = False, **model_kwargs) -> torch.Tensor:
    """Logits [B, T, V] of the model on `ids` with `edits` applied (nnsight, one trace); with
    `grad`, differentiable (for attributions). `model_kwargs` go to the HF forward (e.g. a `cache`
    of an unedited prefix: then `ids` are the tokens after it)."""
    nm = traced(model)
    with torch.set_grad_enabled(grad), nm.trace(ids, **model_kwargs):
        for (layer, point), fn in _ordered(edits):
            block = nm.transformer.h[layer]
            if point == "head":
                block.attn.c_proj.input = fn(block.attn.c_proj.input)
            elif point == "neuron":
                block.mlp.act.output = fn(block.mlp.act.output)
            else:
                block.output = fn(block.output)
        logits = nm.output.logits.save()
    return logits


def run_edited_hooks(model, ids: torch.Tensor, edits: dict, grad: bool = False, **model_kwargs) -> torch.Tensor:
    """Plain torch twin of `run_edited`: forward (pre-)hooks that replace the tensors."""
    model, handles = hf(model), []
    for (layer, point), fn in edits.items():
        block = model.transformer.h[layer]
        if point == "head":
            hook = lambda mod, args, fn=fn: (fn(args[0]), *args[1:])  # noqa: E731
            handles.append(block.attn.c_proj.register_forward_pre_hook(hook))
        else:
            module = block.mlp.act if point == "neuron" else block
            handles.append(module.register_forward_hook(lambda mod, args, out, fn=fn: fn(out)))
    try:
        with torch.set_grad_enabled(grad):
            return model(ids, **model_kwargs).logits
    finally:
        for handle in handles:
            handle.remove()


def _runner(hooks: bool):
    return run_edited_hooks if hooks else run_edited


def position_mask(prompt_lengths: torch.Tensor, length: int, positions) -> torch.Tensor:
    """[B, length] bool: the chosen positions of each row (see the module docstring)."""
    if positions is None:
        return torch.ones(len(prompt_lengths), length, dtype=torch.bool)
    mask = torch.zeros(len(prompt_lengths), length, dtype=torch.bool)
    for p in positions:
        col = torch.full_like(prompt_lengths, p) if p >= 0 else prompt_lengths + p
        if (col < 0).any() or (col >= length).any():
            raise ValueError(f"position {p} is outside some sequence")
        mask[torch.arange(len(mask)), col] = True
    return mask


def prompt_batch(tokenizer, rows: pd.DataFrame, column: str = "answer"):
    """Token ids of prompt + `column`, the answer mask and the prompt lengths."""
    ids, mask = encode(tokenizer, rows["prompt"], rows[column])
    lengths = [len(x) for x in tokenizer(list(rows["prompt"]), add_special_tokens=False)["input_ids"]]
    return ids, mask, torch.tensor(lengths)


def answer_logprobs(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-prob of each answer token under teacher forcing, [B, answer length]."""
    lengths = mask.sum(1)
    if (lengths != lengths[0]).any():
        raise ValueError("answers of different lengths in one batch")
    lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp[mask[:, 1:]].view(len(ids), -1)


@torch.no_grad()
def _effects(model, tokenizer, instances, make_edits, batch_size: int, hooks: bool) -> pd.DataFrame:
    """Teacher-forced log-prob of the label in data and of the true answer, and whether greedy
    decoding gives each, before and after the edits that `make_edits(rows, prompt_lengths, T)`
    builds for each batch (rows: instance index of each batch row)."""
    run, device, out = _runner(hooks), hf(model).device, []
    for start in range(0, len(instances), batch_size):
        rows = instances.iloc[start: start + batch_size]
        ids_l, mask_l, plen = prompt_batch(tokenizer, rows, "answer")
        ids_t, mask_t, _ = prompt_batch(tokenizer, rows, "true")
        if ids_l.shape != ids_t.shape:
            raise ValueError("labels and true answers differ in length")
        ids, mask = torch.cat([ids_l, ids_t]).to(device), torch.cat([mask_l, mask_t]).to(device)
        index = torch.arange(start, start + len(rows)).repeat(2)
        edits = make_edits(index, plen.repeat(2), ids.shape[1])
        table = {"id": np.tile(rows["id"].to_numpy(), 2), "target": np.repeat(["label", "true"], len(rows))}
        for name, logits in (("before", hf(model)(ids).logits), ("after", run(model, ids, edits))):
            pred = logits[:, :-1].argmax(-1)
            table[f"logp_{name}"] = answer_logprobs(logits, ids, mask).sum(1).cpu().numpy()
            table[f"match_{name}"] = ((pred == ids[:, 1:]) | ~mask[:, 1:]).all(1).cpu().numpy()
        out.append(pd.DataFrame(table))
    frame = pd.concat(out, ignore_index=True)[["id", "target", "logp_before", "logp_after",
                                                "match_before", "match_after"]]
    return frame.sort_values(["target", "id"], kind="stable").reset_index(drop=True)


# ---- (a) removing directions ------------------------------------------------------------------

def orthonormal(basis: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal columns spanning `basis` [..., d, k]; columns beyond its rank are zero."""
    if basis.shape[-1] == 0:
        return basis.float()
    u, s, _ = torch.linalg.svd(basis.double(), full_matrices=False)
    keep = s > tol * s.amax(-1, keepdim=True).clamp(min=1e-30)
    return (u * keep[..., None, :]).float()


def entity_basis(model, tokenizer, entities) -> torch.Tensor:
    """Per entity, an orthonormal basis [N, d, k] of its embedding row (wte) and unembedding row
    (lm_head): k = 1 when the two are tied (our models), 2 otherwise."""
    model = hf(model)
    ids = tokenizer.convert_tokens_to_ids(list(entities))
    if tokenizer.unk_token_id in ids:
        raise ValueError("an entity is not a single token of the vocabulary")
    emb, unemb = model.transformer.wte.weight, model.lm_head.weight
    rows = [emb[ids]] if unemb is emb or torch.equal(unemb, emb) else [emb[ids], unemb[ids]]
    return orthonormal(torch.stack(rows, -1).detach().cpu())


def control_entities(instances: pd.DataFrame, entities=None, seed: int = 0) -> list[str]:
    """Per instance, a random entity (seeded) that is none of its label, true answer, bridge or
    subject: the control for removing the bridge. `entities`: the pool (default: every entity
    named in `instances`)."""
    cols = [c for c in ("answer", "true", "bridge", "subject") if c in instances]
    names = entities if entities is not None else instances[cols].to_numpy().ravel()
    pool = np.array(sorted({e for e in names if isinstance(e, str)}))
    rng = np.random.default_rng(seed)
    picked = []
    for excluded in instances[cols].itertuples(index=False):
        allowed = pool[~np.isin(pool, [e for e in excluded if isinstance(e, str)])]
        picked.append(str(rng.choice(allowed)))
    return picked


def remove_directions(model, tokenizer, instances: pd.DataFrame, basis: torch.Tensor, layers,
                      positions=None, batch_size: int = 256, hooks: bool = False) -> pd.DataFrame:
    """Project out span(basis) from the residual stream (block outputs of `layers`, at
    `positions`): h <- h - Q Q^T h, Q the orthonormalized basis, [d, k] for all instances or
    [N, d, k] per instance (row i for the i-th row of `instances`; e.g. `entity_basis` of the
    bridges). Returns one row per (id, target):
    target "label" (label in data) or "true"; logp_before/after (teacher-forced log-prob of the
    whole answer) and match_before/after (greedy decoding gives it)."""
    q = orthonormal(basis.detach().cpu())
    device = hf(model).device

    def make_edits(rows, plen, length):
        qb = (q[rows] if q.dim() == 3 else q.expand(len(rows), *q.shape)).to(device, hf(model).dtype)
        m = position_mask(plen, length, positions).to(device)[..., None]
        fn = lambda h: h - m * torch.einsum("btk,bdk->btd", torch.einsum("btd,bdk->btk", h, qb), qb)  # noqa: E731
        return {(layer, "resid"): fn for layer in layers}
    return _effects(model, tokenizer, instances, make_edits, batch_size, hooks)


# ---- (b) LEACE --------------------------------------------------------------------------------

@dataclass
class Eraser:
    """Affine LEACE eraser x -> x - P (x - mean), P the oblique projection onto what is erased."""
    mean: torch.Tensor
    proj: torch.Tensor
    rank: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        mean, proj = self.mean.to(x), self.proj.to(x)
        return x - (x - mean) @ proj.T


def fit_leace(x: torch.Tensor, z: torch.Tensor, tol: float = 1e-8) -> Eraser:
    """LEACE (Belrose et al. 2023): the least-squares edit after which no linear classifier beats
    a constant at predicting z from x (all class-conditional means equal). x [N, d]; z [N] class
    ids or [N, k] one-hot/features. P = W^+ P_W W, W = Sigma_xx^(-1/2) the whitening and P_W the
    orthogonal projection onto the column space of W Sigma_xz."""
    x = x.detach().double().cpu()
    z = torch.nn.functional.one_hot(z.long()).double() if z.dim() == 1 else z.double()
    mean = x.mean(0)
    xc, zc = x - mean, z.cpu() - z.cpu().mean(0)
    sigma_xx, sigma_xz = xc.T @ xc / len(x), xc.T @ zc / len(x)
    val, vec = torch.linalg.eigh(sigma_xx)
    keep = val > tol * val.max()
    v, val = vec[:, keep], val[keep]
    w, w_pinv = v @ torch.diag(val.rsqrt()) @ v.T, v @ torch.diag(val.sqrt()) @ v.T
    u, s, _ = torch.linalg.svd(w @ sigma_xz, full_matrices=False)
    u = u[:, s > tol * s.max().clamp(min=1e-30)] if s.numel() else u[:, :0]
    return Eraser(mean.float(), (w_pinv @ u @ u.T @ w).float(), u.shape[1])


def relabel(z: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Labels shuffled across instances (seeded): fitting LEACE on them gives a control eraser of
    the same rank that erases nothing in particular."""
    return z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))]


def resid_at(model, tokenizer, instances: pd.DataFrame, layer: int, position: int = -1,
             batch_size: int = 512, hooks: bool = False) -> torch.Tensor:
    """The block output of `layer` at `position` for every instance, [N, d]: the data to fit an
    eraser on."""
    return resids_at(model, tokenizer, instances, [layer], [position], batch_size, hooks)[(layer, position)]


def resids_at(model, tokenizer, instances: pd.DataFrame, layers, positions, batch_size: int = 512,
              hooks: bool = False) -> dict:
    """`resid_at` for every layer and position at once, one forward pass per batch:
    {(layer, position): [N, d]}."""
    out = {(layer, p): [] for layer in layers for p in positions}
    for start in range(0, len(instances), batch_size):
        ids, _, plen = prompt_batch(tokenizer, instances.iloc[start: start + batch_size])
        device = hf(model).device
        masks = {p: position_mask(plen, ids.shape[1], [p]).to(device) for p in positions}

        def record(layer):
            def fn(h):
                for p, m in masks.items():
                    out[(layer, p)].append(h[m].clone())
                return h
            return fn
        _runner(hooks)(model, ids.to(device), {(layer, "resid"): record(layer) for layer in layers})
    return {key: torch.cat(v).cpu() for key, v in out.items()}


def erase(model, tokenizer, instances: pd.DataFrame, erasers: dict, positions=(-1,),
          batch_size: int = 256, hooks: bool = False) -> pd.DataFrame:
    """Apply `erasers` ({layer: Eraser}) to the block outputs at `positions`; the effect table of
    `remove_directions`."""
    device = hf(model).device

    def make_edits(rows, plen, length):
        m = position_mask(plen, length, positions).to(device)[..., None]
        return {(layer, "resid"): (lambda h, e=e: torch.where(m, e(h), h)) for layer, e in erasers.items()}
    return _effects(model, tokenizer, instances, make_edits, batch_size, hooks)


# ---- (c) patching and ablation of components --------------------------------------------------

@dataclass(frozen=True)
class Site:
    """A component: kind "head" (index = head; None: all heads), "neuron" (index = MLP neuron) or
    "resid" (the whole block output; index unused) of block `layer`, at absolute `position`
    (None: all positions)."""
    kind: str
    layer: int
    index: int | None = None
    position: int | None = None

    def __post_init__(self):
        if self.kind not in POINTS:
            raise ValueError(f"unknown site kind {self.kind!r}; allowed: {', '.join(POINTS)}")


def _where(site: Site, d_head: int) -> tuple:
    pos = slice(None) if site.position is None else site.position
    j = site.index
    col = {"head": slice(None) if j is None else slice(j * d_head, (j + 1) * d_head),
           "neuron": j, "resid": slice(None)}[site.kind]
    return slice(None), pos, col


def _site_edits(model, sites, write) -> dict:
    """Edits calling `write(site, x, where)` on a copy of each site's tensor, grouped by point."""
    config = hf(model).config
    d_head = config.n_embd // config.n_head
    groups: dict = {}
    for site in sites:
        groups.setdefault((site.layer, site.kind), []).append(site)

    def edit(group):
        def fn(x):
            x = x.clone()
            for site in group:
                write(site, x, _where(site, d_head))
            return x
        return fn
    return {key: edit(group) for key, group in groups.items()}


def _batched(model, ids, batch_size, hooks, edits_for) -> torch.Tensor:
    device, run, out = hf(model).device, _runner(hooks), []
    for start in range(0, len(ids), batch_size):
        x, edits, keep = edits_for(ids[start: start + batch_size].to(device), start)
        out.append(run(model, x, edits)[:keep])
    return torch.cat(out)


def activations(model, ids: torch.Tensor, sites, batch_size: int = 512, hooks: bool = False) -> dict:
    """{site: its activations [N, ...]} on `ids` (e.g. a source run to patch from)."""
    store = {site: [] for site in sites}
    write = lambda site, x, where: store[site].append(x[where].clone())  # noqa: E731
    _batched(model, ids, batch_size, hooks, lambda x, start: (x, _site_edits(model, sites, write), 0))
    return {site: torch.cat(values) for site, values in store.items()}


def _output(logits, ids, mask):
    return logits if mask is None else answer_logprobs(logits, ids.to(logits.device), mask.to(logits.device))


def patch(model, ids: torch.Tensor, sites, source, batch_size: int = 256, hooks: bool = False,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run `ids` with each site's activation replaced by the source run's: `source` is token ids of
    the same shape (run side by side in the same trace) or a dict from `activations`. Returns
    logits [N, T, V], or with the answer `mask` the answer tokens' log-probs [N, L]."""
    def edits_for(x, start):
        if isinstance(source, torch.Tensor):
            n = len(x)
            write = lambda site, h, where: h[:n].__setitem__(where, h[n:][where])  # noqa: E731
            return torch.cat([x, source[start: start + n].to(x.device)]), _site_edits(model, sites, write), n
        write = lambda site, h, where: h.__setitem__(where, source[site][start: start + len(h)].to(h))  # noqa: E731
        return x, _site_edits(model, sites, write), len(x)
    if isinstance(source, torch.Tensor) and source.shape != ids.shape:
        raise ValueError(f"source ids {tuple(source.shape)} and ids {tuple(ids.shape)} differ in shape")
    return _output(_batched(model, ids, batch_size, hooks, edits_for), ids, mask)


def ablate(model, ids: torch.Tensor, sites, value="zero", batch_size: int = 256, hooks: bool = False,
           mask: torch.Tensor | None = None) -> torch.Tensor:
    """Run `ids` with each site set to `value`: "zero", "mean" (its mean over the rows of `ids`, per
    position), a number, or {site: tensor}. Returns logits, or answer log-probs with `mask`."""
    if isinstance(value, str):
        if value not in ("zero", "mean"):
            raise ValueError(f"value must be 'zero', 'mean', a number or a dict, got {value!r}")
        means = activations(model, ids, sites, batch_size, hooks) if value == "mean" else {}
        value = {site: means[site].mean(0) if means else 0.0 for site in sites}
    elif not isinstance(value, dict):
        value = {site: float(value) for site in sites}
    write = lambda site, h, where: h.__setitem__(where, torch.as_tensor(value[site]).to(h))  # noqa: E731
    out = _batched(model, ids, batch_size, hooks, lambda x, start: (x, _site_edits(model, sites, write), len(x)))
    return _output(out, ids, mask)
