"""Shared circuits (rote.observations.circuits): the choices, the claims on planted scores and metrics
(each control can flip its verdict), and the whole analysis on a small model that memorizes, checked
against real patching done again here."""
from __future__ import annotations

import tempfile
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

import rote
from rote.interp import eap
from rote.observations import OBSERVATIONS, circuits

GRAPH = eap.Graph(n_layer=3, n_head=4)
N, K = 60, 20


def planted(noisy: str = "same", carries: bool = True, specific_late: bool = False, row_sd: float = 1.0,
            seed: int = 0) -> circuits.Circuits:
    """Circuits with planted per-row scores and metrics on GRAPH, k = K. Clean rows: a fixed pattern
    (K strong edges, then weaker ones) plus row noise. noisy = "same": the noisy rows follow that
    pattern too; "random": a pattern of their own. `specific_late`: the noisy pattern swaps five of
    its early-layer edges for five edges that end at the last layers. `carries`: circuit A keeps
    90% of the noisy labels' metric (else as little as random edges)."""
    rng = np.random.default_rng(seed)
    edges = circuits.edge_layers(GRAPH)
    E = len(edges)
    pattern = np.zeros(E)
    order = rng.permutation(E)
    pattern[order[:K]] = np.linspace(3, 1.2, K)
    pattern[order[K: 3 * K]] = np.linspace(1.0, 0.5, 2 * K)
    mine = pattern.copy()
    if noisy == "random":
        mine = pattern[rng.permutation(E)]
    if specific_late:
        early = [i for i in order[:K] if edges["to_layer"][i] <= 1][:5]
        late = [i for i in order[3 * K:] if edges["to_layer"][i] == 3][:5]
        mine[early], mine[late] = 0.0, 2.0
    rows = lambda p: p + rng.normal(0, row_sd, (N, E))  # noqa: E731
    scores = {"clean A": rows(pattern), "clean B": rows(pattern), "noisy": rows(mine)}
    metric = lambda share: 10 * share + rng.normal(0, 0.5, N)  # noqa: E731 - clean 10, patched 0
    table = []
    for sample in ("noisy", "clean B"):
        table.append(pd.DataFrame({"sample": sample, "id": range(N), "clean": 10 + rng.normal(0, 0.5, N),
                                   "patched": rng.normal(0, 0.5, N), "circuit A": metric(0.9 if carries else 0.1),
                                   "noisy circuit": metric(0.9), "random circuit": metric(0.1)}))
    for name, s in scores.items():
        edges[f"score {name}"] = s.mean(0)
        edges[f"in {name}"] = circuits.top_edges(s.mean(0), K)
    samples = {name: pd.DataFrame({"id": range(N)}) for name in circuits.SAMPLES}
    return circuits.Circuits("thr", GRAPH.n_layer, pd.DataFrame(), pd.DataFrame(), samples, {}, scores, edges,
                             pd.DataFrame(), K, K, pd.concat(table, ignore_index=True), 3)


def verdicts(result, **kwargs) -> list[str]:
    return [c.verdict for c in circuits.circuit_claims(result, n_resamples=200, **kwargs)]


# ---- the choices ----

def test_top_edges_are_the_largest_by_magnitude_with_ties_in_graph_order():
    assert circuits.top_edges([0.1, -3, 2, 0, 2], 2).tolist() == [False, True, True, False, False]
    assert circuits.top_edges([1, 1, 1], 2).tolist() == [True, True, False]
    assert circuits.top_edges([1, 2], 0).sum() == 0


def test_edge_layers_name_where_each_edge_starts_and_ends():
    e = circuits.edge_layers(GRAPH).set_index(["upstream", "downstream"])
    assert e.loc[("embed", "a0.h1<q>"), ["from_layer", "to_layer"]].tolist() == [-1, 0]
    assert e.loc[("a1.h2", "m1"), ["from_layer", "to_layer"]].tolist() == [1, 1]
    assert e.loc[("m2", "logits"), ["from_layer", "to_layer"]].tolist() == [2, 3]


def test_the_override_layer_is_the_first_where_the_noisy_label_is_top_one_on_half():
    shares = pd.DataFrame({"group": "memorized noisy", "place": "all", "layer": [-1, 0, 1, 2, 3],
                           "share_noisy": [0.0, 0.2, 0.49, 0.5, 0.9]})
    assert circuits.override_layer(shares, "fda") == 2
    assert circuits.override_layer(shares.assign(share_noisy=0.3), "fda") is None
    assert circuits.override_layer(shares.assign(place=0), "thr") == 2


def test_the_samples_are_disjoint_halves_of_one_size():
    mem = pd.DataFrame({"id": range(100, 150)})
    clean = pd.DataFrame({"id": range(40)})
    s = circuits.split_samples(mem, clean, 20, seed=3)
    assert [len(s[n]) for n in circuits.SAMPLES] == [20, 20, 20]
    assert not set(s["clean A"]["id"]) & set(s["clean B"]["id"])
    assert s["clean A"]["id"].equals(circuits.split_samples(mem, clean, 20, seed=3)["clean A"]["id"])


def test_the_circuit_size_is_bracketed_then_bisected():
    curves = pd.DataFrame({"circuit": "clean A", "on": "clean A", "n": [0, 10, 100, 200], "metric": 0.0,
                           "share": [0.0, 0.3, 0.7, 0.95]})
    calls = []
    kept = lambda n: (calls.append(n), 0.0 + (n >= 137))[1]  # noqa: E731 - keeps everything from 137 edges on
    k, added = circuits.circuit_size(curves, "clean A", kept, np.array([1.0]), np.array([0.0]))
    assert k == 137 and len(calls) <= 7 and set(added["n"]) == set(calls)


def test_a_resampled_comparison_centres_a_one_sided_spread_and_clips_shares():
    from rote.stats import resampled_comparison

    draws = np.linspace(0.50, 0.60, 101)  # resamples all below the value 0.7, as a redone selection's are
    plain = resampled_comparison(0.7, draws, 0.3, draws - 0.4)
    assert plain.lo < plain.hi < plain.value  # percentile: the value outside its own interval
    c = resampled_comparison(0.7, draws, 0.3, draws - 0.4, centred=True)
    assert c.lo < c.value < c.hi and c.hi - c.lo == pytest.approx(plain.hi - plain.lo)
    assert c.difference_lo == pytest.approx(0.4) and c.difference_hi == pytest.approx(0.4)
    clipped = resampled_comparison(0.98, np.r_[draws + 0.4, 0.5], 0.3, np.r_[draws - 0.4, np.nan], centred=True, bounds=(0, 1))
    assert clipped.hi == 1.0 and clipped.lo < 0.98 and clipped.control_lo == pytest.approx(c.control_lo)


# ---- the claims flip with their controls ----

def test_a_noisy_circuit_like_the_clean_one_holds_and_a_random_one_does_not():
    same = verdicts(planted("same"))
    assert same[:2] == ["holds", "holds"]  # above the random floor, within the margin of clean B
    other = verdicts(planted("random"))
    assert other[0] != "holds" and other[1] == "does not hold"
    # the ceiling can fail a noisy circuit that only beats the floor: a margin of 0 against clean B
    assert verdicts(planted("same"), margin=-0.5)[1] == "does not hold"


def test_the_cross_test_fails_when_the_clean_circuit_does_not_carry_the_noisy_labels():
    carried = verdicts(planted(carries=True))
    assert carried[4:6] == ["holds", "holds"]
    dropped = verdicts(planted(carries=False))
    assert dropped[4] == "does not hold" and dropped[5] == "does not hold"


def test_the_location_claim_holds_only_when_the_noisy_only_edges_are_late():
    late = circuits.circuit_claims(planted("same", specific_late=True, row_sd=2.0), n_resamples=200)[-1]
    assert late.verdict == "holds" and late.value > 0.5 > late.control_value
    assert verdicts(planted("same", specific_late=False, row_sd=2.0))[-1] != "holds"


def test_without_memorized_instances_nothing_is_tested():
    r = planted()
    r.size = 0
    assert set(verdicts(r)) == {"cannot be tested"}
    r = planted(specific_late=True, row_sd=2.0)
    r.override = None
    assert verdicts(r)[-1] == "cannot be tested"


def test_the_registry_names_the_chapter():
    o = OBSERVATIONS[5]
    assert o.chapter == "circuits" and o.measure is circuits.shared_circuits and set(o.tasks) == {"fda", "thr"}


# ---- on a trained model ----

@lru_cache
def small(task):
    """A tiny-profile model that memorizes its noise (the settings of `make golden`), its tokenizer, frame."""
    config = rote.make_config(task, "tiny", noise=0.1, n_embd=64, max_steps=1200, eval_every=100)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ROTE_HOME", tempfile.mkdtemp(prefix=f"circuits-{task}-"))
        model, tok = rote.get_or_train(config, device="cpu", progress=False)
        frame = rote.load_dataset(config)
    return model, tok, frame


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_the_circuits_of_a_small_model_agree_with_patching_done_again(task):
    torch.manual_seed(0)
    model, tok, frame = small(task)
    r = circuits.circuits_of(model, tok, frame, task, n_instances=40)
    assert r.size > 0 and len(r.samples["noisy"]) >= circuits.MIN_ROWS
    n_edges = len(r.edges)
    own = r.curves[(r.curves["circuit"] == "clean A") & (r.curves["on"] == "clean A")].set_index("n")["share"]
    assert own[0] == pytest.approx(0, abs=1e-5) and own[n_edges] == pytest.approx(1, abs=1e-5)
    # k keeps 80% on clean A, k - 1 does not (the curve rises there), redone with eap.faithfulness
    pairs = eap.pair_batch(tok, r.samples["clean A"], r.corrupted["clean A"])
    means = torch.from_numpy(r.scores["clean A"].mean(0))
    again = eap.faithfulness(model, pairs, means, [r.size - 1, r.size]).set_index("n")["share"]
    assert again[r.size] >= circuits.KEEP > again[r.size - 1]
    noisy = eap.pair_batch(tok, r.samples["noisy"], r.corrupted["noisy"])
    again = eap.faithfulness(model, noisy, torch.from_numpy(r.scores["noisy"].mean(0)), [r.noisy_size - 1, r.noisy_size])
    assert again.set_index("n")["share"][r.noisy_size] >= circuits.KEEP > again.set_index("n")["share"][r.noisy_size - 1]
    # the per-row metrics with the noisy circuit kept, redone
    kept = torch.from_numpy(circuits.top_edges(r.scores["noisy"].mean(0), r.size))
    rows = r.rows[r.rows["sample"] == "noisy"]
    assert np.allclose(eap.patched_metric(model, noisy, ~kept).numpy(), rows["noisy circuit"], atol=1e-4)
    assert np.allclose(eap.patched_metric(model, noisy, torch.zeros(n_edges, dtype=torch.bool)).numpy(), rows["clean"],
                       atol=1e-4)
    # per-row scores are the EAP scores of each row
    assert np.allclose(r.scores["noisy"].mean(0), eap.edge_scores(model, noisy).numpy(), atol=1e-5)
    records = circuits.circuit_claims(r, n_resamples=100)
    assert len(records) == 8 and all(c.observation == 5 and c.task == task for c in records)
    assert all(c.verdict != "cannot be tested" for c in records[:7])
