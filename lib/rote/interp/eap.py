"""Edge attribution patching (EAP): which edges between heads and MLPs carry an answer.

The graph (`Graph`). Upstream nodes write into the residual stream: the embeddings ("embed",
token + position), each attention head's output ("a{l}.h{j}": its z times its rows of
`attn.c_proj`, W_O; the shared c_proj bias belongs to no node) and each MLP's output ("m{l}").
Downstream inputs read it: each head's query, key and value input ("a{l}.h{j}<q>", "<k>",
"<v>"), each MLP's input ("m{l}") and the logits ("logits"). An edge joins an upstream node to
every downstream input after it: the embeddings feed layer 0 on; a head of layer l feeds MLP l
and every input of layers > l; MLP l feeds layers > l; the logits receive everything.

Pre-LN models. GPT-2 applies a LayerNorm before attention, MLP and unembedding, so a downstream
input is defined as the residual sum *before* its LayerNorm, and every downstream input gets its
own copy of that sum (the EAP/ACDC treatment of pre-LN models): q, k and v of one head, or two
heads of a layer, may receive different residual streams. Patching the edge u -> d replaces u's
contribution to d's copy by u's activation on the corrupted input; the other copies, and u's
contributions elsewhere, are untouched. Unpatched edges carry the activation of the run itself
(which changes downstream of a patched edge); biases are the same on both inputs and never patched.

Scores. Edge u -> d: (a_u(corrupted) - a_u(clean)) . dM/dx_d (clean), summed over every pos
and averaged over the rows; M is the logit difference `logit_difference` and the score estimates
the change of M when that edge alone is patched (negative: the edge carries the clean answer).
One forward pass on the corrupted input and one forward and backward pass on the clean one per
batch. EAP-IG (`ig_steps` = n > 0): the gradient averaged over n runs whose embeddings are
interpolated between corrupted and clean, at k / n for k = 1..n (n = 1 is plain EAP).

Two implementations that the tests compare: `edge_scores` traces the HF model with nnsight; it
reads the gradient at the output of each LayerNorm's consumer (c_attn for q, k and v per head; the
MLP's input; ln_f's output) and carries it back through that LayerNorm at the recorded input (a
vector-Jacobian product), one copy per downstream input. Inside `rote.interp.edits.plain_hooks()` it
runs the plain-torch twin: an explicit forward (`explicit_forward`) that builds each downstream
input's residual copy from the node activations, so autograd gives the gradient at each copy
directly. The explicit forward is also the ground truth: `patched_metric` runs it with chosen
edges carrying the corrupted activations (or any other source: `upstream_means` for mean
patching); `single_edge_effects` patches one edge at a time and `faithfulness` keeps only the
top-n edges clean.

Inputs (`corrupted_inputs`, `pair_batch`). THR: the same two-hop question about another subject
(same relations); FDA: another operand pair (every sum has four digits); the corrupted question's
own (true) answer is the contrast, chosen to differ from the label and the true answer (at every
digit, FDA). Clean sequences are prompt + label, corrupted ones prompt + contrast; both are the
same length, so their pos align. The metric of a row is the sum over answer places k of
logit(label_k) - logit(contrast_k) at the readout pos of k, teacher-forced on the label (a
four-digit FDA answer: four terms; THR: one).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from rote.interp.edits import _HOOKS
from rote.interp.sites import hf, prompt_batch, readout_pos, traced

# ---- the graph ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Graph:
    """The node graph of a GPT-2 with `n_layer` blocks of `n_head` heads (module docstring).
    Upstream nodes in order: embed, then per layer its heads and its MLP. Downstream inputs in
    order: per layer the q, then k, then v inputs of its heads and its MLP input; then logits."""
    n_layer: int
    n_head: int

    @property
    def upstream(self) -> list[str]:
        layers = [[f"a{l}.h{j}" for j in range(self.n_head)] + [f"m{l}"] for l in range(self.n_layer)]
        return ["embed"] + [name for layer in layers for name in layer]

    @property
    def downstream(self) -> list[str]:
        out = []
        for l in range(self.n_layer):
            out += [f"a{l}.h{j}<{s}>" for s in "qkv" for j in range(self.n_head)] + [f"m{l}"]
        return out + ["logits"]

    def feeding(self, layer: int, mlp: bool = False) -> int:
        """How many upstream nodes (the first ones) feed the attention (or the MLP) of `layer`;
        `layer` = n_layer: the logits."""
        return 1 + layer * (self.n_head + 1) + (self.n_head if mlp else 0)

    @cached_property
    def allowed(self) -> torch.Tensor:
        """[n_downstream, n_upstream] bool: which pairs are edges."""
        counts = []
        for l in range(self.n_layer):
            counts += [self.feeding(l)] * (3 * self.n_head) + [self.feeding(l, mlp=True)]
        counts.append(self.feeding(self.n_layer))
        return torch.arange(len(self.upstream))[None, :] < torch.tensor(counts)[:, None]

    @cached_property
    def edges(self) -> pd.DataFrame:
        """One row per edge, in the order of every score vector: upstream, downstream (names) and
        their indices `up`, `down`."""
        down, up = self.allowed.nonzero(as_tuple=True)
        return pd.DataFrame({"upstream": np.array(self.upstream)[up.numpy()],
                             "downstream": np.array(self.downstream)[down.numpy()],
                             "up": up.numpy(), "down": down.numpy()})

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """Per-edge `values` [n_edges] as a [n_downstream, n_upstream] matrix (0 off the graph)."""
        out = torch.zeros(self.allowed.shape, dtype=values.dtype, device=values.device)
        out[self.allowed.to(values.device)] = values
        return out

    def select(self, pairs) -> torch.Tensor:
        """[n_edges] bool: the edges named in `pairs` [(upstream, downstream)]."""
        index = {edge: i for i, edge in enumerate(zip(self.edges["upstream"], self.edges["downstream"]))}
        missing = [p for p in pairs if tuple(p) not in index]
        if missing:
            raise ValueError(f"not edges of the graph: {missing}")
        out = torch.zeros(len(index), dtype=torch.bool)
        out[[index[tuple(p)] for p in pairs]] = True
        return out


def graph_of(model) -> Graph:
    """The graph of an HF GPT-2 (or its nnsight wrapper)."""
    config = hf(model).config
    return Graph(config.n_layer, config.n_head)


# ---- clean and corrupted inputs ------------------------------------------------------------------------

def corrupted_inputs(rows: pd.DataFrame, frame: pd.DataFrame, task: str, seed: int = 0) -> pd.DataFrame:
    """Per row of `rows`, a corrupted question (seeded): THR, a two-hop question of `frame` with
    the same relations about another subject; FDA, a clean training question with other operands.
    It is clean: its label (column "label") is its true answer, the contrast, which differs from the
    row's label and true answer (at every digit, FDA). Columns id, prompt, label; index as `rows`."""
    if task == "thr" and (rows["kind"] != "two_hop").any():
        raise ValueError("THR corrupted inputs are made for two-hop questions only")
    rng = np.random.default_rng(seed)
    out = []
    if task == "thr":
        pool = frame[frame["kind"] == "two_hop"]
        groups = {key: g for key, g in pool.groupby(["r1", "r2"])}
        for row in rows.itertuples(index=False):
            g = groups[(row.r1, row.r2)]
            ok = g[(g["subject"] != row.subject) & ~g["true"].isin([row.label, row.true])]
            out.append(_pick(ok, rng, row))
    elif task == "fda":
        pool = frame[(frame["split"] == "train") & (frame["kind"] != "fact") & ~frame["noisy"]]
        pool_digits = np.array([list(s) for s in pool["true"].astype(str)])
        for row in rows.itertuples(index=False):
            differ = (pool_digits != np.array(list(str(row.label)))) & (pool_digits != np.array(list(str(row.true))))
            out.append(_pick(pool[differ.all(1) & (pool["id"] != row.id).to_numpy()], rng, row))
    else:
        raise ValueError(f"unknown task {task!r}")
    table = pd.DataFrame(out, columns=["id", "prompt", "label"])
    return table.set_axis(rows.index)


def _pick(candidates: pd.DataFrame, rng, row) -> tuple:
    if candidates.empty:
        raise ValueError(f"no corrupted question for instance {row.id}")
    pick = candidates.iloc[int(rng.integers(len(candidates)))]
    return int(pick["id"]), pick["prompt"], str(pick["true"])


@dataclass
class Pairs:
    """Clean and corrupted token ids [N, T] (same shape), and per answer place k the readout `pos`
    [N, K], the `label` tokens (clean, teacher-forced) and the `contrast` tokens [N, K]."""
    clean: torch.Tensor
    corrupt: torch.Tensor
    pos: torch.Tensor
    label: torch.Tensor
    contrast: torch.Tensor

    def __len__(self) -> int:
        return len(self.clean)

    def batches(self, size: int):
        """The pairs in batches of `size` rows."""
        for start in range(0, len(self), size):
            part = slice(start, start + size)
            yield Pairs(self.clean[part], self.corrupt[part], self.pos[part], self.label[part], self.contrast[part])


def pair_batch(tokenizer, rows: pd.DataFrame, corrupted: pd.DataFrame, column: str = "label") -> Pairs:
    """Clean sequences (prompt + `column` of `rows`: the label, or "true") and corrupted ones
    (prompt + label of `corrupted`), with the answer tokens and readout pos."""
    clean, mask, plen = prompt_batch(tokenizer, rows, column)
    corrupt, cmask, _ = prompt_batch(tokenizer, corrupted, "label")
    if clean.shape != corrupt.shape or not torch.equal(mask, cmask):
        raise ValueError("clean and corrupted sequences differ in length or in the pos of their answers")
    k = int(mask[0].sum())
    pos = readout_pos(plen[:, None], torch.arange(k))
    return Pairs(clean, corrupt, pos, clean[mask].view(-1, k), corrupt[cmask].view(-1, k))


def logit_difference(logits: torch.Tensor, pairs: Pairs) -> torch.Tensor:
    """Per row, sum over answer places of logit(label) - logit(contrast) at the readout pos."""
    rows = torch.arange(len(logits), device=logits.device)[:, None]
    at = logits[rows, pairs.pos.to(logits.device)]  # [N, K, V]
    pick = lambda tokens: at.gather(-1, tokens.to(logits.device)[..., None]).squeeze(-1)  # noqa: E731
    return (pick(pairs.label) - pick(pairs.contrast)).sum(1)


# ---- the explicit forward: one residual copy per downstream input ---------------------------------------

def _norm(ln, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class _Residual:
    """The residual stream of a run, node by node, and the copies its downstream inputs read."""

    def __init__(self, embed: torch.Tensor, source: torch.Tensor | None):
        self.ups, self.resid, self.bias, self.source = [embed], embed, 0.0, source
        self.source_sum, self.source_nodes = 0.0, 0  # the sum of the first source_nodes source nodes

    def add(self, node: torch.Tensor):
        self.ups.append(node)
        self.resid = self.resid + node

    def add_bias(self, bias: torch.Tensor):
        self.bias = self.bias + bias
        self.resid = self.resid + bias

    def source_resid(self, k: int) -> torch.Tensor:
        """The sum of the first k source nodes (+ biases): the residual if all k were patched."""
        for u in range(self.source_nodes, k):
            self.source_sum = self.source_sum + self.source[u]
        self.source_nodes = k
        return self.source_sum + self.bias

    def copies(self, n: int, patched: torch.Tensor | None) -> torch.Tensor:
        """The residual copies [n, B, T, d] of n downstream inputs: the sum of the nodes so far (+
        biases) with a_u replaced by source_u on the edges set in `patched` [n, >= nodes so far].
        Computed from the clean sum minus the patched nodes' differences, or from the source sum
        plus the kept nodes' differences, whichever touches fewer nodes."""
        if patched is None:
            return self.resid.expand(n, *self.resid.shape)
        k = len(self.ups)
        patched = patched[:, :k]
        changed, kept = patched.any(0).nonzero()[:, 0], (patched < 1).any(0).nonzero()[:, 0]
        if len(changed) <= len(kept):
            base, nodes, coef = self.resid, changed, -patched
        else:
            base, nodes, coef = self.source_resid(k), kept, 1 - patched
        base = base.expand(n, *self.resid.shape)
        if len(nodes) == 0:
            return base
        delta = torch.stack([self.ups[u] - self.source[u] for u in nodes.tolist()])
        return base + torch.einsum("nu,ubtc->nbtc", coef[:, nodes].to(delta.dtype), delta)


def _heads(block, x: torch.Tensor, n_head: int):
    """Attention of one block on q, k, v copies x [3 * n_head, B, T, d]: per-head outputs [H, B, T, d]."""
    attn = block.attn
    n, B, T, d = x.shape
    dh = d // n_head
    h = _norm(block.ln_1, x).view(3, n_head, B, T, d)
    qkv = torch.einsum("shbtd,dshe->shbte", h, attn.c_attn.weight.view(d, 3, n_head, dh))
    q, k, v = qkv + attn.c_attn.bias.view(3, n_head, 1, 1, dh)
    weights = (q @ k.transpose(-1, -2)) * dh ** -0.5
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    z = weights.masked_fill(~causal, float("-inf")).softmax(-1) @ v  # [H, B, T, dh]
    return torch.einsum("hbte,hed->hbtd", z, attn.c_proj.weight.view(n_head, dh, d))


def embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """Token + position embeddings (after dropout, as the blocks receive them)."""
    tr = hf(model).transformer
    return tr.drop(tr.wte(ids) + tr.wpe(torch.arange(ids.shape[1], device=ids.device)))


def explicit_forward(model, ids: torch.Tensor, patched: torch.Tensor | None = None,
                     source: torch.Tensor | None = None, embed: torch.Tensor | None = None):
    """Plain-torch forward that builds every downstream input as its own residual copy: (logits,
    upstream activations [n_up, B, T, d], the downstream inputs in graph order: a list of
    [n, B, T, d] blocks, per layer its 3 * n_head attention copies and its MLP copy, then logits).
    `patched` [n_edges] bool with `source` [n_up, B or 1, T, d]: those edges carry the source
    activation instead of the run's own. `embed`: the embeddings given (EAP-IG)."""
    if patched is not None and source is None:
        raise ValueError("patched edges need a source of activations")
    model = hf(model)
    tr, graph = model.transformer, graph_of(model)
    H = graph.n_head
    matrix = None if patched is None else graph.matrix(patched.to(ids.device, torch.float32))
    embed = embeddings(model, ids) if embed is None else embed
    stream, inputs = _Residual(embed, source), []
    rows = lambda first, n: None if matrix is None else matrix[first: first + n]  # noqa: E731
    for l, block in enumerate(tr.h):
        first = l * (3 * H + 1)
        x = stream.copies(3 * H, rows(first, 3 * H))
        for head in _heads(block, x, H):
            stream.add(head)
        stream.add_bias(block.attn.c_proj.bias)
        m = stream.copies(1, rows(first + 3 * H, 1))
        stream.add(block.mlp(_norm(block.ln_2, m[0])))
        inputs += [x, m]
    last = stream.copies(1, rows(len(graph.downstream) - 1, 1))
    inputs.append(last)
    return model.lm_head(_norm(tr.ln_f, last[0])), torch.stack(stream.ups), inputs


# ---- reading the HF model with nnsight ----------------------------------------------------------------

def _traced_run(model, ids: torch.Tensor, grad: bool, embed_from=None):
    """One nnsight trace: (logits, upstream activations [n_up, B, T, d], {name: tensors}: with
    `grad`, also those needed to carry gradients to the downstream inputs). `embed_from` (source embeddings, alpha): the
    embeddings are replaced by source + alpha (own - source)."""
    nm, config = traced(model), hf(model).config
    keys = ("embed", "z", "mlp", "ln1_in", "qkv", "ln2_in", "ln2_out", "lnf_in", "lnf_out", "logits")
    saved = {key: [] for key in keys}  # filled inside the trace: names bound there do not survive it
    with torch.set_grad_enabled(grad), nm.trace(ids):
        if embed_from is not None:
            source, alpha = embed_from
            nm.transformer.drop.output = source + alpha * (nm.transformer.drop.output - source)
        saved["embed"].append(nm.transformer.drop.output.save())
        for l in range(config.n_layer):
            block = nm.transformer.h[l]
            if grad:
                saved["ln1_in"].append(block.ln_1.input.save())
                saved["qkv"].append(block.attn.c_attn.output.save())
            saved["z"].append(block.attn.c_proj.input.save())
            if grad:
                saved["ln2_in"].append(block.ln_2.input.save())
                saved["ln2_out"].append(block.ln_2.output.save())
            saved["mlp"].append(block.mlp.output.save())
        if grad:
            saved["lnf_in"].append(nm.transformer.ln_f.input.save())
            saved["lnf_out"].append(nm.transformer.ln_f.output.save())
        saved["logits"].append(nm.output.logits.save())
    saved = {key: value[0] if key in ("lnf_in", "lnf_out", "logits") and value else value for key, value in saved.items()}
    return saved["logits"], _upstream(model, saved), saved


def _upstream(model, saved: dict) -> torch.Tensor:
    """Upstream activations [n_up, B, T, d] from the embeddings, each layer's z (split by head and
    multiplied by that head's rows of W_O) and MLP outputs."""
    model = hf(model)
    H, out = model.config.n_head, [saved["embed"][0]]
    for block, z, mlp in zip(model.transformer.h, saved["z"], saved["mlp"]):
        B, T, d = z.shape
        w = block.attn.c_proj.weight.view(H, d // H, d)
        out += list(torch.einsum("bthe,hed->hbtd", z.view(B, T, H, d // H), w)) + [mlp]
    return torch.stack(out)


def _ln_backward(ln, x: torch.Tensor, cotangents: torch.Tensor) -> torch.Tensor:
    """Gradients [n, B, T, d] at the input x of LayerNorm `ln` of n cotangents at its output."""
    _, vjp = torch.func.vjp(lambda y: _norm(ln, y), x.detach())
    return torch.func.vmap(vjp)(cotangents)[0]


def _input_gradients(model, saved: dict, metric: torch.Tensor) -> torch.Tensor:
    """dM/dx_d for every downstream input [n_down, B, T, d]: the gradients at c_attn's output (q, k,
    v of each head), ln_2's output and ln_f's output, carried back through their LayerNorm."""
    model = hf(model)
    H = model.config.n_head
    wrt = [t for l in range(model.config.n_layer) for t in (saved["qkv"][l], saved["ln2_out"][l])]
    grads = torch.autograd.grad(metric, wrt + [saved["lnf_out"]])
    out = []
    for l, block in enumerate(model.transformer.h):
        g_qkv, g_mlp = grads[2 * l], grads[2 * l + 1]
        B, T, three_d = g_qkv.shape
        d = three_d // 3
        w = block.attn.c_attn.weight.view(d, 3, H, d // H)
        at_ln = torch.einsum("btshe,dshe->shbtd", g_qkv.view(B, T, 3, H, d // H), w).reshape(3 * H, B, T, d)
        out += [_ln_backward(block.ln_1, saved["ln1_in"][l], at_ln),
                _ln_backward(block.ln_2, saved["ln2_in"][l], g_mlp[None])]
    out.append(_ln_backward(model.transformer.ln_f, saved["lnf_in"], grads[-1][None]))
    return torch.cat(out)


# ---- scores -----------------------------------------------------------------------------------------

def _gradient_run(model, ids: torch.Tensor, pairs: Pairs, plain: bool, mix=None):
    """One forward and backward pass on `ids`: (upstream activations, dM/dx_d for every downstream
    input [n_down, B, T, d]). `mix` (source embeddings, alpha): interpolated embeddings (EAP-IG)."""
    with torch.enable_grad():
        if plain:
            embed = None if mix is None else mix[0] + mix[1] * (embeddings(model, ids) - mix[0])
            logits, acts, inputs = explicit_forward(model, ids, embed=embed)
            grads = torch.cat(torch.autograd.grad(logit_difference(logits, pairs).sum(), inputs))
        else:
            logits, acts, saved = _traced_run(model, ids, True, mix)
            grads = _input_gradients(model, saved, logit_difference(logits, pairs).sum())
    return acts.detach(), grads.detach()


def _batch_scores(model, pairs: Pairs, ig_steps: int, plain: bool) -> torch.Tensor:
    """Every edge's score on each row of the batch, [B, n_edges]."""
    device = hf(model).device
    clean, corrupt = pairs.clean.to(device), pairs.corrupt.to(device)
    with torch.no_grad():
        source = explicit_forward(model, corrupt)[1] if plain else _traced_run(model, corrupt, False)[1]
    if ig_steps:  # gradients averaged along the embeddings' path; the last run (alpha = 1) is the clean one
        runs = [_gradient_run(model, clean, pairs, plain, (source[0], k / ig_steps)) for k in range(1, ig_steps + 1)]
        acts, grads = runs[-1][0], sum(run[1] for run in runs) / ig_steps
    else:
        acts, grads = _gradient_run(model, clean, pairs, plain)
    full = torch.einsum("dbtc,ubtc->bdu", grads, source - acts)  # [B, n_down, n_up]
    return full[:, graph_of(model).allowed.to(full.device)]


def edge_scores(model, pairs: Pairs, ig_steps: int = 0, batch_size: int = 256, per_row: bool = False) -> torch.Tensor:
    """EAP score of every edge (`Graph.edges` order), averaged over the rows of `pairs` (module
    docstring), or with `per_row` each row's own [N, n_edges] (their mean is the average); with
    `ig_steps`, EAP-IG. nnsight, or the plain-torch twin inside `plain_hooks()`."""
    plain = _HOOKS.get()
    rows = torch.cat([_batch_scores(model, part, ig_steps, plain).cpu() for part in pairs.batches(batch_size)])
    return rows if per_row else rows.mean(0)


def score_table(model, scores: torch.Tensor) -> pd.DataFrame:
    """The edges with their scores, largest |score| first."""
    table = graph_of(model).edges.assign(score=scores.numpy())
    return table.sort_values("score", key=np.abs, ascending=False, kind="stable").reset_index(drop=True)


# ---- real patching ------------------------------------------------------------------------------------

@torch.no_grad()
def upstream_activations(model, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Every upstream node's activation on `ids`, [n_up, N, T, d] (`explicit_forward`)."""
    device = hf(model).device
    return torch.cat([explicit_forward(model, ids[start: start + batch_size].to(device))[1]
                      for start in range(0, len(ids), batch_size)], 1)


def upstream_means(model, ids: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Every upstream node's activation averaged over the rows of `ids`, per pos, [n_up, 1, T,
    d]: the source of mean patching."""
    return upstream_activations(model, ids, batch_size).mean(1, keepdim=True)


@torch.no_grad()
def patched_metric(model, pairs: Pairs, patched: torch.Tensor, batch_size: int = 256,
                   source: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, the metric of the clean input when the edges set in `patched` [n_edges] carry
    the corrupted input's activation, or `source`'s ([n_up, N, T, d] of these rows, e.g. their
    `upstream_activations` computed once; or [n_up, 1, T, d] for every row, e.g. `upstream_means`),
    and every other edge its own run's (`explicit_forward`)."""
    if source is not None and source.shape[1] not in (1, len(pairs)):
        raise ValueError(f"source has {source.shape[1]} rows; expected 1 or {len(pairs)}")
    device, out = hf(model).device, []
    for start, part in zip(range(0, len(pairs), batch_size), pairs.batches(batch_size)):
        if source is None:
            src = explicit_forward(model, part.corrupt.to(device))[1]
        else:
            src = source if source.shape[1] == 1 else source[:, start: start + len(part)]
        logits = explicit_forward(model, part.clean.to(device), patched.to(device), src.to(device))[0]
        out.append(logit_difference(logits, part).cpu())
    return torch.cat(out)


def single_edge_effects(model, pairs: Pairs, edges, batch_size: int = 256,
                        source: torch.Tensor | None = None) -> torch.Tensor:
    """The change of the mean metric when each edge (indices into `Graph.edges`) alone is patched
    (with the corrupted activations, computed once, or `source`'s)."""
    n = len(graph_of(model).edges)
    source = upstream_activations(model, pairs.corrupt, batch_size) if source is None else source
    base = patched_metric(model, pairs, torch.zeros(n, dtype=torch.bool), batch_size, source).mean()
    out = []
    for i in edges:
        one = torch.zeros(n, dtype=torch.bool)
        one[int(i)] = True
        out.append(patched_metric(model, pairs, one, batch_size, source).mean() - base)
    return torch.stack(out)


def faithfulness(model, pairs: Pairs, scores: torch.Tensor, sizes, batch_size: int = 256,
                 source: torch.Tensor | None = None) -> pd.DataFrame:
    """Per n in `sizes`: the mean metric when only the n edges of largest |score| carry clean
    activations (the rest the corrupted ones, or `source`'s), and its share of the way from the
    all-patched to the clean metric: (M_n - M_patched) / (M_clean - M_patched)."""
    order = torch.argsort(scores.abs(), descending=True, stable=True)
    none = torch.zeros(len(scores), dtype=torch.bool)
    source = upstream_activations(model, pairs.corrupt, batch_size) if source is None else source
    metric = lambda patched: patched_metric(model, pairs, patched, batch_size, source).mean().item()  # noqa: E731
    clean, patched_all = metric(none), metric(~none)
    rows = []
    for n in sizes:
        kept = none.clone()
        kept[order[:n]] = True
        m = metric(~kept)
        rows.append({"n": int(n), "metric": m, "share": (m - patched_all) / (clean - patched_all)})
    return pd.DataFrame(rows, columns=["n", "metric", "share"])
