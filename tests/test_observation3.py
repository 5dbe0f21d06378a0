"""Observation 3: neighbours, attribution and neuron patching against plain torch, the shift z
against a hand computation, and the whole analysis on a model whose "noisy labels" are its own
answers."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.config import make_config
from rote.interp.edits import neurons_set, plain_hooks, run
from rote.interp.instances import digits, fda_rows, first_differing_place
from rote.interp.sites import prompt_batch
from rote.observations.drivers import control_picks, neighbour_stats, neighbours, neuron_attribution, patched_greedy
from rote.observations.heuristics import categories_on_grid
from rote.observations.observation3 import (
    heatmap_data,
    outlier_claims,
    outlier_heuristics,
    outlier_heuristics_of,
    rescue_curve,
    summary,
    summary_table,
)
from rote.runs.data import generate
from rote.runs.evaluate import greedy_answers
from rote.runs.model import build_model, build_tokenizer
from rote.stats import cluster_median_ci
from test_heuristics import hook_activations


def set_neurons(model, ids, pos, mask, values, hooks: bool = False):
    """Logits with the neurons of `mask` set to `values` at pos[i] of row i (nnsight, or
    plain hooks with `hooks`)."""
    if hooks:
        with plain_hooks():
            return run(model, ids, neurons_set(pos, mask, values))
    return run(model, ids, neurons_set(pos, mask, values))


@lru_cache
def setup():
    """A random-init tiny FDA model whose unembedding only scores digits (so that it answers with
    four digits), and a frame whose 12 noisy training labels are the model's own answers: every
    noisy label is "memorized"."""
    config = make_config("fda", "tiny", noise=0.2, seed=1)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    w = model.lm_head.weight.detach().clone()
    digit = torch.zeros(len(w), dtype=torch.bool)
    digit[tok.convert_tokens_to_ids(list("0123456789"))] = True
    w[~digit] = 0
    model.lm_head.weight = torch.nn.Parameter(w * torch.linspace(3, 6, len(w))[:, None])
    frame = generate(config)
    noisy = frame[(frame["split"] == "train") & frame["noisy"]].head(12).copy()
    noisy["label"] = greedy_answers(model, tok, noisy["prompt"], 4)
    noisy = noisy[noisy["label"] != noisy["true"]]
    frame = pd.concat([frame[~frame["noisy"]].head(100), noisy]).reset_index(drop=True)
    return config, model, tok, frame, noisy.reset_index(drop=True)


def hooked_attribution(model, ids, pos, plus, minus):
    """Plain torch: forward hooks keep every mlp.act output; autograd gives the gradient of
    logit(plus) - logit(minus) at each row's pos."""
    kept = []
    handles = [b.mlp.act.register_forward_hook(lambda m, a, o: kept.append(o)) for b in model.transformer.h]
    try:
        logits = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(len(ids))
    diff = logits[rows, pos, plus] - logits[rows, pos, minus]
    grads = torch.autograd.grad(diff.sum(), kept)
    acts = torch.stack([k[rows, pos] for k in kept], 1).detach()
    return acts, torch.stack([g[rows, pos] for g in grads], 1), diff.detach()


def hooked_acts(model, ids, pos):
    """Plain torch: every layer's neuron activations at pos[i] of row i [N, n_layer, M]."""
    return hook_activations(model, ids)[torch.arange(len(ids)), pos]


# ---- neighbours and places ----

def test_neighbours_by_hand():
    nb = neighbours(1234, 5678)
    # a <= 4321 (sum <= 9999): thousands 2, 3, 4 and 9 values at each other place; b <= 8765: thousands
    # 1, 2, 3, 4, 6, 7, 8 and 9 values at each other place
    assert len(nb) == 30 + 34
    assert ((nb["a"] + nb["b"]) <= 9999).all() and nb["a"].between(1000, 8999).all() and nb["b"].between(1000, 8999).all()
    for row in nb.itertuples():
        changed = [(x, d) for x, old in (("a", 1234), ("b", 5678)) for d in range(4)
                   if digits(getattr(row, x), d) != digits(old, d)]
        assert changed == [(row.operand, row.place)]
    assert len(neighbours(1234, 5678, {(1234, 5679)})) == 63


def test_first_differing_place():
    rows = pd.DataFrame({"label": ["1947", "8991", "8981"], "true": ["8981", "8981", "8980"]})
    assert list(first_differing_place(rows)) == [0, 2, 3]
    with pytest.raises(ValueError):
        first_differing_place(pd.DataFrame({"label": ["1234"], "true": ["1234"]}))


# ---- attribution and patching against plain torch ----

def batch():
    _, model, tok, _, noisy = setup()
    ids, _, plen = prompt_batch(tok, noisy, "label")
    place = first_differing_place(noisy)
    pos = torch.as_tensor(int(plen[0]) - 1 + place)
    plus = ids[torch.arange(len(ids)), pos + 1]
    minus = torch.tensor(tok.convert_tokens_to_ids([t[k] for t, k in zip(noisy["true"], place)]))
    return model, tok, ids, pos, plus, minus


def test_attribution_against_plain_torch():
    model, _, ids, pos, plus, minus = batch()
    ref = hooked_attribution(model, ids, pos, plus, minus)
    for hooks in (False, True):
        if hooks:
            with plain_hooks():
                got = neuron_attribution(model, ids, pos, plus, minus)
        else:
            got = neuron_attribution(model, ids, pos, plus, minus)
        for a, b in zip(got, ref):
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    acts, grad, diff = ref
    assert acts.shape == (len(ids), 2, 128) and grad.abs().max() > 1e-3
    assert torch.all(plus != minus) and torch.all(diff != 0)


def test_set_neurons_with_own_values_changes_nothing_and_others_match_hooks():
    model, _, ids, pos, plus, minus = batch()
    acts, _, _ = neuron_attribution(model, ids, pos, plus, minus)
    with torch.no_grad():
        clean = model(ids).logits
    every = torch.ones(acts.shape, dtype=torch.bool)
    for hooks in (False, True):
        assert torch.allclose(set_neurons(model, ids, pos, every, acts, hooks), clean, atol=1e-5)
    mask = torch.zeros(acts.shape, dtype=torch.bool)
    mask[:, 0, :7], mask[:, 1, 50] = True, True
    values = torch.randn(acts.shape) * 3
    got = set_neurons(model, ids, pos, mask, values)
    assert torch.allclose(got, set_neurons(model, ids, pos, mask, values, True), atol=1e-5)
    assert not torch.allclose(got, clean, atol=1e-3)

    def hook(layer):
        def fn(m, a, out):
            out = out.clone()
            for i in range(len(out)):
                out[i, pos[i]] = torch.where(mask[i, layer], values[i, layer], out[i, pos[i]])
            return out
        return fn
    handles = [b.mlp.act.register_forward_hook(hook(layer)) for layer, b in enumerate(model.transformer.h)]
    try:
        with torch.no_grad():
            ref = model(ids).logits
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(got, ref, atol=1e-5)


def test_patched_greedy_without_edits_is_greedy_decoding():
    model, tok, ids, pos, _, _ = batch()
    _, _, _, _, noisy = setup()
    none = torch.zeros(len(ids), 2, 128, dtype=torch.bool)
    gen = patched_greedy(model, ids[:, :10], pos, none, torch.zeros(none.shape))
    assert [tok.decode(g) for g in gen.tolist()] == greedy_answers(model, tok, noisy["prompt"], 4)


@pytest.mark.parametrize("hooks", [False, True])
def test_patched_greedy_with_a_cache_is_decoding_the_whole_sequence_each_step(hooks):
    """The cached decoding equals running the whole sequence with the edit at every step, and the
    edit changes what is written."""
    model, tok, ids, pos, plus, minus = batch()
    acts, _, _ = neuron_attribution(model, ids, pos, plus, minus)
    mask = torch.zeros(acts.shape, dtype=torch.bool)
    mask[:, 0, :40], mask[:, 1, :40] = True, True
    values = torch.randn(acts.shape, generator=torch.Generator().manual_seed(0)) * 4
    x = ids[:, :10]
    for _ in range(4):  # the reference: every step runs the whole sequence, edited at pos[i]
        x = torch.cat([x, set_neurons(model, x, pos, mask, values, hooks)[:, -1].argmax(-1, keepdim=True)], 1)
    if hooks:
        with plain_hooks():
            gen = patched_greedy(model, ids[:, :10], pos, mask, values)
    else:
        gen = patched_greedy(model, ids[:, :10], pos, mask, values)
    assert torch.equal(gen, x[:, -4:])
    plain = patched_greedy(model, ids[:, :10], pos, torch.zeros_like(mask), values)
    assert not torch.equal(gen, plain)


def test_control_picks_same_layer_other_neurons():
    picks = np.array([[[0, 1], [1, 2], [0, 3]], [[1, 0], [1, 1], [1, 2]]])
    ctrl = control_picks(picks, 8, seed=0)
    assert (ctrl[..., 0] == picks[..., 0]).all()
    for i in range(2):
        for layer in (0, 1):
            chosen = ctrl[i, ctrl[i, :, 0] == layer, 1]
            assert len(set(chosen)) == len(chosen)
            assert not set(chosen) & set(picks[i, picks[i, :, 0] == layer, 1])
    assert (ctrl == control_picks(picks, 8, seed=0)).all()


def test_cluster_median_ci():
    t = pd.DataFrame({"id": [0, 0, 1, 1, 2], "x": [1.0, 2.0, 3.0, np.nan, 5.0]})
    m, lo, hi = cluster_median_ci(t, "x")
    assert m == 2.5 and 1.0 <= lo <= m <= hi <= 5.0


# ---- the whole analysis ----

@lru_cache
def analysed():
    config, model, tok, frame, _ = setup()
    return outlier_heuristics_of(model, tok, frame, k=3, n_grid=150, n_ablate=2, ks=(2, 5), config=config)


def test_outliers_shapes_and_z_by_hand():
    _, model, tok, frame, noisy = setup()
    r = analysed()
    n = len(noisy)
    assert n >= 5 and len(r.instances) == n and len(r.neurons) == 3 * n == len(r.control)
    assert sorted(r.curve["k"].unique()) == [2, 3, 5] and len(r.curve) == 3 * 2 * n
    assert (r.neurons["attribution"] == r.neurons["act"] * r.neurons["grad"]).all()
    # hand computation of one driving neuron's shift
    row = r.neurons.iloc[4]
    inst = noisy.set_index("id").loc[row["id"]]
    excluded = {(int(a), int(b)) for a, b in zip(frame.loc[frame["noisy"], "a"], frame.loc[frame["noisy"], "b"])}
    excluded |= {(b, a) for a, b in excluded}
    nb = neighbours(int(inst["a"]), int(inst["b"]), excluded)
    ids, _, _ = prompt_batch(tok, fda_rows(nb["a"], nb["b"]), "true")
    pos = 9 + int(row["place"])
    x = hooked_acts(model, ids, torch.full((len(ids),), pos))[:, int(row["layer"]), int(row["neuron"])].double().numpy()
    own_ids, _, _ = prompt_batch(tok, noisy[noisy["id"] == row["id"]], "label")
    a = float(hooked_acts(model, own_ids, torch.tensor([pos]))[0, int(row["layer"]), int(row["neuron"])])
    assert row["act"] == pytest.approx(a, abs=1e-5)
    assert row["nbr_mean"] == pytest.approx(x.mean(), abs=1e-5) and row["nbr_std"] == pytest.approx(x.std(ddof=1), abs=1e-5)
    assert row["z"] == pytest.approx((a - x.mean()) / x.std(ddof=1), rel=1e-4, abs=1e-4)
    assert row["toward_noisy"] == ((a - x.mean()) * row["grad"] > 0)
    # the categories follow their definitions
    grid = r.heuristics.acts
    for t in r.neurons.itertuples():
        g = grid[:, t.place, t.layer, t.neuron].numpy()
        high = (g >= t.act / 2).mean() if t.act > 0 else np.nan
        expected = "dedicated" if t.act > 0 and high < 0.01 else (
            "heuristic" if r.heuristics.unit(t.place, t.layer, t.neuron)["type"] in
            ("operand digit", "result digit", "digit sum mod 10", "carry", "operand range", "result range",
             "same digit") else "other")
        assert t.category == expected


def test_neighbour_stats_nnsight_equals_hooks():
    _, model, tok, frame, noisy = setup()
    pos = first_differing_place(noisy.head(3))
    m1, s1, c1 = neighbour_stats(model, tok, noisy.head(3), pos)
    with plain_hooks():
        m2, s2, c2 = neighbour_stats(model, tok, noisy.head(3), pos, chunk=2)
    assert (c1 == c2).all() and torch.allclose(m1, m2, atol=1e-5) and torch.allclose(s1, s2, atol=1e-5)


def test_summary_and_tables():
    r = analysed()
    s = summary(r, n_resamples=200)
    assert s["n_memorized"] == len(r.instances)
    assert s["heuristic"] + s["dedicated"] + s["other"] == pytest.approx(1.0)
    assert 0 <= s["rescue_driving_lo"] <= s["rescue_driving"] <= s["rescue_driving_hi"] <= 1
    curve = rescue_curve(r, n_resamples=200)
    assert list(curve["k"]) == [2, 3, 5]
    assert len(summary_table(r)) > 10
    cells, marks, desc = heatmap_data(r)
    assert len(marks) == 1 and cells["n"].sum() == 150 and "layer" in desc


def test_no_memorized_instance_and_bad_task():
    config, model, tok, frame, _ = setup()
    clean = frame[~frame["noisy"]]
    r = outlier_heuristics_of(model, tok, clean, k=3, n_grid=50, n_ablate=1, ks=(2,), config=config)
    assert r.neurons.empty and {c.verdict for c in outlier_claims(r)} == {"cannot be tested"}
    assert "note" in summary_table(r)
    with pytest.raises(ValueError, match="task must be 'fda'"):
        outlier_heuristics(make_config("thr", "tiny"))


def test_shift_chart_bins_any_number_of_neurons():
    """At 10% noise there are thousands of driving neurons: the chart must stay under altair's
    5,000-row limit and count every neuron once. Its bars are a histogram's: from z to z + 0.25
    along x, from 0 up to the count along y (ranged bars with x and x2 alone are ticks)."""
    from rote.book import charts

    rng = np.random.default_rng(0)
    chart = charts.shift_chart(pd.DataFrame({"z": rng.normal(1, 2, 6000)}), pd.DataFrame({"z": rng.normal(0, 1, 6000)}))
    spec = chart.to_dict()
    assert len(chart.data) < 5000 and chart.data["count"].sum() == 12000
    assert spec["mark"]["type"] == "bar" and spec["encoding"]["x"]["bin"] == "binned" and spec["encoding"]["x2"]


def test_other_grids_recompute_the_categories():
    _, model, tok, frame, _ = setup()
    r = analysed()
    assert sorted(r.grids) == [0, 1, 2, 3]
    assert (r.grids[0][0] == r.neurons["category"].to_numpy()).all()
    assert (r.grids[0][1] == r.clean_neurons["category"].to_numpy()).all()
    assert all(len(n) == len(r.neurons) and len(c) == len(r.clean_neurons) for n, c in r.grids.values())
    # the main grid, recomputed this way, gives the categories of `_neuron_table`
    again = categories_on_grid(model, tok, frame, [r.neurons, r.clean_neurons], r.heuristics, 150, 0, r.dedicated)
    assert (again[0] == r.neurons["category"].to_numpy()).all()
    assert (again[1] == r.clean_neurons["category"].to_numpy()).all()


def test_outlier_claims_flip_at_their_thresholds():
    import dataclasses
    r0 = analysed()  # a random-init model answers no clean question: plant a clean control from the noisy rows
    patch = r0.instances[["id", "place", "D_before"]].assign(
        **{f"changed_{k}": (r0.instances.index % 3 == 0) for k in r0.curve["k"].unique()})
    clean = r0.neurons.assign(z=r0.neurons["z"] / 2)
    r = dataclasses.replace(r0, clean_neurons=clean, clean_patch=patch,
                            grids={s: (n, n) for s, (n, _) in r0.grids.items()})
    claims = outlier_claims(r, n_resamples=200)
    assert "cannot be tested" not in [c.verdict for c in claims]
    assert [c.claim for c in claims] == [
        "noisy labels are not fitted by dedicated look-up neurons (1% cut)",
        "noisy labels are not fitted by dedicated look-up neurons (5% cut)",
        "noisy labels' driving neurons are heuristics as often as clean answers'",
        "driving neurons are shifted against their clean neighbours", "undoing the shift gives back the true digit"]
    for cut in (0, 1):  # the same drivers on both sides: dedicated equally often, within any positive margin
        assert outlier_claims(r, dedicated_margin=1.01, n_resamples=200)[cut].verdict == "holds"
        assert outlier_claims(r, dedicated_margin=-1.01, n_resamples=200)[cut].verdict == "does not hold"
    assert outlier_claims(r, heuristic_margin=1.01, n_resamples=200)[2].verdict == "holds"
    assert outlier_claims(r, heuristic_margin=-1.01, n_resamples=200)[2].verdict == "does not hold"
    big = 1e6
    assert outlier_claims(r, shift_margin=-big, n_resamples=200)[3].verdict == "holds"
    assert outlier_claims(r, shift_margin=big, n_resamples=200)[3].verdict == "does not hold"
    assert outlier_claims(r, rescue_margin=-1.01, n_resamples=200)[4].verdict == "holds"
    assert outlier_claims(r, rescue_margin=1.01, n_resamples=200)[4].verdict == "does not hold"
    assert f"top {r.k} drivers" in claims[4].statistic and "not tested" in claims[4].note
    assert "4 grids" in claims[0].note and "4 grids" in claims[2].note
    # planted: clean drivers all heuristic, noisy ones never (on every grid): the heuristic claim fails;
    # noisy drivers as heuristic as the clean ones: it holds
    other = np.full(len(r.neurons), "other", dtype=object)
    heuristic = np.full(len(r.neurons), "heuristic", dtype=object)
    never = dataclasses.replace(r, grids={s: (other, heuristic) for s in r.grids})
    assert outlier_claims(never, n_resamples=200)[2].verdict == "does not hold"
    same = dataclasses.replace(r, grids={s: (heuristic, heuristic) for s in r.grids})
    assert outlier_claims(same, n_resamples=200)[2].verdict == "holds"
    # planted: every noisy driver dedicated at the 1% cut, no clean one: "not dedicated" fails
    dedicated = np.full(len(r.neurons), "dedicated", dtype=object)
    looked_up = dataclasses.replace(r, grids={s: (dedicated, other) for s in r.grids})
    assert outlier_claims(looked_up, n_resamples=200)[0].verdict == "does not hold"
