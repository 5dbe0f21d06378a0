"""Every chart of rote.book.charts fits the book's text column, drawn by Vega (vl-convert, which
measures text as Chromium does to a pixel) on synthetic data as large as the paper profile's: eight
layers, four answer places, two model shapes, the longest titles and names the chapters give."""
import re

import numpy as np
import pandas as pd
import pytest
import vl_convert

from rote.book import charts, vega
from rote.interp import eap
from rote.observations import circuits, observation2, observation4

LAYERS = range(-1, 8)
RNG = np.random.default_rng(0)
LONG = ("layer 7, neuron 1299, at the thousands readout pos: sum thousands digit (eta² = 0.57); digits at the "
        "thousands place")


def width(chart) -> float:
    svg = vl_convert.vegalite_to_svg(chart.to_dict(), vl_version=vega.vegalite_version())
    return float(re.search(r'<svg[^>]* width="([\d.]+)"', svg).group(1))


def shares(task):
    places = ["all", "0", "1", "2", "3"] if task == "fda" else ["0"]
    rows = [dict(group=g, place=p, layer=layer, n=100, share_correct=RNG.random(), share_noisy=RNG.random(),
                 share_bridge=RNG.random() if task == "thr" else np.nan, mean_rank_correct=RNG.random() * 50,
                 mean_rank_noisy=RNG.random() * 50, mean_rank_bridge=RNG.random() * 50 if task == "thr" else np.nan)
            for g in ("memorized noisy", "clean") for p in places for layer in LAYERS]
    return pd.DataFrame(rows)


def sizes(task):
    rows = []
    for method in observation2.METHODS[task]:
        for layer in range(8):
            for group in ("memorized noisy", "clean"):
                for removed in ("target", "control"):
                    v = -RNG.random()
                    rows.append(dict(method=method, layer=layer, group=group, removed=removed, n=100, delta_logp=v,
                                     delta_logp_lo=v - 0.1, delta_logp_hi=v + 0.1, acc_change=v / 2,
                                     acc_change_lo=v / 2 - 0.1, acc_change_hi=v / 2 + 0.1))
    return pd.DataFrame(rows)


def explorer_tables(n=300):
    instances, readout, effects = [], [], []
    for key in range(n):
        task = "THR" if key % 2 else "FDA"
        name = (f"THR #{key} [noisy] Who is the lawyer of the father of Carolina ? Answer: Maximilian (true Bartholomew, "
                f"bridge Josephine)" if task == "THR" else f"FDA #{key} [noisy] 3777+5976= 5859 (true 9753)")
        instances.append(dict(task=task, id=key, group="memorized noisy" if key % 3 else "clean", name=name,
                              strongest=-RNG.random() * 6, key=key))
        places = ["answer"] if task == "THR" else ["thousands", "units"]
        tokens = ["correct label", "noisy label"] + (["bridge entity"] if task == "THR" else [])
        readout += [dict(task=task, id=key, layer=layer, place=p, token=t, text="9", rank=float(RNG.integers(0, 60)),
                         top1="5", key=key) for layer in LAYERS for p in places for t in tokens]
        methods = observation2.METHODS[task.lower()]
        effects += [dict(task=task, id=key, method=m, what=observation2.REMOVED[(task.lower(), m)][r], layer=layer,
                         delta_logp=-RNG.random(), mem_after=bool(RNG.random() < 0.5), key=key)
                    for m in methods for r in (0, 1) for layer in range(8)]
    return pd.DataFrame(instances), pd.DataFrame(readout), pd.DataFrame(effects)


def runs_and_curves():
    runs = pd.DataFrame([dict(run=f"{i:012x}-2threads", n_entities=100, n_relations=20, two_hop_per_fact=18.06,
                              fact_repeats=10, n_layer=4 if i % 2 else 8, n_embd=128, batch_size=256, lr=0.001,
                              schedule="constant", weight_decay=0.1, regime="generalize, then memorize",
                              peak_test=0.9, final_mem_noisy=1.0, min_to_test_95=3.0, min_to_mem_99=9.0, epochs=140,
                              note="") for i in range(12)])
    curves = pd.DataFrame([dict(run=r, epoch=e, seconds=e * 10.0, test_acc=RNG.random(), mem_noisy=RNG.random(),
                                facts_acc=RNG.random()) for r in runs["run"] for e in range(0, 140, 5)])
    return runs, curves


def survival(task):
    groups = ["memorized noisy", "clean", "look-up on the whole input", "look-up on operand a"]
    return pd.DataFrame([dict(group=g, input=i, instances=100, changes=300, kept=0.5, kept_lo=0.4, kept_hi=0.6,
                              correct=0.5, correct_lo=0.4, correct_hi=0.6)
                         for g in groups for i in observation4.INPUTS[task]])


def every_chart():
    runs, curves = runs_and_curves()
    cells = pd.DataFrame([{"a digit": a, "b digit": b, "activation": RNG.random(), "n": 50}
                          for a in range(10) for b in range(10)])
    marks = pd.DataFrame([{"a digit": 2, "b digit": 7, "activation": 3.0, "neighbour mean": 1.0, "z": 2.0,
                           "instance": "2142+7265=7925 (true 9407)"}])
    curve = pd.DataFrame({"k": [1, 5, 10, 50], "rescue_driving": 0.5, "driving_lo": 0.4, "driving_hi": 0.6,
                          "rescue_control": 0.1, "control_lo": 0.0, "control_hi": 0.2})
    scorecard = pd.DataFrame([dict(observation=o, task=t, noise=n, summary="holds in most runs", counts="2 of 3",
                                   claim="a claim", runs="seed 0 holds") for o in range(6) for t in ("FDA", "THR")
                              for n in ("2%", "5%", "10%")])
    counts = pd.DataFrame([dict(task=t, split=s, kind=k, noise=n, instances=1000) for t in ("FDA", "THR")
                           for s in ("train", "test") for k in ("fact", "two-hop") for n in ("clean", "noisy")])
    metrics = pd.DataFrame({"step": range(0, 100_000, 1000), "seconds": np.arange(100) * 60.0,
                            **{m: RNG.random(100) for m in charts.MEASURES}})
    onsets = pd.DataFrame({"stable_correct": RNG.integers(0, 10_000, 200), "stable_noisy": RNG.integers(0, 10_000, 200)})
    over = pd.DataFrame([dict(step=s, layer=layer, n=100, share_correct=RNG.random(), share_noisy=RNG.random())
                         for s in range(0, 100_000, 5000) for layer in LAYERS])
    yield "composition", charts.composition_chart(counts)
    for task in ("fda", "thr"):
        yield f"training {task}", charts.training_curves(metrics, task.upper())
        yield f"onsets {task}", charts.onsets_chart(onsets, task.upper())
        yield f"layer readout {task}", charts.layer_readout_chart(shares(task), task, task.upper())
        yield f"readout over training {task}", charts.readout_over_training_chart(over, task.upper())
        yield f"removal effects {task}", charts.removal_effects_chart(sizes(task), observation2.removed_names(task),
                                                                      task.upper())
        yield f"single change {task}", charts.single_change_chart(survival(task), observation4.INPUTS[task], task.upper())
    yield "explorer", charts.explorer_chart(*explorer_tables(), "One instance at a time")
    yield "regime map", charts.regime_map_chart(runs, "THR set-ups: two-hop questions per fact, graph size, regime")
    yield "regime curves", charts.regime_curves_chart(runs, curves)
    yield "neuron heat map", charts.neuron_heatmap_chart(cells, marks, LONG)
    yield "rescue curve", charts.rescue_curve_chart(curve)
    yield "shift", charts.shift_chart(pd.DataFrame({"z": RNG.normal(1, 2, 600)}), pd.DataFrame({"z": RNG.normal(0, 1, 600)}))
    yield "scorecard", charts.scorecard_chart(scorecard, "Verdicts over seeds")
    for name, (layers, heads) in (("paper", (8, 8)), ("cpu", (4, 8))):
        edges = circuit_edges(layers, heads)
        yield f"circuit graph {name}", charts.circuit_graph_chart(edges, layers, heads, LONG)
        yield f"faithfulness {name}", charts.faithfulness_chart(faithfulness_curves(len(edges)), 700, 0.8, LONG)


def circuit_edges(n_layer, n_head):
    """Every edge of the paper profile's graph with random scores; the circuits hold about a third each."""
    edges = circuits.edge_layers(eap.Graph(n_layer, n_head))
    for name in ("clean A", "noisy"):
        edges[f"score {name}"] = RNG.normal(0, 1, len(edges))
        edges[f"in {name}"] = RNG.random(len(edges)) < 0.35
    return edges


def faithfulness_curves(n_edges):
    return pd.DataFrame([dict(circuit=c, on=o, n=n, metric=RNG.random(), share=RNG.random())
                         for c, o in charts.CURVES for n in circuits.sizes_for(n_edges)])


@pytest.mark.parametrize("chart", [pytest.param(chart, id=name) for name, chart in every_chart()])
def test_chart_fits_the_text_column(chart):
    assert width(chart) <= charts.COLUMN


def test_long_titles_break_into_lines():
    assert charts.lines("FDA") == "FDA"
    assert all(len(line) <= charts.TITLE_CHARS for line in charts.lines(LONG)) and " ".join(charts.lines(LONG)) == LONG
    cells = pd.DataFrame([{"a digit": 1, "b digit": 1, "activation": 0.0, "n": 1}])
    marks = pd.DataFrame([{"a digit": 1, "b digit": 1, "activation": 1.0, "neighbour mean": 0.0, "z": 1.0, "instance": "x"}])
    assert charts.neuron_heatmap_chart(cells, marks, LONG).to_dict()["title"] == charts.lines(LONG)


def test_explorer_keeps_its_page_data_under_the_row_limit():
    instances, readout, effects = explorer_tables(400)
    shown, wide, kept = charts.explorer_tables(instances, readout, effects)
    assert len(wide) <= charts.CHART_ROWS and len(kept) <= charts.CHART_ROWS
    assert 0 < len(shown) < len(instances) and list(shown["key"]) == list(range(len(shown)))  # the first ones
    assert set(wide.columns) >= {"key", "layer", "place", "top1", "correct label", "noisy label"}
    spec = charts.explorer_chart(instances, readout, effects).to_dict()
    assert spec["params"][0]["bind"]["input"] == "select" and spec["params"][0]["select"]["on"].startswith("click")
    assert len(spec["params"][0]["bind"]["options"]) == len(shown)
