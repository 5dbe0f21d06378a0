"""Observation 2 (rote.observations.observation2): bootstrap intervals, carries, the removal edits (against
the dense projection of rote.interp.edits), LEACE per class, nnsight against plain hooks, and the claims on
a planted case: a label that *is* the bridge must rely on it."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.book import charts, explorer
from rote.interp.edits import apply_removal, plain_hooks, projection, redirected, resids_at
from rote.interp.instances import carries, matched_partition, scored_places
from rote.interp.leace import binary_leace, fit_leace
from rote.interp.sites import entity_basis, random_orthogonal
from rote.observations import observation2
from rote.runs.evaluate import greedy_answers
from rote.runs.model import build_model, encode
from rote.stats import bootstrap_ci, bootstrap_diff_ci
from test_edits import setup  # a random-init tiny model, its tokenizer, questions and the frame

# ---- bootstrap ----

def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = np.random.default_rng(0).normal(1.0, 1.0, size=400)
    m, lo, hi = bootstrap_ci(x, seed=3)
    assert m == pytest.approx(x.mean()) and lo < m < hi
    assert 0.15 < hi - lo < 0.25  # about 2 * 1.96 / sqrt(400)
    assert bootstrap_ci(x, seed=3) == (m, lo, hi)
    assert bootstrap_ci(x, seed=4) != (m, lo, hi)
    assert bootstrap_ci(np.full(10, -2.0)) == (-2.0, -2.0, -2.0)
    m, lo, hi = bootstrap_ci(np.sort(x))  # every value is resampled, not the first ones
    assert lo < x.mean() < hi and hi - lo < 0.25
    m, lo, hi = bootstrap_ci([0.0] * 50 + [1.0] * 50)
    assert 0.38 < lo < 0.43 and 0.57 < hi < 0.62  # 0.5 +- 1.96 * 0.05
    assert all(np.isnan(bootstrap_ci([])))
    d, dlo, dhi = bootstrap_diff_ci(x, x + 0.5, seed=1)
    assert d == pytest.approx(-0.5) and dlo < -0.5 < dhi and dhi < 0
    assert all(np.isnan(bootstrap_diff_ci(x, [])))


def test_carries_by_hand():
    table = pd.DataFrame({"a": [1357, 9000, 1999, 4321], "b": [2473, 999, 1001, 1234]})
    # thousands, hundreds, tens, units: 1357+2473=3830, 9000+999=9999, 1999+1001=3000, 4321+1234=5555
    assert carries(table["a"], table["b"]).tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]]


def test_binary_leace_is_fit_leace_per_class():
    g = torch.Generator().manual_seed(0)
    labels = np.array(list("abcab" * 40))
    x = torch.randn(200, 6, generator=g) + 3 * torch.randn(3, 6, generator=g)[[ord(c) - 97 for c in labels]]
    mean, A, B = binary_leace(x, labels, ["a", "b", "c", "z"])
    for k, c in enumerate("abc"):
        eraser = fit_leace(x, torch.tensor(labels == c).long())
        assert eraser.rank == 1
        ours = x - (x - mean) @ B[k][:, None] @ A[k][None]
        assert torch.allclose(ours, eraser(x), atol=1e-4)
        erased = ours
        assert (erased[labels == c].mean(0) - erased[labels != c].mean(0)).abs().max() < 1e-4
    assert A[3].abs().max() == 0 and B[3].abs().max() == 0  # a class never seen: no edit
    m2, a2, b2 = fit_leace(x, torch.tensor(labels == "a").long()).factors()
    assert torch.allclose(a2 @ b2.T, A[0][:, None] @ B[0][None], atol=1e-4)


# ---- the edits ----

def test_removal_edits_only_the_scored_readout_pos():
    n, K, d, T = 3, 4, 5, 14
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(n, K, d, 2, generator=g))[0]
    where = torch.tensor([[False, False, True, False], [True, True, True, True], [False] * 4])
    plen = torch.tensor([10, 10, 9])
    fn = projection(basis, where).edit(torch.arange(n), plen, "cpu", torch.float32)
    h = torch.randn(n, T, d, generator=g)
    out = fn(h)
    for i in range(n):
        for t in range(T):
            k = t - (plen[i] - 1)
            if 0 <= k < K and where[i, k]:
                q = basis[i, k]
                assert torch.allclose(out[i, t], h[i, t] - q @ (q.T @ h[i, t]), atol=1e-5)
                assert torch.allclose(q.T @ out[i, t], torch.zeros(2), atol=1e-5)
            else:
                assert torch.equal(out[i, t], h[i, t]), (i, t)
    every = projection(basis[:, :1], torch.ones(n, 1, dtype=torch.bool), True)
    out = every.edit(torch.tensor([2, 0]), plen[[2, 0]], "cpu", torch.float32)(h[:2])
    q = basis[[2, 0], 0]
    assert torch.allclose(out, h[:2] - torch.einsum("btr,bdr->btd", torch.einsum("btd,bdr->btr", h[:2], q), q), atol=1e-5)


@pytest.mark.parametrize("layer", [0, 1])
def test_bridge_projection_matches_a_dense_reference(layer):
    """THR projection at every pos (a per-instance `Removal`) = the bridge's direction projected
    out of the whole block output by a plain torch hook, for the label's log-prob and greedy match."""
    config, model, tok, rows, _ = setup("thr")
    where = scored_places(rows, "thr")
    q = entity_basis(model, tok, rows["bridge"])  # [N, d, k]
    ours = apply_removal(model, tok, rows, [layer], projection(q[:, None], where, True), where, batch_size=7)
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    project = lambda mod, args, h: h - torch.einsum("btk,bdk->btd", torch.einsum("btd,bdk->btk", h, q), q)  # noqa: E731
    handle = model.transformer.h[layer].register_forward_hook(project)
    try:
        with torch.no_grad():
            logits = model(ids).logits
    finally:
        handle.remove()
    answer = mask[:, 1:]
    logp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)[answer]
    said = logits[:, :-1].argmax(-1)[answer] == ids[:, 1:][answer]
    np.testing.assert_allclose(ours["logp_after"], logp.numpy(), atol=1e-5)
    assert (ours["match_after"].to_numpy() == said.numpy()).all()
    assert (ours["logp_after"] - ours["logp_before"]).abs().max() > 1e-4


def test_fda_scores_only_the_differing_digits():
    """The FDA log-prob is the mean over the digits where label and true answer differ."""
    config, model, tok, rows, _ = setup("fda")
    rows = rows[rows["noisy"]].reset_index(drop=True)
    where = scored_places(rows, "fda")
    for i, (label, true) in enumerate(zip(rows["label"], rows["true"])):
        assert where[i].tolist() == [a != b for a, b in zip(label, true)]
    nothing = projection(torch.zeros(len(rows), 4, config.n_embd, 1), where)
    table = apply_removal(model, tok, rows, [0], nothing, where)
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    with torch.no_grad():
        lp = model(ids).logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)[mask[:, 1:]].view(len(rows), 4)
    expected = (lp * where).sum(1) / where.sum(1)
    np.testing.assert_allclose(table["logp_before"], expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(table["logp_after"], table["logp_before"], atol=1e-6)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_removal_effects_nnsight_agree_with_hooks(task):
    config, model, tok, rows, frame = setup(task)
    fit = frame[(frame["kind"] != "fact") & (frame["split"] == "train") & ~frame["noisy"]]
    fits = observation2.fit_erasers(model, tok, fit, task, [0, 1], partition=matched_partition(frame))
    groups = {"memorized noisy": rows[rows["noisy"]], "clean": rows[~rows["noisy"]]}
    a = observation2.removal_effects(model, tok, groups, task, [0, 1], fits, batch_size=5)
    with plain_hooks():
        b = observation2.removal_effects(model, tok, groups, task, [0, 1], fits)
    assert len(a) == 2 * 2 * 2 * len(rows)  # methods x layers x (target, control) x instances
    assert (a[["method", "layer", "group", "removed", "id", "mem_before", "mem_after"]]
            == b[["method", "layer", "group", "removed", "id", "mem_before", "mem_after"]]).all().all()
    np.testing.assert_allclose(a["delta_logp"], b["delta_logp"], atol=1e-5)
    for (method, removed), g in a.groupby(["method", "removed"]):
        assert g["delta_logp"].abs().max() > 1e-5, (method, removed)  # every removal does something


def test_fda_leace_carry_erases_the_carry():
    """After the fitted carry eraser, the clean questions' class means of the carry agree at the
    edited pos (the eraser works where it is applied)."""
    config, model, tok, rows, frame = setup("fda")
    fit = frame[(frame["split"] == "train") & ~frame["noisy"]].head(300)
    fits = observation2.fit_erasers(model, tok, fit, "fda", [1])
    (target, control) = fits.carry[1]
    x = resids_at(model, tok, fit, [1], [1])[(1, 1)]  # readout of the hundreds digit (pos 10)
    z = carries(fit["a"], fit["b"])[:, 1]
    mean, a, b = target[1]
    erased = x - (x - mean) @ b @ a.T
    gap = lambda v: (v[z == 1].mean(0) - v[z == 0].mean(0)).abs().max()  # noqa: E731
    assert gap(x) > 1e-3 and gap(erased) < 1e-4
    mean, a, b = control[1]  # fitted on shuffled carries: the carry stays readable
    assert a.shape[1] == 1 and gap(x - (x - mean) @ b @ a.T) > 0.5 * gap(x)
    assert target[3][1].shape[1] == 0  # no carry enters the units digit: nothing to erase


# ---- planted reliance and its claims ----

@lru_cache
def planted_thr():
    """A random THR model whose noisy "labels" are its own greedy answers and whose bridge is that
    same person: removing the bridge removes the label, so reliance must be found."""
    config, model, tok, _, frame = setup("thr")
    model = build_model(config, len(tok)).eval()
    with torch.no_grad():  # a louder last block: more varied greedy answers
        for p in model.transformer.h[-1].parameters():
            p.mul_(3.0)
    people = set(frame.loc[frame["kind"] == "fact", "subject"])
    two_hop = frame[(frame["kind"] == "two_hop") & (frame["split"] == "train")].copy()
    said = greedy_answers(model, tok, two_hop["prompt"], 1)
    two_hop["said"] = said
    plant = two_hop[two_hop["said"].isin(people) & (two_hop["said"] != two_hop["true"])].head(24).index
    frame = frame.copy()
    frame["noisy"] = False
    frame.loc[plant, "noisy"] = True
    frame.loc[plant, "label"] = two_hop.loc[plant, "said"]
    frame.loc[plant, "bridge"] = two_hop.loc[plant, "said"]
    assert len(plant) >= 12
    return config, model, tok, frame


def test_a_label_that_is_the_bridge_relies_on_it():
    config, model, tok, frame = planted_thr()
    result = observation2.reliance_of(model, tok, frame, "thr", n_clean=50, n_fit=400, n_resamples=300)
    assert len(result.memorized) == frame["noisy"].sum()
    c = result.contrasts
    last = c[(c["method"] == "projection") & (c["layer"] == config.n_layer - 1)
             & (c["group"] == "memorized noisy")].iloc[0]
    assert last["hi"] < 0 and last["delta_logp"] < -0.1
    sizes = result.sizes.set_index(["method", "layer", "group", "removed"])
    target = sizes.loc[("projection", config.n_layer - 1, "memorized noisy", "target")]
    control = sizes.loc[("projection", config.n_layer - 1, "memorized noisy", "control")]
    assert target["acc_before"] == 1.0 and target["acc_after"] < control["acc_after"]
    assert target["delta_logp_hi"] < control["delta_logp_lo"]
    claims = observation2.reliance_claims(result)
    # a random model does not use the bridge for its clean answers: the clean reference shows no removal
    # doing anything, so the claims cannot separate reliance from damage
    assert {c.verdict for c in claims} == {"cannot be tested"} and all("uninformative" in c.note for c in claims)
    # the explorer's data and charts build on it
    instances, readout, effects = explorer.explorer_data({"thr": (model, tok, result)}, n=6)
    assert list(instances["key"]) == list(range(6)) and set(effects["key"]) <= set(readout["key"]) == set(instances["key"])
    assert instances["strongest"].notna().all() and (instances["group"] == "memorized noisy").any()
    charts.explorer_chart(instances, readout, effects).to_dict()
    charts.removal_effects_chart(result.sizes, observation2.removed_names("thr")).to_dict()
    # the live explorer: its callbacks recompute without error for another instance and layer
    widget = explorer.explorer({"thr": (model, tok, result)})
    (_, layer_box), instance_box, _ = widget.children[0].children, widget.children[1], widget.children[2]
    assert instance_box.value == instance_box.options[0][1] and layer_box.max == config.n_layer - 1
    instance_box.value = instance_box.options[1][1]
    layer_box.value = 1
    top = explorer.top_readout(model, tok, result.memorized.iloc[[0]], config.n_layer - 1)
    assert top.loc[0, "top 1"].startswith(result.memorized["label"].iloc[0] + " (")  # the label is the output


def test_nothing_memorized_cannot_be_tested():
    config, model, tok, rows, frame = setup("thr")
    frame = frame.assign(label=np.where(frame["noisy"], "of", frame["label"]))  # a label never said
    result = observation2.reliance_of(model, tok, frame, "thr", n_clean=20, n_fit=100, n_resamples=50)
    assert result.memorized.empty and len(result.noisy) == frame["noisy"].sum()
    assert {c.verdict for c in observation2.reliance_claims(result)} == {"cannot be tested"}
    assert "note" in observation2.effects_table(observation2.Reliance("thr", 2, result.noisy, result.clean.iloc[:0],
                                                               pd.DataFrame(), pd.DataFrame(), pd.DataFrame()))
    charts.removal_effects_chart(pd.DataFrame()).to_dict()
    charts.explorer_chart(pd.DataFrame(), pd.DataFrame(), pd.DataFrame()).to_dict()


# ---- the THR controls can make the claim fail: planted representations ----

def planted_world(seed: int = 0, n_key: int = 40, n_people: int = 24, alpha: float = 2.0):
    """A stand-in for one block's output at the answer's readout pos: per (subject, relation) key
    k, x_k = e_k + alpha * u_b, with e_k a random unit key vector (first `n_key` dimensions) and u_b
    the unit direction of its bridge b (one of the last `n_people` dimensions): the bridge is
    represented, and so is the key. Clean answers are read from the bridge."""
    g = torch.Generator().manual_seed(seed)
    people = [f"P{i}" for i in range(n_people)]
    facts = pd.DataFrame([(f"S{s}", f"r{r}") for s in range(40) for r in range(3)], columns=["subject", "r1"])
    facts["true"] = [people[i] for i in torch.randint(n_people, (len(facts),), generator=g)]
    facts["kind"] = "fact"
    u = torch.cat([torch.zeros(n_people, n_key), torch.eye(n_people)], 1)
    e = torch.cat([torch.nn.functional.normalize(torch.randn(len(facts), n_key, generator=g), dim=1),
                   torch.zeros(len(facts), n_people)], 1)
    bridge = torch.tensor([people.index(b) for b in facts["true"]])
    x = e + alpha * u[bridge]
    rows = facts.rename(columns={"true": "bridge"}).assign(id=range(len(facts)))
    return people, facts, rows, u, e, bridge, x


def planted_claim(x, readouts: dict, removals: dict, rows) -> str:
    """The LEACE or projection claim's verdict (`reliance_claims`) when each group's label is read
    by `readouts[group]` (v [N, d] -> logits [N, V] and the label ids) from the planted stream x,
    before and after the target and control `removals[method]` (edit fns on [N, 1, d])."""
    parts = []
    for group, (read, label) in readouts.items():
        for method, pair in removals.items():
            for removed, fn in zip(("target", "control"), pair):
                before, after = (read(v).log_softmax(-1) for v in (x, fn(x[:, None])[:, 0]))
                pick = lambda lp: lp.gather(1, label[:, None]).squeeze(1)  # noqa: E731
                parts.append(pd.DataFrame({"method": method, "layer": 0, "group": group, "removed": removed,
                                           "id": rows["id"], "logp_before": pick(before).numpy(),
                                           "logp_after": pick(after).numpy(), "mem_before": before.argmax(1) == label,
                                           "mem_after": after.argmax(1) == label}))
    effects = pd.concat(parts, ignore_index=True).assign(delta_logp=lambda t: t["logp_after"] - t["logp_before"])
    noisy = rows.assign(memorized=True)
    result = observation2.Reliance("thr", 2, noisy, rows, effects, observation2.effect_sizes(effects, 300),
                                   observation2.contrasts(effects, 300))
    (claim,) = [c for c in observation2.reliance_claims(result) if c.verdict != "cannot be tested"]
    return claim.verdict


def test_the_matched_key_class_control_fails_a_label_looked_up_by_its_key():
    """Noisy labels looked up linearly from the key vector e_k (blind to the bridge): the bridge's
    eraser takes part of e_k with it (the bridge is a function of the key), so against another
    person's eraser the claim "holds"; against the eraser of a same-size random class of keys that
    holds the question's key it does not."""
    people, facts, rows, u, e, bridge, x = planted_world()
    where, d = torch.ones(len(rows), 1, dtype=torch.bool), x.shape[1]
    fit_x = x.repeat(3, 1) + 0.05 * torch.randn(3 * len(x), d, generator=torch.Generator().manual_seed(1))
    fit_bridge = np.tile(facts["true"].to_numpy(), 3)
    partition = matched_partition(facts, seed=0)
    keyed = np.tile(np.array([partition[k] for k in zip(facts["subject"], facts["r1"])], dtype=object), 3)
    names = sorted(set(keyed))
    edit = lambda removal: removal.edit(torch.arange(len(rows)), torch.ones(len(rows), dtype=torch.long), "cpu",  # noqa: E731
                                        torch.float32)
    target = edit(observation2.class_erasure(binary_leace(fit_x, fit_bridge, people), list(facts["true"]), people, where, d))
    others = [people[(i + 1 + j) % len(people)] for i, j in zip(bridge.tolist(), np.random.default_rng(0).integers(
        0, len(people) - 1, len(rows)))]
    person = edit(observation2.class_erasure(binary_leace(fit_x, fit_bridge, people), others, people, where, d))
    own_class = [partition[k] for k in zip(facts["subject"], facts["r1"])]
    matched = edit(observation2.class_erasure(binary_leace(fit_x, keyed, names), own_class, names, where, d))
    readouts = {"clean": (lambda v: 8 * v @ u.T, bridge), "memorized noisy": (lambda v: 8 * v @ e.T, torch.arange(len(rows)))}
    assert planted_claim(x, readouts, {"LEACE": (target, person)}, rows) == "holds"
    assert planted_claim(x, readouts, {"LEACE": (target, matched)}, rows) in ("does not hold", "holds in part")


def test_the_same_norm_control_fails_a_label_that_any_large_removal_harms():
    """Noisy labels given by a random network of the whole stream (it knows nothing of the bridge,
    but a large change anywhere moves it): projecting out the loud bridge direction harms them more
    than projecting out another person's direction, so against that control the claim "holds";
    against as much removed along a random direction it does not."""
    people, facts, rows, u, e, bridge, x = planted_world()
    g = torch.Generator().manual_seed(2)
    V, W = torch.randn(x.shape[1], 256, generator=g), torch.randn(256, 50, generator=g) / 4
    net = lambda v: torch.relu(v @ V) @ W  # noqa: E731
    where = torch.ones(len(rows), 1, dtype=torch.bool)
    edit = lambda removal: removal.edit(torch.arange(len(rows)), torch.ones(len(rows), dtype=torch.long), "cpu",  # noqa: E731
                                        torch.float32)
    basis = u[bridge][:, None, :, None]
    other = u[(bridge + 1 + torch.randint(len(people) - 1, bridge.shape, generator=g)) % len(people)][:, None, :, None]
    target, person = edit(projection(basis, where, True)), edit(projection(other, where, True))
    same_norm = edit(redirected(basis, random_orthogonal(basis[:, 0], seed=0)[:, None], where, True))
    readouts = {"clean": (lambda v: 8 * v @ u.T, bridge), "memorized noisy": (net, net(x).argmax(1))}
    assert planted_claim(x, readouts, {"projection": (target, person)}, rows) == "holds"
    assert planted_claim(x, readouts, {"projection": (target, same_norm)}, rows) in ("does not hold", "holds in part")
