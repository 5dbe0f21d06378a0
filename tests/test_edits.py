"""Edits (rote.interp.edits): nnsight agrees with plain hooks, null interventions change nothing, and each
intervention does what it says (projections remove, LEACE erases, ablation sets one neuron)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.config import make_config
from rote.runs.data import generate
from rote.interp.edits import ablate, activations, erase, patch, plain_hooks, remove_directions, resids_at, run
from rote.interp.instances import control_entities
from rote.interp.leace import fit_leace, relabel
from rote.interp.lens import read_out
from rote.runs.model import build_model, build_tokenizer, encode
from rote.interp.sites import Site, entity_basis, orthonormal

EFFECT_COLUMNS = ["id", "target", "logp_before", "logp_after", "match_before", "match_after"]


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
    return encode(tok, rows["prompt"], rows["answer"])


def hooked(call, *args, **kwargs):
    """`call` run with plain torch hooks (`rote.interp.edits.plain_hooks`), the reference."""
    with plain_hooks():
        return call(*args, **kwargs)


def resid_at(model, tok, rows, layer, position=0, **kwargs):
    """The block output of `layer` at the readout column of answer `position`, [N, d]."""
    return resids_at(model, tok, rows, [layer], [position], **kwargs)[(layer, position)]


def assert_same_effects(a, b, atol=1e-5):
    assert list(a.columns) == EFFECT_COLUMNS == list(b.columns)
    exact = ["id", "target", "match_before", "match_after"]
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


def test_control_entities_avoid_the_instance_and_are_seeded():
    rows = training_questions(setup("thr")[4])  # every two-hop training question
    pool = sorted(set(rows["true"]))
    picked = control_entities(rows, pool, seed=3)
    assert len(picked) == len(rows) and set(picked) <= set(pool)
    for entity, (_, row) in zip(picked, rows.iterrows()):
        assert entity not in {row["answer"], row["true"], row["bridge"], row["subject"]}
    assert picked == control_entities(rows, pool, seed=3)
    assert picked != control_entities(rows, pool, seed=4)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_remove_directions_nnsight_agrees_with_hooks(task):
    config, model, tok, rows, _ = setup(task)
    if task == "thr":
        basis = entity_basis(model, tok, rows["bridge"])  # per instance
    else:
        basis = torch.randn(config.n_embd, 3, generator=torch.Generator().manual_seed(0))  # fixed
    kwargs = dict(layers=[0, 1], positions=[0, -3], batch_size=10)
    a = remove_directions(model, tok, rows, basis, **kwargs)
    b = hooked(remove_directions, model, tok, rows, basis, **kwargs)
    assert_same_effects(a, b)
    assert len(a) == 2 * len(rows) and set(a["target"]) == {"label", "true"}
    assert (a["logp_after"] - a["logp_before"]).abs().max() > 1e-4
    noisy = a["id"].isin(rows.loc[rows["noisy"], "id"])
    assert (a.loc[noisy & (a["target"] == "label"), "logp_before"].to_numpy()
            != a.loc[noisy & (a["target"] == "true"), "logp_before"].to_numpy()).all()


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
    basis = torch.randn(len(rows), config.n_embd, 4, generator=g)
    basis[:, :, 3] = basis[:, :, 0]  # a repeated direction: rank 3
    together = remove_directions(model, tok, rows, basis, layers=[1], positions=[0], batch_size=4)
    alone = pd.concat([remove_directions(model, tok, rows.iloc[[i]], basis[i], layers=[1], positions=[0])
                       for i in range(len(rows))]).sort_values(["target", "id"], kind="stable")
    np.testing.assert_allclose(together["logp_after"], alone["logp_after"], atol=1e-5)
    three = remove_directions(model, tok, rows, basis[:, :, :3], layers=[1], positions=[0])
    np.testing.assert_allclose(together["logp_after"], three["logp_after"], atol=1e-5)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_removing_an_empty_basis_changes_nothing(task):
    config, model, tok, rows, _ = setup(task)
    table = remove_directions(model, tok, rows, torch.zeros(config.n_embd, 0), layers=[0, 1])
    np.testing.assert_allclose(table["logp_after"], table["logp_before"], atol=1e-5)
    assert (table["match_after"] == table["match_before"]).all()


def test_removing_everything_at_the_last_block_leaves_only_the_ln_f_bias():
    """The full space removed at the readout position of the last block: h = 0 there, so the
    logits are lm_head(ln_f(0)) = lm_head(ln_f.bias); removing it at another position of the last
    block changes nothing (it cannot reach the readout any more)."""
    config, model, tok, rows, _ = setup("thr")
    full = torch.eye(config.n_embd)
    last = config.n_layer - 1
    table = remove_directions(model, tok, rows, full, layers=[last], positions=[0])
    expected = model.lm_head(model.transformer.ln_f.bias).log_softmax(-1).detach()
    target = tok.convert_tokens_to_ids(list(rows["answer"]) + list(rows["true"]))
    table = table.sort_values("target", kind="stable", key=lambda s: s.map({"label": 0, "true": 1}))
    order = np.argsort(np.concatenate([rows["id"], rows["id"]]), kind="stable")
    np.testing.assert_allclose(table["logp_after"], expected[target].numpy()[order], atol=1e-5)
    other = remove_directions(model, tok, rows, full, layers=[last], positions=[-1])
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
    erasers = {0: eraser}
    a = erase(model, tok, rows, erasers, positions=[0], batch_size=10)
    b = hooked(erase, model, tok, rows, erasers, positions=[0])
    assert_same_effects(a, b)
    assert (a["logp_after"] - a["logp_before"]).abs().max() > 1e-4


def test_erasing_at_the_last_block_is_the_readout_of_the_erased_state():
    config, model, tok, rows, _ = setup("thr")
    last = config.n_layer - 1
    x = resid_at(model, tok, rows, last)
    eraser = fit_leace(x, torch.arange(len(rows)) % 3)
    table = erase(model, tok, rows, {last: eraser}, positions=[0])
    logp = read_out(model, eraser(x)).log_softmax(-1)
    for target, column in (("label", "answer"), ("true", "true")):
        token = torch.tensor(tok.convert_tokens_to_ids(list(rows[column])))
        expected = logp[torch.arange(len(rows)), token].numpy()[np.argsort(rows["id"].to_numpy())]
        np.testing.assert_allclose(table.loc[table["target"] == target, "logp_after"], expected, atol=1e-5)
    other = erase(model, tok, rows, {last: eraser}, positions=[-1])  # cannot reach the readout
    np.testing.assert_allclose(other["logp_after"], other["logp_before"], atol=1e-5)


def test_hooks_twins_use_no_nnsight(monkeypatch):
    config, model, tok, rows, _ = setup("thr")
    ids, _ = ids_of("thr")
    eraser = fit_leace(torch.randn(50, config.n_embd), torch.arange(50) % 2)
    calls = dict(
        remove=lambda: remove_directions(model, tok, rows, torch.eye(config.n_embd)[:, :2], [0]),
        erase=lambda: erase(model, tok, rows, {0: eraser}),
        resid=lambda: resid_at(model, tok, rows, 0),
        patch=lambda: patch(model, ids, SITES, ids.roll(1, 0)),
        ablate=lambda: ablate(model, ids, SITES, "mean"))
    expected = {name: hooked(call) for name, call in calls.items()}

    def refuse(model):
        raise AssertionError("nnsight used")
    monkeypatch.setattr("rote.interp.edits.traced", refuse)
    for name, call in calls.items():
        out = hooked(call)
        assert out.equals(expected[name]) if isinstance(out, pd.DataFrame) else torch.equal(out, expected[name])
        with pytest.raises(AssertionError, match="nnsight used"):
            call()


# ---- (c) patching and ablation ----

SITES = [Site("head", 0, 1), Site("neuron", 0, 5, column=3), Site("neuron", 1, 7),
         Site("resid", 1, column=4), Site("head", 1, 0, column=6)]


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_patching_with_own_activations_changes_nothing(task):
    _, model, _, _, _ = setup(task)
    ids, _ = ids_of(task)
    clean = model(ids).logits
    assert torch.allclose(patch(model, ids, SITES, ids), clean, atol=1e-5)
    assert torch.allclose(patch(model, ids, SITES, activations(model, ids, SITES)), clean, atol=1e-5)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_patching_nnsight_agrees_with_hooks(task):
    _, model, _, _, _ = setup(task)
    ids, mask = ids_of(task)
    source = ids.roll(3, dims=0)
    a = patch(model, ids, SITES, source, batch_size=7)
    assert torch.allclose(a, hooked(patch, model, ids, SITES, source), atol=1e-5)
    assert not torch.allclose(a, model(ids).logits, atol=1e-3)
    acts = activations(model, source, SITES, batch_size=9)
    hook_acts = hooked(activations, model, source, SITES)
    assert all(torch.allclose(acts[s], hook_acts[s], atol=1e-6) for s in SITES)
    assert acts[SITES[0]].shape == (len(ids), ids.shape[1], model.config.n_embd // model.config.n_head)
    assert acts[SITES[1]].shape == (len(ids),)
    assert torch.allclose(patch(model, ids, SITES, acts), a, atol=1e-5)  # from activations = side by side
    lp = patch(model, ids, SITES, source, mask=mask)
    assert lp.shape == (len(ids), int(mask[0].sum())) and (lp <= 0).all()


def test_patching_the_last_residual_stream_gives_the_source_logits():
    config, model, _, _, _ = setup("fda")
    ids, _ = ids_of("fda")
    source = ids.roll(1, dims=0)
    out = patch(model, ids, [Site("resid", config.n_layer - 1)], source)
    assert torch.allclose(out, model(source).logits, atol=1e-5)


@pytest.mark.parametrize("task", ["fda", "thr"])
@pytest.mark.parametrize("value", ["zero", "mean", 0.7])
def test_ablation_nnsight_agrees_with_hooks(task, value):
    _, model, _, _, _ = setup(task)
    ids, mask = ids_of(task)
    a = ablate(model, ids, SITES, value, batch_size=10)
    assert torch.allclose(a, hooked(ablate, model, ids, SITES, value), atol=1e-5)
    assert not torch.allclose(a, model(ids).logits, atol=1e-3)
    lp = ablate(model, ids, SITES, value, mask=mask)
    assert lp.shape == (len(ids), int(mask[0].sum()))


@pytest.mark.parametrize("hooks", [False, True])
@pytest.mark.parametrize("value", ["zero", "mean", 0.7])
def test_ablating_a_neuron_changes_exactly_that_neuron(hooks, value):
    """The post-GELU activations reaching mlp.c_proj: neuron k is the ablation value, every other
    neuron of the layer is as in the clean run."""
    _, model, _, _, _ = setup("fda")
    ids, _ = ids_of("fda")
    layer, k = 1, 9
    seen = []
    handle = model.transformer.h[layer].mlp.c_proj.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        model(ids)
        (hooked if hooks else lambda f, *a: f(*a))(ablate, model, ids, [Site("neuron", layer, k)], value)
    finally:
        handle.remove()
    clean, ablated = seen[0], seen[-1]  # ("mean" runs once more first, to average)
    others = torch.arange(clean.shape[-1]) != k
    assert torch.equal(ablated[..., others], clean[..., others])
    expected = {"zero": torch.zeros_like(clean[..., k]), "mean": clean[..., k].mean(0).expand_as(clean[..., k]),
                0.7: torch.full_like(clean[..., k], 0.7)}[value]
    assert torch.allclose(ablated[..., k], expected, atol=1e-6)
    assert not torch.allclose(clean[..., k], expected, atol=1e-3)


@pytest.mark.parametrize("hooks", [False, True])
def test_zero_ablating_a_head_is_zeroing_its_rows_of_c_proj(hooks):
    config, model, _, _, _ = setup("thr")
    ids, _ = ids_of("thr")
    layer, j, d_head = 1, 1, config.n_embd // config.n_head
    edited = build_model(config, model.config.vocab_size).eval()
    edited.load_state_dict(model.state_dict())
    with torch.no_grad():
        edited.transformer.h[layer].attn.c_proj.weight[j * d_head: (j + 1) * d_head] = 0
    out = (hooked if hooks else lambda f, *a: f(*a))(ablate, model, ids, [Site("head", layer, j)], "zero")
    assert torch.allclose(out, edited(ids).logits, atol=1e-5)
    assert not torch.allclose(out, model(ids).logits, atol=1e-3)


def test_bad_sites_and_values_are_refused():
    _, model, _, _, _ = setup("fda")
    ids, _ = ids_of("fda")
    with pytest.raises(ValueError, match="site kind"):
        Site("layer", 0, 1)
    with pytest.raises(ValueError, match="value"):
        ablate(model, ids, SITES, "median")
    with pytest.raises(ValueError, match="shape"):
        patch(model, ids, SITES, ids[:, :-1])


def test_effect_table_has_one_row_per_instance_and_target():
    config, model, tok, rows, _ = setup("fda")
    table = remove_directions(model, tok, rows, torch.zeros(config.n_embd, 1), layers=[0])
    assert list(table.columns) == EFFECT_COLUMNS
    assert table.groupby(["id", "target"]).size().eq(1).all() and len(table) == 2 * len(rows)
    assert table["match_before"].dtype == bool and pd.api.types.is_float_dtype(table["logp_before"])
