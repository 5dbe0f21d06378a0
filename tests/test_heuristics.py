"""Neuron heuristics: the grid, the pattern families, the match scores, a planted pattern is found,
and activations and ablations agree with plain torch hooks."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.config import make_config
from rote.interp.edits import plain_hooks
from rote.interp.instances import fda_rows, noisy_pairs, operand_grid
from rote.interp.sites import prompt_batch
from rote.observations.heuristics import (
    KINDS,
    ablation_importance,
    answer_activations,
    auc,
    classify,
    digit_margin,
    eta_squared,
    neuron_heuristics,
    pattern_families,
    type_counts,
)
from rote.runs.data import generate
from rote.runs.model import build_model, build_tokenizer


@lru_cache
def setup():
    """A random-init tiny FDA model, its tokenizer and its data."""
    config = make_config("fda", "tiny", noise=0.2, seed=1)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    return config, model, tok, generate(config)


def hook_activations(model, ids):
    """Plain torch: every layer's mlp.act output [N, T, n_layer, M]."""
    out = []
    handles = [b.mlp.act.register_forward_hook(lambda m, a, o: out.append(o.detach().clone()))
               for b in model.transformer.h]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out, 2)


# ---- the grid and the families ----

def test_operand_grid_is_clean_distinct_and_seeded():
    _, _, _, frame = setup()
    grid = operand_grid(frame, 500, seed=3)
    assert len(grid) == 500 and grid[["a", "b"]].drop_duplicates().shape[0] == 500
    assert grid["a"].between(1000, 8999).all() and grid["b"].between(1000, 8999).all()
    assert ((grid["a"] + grid["b"]) <= 9999).all()
    assert (grid["true"] == [f"{a + b:04d}" for a, b in zip(grid["a"], grid["b"])]).all()
    assert not {(a, b) for a, b in zip(grid["a"], grid["b"])} & noisy_pairs(frame)
    assert grid.equals(operand_grid(frame, 500, seed=3)) and not grid.equals(operand_grid(frame, 500, seed=4))
    with pytest.raises(ValueError, match="four-digit"):
        fda_rows([9000], [1000])


def test_pattern_families_by_hand():
    fams = pattern_families([1357, 4999], [2473, 4001])
    assert list(fams["sum units digit"][1]) == [0, 0] and list(fams["sum thousands digit"][1]) == [3, 9]
    assert list(fams["a hundreds digit"][1]) == [3, 9] and list(fams["b tens digit"][1]) == [7, 0]
    assert list(fams["carry into tens"][1]) == [1, 1] and list(fams["carry into thousands"][1]) == [0, 1]
    assert list(fams["carry into hundreds"][1]) == [1, 1]
    assert list(fams["tens digit sum mod 10"][1]) == [2, 9] and list(fams["same thousands digit"][1]) == [0, 1]
    assert list(fams["sum narrow range"][1]) == [38, 90]
    assert {kind for kind, _ in fams.values()} == set(KINDS)


def test_eta_squared_against_hand_computation():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, 200)
    x = np.stack([codes * 1.5 + rng.normal(0, 1, 200), rng.normal(0, 1, 200), codes ** 2.0], 1)
    total = ((x - x.mean(0)) ** 2).sum(0)
    within = sum(((x[codes == c] - x[codes == c].mean(0)) ** 2).sum(0) for c in range(4))
    np.testing.assert_allclose(eta_squared(x, codes), 1 - within / total, atol=1e-12)
    assert eta_squared(x, codes)[2] == pytest.approx(1.0) and eta_squared(x, codes)[1] < 0.05
    assert eta_squared(np.ones((10, 1)), np.arange(10) % 2)[0] == 0.0


def test_auc_against_pairwise_count():
    rng = np.random.default_rng(1)
    x, pos = rng.normal(size=(60, 2)), rng.random(60) < 0.3
    x[:, 1] = np.round(x[:, 1])  # ties
    for j in range(2):
        p, n = x[pos, j], x[~pos, j]
        expected = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (len(p) * len(n))
        assert auc(x, pos)[j] == pytest.approx(expected)


def test_planted_patterns_are_classified():
    grid = operand_grid(None, 2000, seed=0)
    a, b = grid["a"].to_numpy(), grid["b"].to_numpy()
    rng = np.random.default_rng(0)
    noise = lambda: rng.normal(0, 0.1, len(a))  # noqa: E731
    x = np.stack([2.0 * ((b // 10) % 10 == 7) + noise(),              # b's tens digit is 7
                  1.5 * ((a + b) % 10 == 3) + noise(),                 # the sum's units digit is 3
                  1.0 * ((a % 1000 + b % 1000) >= 1000) + noise(),     # a carry into the thousands
                  rng.normal(0, 1, len(a)),                            # nothing
                  -0.1 + 0.01 * noise(),                               # never on
                  1.0 * ((a + b) // 1000 == 8) + noise()], 1)          # the sum is 8xxx
    table = classify(x, pattern_families(a, b))
    assert list(table["family"][:3]) == ["b tens digit", "sum units digit", "carry into thousands"]
    # the coarsest family that explains as much: not the 100-wide ranges that refine it
    assert table["family"][5] == "sum thousands digit" and table["eta2_max"][5] >= table["eta2"][5]
    assert list(table["type"]) == ["operand digit", "result digit", "carry", "unclassified", "rarely active",
                                   "result digit"]
    assert list(table["value"][:3]) == [7, 3, 1] and (table["auc"][:3] > 0.99).all()
    assert (table["eta2"][:3] > 0.9).all() and table["eta2"][3] < 0.5
    # the threshold is the chapter's: a weaker pattern falls below it
    weak = np.stack([0.3 * ((b // 10) % 10 == 7) + rng.normal(0, 0.5, len(a))], 1)
    assert classify(weak, pattern_families(a, b))["type"][0] == "unclassified"


# ---- activations and ablation against plain hooks ----

def test_answer_activations_match_hooks():
    config, model, tok, frame = setup()
    rows = operand_grid(frame, 40, seed=0)
    acts = answer_activations(model, tok, rows, batch_size=16)
    assert acts.shape == (40, 4, config.n_layer, 4 * config.n_embd)
    ids, _, plen = prompt_batch(tok, rows, "true")
    ref = hook_activations(model, ids)[:, int(plen[0]) - 1 + torch.arange(4)]
    assert torch.allclose(acts, ref, atol=1e-5)
    with plain_hooks():
        assert torch.allclose(answer_activations(model, tok, rows), ref, atol=1e-5)


def test_ablation_importance_against_plain_hooks():
    config, model, tok, frame = setup()
    rows = operand_grid(frame, 12, seed=1)
    means = torch.randn(4, config.n_layer, 4 * config.n_embd)
    imp = ablation_importance(model, tok, rows, means, chunk=48)
    assert imp.shape == (4, config.n_layer, 4 * config.n_embd)
    with plain_hooks():
        assert torch.allclose(imp, ablation_importance(model, tok, rows, means, chunk=7), atol=1e-4)
    ids, _, plen = prompt_batch(tok, rows, "true")
    pos = int(plen[0]) - 1 + torch.arange(4)
    target = ids[:, pos + 1]
    with torch.no_grad():
        base = digit_margin(model(ids).logits[:, pos], target)
    for layer, j in ((0, 3), (1, 60)):
        def hook(m, a, out, layer=layer, j=j):
            out = out.clone()
            out[:, pos, j] = means[:, layer, j]
            return out
        handle = model.transformer.h[layer].mlp.act.register_forward_hook(hook)
        try:
            with torch.no_grad():
                after = digit_margin(model(ids).logits[:, pos], target)
        finally:
            handle.remove()
        assert torch.allclose(imp[:, layer, j], (base - after).mean(0), atol=1e-4)
        assert imp[:, layer, j].abs().max() > 1e-4  # the ablation does something
    # setting a neuron to what it already is changes nothing
    same = answer_activations(model, tok, rows).mean(0) * 0 + answer_activations(model, tok, rows)[0]
    one = ablation_importance(model, tok, rows.head(1), same, chunk=64)
    assert one.abs().max() < 1e-4


def test_digit_margin_by_hand():
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 4.0]])
    assert torch.allclose(digit_margin(logits, torch.tensor([1, 2])), torch.tensor([1.0, -1.0]))


def test_neuron_heuristics_table():
    config, model, tok, frame = setup()
    h = neuron_heuristics(model, tok, frame, n_grid=150, n_ablate=4)
    m = 4 * config.n_embd
    assert h.acts.shape == (150, 4, config.n_layer, m) and len(h.table) == 4 * config.n_layer * m
    unit = h.unit(2, 1, 5)
    assert (unit["place"], unit["layer"], unit["neuron"]) == (2, 1, 5)
    assert unit["mean"] == pytest.approx(float(h.acts[:, 2, 1, 5].double().mean()), abs=1e-5)
    counts = type_counts(h)
    assert counts["units"].sum() == len(h.table) and set(counts["place"]) == {"thousands", "hundreds", "tens", "units"}
    assert pd.api.types.is_bool_dtype(h.table["matters"])
