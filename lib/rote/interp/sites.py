"""Where in the model and which token: the one vocabulary every analysis uses.

Where in the model: a `(layer, point)` pair, each point named once (as TransformerLens names
`blocks.{l}.hook_resid_post`):

- ("embed", -1): the embedding output (token + position embeddings, after dropout), layer -1 of
  the logit lens;
- ("resid", l): the output of block l, the residual stream after it;
- ("head", l): the input of block l's `attn.c_proj`, heads side by side: head j is the slice
  j * d_head : (j + 1) * d_head;
- ("neuron", l): block l's MLP post-GELU activations (`mlp.act`, the input of `mlp.c_proj`).

Which token. A *pos* is an index into the token sequence (as TransformerLens's `pos`). A *place*
k (0 .. answer length - 1) is the k-th token of the answer: FDA answers have four places,
thousands, hundreds, tens and units (`PLACES`); a THR answer has one. Place k is read at its
*readout pos* `prompt length - 1 + k`, the token just before it, whose logits predict it under
teacher forcing. The package says "pos" for a token index and "place" for an answer index
everywhere ("column" is a column of a table or a matrix, never a token index). A token's
*direction* in the residual stream is its embedding (= unembedding: tied weights) row
(`entity_basis`).
"""
from __future__ import annotations

import pandas as pd
import torch
from nnsight import NNsight

from rote.runs.model import encode

POINTS = ("embed", "head", "neuron", "resid")  # in forward order within a block ("embed" before block 0)
PLACES = ("thousands", "hundreds", "tens", "units")  # FDA answer places 0..3, and operand digits


def traced(model) -> NNsight:
    """An nnsight wrapper of an HF model (cheap: ~1 ms), or the wrapper itself."""
    return model if isinstance(model, NNsight) else NNsight(model)


def hf(model):
    """The HF model under an nnsight wrapper, or the model itself."""
    return model._module if isinstance(model, NNsight) else model


def place_name(task: str, place) -> str:
    """A readable name of an answer place (FDA: `PLACES`; THR has a single answer token)."""
    if place == "all":
        return "all"
    return PLACES[int(place)] if task == "fda" else "answer"


def prompt_batch(tokenizer, rows: pd.DataFrame, column: str = "label"):
    """Token ids of prompt + `column` (teacher forcing), the answer mask and the prompt lengths."""
    ids, mask = encode(tokenizer, rows["prompt"], rows[column])
    lengths = [len(x) for x in tokenizer(list(rows["prompt"]), add_special_tokens=False)["input_ids"]]
    return ids, mask, torch.tensor(lengths)


def readout_pos(prompt_lengths, places) -> torch.Tensor:
    """The readout pos of answer place k = `places` in each row: prompt length - 1 + k.
    `places`: one int for every row, or one per row (then [B])."""
    return torch.as_tensor(prompt_lengths) - 1 + torch.as_tensor(places)


# ---- directions in the residual stream ------------------------------------------------------------

def orthonormal(basis: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal columns spanning `basis` [..., d, k]; columns beyond its rank are zero."""
    if basis.shape[-1] == 0:
        return basis.float()
    u, s, _ = torch.linalg.svd(basis.double(), full_matrices=False)
    keep = s > tol * s.amax(-1, keepdim=True).clamp(min=1e-30)
    return (u * keep[..., None, :]).float()


def entity_basis(model, tokenizer, entities) -> torch.Tensor:
    """Per entity (token), an orthonormal basis [N, d, k] of its embedding row (wte) and unembedding
    row (lm_head): k = 1 when the two are tied (our models), 2 otherwise."""
    model = hf(model)
    ids = tokenizer.convert_tokens_to_ids(list(entities))
    if tokenizer.unk_token_id in ids:
        raise ValueError("an entity is not a single token of the vocabulary")
    emb, unemb = model.transformer.wte.weight, model.lm_head.weight
    rows = [emb[ids]] if unemb is emb or torch.equal(unemb, emb) else [emb[ids], unemb[ids]]
    return orthonormal(torch.stack(rows, -1).detach().cpu())


def random_orthogonal(basis: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Per row of `basis` [..., d, k] (orthonormal columns), k random orthonormal directions [..., d, k]
    orthogonal to it (seeded): where a control removes as much as the basis's removal, elsewhere."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(basis.shape, generator=g, dtype=torch.float64)
    b = basis.double()
    x = x - b @ (b.transpose(-1, -2) @ x)
    return torch.linalg.qr(x)[0].float()


def intermediate_layers(n_layer: int) -> list[int]:
    """The block layers whose output can carry an intermediate result: every block but the last,
    whose output is the answer's readout (there, removing a clean question's correct digit removes
    its answer, not a step towards it)."""
    return list(range(n_layer - 1))
