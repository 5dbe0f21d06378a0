"""Edits (rote.interp.edits): nnsight agrees with plain hooks, null interventions change nothing, and each
intervention does what it says (projections remove, LEACE erases, set_at sets the neurons it names)."""
from __future__ import annotations

from collections import Counter
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.config import make_config
from rote.interp.edits import (
    apply_removal,
    erasure,
    neurons_set,
    plain_hooks,
    projection,
    redirected,
    resids_at,
    run,
    set_at,
)
from rote.interp.instances import knowledge_graph_of, matched_partition, scored_places
from rote.interp.leace import fit_leace, relabel
from rote.interp.lens import read_out
from rote.interp.sites import entity_basis, orthonormal, random_orthogonal
from rote.runs.data import generate
from rote.runs.model import build_model, build_tokenizer, encode

EFFECT_COLUMNS = ["id", "logp_before", "logp_after", "match_before", "match_after"]


@lru_cache
def setup(task):
    """A random-init tiny model, its tokenizer, 16 clean + 16 noisy training questions (two-hop /
    addition) and the whole generated frame (facts and test questions too)."""
    config = make_config(task, "tiny", noise=0.2, seed=1)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    frame = generate(config)
    rows = training_questions(frame).groupby("noisy").head(16).reset_index(drop=True)
    return config, model, tok, rows, frame


def training_questions(frame):
    """The training questions of a frame: two-hop or addition, clean and noisy, no facts."""
    return frame[(frame["kind"] != "fact") & (frame["split"] == "train")]


def ids_of(task):
    _, _, tok, rows, _ = setup(task)
    return encode(tok, rows["prompt"], rows["label"])


def hooked(call, *args, **kwargs):
    """`call` run with plain torch hooks (`rote.interp.edits.plain_hooks`), the reference."""
    with plain_hooks():
        return call(*args, **kwargs)


def resid_at(model, tok, rows, layer, place=0, **kwargs):
    """The block output of `layer` at the readout pos of answer `place`, [N, d]."""
    return resids_at(model, tok, rows, [layer], [place], **kwargs)[(layer, place)]


def at(n, k, places):
    """[n, k] bool, set at answer `places` in every row."""
    out = torch.zeros(n, k, dtype=torch.bool)
    out[:, list(places)] = True
    return out


def assert_same_effects(a, b, atol=1e-5):
    assert list(a.columns) == EFFECT_COLUMNS == list(b.columns)
    exact = ["id", "match_before", "match_after"]
    assert (a[exact] == b[exact]).all().all()
    np.testing.assert_allclose(a[["logp_before", "logp_after"]], b[["logp_before", "logp_after"]], atol=atol)


# ---- the edit runners ----

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_run_agrees_with_hooks_at_every_point(task):
    _, model, _, _, _ = setup(task)
    ids, _ = ids_of(task)
    edits = {(1, "resid"): lambda h: h * 1.5, (0, "neuron"): lambda a: a.flip(-1),
             (1, "head"): lambda x: x + 0.3, (0, "resid"): lambda h: h.roll(1, dims=-1)}
    clean = model(ids).logits
    for key, fn in edits.items():  # each edit alone, then all together (out of forward order)
        a, b = run(model, ids, {key: fn}), hooked(run, model, ids, {key: fn})
        assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, clean, atol=1e-3), key
    assert torch.allclose(run(model, ids, edits), hooked(run, model, ids, edits), atol=1e-5)
    assert torch.allclose(run(model, ids, {}), clean, atol=1e-6)
    assert torch.allclose(model(ids).logits, clean)  # hooks removed, model unchanged


@pytest.mark.parametrize("hooks", [False, True])
def test_skipped_blocks_give_their_output_and_are_not_run(hooks):
    config, model, _, _, _ = setup("fda")
    ids, _ = ids_of("fda")
    call = hooked if hooks else (lambda f, *a, **k: f(*a, **k))
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states  # embeddings, then each block's output
        given = hidden[1] + torch.randn_like(hidden[1])
        by_hand = model.lm_head(model.transformer.ln_f(model.transformer.h[1](given)))
        own = call(run, model, ids, {}, skip={0: hidden[1]})  # a block's own output: nothing changes
        assert torch.allclose(own, model(ids).logits, atol=1e-5)
        assert torch.allclose(call(run, model, ids, {}, skip={0: given}), by_hand, atol=1e-5)
        ran = []
        handle = model.transformer.h[0].mlp.register_forward_hook(lambda *args: ran.append(1))
        try:
            assert torch.allclose(call(run, model, ids, {(1, "neuron"): lambda a: a}, skip={0: given}), by_hand, atol=1e-5)
        finally:
            handle.remove()
        assert not ran  # block 0 was not run
        with pytest.raises(ValueError, match="inside skipped blocks"):
            call(run, model, ids, {(0, "neuron"): lambda a: a}, skip={0: given})
    assert torch.allclose(run(model, ids, {(0, "neuron"): lambda a: a * 2}),
                          hooked(run, model, ids, {(0, "neuron"): lambda a: a * 2}), atol=1e-5)  # both twins still intact


# ---- (a) removing directions ----

def test_entity_basis_is_orthonormal_and_spans_both_rows():
    config, model, tok, rows, _ = setup("thr")
    basis = entity_basis(model, tok, rows["bridge"])
    assert basis.shape == (len(rows), config.n_embd, 1)  # tied embeddings: one direction
    untied = build_model(config, len(tok)).eval()
    untied.config.tie_word_embeddings = False
    untied.lm_head.weight = torch.nn.Parameter(torch.randn_like(untied.lm_head.weight))
    basis = entity_basis(untied, tok, rows["bridge"])
    assert basis.shape == (len(rows), config.n_embd, 2)
    assert torch.allclose(basis.transpose(1, 2) @ basis, torch.eye(2).expand(len(rows), 2, 2), atol=1e-5)
    token = torch.tensor(tok.convert_tokens_to_ids(list(rows["bridge"])))
    for weight in (untied.transformer.wte.weight, untied.lm_head.weight):
        row = weight[token].detach()
        inside = (basis @ (basis.transpose(1, 2) @ row[..., None])).squeeze(-1)
        assert torch.allclose(inside, row, atol=1e-5)
    with pytest.raises(ValueError, match="single token"):
        entity_basis(model, tok, ["Nobody-at-all"])


def test_matched_partition_keeps_the_bridge_classes_sizes_and_is_seeded():
    frame = setup("thr")[4]
    graph = knowledge_graph_of(frame)
    part = matched_partition(frame, seed=3)
    assert set(part) == set(graph)  # every (subject, relation) key, each in one class
    assert Counter(part.values()) == Counter(graph.values())  # the classes have the bridge classes' sizes
    assert sum(part[k] == graph[k] for k in graph) < 0.5 * len(graph)  # not the bridge classes themselves
    assert part == matched_partition(frame, seed=3) and part != matched_partition(frame, seed=4)


def test_redirected_removes_the_projections_norm_along_another_direction():
    n, d, T = 3, 16, 7
    g = torch.Generator().manual_seed(0)
    basis = torch.nn.functional.normalize(torch.randn(n, d, 1, generator=g), dim=1)
    other = random_orthogonal(basis, seed=2)
    assert torch.allclose(other.transpose(1, 2) @ other, torch.eye(1).expand(n, 1, 1), atol=1e-5)
    assert (basis.transpose(1, 2) @ other).abs().max() < 1e-5
    assert torch.equal(other, random_orthogonal(basis, seed=2)) and not torch.equal(other, random_orthogonal(basis, 3))
    h = torch.randn(n, T, d, generator=g)
    where, plen = torch.ones(n, 1, dtype=torch.bool), torch.full((n,), 4)
    target = projection(basis[:, None], where, True).edit(torch.arange(n), plen, "cpu", torch.float32)(h)
    control = redirected(basis[:, None], other[:, None], where, True).edit(torch.arange(n), plen, "cpu", torch.float32)(h)
    torch.testing.assert_close((h - control).norm(dim=-1), (h - target).norm(dim=-1))  # the same amount, every pos
    along = torch.einsum("btd,bdk->btk", h, basis)
    torch.testing.assert_close(torch.einsum("btd,bdk->btk", control, basis), along)  # the bridge's component stays
    torch.testing.assert_close(h - control, torch.einsum("btk,bdk->btd", along, other))


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_projection_nnsight_agrees_with_hooks(task):
    config, model, tok, rows, _ = setup(task)
    n = len(rows)
    if task == "thr":
        basis = entity_basis(model, tok, rows["bridge"])[:, None]  # per instance
        scored = at(n, 1, [0])
    else:
        q = orthonormal(torch.randn(config.n_embd, 3, generator=torch.Generator().manual_seed(0)))  # fixed
        basis, scored = q.expand(n, 4, *q.shape), scored_places(rows, "fda")
    removals = {"at the readout": projection(basis, scored),
                "everywhere": projection(basis[:, :1], at(n, 1, [0]), every_pos=True)}
    for name, removal in removals.items():
        a = apply_removal(model, tok, rows, [0, 1], removal, batch_size=10)
        b = hooked(apply_removal, model, tok, rows, [0, 1], removal)
        assert_same_effects(a, b)
        assert (a["logp_after"] - a["logp_before"]).abs().max() > 1e-4, name


def test_orthonormal_drops_repeated_directions():
    g = torch.Generator().manual_seed(0)
    v, w = torch.randn(2, 10, generator=g)
    basis = orthonormal(torch.stack([v, 2 * v, w], -1))
    assert basis.shape == (10, 3) and int((basis.norm(dim=0) > 0.5).sum()) == 2
    assert torch.allclose(basis.T @ basis, torch.diag((basis.norm(dim=0) > 0.5).float()), atol=1e-5)
    for u in (v, w):
        assert torch.allclose(basis @ (basis.T @ u), u, atol=1e-5)


def test_per_instance_bases_reach_their_own_instances():
    """Removing a per-instance basis over several batches = removing each instance's basis alone."""
    config, model, tok, rows, _ = setup("thr")
    rows = rows.iloc[::5].reset_index(drop=True)
    g = torch.Generator().manual_seed(0)
    basis = orthonormal(torch.randn(len(rows), config.n_embd, 3, generator=g))[:, None]
    where = at(len(rows), 1, [0])
    together = apply_removal(model, tok, rows, [1], projection(basis, where), batch_size=4)
    alone = pd.concat([apply_removal(model, tok, rows.iloc[[i]], [1], projection(basis[[i]], where[[i]]))
                       for i in range(len(rows))])
    np.testing.assert_allclose(together["logp_after"], alone["logp_after"], atol=1e-5)
    assert (together["logp_after"] - together["logp_before"]).abs().max() > 1e-4


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_removing_an_empty_basis_changes_nothing(task):
    config, model, tok, rows, _ = setup(task)
    k = 4 if task == "fda" else 1
    for every in (False, True):
        basis = torch.zeros(len(rows), 1 if every else k, config.n_embd, 0)
        removal = projection(basis, at(len(rows), basis.shape[1], range(basis.shape[1])), every)
        table = apply_removal(model, tok, rows, [0, 1], removal)
        np.testing.assert_allclose(table["logp_after"], table["logp_before"], atol=1e-5)
        assert (table["match_after"] == table["match_before"]).all()


def test_removing_everything_at_the_last_block_leaves_only_the_ln_f_bias():
    """The full space removed from the last block's output at the readout pos of the hundreds
    place: h = 0 there, so its logits are lm_head(ln_f(0)) = lm_head(ln_f.bias); the thousands
    place, read out one pos before, is unchanged (it cannot see a later pos)."""
    config, model, tok, rows, _ = setup("fda")
    n, last = len(rows), config.n_layer - 1
    full = projection(torch.eye(config.n_embd).expand(n, 4, config.n_embd, config.n_embd), at(n, 4, [1]))
    table = apply_removal(model, tok, rows, [last], full, scored=at(n, 4, [1]))
    expected = model.lm_head(model.transformer.ln_f.bias).log_softmax(-1).detach()
    target = tok.convert_tokens_to_ids([label[1] for label in rows["label"]])
    np.testing.assert_allclose(table["logp_after"], expected[target].numpy(), atol=1e-5)
    other = apply_removal(model, tok, rows, [last], full, scored=at(n, 4, [0]))
    np.testing.assert_allclose(other["logp_after"], other["logp_before"], atol=1e-5)


# ---- (b) LEACE ----

def _classes(n=600, d=12, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randint(0, k, (n,), generator=g)
    mix = torch.randn(d, d, generator=g) * torch.logspace(-1, 1, d)  # anisotropic noise
    x = torch.randn(n, d, generator=g) @ mix + 2 * torch.randn(k, d, generator=g)[z]
    return x, z


def _class_mean_gap(x, z):
    means = torch.stack([x[z == c].mean(0) for c in z.unique()])
    return (means - x.mean(0)).abs().max().item()


def test_leace_equalizes_class_means_and_is_idempotent():
    x, z = _classes()
    assert _class_mean_gap(x, z) > 0.5
    eraser = fit_leace(x, z)
    erased = eraser(x)
    assert eraser.rank == 4  # k - 1 independent mean differences
    assert _class_mean_gap(erased, z) < 1e-4
    assert torch.allclose(eraser(erased), erased, atol=1e-5)
    # least squares: a smaller edit than the orthogonal projection that also equalizes the means
    zc = torch.nn.functional.one_hot(z).float() - torch.nn.functional.one_hot(z).float().mean(0)
    u = torch.linalg.svd((x - x.mean(0)).T @ zc, full_matrices=False)[0][:, :eraser.rank]
    orthogonal = x - (x - x.mean(0)) @ u @ u.T
    assert _class_mean_gap(orthogonal, z) < 1e-4
    assert (erased - x).pow(2).sum() < 0.5 * (orthogonal - x).pow(2).sum()
    control = fit_leace(x, relabel(z, seed=0))
    assert control.rank == eraser.rank
    assert _class_mean_gap(control(x), z) > 0.5  # the shuffled labels' eraser leaves z readable


def test_leace_on_the_bridge_entity_nnsight_agrees_with_hooks():
    _, model, tok, rows, frame = setup("thr")
    clean = training_questions(frame)
    clean = clean[~clean["noisy"]]
    x = resid_at(model, tok, clean, 0, batch_size=100)
    assert x.shape == (len(clean), model.config.n_embd)
    assert torch.allclose(x, hooked(resid_at, model, tok, clean, 0), atol=1e-6)
    z = torch.tensor(tok.convert_tokens_to_ids(list(clean["bridge"])))
    eraser = fit_leace(x, z)
    assert 0 < eraser.rank < model.config.n_embd
    removal = erasure([eraser.factors()], len(rows), at(len(rows), 1, [0]))
    a = apply_removal(model, tok, rows, [0], removal, batch_size=10)
    b = hooked(apply_removal, model, tok, rows, [0], removal)
    assert_same_effects(a, b)
    assert (a["logp_after"] - a["logp_before"]).abs().max() > 1e-4


def test_erasing_at_the_last_block_is_the_readout_of_the_erased_state():
    config, model, tok, rows, _ = setup("thr")
    last = config.n_layer - 1
    x = resid_at(model, tok, rows, last)
    eraser = fit_leace(x, torch.arange(len(rows)) % 3)
    table = apply_removal(model, tok, rows, [last], erasure([eraser.factors()], len(rows), at(len(rows), 1, [0])))
    logp = read_out(model, eraser(x)).log_softmax(-1)
    token = torch.tensor(tok.convert_tokens_to_ids(list(rows["label"])))
    np.testing.assert_allclose(table["logp_after"], logp[torch.arange(len(rows)), token].numpy(), atol=1e-5)


# ---- (c) setting neurons ----

def neuron_values(model, ids, share=0.05, seed=0):
    """A random pos per row (one past the sequence in some rows: left alone), a random mask of
    neurons [N, n_layer, M] and values for them."""
    g, config = torch.Generator().manual_seed(seed), model.config
    n, m = len(ids), config.n_inner or 4 * config.n_embd
    pos = torch.randint(0, ids.shape[1] + 1, (n,), generator=g)
    mask = torch.rand(n, config.n_layer, m, generator=g) < share
    return pos, mask, torch.randn(n, config.n_layer, m, generator=g)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_setting_neurons_nnsight_agrees_with_hooks(task):
    _, model, _, _, _ = setup(task)
    ids, _ = ids_of(task)
    edits = neurons_set(*neuron_values(model, ids))
    a = run(model, ids, edits)
    assert torch.allclose(a, hooked(run, model, ids, edits), atol=1e-5)
    assert not torch.allclose(a, model(ids).logits, atol=1e-3)


@pytest.mark.parametrize("hooks", [False, True])
def test_set_at_changes_exactly_its_neurons(hooks):
    """The post-GELU activations reaching mlp.c_proj: in row i at pos[i] the masked neurons take
    their values, every other entry is as in the clean run (a pos outside the sequence changes
    nothing)."""
    _, model, _, _, _ = setup("fda")
    ids, _ = ids_of("fda")
    layer = 1
    pos, mask, values = neuron_values(model, ids, share=0.2)
    seen = []
    handle = model.transformer.h[layer].mlp.c_proj.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(ids)
            (hooked if hooks else lambda f, *a: f(*a))(run, model, ids, {(layer, "neuron"): set_at(pos, mask[:, layer],
                                                                                                    values[:, layer])})
    finally:
        handle.remove()
    clean, edited = seen[0], seen[-1]
    expected = clean.clone()
    for i, c in enumerate(pos.tolist()):
        if c < ids.shape[1]:
            expected[i, c] = torch.where(mask[i, layer], values[i, layer], clean[i, c])
    assert (pos == ids.shape[1]).any() and not torch.equal(expected, clean)
    assert torch.allclose(edited, expected, atol=1e-6)


def test_hooks_twins_use_no_nnsight(monkeypatch):
    config, model, tok, rows, _ = setup("thr")
    ids, _ = ids_of("thr")
    n, d = len(rows), config.n_embd
    eraser = fit_leace(torch.randn(50, d), torch.arange(50) % 2)
    calls = dict(
        projection=lambda: apply_removal(model, tok, rows, [0], projection(torch.eye(d)[:, :2].expand(n, 1, d, 2),
                                                                           at(n, 1, [0]))),
        erasure=lambda: apply_removal(model, tok, rows, [0], erasure([eraser.factors()], n, at(n, 1, [0]))),
        resid=lambda: resid_at(model, tok, rows, 0),
        set_at=lambda: run(model, ids, neurons_set(*neuron_values(model, ids))))
    expected = {name: hooked(call) for name, call in calls.items()}

    def refuse(model):
        raise AssertionError("nnsight used")
    monkeypatch.setattr("rote.interp.edits.traced", refuse)
    for name, call in calls.items():
        out = hooked(call)
        assert out.equals(expected[name]) if isinstance(out, pd.DataFrame) else torch.equal(out, expected[name])
        with pytest.raises(AssertionError, match="nnsight used"):
            call()


def test_effect_table_has_one_row_per_instance():
    config, model, tok, rows, _ = setup("fda")
    where = scored_places(rows, "fda")
    table = apply_removal(model, tok, rows, [0], projection(torch.zeros(len(rows), 4, config.n_embd, 1), where))
    assert list(table.columns) == EFFECT_COLUMNS
    assert table["id"].tolist() == rows["id"].tolist()
    assert table["match_before"].dtype == bool and pd.api.types.is_float_dtype(table["logp_before"])
