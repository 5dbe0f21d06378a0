"""Logit lens: what each layer would answer if the model stopped there.

The residual stream after embedding (layer -1) and after each block l (0..n_layer-1) is read out
with the model's own final layer norm and unembedding, `lm_head(ln_f(h_l))`, at the readout pos of
the answer's places (`rote.interp.sites`). The readout of the last block is the model's logits.

Teacher forcing: the answer's tokens are fed after the prompt, so the readout of place k (at the
pos just before answer token k) predicts answer token k from the prompt plus tokens 0..k-1 of
the teacher-forced label (`teacher_forcing="label"`: the label in the data, noisy or
not; `"true"`: the correct answer). For THR the answer is one token and the choice does not matter.

The states are read with `rote.interp.edits.read` (nnsight; plain torch hooks inside
`rote.interp.edits.plain_hooks()`, which must agree: the tests and the benchmark compare them).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from rote.interp.edits import read
from rote.interp.sites import hf
from rote.runs.model import encode

TARGETS = ("true", "label", "bridge")  # rank and probability columns, one pair per target
# plus "control" where the instances carry a `control` column (an answer of the label's length
# whose tokens are a matched control, e.g. a label-prior person: `rote.interp.instances.control_answers`)


def readout_batch(tokenizer, rows: pd.DataFrame, teacher_forcing: str):
    """Token ids (prompt + teacher-forced label), the readout pos (`where` [B, T]: the one before
    each answer token), each readout's answer place, and the target tokens there: true answer,
    label in data, bridge entity (-1 where there is none), and the `control` column's tokens where
    the rows have one."""
    if teacher_forcing not in ("label", "true"):
        raise ValueError(f"teacher_forcing must be 'label' or 'true', got {teacher_forcing!r}")
    ids, mask = encode(tokenizer, rows["prompt"], rows[teacher_forcing])
    where = mask.roll(-1, dims=1)  # pos t predicts token t + 1: the readout pos
    place = (mask.cumsum(1) - 1)[mask]
    targets = {}
    for name, column in (("true", "true"), ("label", "label"), ("control", "control")):
        if column not in rows:
            continue
        other, other_mask = encode(tokenizer, rows["prompt"], rows[column])
        if other_mask.shape != mask.shape or not torch.equal(other_mask, mask):
            raise ValueError(f"the {column!r} and {teacher_forcing!r} answers differ in length")
        targets[name] = other[mask]
    bridge = rows["bridge"] if "bridge" in rows else pd.Series([np.nan] * len(rows))
    bridge_ids = torch.tensor([tokenizer.convert_tokens_to_ids(b) if isinstance(b, str) else -1
                               for b in bridge])
    targets["bridge"] = bridge_ids.repeat_interleave(mask.sum(1))
    row = torch.arange(len(rows)).repeat_interleave(mask.sum(1))
    return ids, where, place, row, targets


@torch.no_grad()
def lens_states(model, ids: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The embedding output and every block's output at the `where` pos, [n_layer + 1,
    n_readouts, d_model] (one run, `rote.interp.edits.read`)."""
    keys = [(-1, "embed")] + [(layer, "resid") for layer in range(hf(model).config.n_layer)]
    store, _ = read(model, ids, keys, select=lambda h: h[where])
    return torch.stack([store[key] for key in keys])


@torch.no_grad()
def read_out(model, states: torch.Tensor) -> torch.Tensor:
    """Logits of `lm_head(ln_f(h))` for residual states h [..., d_model]."""
    model = hf(model)
    return model.lm_head(model.transformer.ln_f(states))


def lens_table(tokenizer, ids_of_rows, logits, place, row, targets) -> pd.DataFrame:
    """One row per (instance, layer, answer place) of the readout `logits` [L, R, V] (R readouts):
    top-1 token and the rank (0 = top) and probability of each target token."""
    logits = logits.float().cpu()
    probs = logits.softmax(-1)
    n_layers, n_readouts = logits.shape[:2]
    top = logits.argmax(-1)
    table = {
        "id": np.tile(np.asarray(ids_of_rows)[row.numpy()], n_layers),
        "layer": np.repeat(np.arange(-1, n_layers - 1), n_readouts),
        "place": np.tile(place.numpy(), n_layers),
        "top1": np.array(tokenizer.convert_ids_to_tokens(top.flatten().tolist()), dtype=object),
        "top1_prob": probs.gather(-1, top[..., None]).squeeze(-1).flatten().numpy(),
    }
    for name in (*TARGETS, *[k for k in targets if k not in TARGETS]):
        t = targets[name]
        ok = t >= 0
        tt = t.clamp(min=0).expand(n_layers, n_readouts)[..., None]
        rank = (logits > logits.gather(-1, tt)).sum(-1).double()
        prob = probs.gather(-1, tt).squeeze(-1).double()
        table[f"{name}_rank"] = pd.array(torch.where(ok, rank, torch.nan).flatten().numpy(), dtype="Int64")
        table[f"{name}_prob"] = torch.where(ok, prob, torch.nan).flatten().numpy()
    return pd.DataFrame(table)


def logit_lens(model, tokenizer, instances: pd.DataFrame, teacher_forcing: str = "label",
               batch_size: int = 512) -> pd.DataFrame:
    """Logit lens over `instances` (one run per batch).

    One row per (id, layer, place): layer -1 is the embedding output, 0..n_layer-1 the block
    outputs; place k is the answer place read at its readout pos under teacher forcing on
    the `teacher_forcing` column ("label": the label in data; "true": the correct answer).
    Columns: top1 (token) and top1_prob; true_rank/true_prob (the correct answer's token k),
    label_rank/label_prob (the data label's token k; equal to true on clean instances),
    bridge_rank/bridge_prob (THR bridge entity; NaN without one). Rank 0 is the top token.
    """
    tables = []
    for start in range(0, len(instances), batch_size):
        rows = instances.iloc[start: start + batch_size]
        ids, where, place, row, targets = readout_batch(tokenizer, rows, teacher_forcing)
        ids = ids.to(hf(model).device)
        logits = read_out(model, lens_states(model, ids, where.to(ids.device)))
        tables.append(lens_table(tokenizer, rows["id"].to_numpy(), logits, place, row, targets))
    if not tables:
        raise ValueError("no instances to read out")
    table = pd.concat(tables, ignore_index=True)
    return table.sort_values(["id", "layer", "place"], kind="stable").reset_index(drop=True)
