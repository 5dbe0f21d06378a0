"""Shared circuits (book/circuits.ipynb): does memorization run on the reasoning circuit?

Edge attribution patching (`rote.interp.eap`) scores every edge between the embeddings, heads, MLPs
and logits of one model by how much of an answer it carries, on three samples of training questions
of one size n (at most `n_instances`): the memorized noisy instances (label: the noisy label), and
clean questions the model answers correctly (label: the true answer), drawn in two disjoint halves A
and B. The metric of a row is logit(label) - logit(contrast) summed over the answer places, the
contrast being the true answer of a corrupted question (`eap.corrupted_inputs`: THR the same question
about another subject, FDA another operand pair). A sample's *circuit* of size k is its k edges of
largest |mean score|; its *faithfulness* on a sample is the share of the way from the all-patched
metric to the clean one that is kept when only the circuit's edges carry the clean activations and
every other edge the corrupted ones (real patching: `eap.patched_metric`), a ratio of means over rows.

Choices fixed before the noisy instances' result is read:
- k: the smallest size at which clean circuit A keeps `KEEP` (80%) of the metric on A's own
  questions (`circuit_size`: bracketed on `SIZES`, then bisected);
- the override layer: the first block at which Observation 1's readout makes the noisy label the
  top-1 token on half of the memorized noisy readouts or more (`override_layer`).

Claims (`circuit_claims`), each against a control computed the same way that could make it fail:
- overlap: the share of the noisy circuit's k edges that are in circuit A, and the share of the noisy
  circuit's attribution those edges carry, above k random edges' (floor) and not more than `margin`
  below clean circuit B's (ceiling: the overlap that another sample of clean questions reaches).
  Intervals: the three samples resampled independently, every circuit chosen again each time (a
  circuit chosen on a resample is noisier than the one chosen on all rows, so the resampled overlaps
  sit below the value: the interval is their spread centred on the value, `resampled_comparison`);
- cross: circuit A's faithfulness on the memorized noisy instances, above k random edges' (mean of
  `N_RANDOM` draws) and not more than `margin` below the noisy circuit's own (chosen on those very
  rows: an advantage for the control); the reverse, the noisy circuit on clean half B, against
  circuit A on B (neither chosen on B). Intervals: the rows resampled, the circuits fixed;
- location: the share of the noisy circuit's edges outside circuit A that end at or after the
  override layer, above the same share for clean circuit B's edges outside A (what sampling alone
  puts outside A). An edge ends at its downstream input's layer (the logits: n_layer).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from rote.claims import exceeds, untestable
from rote.config import Config
from rote.interp import eap
from rote.interp.instances import Instances, clean_instances, memorized, noisy_instances
from rote.observations.observation1 import layer_readout_of
from rote.runs.data import load_dataset
from rote.runs.train import get_or_train
from rote.stats import NAN, Comparison, resampled_comparison

SIZES = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)  # circuit sizes of the curves
KEEP = 0.8  # the share of the metric the clean circuit must keep (fixes k)
MARGIN = 0.1  # how far below its clean ceiling a noisy statistic may fall and still "hold"
N_RANDOM = 5  # random circuits of size k per sample (the cross test's floor)
MIN_ROWS = 5  # fewer memorized noisy instances: nothing to test
SAMPLES = ("clean A", "clean B", "noisy")
# the claims, by the question each answers (`circuit_claims` makes them in this order)
EDGES_FLOOR = "the noisy circuit's edges are in the clean circuit"
EDGES_CEILING = "the noisy circuit's edges are in the clean circuit as often as another clean sample's"
CARRIES = "the clean circuit carries the noisy labels"
CARRIES_OWN = "the clean circuit carries the noisy labels nearly as well as their own circuit"


@dataclass
class Circuits(Instances):
    """The circuits of one model: the three samples' rows, their per-row EAP scores, the edges, the
    faithfulness curves, the circuit size k, the per-row metrics at k, and the override layer."""
    samples: dict  # name -> its rows (SAMPLES)
    corrupted: dict  # name -> the corrupted question of each row (`eap.corrupted_inputs`, index as the rows)
    scores: dict  # name -> per-row EAP scores [n, n_edges] (numpy)
    edges: pd.DataFrame  # `Graph.edges`, each edge's layers, mean score per sample and circuit membership at k
    curves: pd.DataFrame  # circuit, on (sample), n (edges kept), metric, share (faithfulness)
    size: int  # k (0: nothing to test)
    noisy_size: int  # the smallest noisy circuit that keeps `KEEP` on its own instances (described only)
    rows: pd.DataFrame  # per row of "noisy" and "clean B": the metric clean, all patched, and with each circuit kept
    override: int | None  # Observation 1's override layer
    config: Config | None = None


def top_edges(scores, k: int) -> np.ndarray:
    """[n_edges] bool: the k edges of largest |score| (ties: the first in graph order)."""
    scores = np.asarray(scores)
    out = np.zeros(len(scores), dtype=bool)
    out[np.argsort(-np.abs(scores), kind="stable")[:k]] = True
    return out


def sizes_for(n_edges: int) -> list[int]:
    """The circuit sizes of the curves for a graph of `n_edges` edges (`SIZES` below it, and all)."""
    return [s for s in SIZES if s < n_edges] + [n_edges]


def override_layer(shares: pd.DataFrame, task: str) -> int | None:
    """The first block layer at which the noisy label is the top-1 readout of at least half of the
    memorized noisy readouts (FDA: all places pooled), from `observation1.layer_shares`."""
    place = "all" if task == "fda" else 0
    s = shares[(shares["group"] == "memorized noisy") & (shares["place"] == place) & (shares["layer"] >= 0)]
    hit = s[s["share_noisy"] >= 0.5]
    return None if hit.empty else int(hit["layer"].min())


def edge_layers(graph: eap.Graph) -> pd.DataFrame:
    """Per edge, the layer of its upstream node (embed: -1) and of its downstream input (logits: n_layer)."""
    def layer(name: str) -> int:
        if name == "embed":
            return -1
        return graph.n_layer if name == "logits" else int(name[1:].split(".")[0].split("<")[0])
    e = graph.edges
    return e.assign(from_layer=[layer(u) for u in e["upstream"]], to_layer=[layer(d) for d in e["downstream"]])


def faithfulness(kept, clean, patched):
    """The share of the metric kept: (kept - patched) / (clean - patched), of mean metrics (numbers
    or arrays of resampled means)."""
    return (kept - patched) / (clean - patched)


def split_samples(mem: pd.DataFrame, clean: pd.DataFrame, n: int, seed: int) -> dict:
    """The three samples of n rows: memorized noisy instances, clean halves A and B (seeded)."""
    clean = clean.sample(frac=1.0, random_state=seed)
    return {"clean A": clean.iloc[:n].sort_values("id"), "clean B": clean.iloc[n: 2 * n].sort_values("id"),
            "noisy": mem.sample(n, random_state=seed).sort_values("id")}


def circuits_of(model, tokenizer, frame: pd.DataFrame, task: str, n_instances: int = 200, seed: int = 0,
                ig_steps: int = 0, config: Config | None = None) -> Circuits:
    """`shared_circuits` for a given model, tokenizer and instance table (no training)."""
    noisy = noisy_instances(model, tokenizer, frame)
    mem = memorized(noisy)
    clean = clean_instances(model, tokenizer, frame, 2 * min(n_instances, len(mem)), seed)
    n = min(n_instances, len(mem), len(clean) // 2)
    readout = layer_readout_of(model, tokenizer, frame, task, seed=seed)
    override = override_layer(readout.shares, task)
    graph = eap.graph_of(model)
    edges = edge_layers(graph)
    if n < MIN_ROWS:  # nothing to compare: no circuit holds an edge
        empty = pd.DataFrame(columns=["circuit", "on", "n", "metric", "share"])
        edges = edges.assign(**{f"score {name}": np.nan for name in SAMPLES}, **{f"in {name}": False for name in SAMPLES})
        return Circuits(task, graph.n_layer, noisy, clean, {}, {}, {}, edges, empty, 0, 0, pd.DataFrame(), override, config)
    samples = split_samples(mem, clean, n, seed)
    corrupted = {name: eap.corrupted_inputs(rows, frame, task, seed) for name, rows in samples.items()}
    pairs = {name: eap.pair_batch(tokenizer, rows, corrupted[name]) for name, rows in samples.items()}
    scores = {name: eap.edge_scores(model, p, ig_steps=ig_steps, per_row=True).numpy() for name, p in pairs.items()}
    means = {name: s.mean(0) for name, s in scores.items()}
    sources = {name: eap.upstream_activations(model, p.corrupt) for name, p in pairs.items()}

    def metric(name, kept):  # per-row metric of a sample with only the `kept` edges clean
        return eap.patched_metric(model, pairs[name], torch.from_numpy(~kept), source=sources[name]).numpy()

    ends = {name: (metric(name, np.ones(len(edges), bool)), metric(name, np.zeros(len(edges), bool))) for name in pairs}
    curves = []
    for circuit, on in (("clean A", "clean A"), ("clean A", "noisy"), ("noisy", "noisy"), ("noisy", "clean B"),
                        ("clean A", "clean B")):
        clean_m, patched_m = ends[on]
        for size in sizes_for(len(edges)):
            kept = metric(on, top_edges(means[circuit], size)).mean()
            curves.append({"circuit": circuit, "on": on, "n": size, "metric": kept,
                           "share": faithfulness(kept, clean_m.mean(), patched_m.mean())})
    curves = pd.DataFrame(curves)
    size, extra = circuit_size(curves, "clean A", lambda n: metric("clean A", top_edges(means["clean A"], n)).mean(),
                               *ends["clean A"])
    noisy_size, more = circuit_size(curves, "noisy", lambda n: metric("noisy", top_edges(means["noisy"], n)).mean(),
                                    *ends["noisy"])  # described, not used by any claim
    curves = pd.concat([curves, extra, more], ignore_index=True).sort_values(["circuit", "on", "n"], kind="stable")
    rng = np.random.default_rng(seed)
    randoms = [top_edges(rng.random(len(edges)), size) for _ in range(N_RANDOM)]
    rows = []
    for on in ("noisy", "clean B"):
        clean_m, patched_m = ends[on]
        rows.append(pd.DataFrame({
            "sample": on, "id": samples[on]["id"].to_numpy(), "clean": clean_m, "patched": patched_m,
            "circuit A": metric(on, top_edges(means["clean A"], size)),
            "noisy circuit": metric(on, top_edges(means["noisy"], size)),
            "random circuit": np.mean([metric(on, r) for r in randoms], 0)}))
    for name in SAMPLES:
        edges[f"score {name}"] = means[name]
        edges[f"in {name}"] = top_edges(means[name], size)
    return Circuits(task, graph.n_layer, noisy, clean, samples, corrupted, scores, edges, curves, size, noisy_size,
                    pd.concat(rows, ignore_index=True), override, config)


def circuit_size(curves: pd.DataFrame, circuit: str, kept_metric, clean_m, patched_m) -> tuple[int, pd.DataFrame]:
    """The smallest size at which `circuit` keeps `KEEP` of the metric on its own sample (for clean
    circuit A: k). The curve's sizes bracket it (the last below, the first at or above); bisection
    between them (`kept_metric(n)`: the mean metric with the circuit's top n edges clean) takes it
    to one edge, assuming the share rises with n inside the bracket. Returns it and the curve's rows
    it added."""
    own = curves[(curves["circuit"] == circuit) & (curves["on"] == circuit)].sort_values("n")
    hits = own[own["share"] >= KEEP]
    hi = int(hits["n"].iloc[0])
    below = own[own["n"] < hi]
    lo, added = (int(below["n"].iloc[-1]) if len(below) else hi - 1), []
    share = lambda m: faithfulness(m, clean_m.mean(), patched_m.mean())  # noqa: E731
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = kept_metric(mid)
        added.append({"circuit": circuit, "on": circuit, "n": mid, "metric": m, "share": share(m)})
        lo, hi = (lo, mid) if share(m) >= KEEP else (mid, hi)
    return hi, pd.DataFrame(added, columns=curves.columns)


def shared_circuits(config: Config, n_instances: int = 200, ig_steps: int = 0, device: str | None = None,
                    progress: bool = True) -> Circuits:
    """Train `config` (or load its finished run) and find the circuits of its clean answers and of
    its memorized noisy labels (module docstring)."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    return circuits_of(model, tokenizer, load_dataset(config), config.task, n_instances, config.seed,
                       ig_steps, config=config)


# ---- the claims ---------------------------------------------------------------------------------------

def overlaps(means: dict, k: int, random_set: np.ndarray) -> dict:
    """The overlap statistics of one draw: `means` per sample (mean scores [n_edges]), the circuits of
    size k. Edge share: |X & A| / k; attribution share: the part of X's own |score| on its edges in
    A (the random set is weighed by the noisy scores)."""
    a = top_edges(means["clean A"], k)
    out = {}
    for name, edges, weights in (("noisy", top_edges(means["noisy"], k), means["noisy"]),
                                 ("clean B", top_edges(means["clean B"], k), means["clean B"]),
                                 ("random", random_set, means["noisy"])):
        w = np.abs(weights)
        out[f"edges {name}"] = (edges & a).sum() / k
        out[f"attribution {name}"] = w[edges & a].sum() / w[edges].sum() if w[edges].sum() > 0 else NAN
    return out


def outside_share(means: dict, k: int, to_layer: np.ndarray, layer: int) -> dict:
    """Of the noisy circuit's edges outside circuit A, and of clean circuit B's, the share that end
    at or after `layer` (NaN where none is outside A)."""
    a = top_edges(means["clean A"], k)
    out = {}
    for name in ("noisy", "clean B"):
        outside = top_edges(means[name], k) & ~a
        out[name] = (to_layer[outside] >= layer).mean() if outside.any() else NAN
    return out


def _resampled_means(scores: dict, n_resamples: int, rng) -> list[dict]:
    """Per resample, each sample's mean scores over its rows drawn with replacement."""
    counts = {name: np.stack([np.bincount(rng.integers(0, len(s), len(s)), minlength=len(s)) for _ in range(n_resamples)])
              / len(s) for name, s in scores.items()}
    resampled = {name: counts[name] @ s for name, s in scores.items()}
    return [{name: resampled[name][r] for name in scores} for r in range(n_resamples)]


def circuit_claims(result: Circuits, margin: float = MARGIN, n_resamples: int = 1000, seed: int = 0) -> list:
    """The shared-circuit claims of one model (module docstring), each against its control."""
    base = dict(observation=5, task=result.task, n=len(result.samples.get("noisy", ())))
    k = result.size
    tests = [
        (EDGES_FLOOR, "share of the noisy circuit's {k} edges in clean circuit A",
         "edges noisy", "edges random", "{k} random edges", 0.0),
        (EDGES_CEILING, "share of the noisy circuit's {k} edges in clean circuit A", "edges noisy", "edges clean B",
         "clean circuit B (other clean questions, as many)", -margin),
        ("the noisy circuit's attribution lies in the clean circuit",
         "share of the noisy circuit's attribution on edges of clean circuit A", "attribution noisy",
         "attribution random", "{k} random edges (weighed by the noisy scores)", 0.0),
        ("the noisy circuit's attribution lies in the clean circuit as much as another clean sample's",
         "share of the noisy circuit's attribution on edges of clean circuit A", "attribution noisy",
         "attribution clean B", "clean circuit B's attribution on edges of A", -margin),
        (CARRIES, "share of the metric that clean circuit A keeps on memorized noisy instances",
         ("noisy", "circuit A"), ("noisy", "random circuit"), "{k} random edges on the same instances", 0.0),
        (CARRIES_OWN, "share of the metric that clean circuit A keeps on memorized noisy instances", ("noisy", "circuit A"),
         ("noisy", "noisy circuit"), "the noisy circuit on the same instances (chosen on them)", -margin),
        ("the noisy circuit carries clean answers nearly as well as the clean circuit",
         "share of the metric that the noisy circuit keeps on clean half B", ("clean B", "noisy circuit"),
         ("clean B", "circuit A"), "clean circuit A on clean half B", -margin),
    ]
    out = []
    for claim, statistic, stat, ctrl, control, m in tests:
        statistic, control = statistic.format(k=k), control.format(k=k)
        rule = (f"holds when the 95% interval of the statistic minus its control lies above {m:g}"
                + (" (at most that far below the clean ceiling)" if m < 0 else ""))
        fields = dict(claim=claim, statistic=statistic, control=control, rule=rule, **base)
        if not k:
            out.append(untestable(f"fewer than {MIN_ROWS} memorized noisy instances", **fields))
            continue
        c = (_overlap_comparison(result, stat, ctrl, n_resamples, seed) if isinstance(stat, str)
             else _faithfulness_comparison(result, stat, ctrl, n_resamples, seed))
        out.append(exceeds(c, m, note=f"circuit size k = {k} of {len(result.edges)} edges, fixed on clean half A",
                           **fields))
    out.append(_location_claim(result, n_resamples, seed, base))
    return out


def _overlap_comparison(result: Circuits, stat: str, ctrl: str, n_resamples: int, seed: int) -> Comparison:
    k, n_edges = result.size, len(result.edges)
    rng = np.random.default_rng(seed)
    means = {name: s.mean(0) for name, s in result.scores.items()}
    point = [overlaps(means, k, top_edges(rng.random(n_edges), k)) for _ in range(n_resamples)]
    draws = [overlaps(m, k, top_edges(rng.random(n_edges), k)) for m in _resampled_means(result.scores, n_resamples, rng)]
    value = lambda rows, key: float(np.nanmean([r[key] for r in rows]))  # noqa: E731 - random sets: mean over draws
    return resampled_comparison(value(point, stat), [r[stat] for r in draws], value(point, ctrl), [r[ctrl] for r in draws],
                                centred=True, bounds=(0, 1))


def _faithfulness_comparison(result: Circuits, stat: tuple, ctrl: tuple, n_resamples: int, seed: int) -> Comparison:
    rows = result.rows[result.rows["sample"] == stat[0]].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(n_resamples, len(rows)))
    values = rows[["clean", "patched", stat[1], ctrl[1]]].to_numpy(float)[idx].mean(1)  # [R, 4] means
    share = lambda m, j: faithfulness(m[..., j], m[..., 0], m[..., 1])  # noqa: E731
    full = rows[["clean", "patched", stat[1], ctrl[1]]].to_numpy(float).mean(0)
    return resampled_comparison(share(full, 2), share(values, 2), share(full, 3), share(values, 3))


def _location_claim(result: Circuits, n_resamples: int, seed: int, base: dict):
    k, layer = result.size, result.override
    fields = dict(claim="what is specific to the noisy circuit sits at or after the override layer",
                  statistic=f"share of the noisy circuit's edges outside clean circuit A that end at layer >= {layer}",
                  control="the same share for clean circuit B's edges outside A",
                  rule="holds when the 95% interval of the statistic minus its control lies above 0", **base)
    if not k:
        return untestable(f"fewer than {MIN_ROWS} memorized noisy instances", **fields)
    if layer is None:
        return untestable("Observation 1 finds no override layer (the noisy label is top-1 on fewer than half "
                          "of the memorized noisy readouts at every layer)", **fields)
    to_layer = result.edges["to_layer"].to_numpy()
    means = {name: s.mean(0) for name, s in result.scores.items()}
    point = outside_share(means, k, to_layer, layer)
    if point["noisy"] != point["noisy"]:
        return untestable(f"the noisy circuit has no edge outside clean circuit A (k = {k})", **fields)
    draws = [outside_share(m, k, to_layer, layer)
             for m in _resampled_means(result.scores, n_resamples, np.random.default_rng(seed))]
    c = resampled_comparison(point["noisy"], [d["noisy"] for d in draws], point["clean B"], [d["clean B"] for d in draws],
                             centred=True, bounds=(0, 1))
    outside = int((top_edges(means["noisy"], k) & ~top_edges(means["clean A"], k)).sum())
    return exceeds(c, 0.0, note=f"{outside} of the noisy circuit's {k} edges lie outside clean circuit A; "
                   f"override layer {layer} (Observation 1)", **fields)


# ---- tables for the chapter ----------------------------------------------------------------------------

def circuit_table(result: Circuits) -> pd.DataFrame:
    """The edges of either circuit at size k: where they run, their mean scores and which circuits hold them."""
    if not result.size:
        return pd.DataFrame({"note": ["no circuits: too few memorized noisy instances"]})
    e = result.edges
    e = e[e["in clean A"] | e["in noisy"]].copy()
    e["circuits"] = np.select([e["in clean A"] & e["in noisy"], e["in clean A"]], ["both", "clean only"], "noisy only")
    columns = ["upstream", "downstream", "to_layer", "circuits", "score clean A", "score noisy", "score clean B"]
    e = e.sort_values("score noisy", key=np.abs, ascending=False)[columns]
    return e.rename(columns={"to_layer": "ends at layer"}).round(4).reset_index(drop=True)


def specific_by_layer(result: Circuits) -> pd.DataFrame:
    """Per layer where edges end: how many edges of each circuit end there, and how many of the noisy
    circuit's are not in clean circuit A (and of clean circuit B's)."""
    if not result.size:
        return pd.DataFrame()
    e = result.edges
    a = e["in clean A"]
    table = pd.DataFrame({"clean circuit A": e[a].groupby("to_layer").size(),
                          "noisy circuit": e[e["in noisy"]].groupby("to_layer").size(),
                          "noisy, not in A": e[e["in noisy"] & ~a].groupby("to_layer").size(),
                          "clean B, not in A": e[e["in clean B"] & ~a].groupby("to_layer").size()})
    table = table.reindex(range(result.n_layer + 1)).fillna(0).astype(int)
    table.index = [f"{l}" if l < result.n_layer else "logits" for l in table.index]
    return table.rename_axis("edges ending at layer").reset_index()
