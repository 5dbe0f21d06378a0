"""Altair figures of the book: interactive in the static HTML (zoom, tooltips, legend selection).

Every figure fits the book's text column (COLUMN px wide in a 1280 px window, the width
`rote.book.check` measures against): panels are narrow or wrap, long titles and labels break into lines."""
from __future__ import annotations

import textwrap

import altair as alt
import numpy as np
import pandas as pd

from rote.book import vega  # noqa: F401 - registers the offline renderer the book is executed with
from rote.interp.sites import PLACES

COLUMN = 688  # px: the text column of sphinx-book-theme in a 1280 px window
TITLE_CHARS = 64  # characters per line of a title (13 px bold): about 480 px


def lines(title: str, chars: int = TITLE_CHARS) -> str | list[str]:
    """A title as it is drawn: one line, or lines of at most `chars` characters."""
    return title if len(title) <= chars else textwrap.wrap(title, chars)


MEASURES = {
    "test_acc": "test accuracy",
    "train_clean_acc": "train-clean accuracy",
    "facts_acc": "one-hop facts",
    "mem_noisy": "Mem-Noisy",
    "mem_corrected": "Mem-Corrected",
}


def composition_chart(counts: pd.DataFrame) -> alt.Chart:
    """Instances per task, split, kind and noise (label clean or noisy): `rote.runs.data.composition`
    of each task, with a `task` column."""
    return alt.Chart(counts).mark_bar().encode(
        x=alt.X("instances:Q"), y=alt.Y("kind:N", title=None),
        color=alt.Color("noise:N", title="label", scale=alt.Scale(domain=["clean", "noisy"])),
        row=alt.Row("task:N", title=None), column=alt.Column("split:N", title=None),
        tooltip=["task", "split", "kind", "noise", "instances"],
    ).properties(width=240, height=60)


def training_curves(metrics: pd.DataFrame, title: str = "") -> alt.Chart:
    """Test and train-clean accuracy, Mem-Noisy and Mem-Corrected over training steps."""
    present = [m for m in MEASURES if m in metrics]
    long = metrics.melt(id_vars=["step", "seconds"], value_vars=present, var_name="measure", value_name="share")
    long["measure"] = long["measure"].map(MEASURES)
    long["minutes"] = long["seconds"] / 60
    pick = alt.selection_point(fields=["measure"], bind="legend")
    return alt.Chart(long, title=lines(title)).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="training step"),
        y=alt.Y("share:Q", title="share of questions", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("measure:N", sort=[MEASURES[m] for m in present], title=None),
        opacity=alt.condition(pick, alt.value(1), alt.value(0.15)),
        tooltip=["measure", "step", alt.Tooltip("minutes:Q", format=".1f"), alt.Tooltip("share:Q", format=".3f")],
    ).add_params(pick).properties(width=460, height=260).interactive(bind_y=False)


def onsets_chart(onsets: pd.DataFrame, title: str = "") -> alt.Chart:
    """Per memorized noisy instance: the evaluation from which the true answer was held (x) against
    the one from which the noisy label was (y), by `rote.observations.observation0.stable_onsets`.
    Points above the diagonal held the true answer first; instances that never held it are left out
    (their count is in the claim)."""
    counted = (onsets.dropna(subset=["stable_correct", "stable_noisy"])
               .groupby(["stable_correct", "stable_noisy"]).size().rename("instances").reset_index())
    top = float(max(onsets[["stable_correct", "stable_noisy"]].max().max(), 1))
    points = alt.Chart(counted, title=lines(title)).mark_circle(opacity=0.7).encode(
        x=alt.X("stable_correct:Q", title="true answer held from (step)", scale=alt.Scale(domain=[0, top])),
        y=alt.Y("stable_noisy:Q", title="noisy label held from (step)", scale=alt.Scale(domain=[0, top])),
        size=alt.Size("instances:Q", title="instances"),
        tooltip=["stable_correct", "stable_noisy", "instances"],
    )
    diagonal = alt.Chart(pd.DataFrame({"x": [0, top], "y": [0, top]})).mark_line(color="gray", strokeDash=[4, 4])
    diagonal = diagonal.encode(x="x", y="y")
    return (diagonal + points).properties(width=360, height=360)


# ---- Observation 1: the layer-by-layer readout -----------------------------------------------------

READOUTS = {"share_correct": "correct label", "share_noisy": "noisy label", "share_bridge": "bridge entity"}
RANKS = {"mean_rank_correct": "correct label", "mean_rank_noisy": "noisy label", "mean_rank_bridge": "bridge entity"}
PLACE_NAMES = {**{str(k): place for k, place in enumerate(PLACES)}, "all": "all differing digits"}


def _layer_label(layer: int) -> str:
    return "embed" if layer < 0 else str(layer)


def layer_readout_chart(shares: pd.DataFrame, task: str, title: str = "") -> alt.Chart:
    """Per layer (embed = the embedding output): top, the share of readouts whose top-1 is the
    correct label, the noisy label or (THR) the bridge; bottom, the mean rank of each (0 = top,
    symlog axis); memorized noisy instances solid, clean ones dashed. FDA: one column per answer
    digit that enters, and all of them pooled. Click a legend entry to highlight it."""
    if shares.empty:
        return alt.Chart(pd.DataFrame({"text": ["no instances to read out"]}), title=title).mark_text().encode(text="text:N")
    pick = alt.selection_point(fields=["token"], bind="legend")
    order = [PLACE_NAMES[k] for k in ("all", "0", "1", "2", "3")] if task == "fda" else ["answer"]
    rows = []
    for columns, measure, scale in ((READOUTS, "share of readouts that are top-1", alt.Scale(domain=[0, 1])),
                                    (RANKS, "mean rank (0 = top)", alt.Scale(type="symlog"))):
        long = shares.melt(id_vars=["group", "place", "layer", "n"], value_vars=list(columns),
                           var_name="token", value_name="value").dropna(subset=["value"])
        long["token"] = long["token"].map(columns)
        long["place"] = long["place"].astype(str).map(PLACE_NAMES) if task == "fda" else "answer"
        long["layer name"] = long["layer"].astype(int).map(_layer_label)
        layers = [_layer_label(x) for x in sorted(shares["layer"].astype(int).unique())]
        chart = alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=30)).encode(
            x=alt.X("layer name:O", sort=layers, title="layer"),
            y=alt.Y("value:Q", title=measure, scale=scale),
            color=alt.Color("token:N", sort=list(READOUTS.values()), title="readout of", legend=alt.Legend(orient="top")),
            strokeDash=alt.StrokeDash("group:N", sort=["memorized noisy", "clean"], title="instances",
                                      legend=alt.Legend(orient="top", symbolType="stroke", symbolStrokeColor="black")),
            opacity=alt.condition(pick, alt.value(1), alt.value(0.15)),
            tooltip=["group", "place", "layer name", "token", alt.Tooltip("value:Q", format=".3f", title=measure), "n"],
        ).properties(width=96 if task == "fda" else 320, height=150)
        if not rows:
            chart = chart.add_params(pick)
        rows.append(chart.facet(column=alt.Column("place:N", title=None, sort=order, header=alt.Header(labelFontSize=12)),
                                spacing=12))
    return alt.vconcat(*rows, title=lines(title))


def readout_over_training_chart(table: pd.DataFrame, title: str = "") -> alt.Chart:
    """Per checkpoint (x) and layer (y): the share of the final model's memorized noisy readouts
    whose top-1 is the correct label (left) and the noisy label (right)."""
    if table.empty:
        return alt.Chart(pd.DataFrame({"text": ["no memorized noisy instances"]}), title=title).mark_text().encode(text="text:N")
    long = table.melt(id_vars=["step", "layer", "n"], value_vars=["share_correct", "share_noisy"],
                      var_name="readout", value_name="share")
    long["readout"] = long["readout"].map(READOUTS)
    long["layer name"] = long["layer"].map(_layer_label)
    layers = [_layer_label(x) for x in sorted(long["layer"].unique(), reverse=True)]
    return alt.Chart(long).mark_rect().encode(
        x=alt.X("step:O", title="checkpoint (training step)"),
        y=alt.Y("layer name:O", sort=layers, title="layer"),
        color=alt.Color("share:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="share top-1"),
        tooltip=["step", "layer name", "readout", alt.Tooltip("share:Q", format=".3f"), "n"],
    ).properties(width=230, height=150).facet(column=alt.Column("readout:N", title=None), title=lines(title))


# ---- Observation 2: removing the correct intermediate result ----------------------------------------

def removal_effects_chart(sizes: pd.DataFrame, names: dict | None = None, title: str = "") -> alt.Chart:
    """Per method (columns), group and measure (rows) and layer (x): the mean change of the label's
    log-prob (nats per scored token) and of memorization accuracy after removing the target (the
    correct intermediate result) and the control, with 95% bootstrap intervals. `names`:
    {(method, "target" or "control"): what is removed}, shown in tooltips."""
    if sizes.empty:
        return alt.Chart(pd.DataFrame({"text": ["no instances to intervene on"]}), title=title).mark_text().encode(text="text:N")
    parts = []
    short = {"memorized noisy": "noisy", "clean": "clean"}
    for measure, column in (("Δ log-prob", "delta_logp"), ("Δ accuracy", "acc_change")):
        part = sizes[["method", "layer", "group", "removed", "n"]].copy()
        part["value"], part["lo"], part["hi"] = sizes[column], sizes[f"{column}_lo"], sizes[f"{column}_hi"]
        part["panel"] = part["group"].map(short) + ": " + measure
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    long["what"] = [(names or {}).get((m, r), r) for m, r in zip(long["method"], long["removed"])]
    long["layer"] = long["layer"].astype(int)
    pick = alt.selection_point(fields=["removed"], bind="legend")
    enc = dict(x=alt.X("layer:O"), color=alt.Color("removed:N", sort=["target", "control"],
                                                   title="removed"),
               xOffset=alt.XOffset("removed:N", sort=["target", "control"]),
               opacity=alt.condition(pick, alt.value(1), alt.value(0.15)))
    points = alt.Chart().mark_point(filled=True, size=50).encode(
        y=alt.Y("value:Q", title=None), tooltip=["method", "group", "layer", "what", "n",
                                                  alt.Tooltip("value:Q", format="+.3f"), alt.Tooltip("lo:Q", format="+.3f"),
                                                  alt.Tooltip("hi:Q", format="+.3f")], **enc).add_params(pick)
    bars = alt.Chart().mark_rule().encode(y="lo:Q", y2="hi:Q", **enc)
    zero = alt.Chart().mark_rule(color="gray", strokeDash=[3, 3]).encode(y=alt.datum(0))
    order = [f"{g}: {m}" for g in ("noisy", "clean") for m in ("Δ log-prob", "Δ accuracy")]
    return alt.layer(zero, bars, points, data=long).properties(width=190, height=120).facet(
        row=alt.Row("panel:N", title=None, sort=order, header=alt.Header(labelAngle=0, labelAlign="left")),
        column=alt.Column("method:N", title=None), title=lines(title),
    ).resolve_scale(y="independent")


PICK = "pick"  # the view whose marks pick an instance: the browser check clicks them
PICKED = "picked"  # the view that names the picked instance


def explorer_tables(instances: pd.DataFrame, readout: pd.DataFrame, effects: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """The explorer's tables as the page embeds them: the readout one row per instance, layer and
    place (a rank column per token), and only the first instances whose rows fit CHART_ROWS."""
    wide = readout.pivot_table(index=["key", "layer", "place", "top1"], columns="token", values="rank",
                               sort=False).reset_index()
    effects = effects[["key", "method", "what", "layer", "delta_logp", "mem_after"]]
    instances = instances.round({"strongest": 4})
    def rows(table):  # per instance: the rows of `table` up to and with it
        return table["key"].value_counts().reindex(instances["key"], fill_value=0).cumsum().to_numpy()
    keep = instances["key"][(rows(wide) <= CHART_ROWS) & (rows(effects) <= CHART_ROWS)]
    return (instances[instances["key"].isin(keep)], wide[wide["key"].isin(keep)], effects[effects["key"].isin(keep)])


def csv_data(frame: pd.DataFrame) -> alt.InlineData:
    """`frame` in the page as CSV text, its column names once rather than in every row, numbers to
    4 significant digits, booleans as 0 and 1; Vega parses the numbers back."""
    frame = frame.astype({c: int for c in frame.columns if frame[c].dtype == bool})
    numbers = {c: "number" for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])}
    return alt.InlineData(values=frame.to_csv(index=False, float_format="%.4g"), format=alt.DataFormat(type="csv", parse=numbers))


def explorer_chart(instances: pd.DataFrame, readout: pd.DataFrame, effects: pd.DataFrame, title: str = "") -> alt.Chart:
    """`explorer.explorer_data` drawn for the static book (`explorer_tables`, the readout and the
    effects as CSV). Top, one point per instance (row: task and group; x: the strongest change of
    the label's log-prob after removing the target): click one, or pick it in the dropdown. Below,
    for that instance: the rank (0 = top) of the correct label, the noisy label and (THR) the
    bridge at every layer and scored answer place; then the change of the label's log-prob after
    each removal at every layer (a hollow circle: the label is no longer the greedy answer)."""
    if instances.empty:
        return alt.Chart(pd.DataFrame({"text": ["no instances to explore"]}), title=title).mark_text().encode(text="text:N")
    tokens = [t for t in READOUTS.values() if t in set(readout["token"])]
    places = [p for p in ("answer", *PLACES) if p in set(readout["place"])]
    removed, methods = list(dict.fromkeys(effects["what"])), list(dict.fromkeys(effects["method"]))
    layers = [_layer_label(x) for x in sorted(readout["layer"].unique())]
    instances, readout, effects = explorer_tables(instances, readout, effects)
    instances = instances.assign(row=instances["task"] + " " + instances["group"],
                                 jitter=np.random.default_rng(0).uniform(-0.35, 0.35, len(instances)).round(3),
                                 lines=[textwrap.fill(n, 72) for n in instances["name"]])
    rows = [f"{t} {g}" for t in dict.fromkeys(instances["task"]) for g in ("memorized noisy", "clean")
            if f"{t} {g}" in set(instances["row"])]
    keys = instances["key"].astype(int).tolist()
    short = [f"{t} #{i} ({'clean' if g == 'clean' else 'noisy'})"
             for t, i, g in zip(instances["task"], instances["id"], instances["group"])]
    pick = alt.selection_point(name="instance", fields=["key"], value=[{"key": keys[0]}], empty=False,
                               on="click[event.item && event.item.mark.marktype !== 'group']", clear=False,
                               bind=alt.binding_select(options=keys, labels=short, name="instance "))
    instances = instances[["key", "row", "jitter", "strongest", "name", "lines"]]  # one table for the strip and the name
    strip = alt.Chart(instances).mark_point(filled=True).encode(
        x=alt.X("strongest:Q", title="strongest Δ log-prob of the label, target removed (nats per token)"),
        y=alt.Y("row:N", sort=rows, title=None), yOffset=alt.YOffset("jitter:Q", scale=alt.Scale(domain=[-0.5, 0.5])),
        color=alt.condition(pick, alt.value("#d62728"), alt.value("#4c78a8")),
        size=alt.condition(pick, alt.value(160), alt.value(30)),
        tooltip=["name", alt.Tooltip("strongest:Q", format="+.3f")],
    ).add_params(pick).properties(name=PICK, width=480, height=24 * len(rows))
    picked = alt.Chart(instances).mark_text(align="left", baseline="top", fontSize=12, fontWeight="bold",
                                            lineBreak="\n").encode(x=alt.value(0), y=alt.value(0), text="lines:N")
    picked = picked.transform_filter(pick).properties(name=PICKED, width=480, height=30,
                                                      view=alt.ViewBackground(stroke=None))
    # every instance on the same legends: they keep their entries and width when another is picked
    line, dash = alt.Legend(symbolType="stroke"), alt.Legend(symbolType="stroke", symbolStrokeColor="black")
    ranks = alt.Chart().encode(
        x=alt.X("layer name:O", sort=layers, title="layer"),
        y=alt.Y("rank:Q", scale=alt.Scale(type="symlog", reverse=True), title="rank (0 = top)"),
        color=alt.Color("token:N", scale=alt.Scale(domain=tokens), title="readout of", legend=line),
        tooltip=["layer name:N", "place:N", "token:N", "rank:Q", alt.Tooltip("top1:N", title="top-1 token")],
    ).transform_filter(pick).transform_fold(tokens, as_=["token", "rank"]).transform_filter("isValid(datum.rank)")
    ranks = ranks.transform_calculate(**{"layer name": "datum.layer < 0 ? 'embed' : '' + datum.layer"})
    ranks = alt.layer(ranks.mark_line().encode(strokeDash=alt.StrokeDash(
        "place:N", scale=alt.Scale(domain=places), title="answer place", legend=dash)), ranks.mark_point(filled=True),
        data=csv_data(readout), title="readout: rank per layer")
    removals = alt.Chart().encode(
        x=alt.X("layer:O"), y=alt.Y("delta_logp:Q", title="Δ log-prob (nats per token)"),
        color=alt.Color("what:N", scale=alt.Scale(domain=removed), title="removed", legend=line),
        tooltip=["method:N", "what:N", "layer:O", alt.Tooltip("delta_logp:Q", format="+.3f"),
                 alt.Tooltip("still:N", title="label still the answer")],
    ).transform_filter(pick).transform_calculate(still="datum.mem_after ? 'yes' : 'no'")
    hollow = alt.Chart().mark_point(filled=False, size=90, color="black").encode(
        x="layer:O", y="delta_logp:Q").transform_filter(pick).transform_filter("!datum.mem_after")
    removals = alt.layer(removals.mark_line().encode(strokeDash=alt.StrokeDash(
        "method:N", scale=alt.Scale(domain=methods), title="method", legend=dash)), removals.mark_point(filled=True),
        hollow, data=csv_data(effects), title="removal: Δ log-prob of the label per layer")
    panels = [ranks.properties(width=400, height=150), removals.properties(width=400, height=150)]
    return alt.vconcat(strip, picked, *panels, title=lines(title), spacing=14).resolve_scale(
        color="independent", strokeDash="independent")


def regime_map_chart(runs: pd.DataFrame, title: str = "") -> alt.Chart:
    """One point per THR set-up: two-hop training questions per fact (x) against the size of the
    knowledge graph (y), coloured by regime, shaped by how often each fact repeats per epoch, one
    panel per model shape (two a row); tooltips hold the rest."""
    from rote.grid.regimes import REGIMES

    runs = runs.assign(model=runs["n_layer"].astype(str) + " layers x " + runs["n_embd"].astype(str),
                       facts=runs["n_entities"] * runs["n_relations"])
    tooltip = ["run", "regime", "n_entities", "n_relations", "two_hop_per_fact", "fact_repeats", "batch_size", "lr",
               "schedule", "weight_decay", alt.Tooltip("peak_test:Q", format=".3f"),
               alt.Tooltip("final_mem_noisy:Q", format=".3f"),
               alt.Tooltip("min_to_test_95:Q", format=".1f"), alt.Tooltip("min_to_mem_99:Q", format=".1f"),
               "epochs", "note"]
    return alt.Chart(runs, title=lines(title)).mark_point(size=140, filled=True, opacity=0.8).encode(
        x=alt.X("two_hop_per_fact:Q", title="two-hop training questions per one-hop fact", scale=alt.Scale(type="log")),
        y=alt.Y("facts:Q", title="one-hop facts (people x relations)", scale=alt.Scale(type="log")),
        color=alt.Color("regime:N", scale=alt.Scale(domain=list(REGIMES)), title=None),
        shape=alt.Shape("fact_repeats:O", title="fact repeats"),
        facet=alt.Facet("model:N", title=None, columns=2),
        tooltip=tooltip,
    ).properties(width=200, height=200)


CHART_ROWS = 4_800  # under altair's 5,000-row limit for data embedded in a page


def every_nth_evaluation(curves: pd.DataFrame, per_run: int) -> pd.DataFrame:
    """At most `per_run` evaluations of each run, evenly spaced, its first and last kept: a small
    panel shows no more, and the page embeds less."""
    def thin(run):
        keep = np.unique(np.linspace(0, len(run) - 1, min(per_run, len(run))).round().astype(int))
        return run.iloc[keep]
    return pd.concat([thin(run) for _, run in curves.groupby("run", sort=False)], ignore_index=True)


def regime_curves_chart(runs: pd.DataFrame, curves: pd.DataFrame, title: str = "") -> alt.Chart:
    """Per set-up: held-out two-hop accuracy and Mem-Noisy over epochs, one small panel each, three
    a row, named in three lines (each run thinned to fit CHART_ROWS)."""
    curves = every_nth_evaluation(curves, max(8, CHART_ROWS // (3 * max(1, curves["run"].nunique()))))
    labels = runs.set_index("run").apply(
        lambda r: f"{r.name}\n{r['n_entities']}x{r['n_relations']}, {r['two_hop_per_fact']:g}/fact, "
                  f"facts x{r['fact_repeats']}\n{r['n_layer']}x{r['n_embd']}, b{r['batch_size']}, lr {r['lr']:g}, "
                  f"{r['schedule']}, wd {r['weight_decay']:g}", axis=1)
    long = curves.melt(id_vars=["run", "epoch", "seconds"], value_vars=["test_acc", "mem_noisy", "facts_acc"],
                       var_name="measure", value_name="share")
    long["measure"] = long["measure"].map(MEASURES)
    long["set-up"] = long["run"].map(labels)
    long["minutes"] = long["seconds"] / 60
    return alt.Chart(long, title=lines(title)).mark_line().encode(
        x=alt.X("epoch:Q"), y=alt.Y("share:Q", title=None, scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("measure:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["set-up", "measure", alt.Tooltip("epoch:Q", format=".0f"), alt.Tooltip("minutes:Q", format=".1f"),
                 alt.Tooltip("share:Q", format=".3f")],
    ).properties(width=180, height=110).facet(
        facet=alt.Facet("set-up:N", title=None, header=alt.Header(labelExpr="split(datum.value, '\\n')")), columns=3)


# ---- Observation 4: changing one input at a time ---------------------------------------------------

def single_change_chart(survival: pd.DataFrame, inputs=None, title: str = "") -> alt.Chart:
    """Per changed input (x) and group (color: memorized noisy, clean, the look-up baselines): top,
    the share of single-input changes after which the model still writes the label; bottom, the
    share answered with the changed question's true answer; 95% intervals over instances."""
    if survival.empty:
        return alt.Chart(pd.DataFrame({"text": ["no changes to show"]}), title=title).mark_text().encode(text="text:N")
    parts = []
    for measure, column in (("label kept", "kept"), ("changed question answered correctly", "correct")):
        part = survival[["group", "input", "instances", "changes"]].copy()
        part["value"], part["lo"], part["hi"] = survival[column], survival[f"{column}_lo"], survival[f"{column}_hi"]
        part["measure"] = measure
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    groups = list(dict.fromkeys(long["group"]))
    order = list(inputs) if inputs is not None else list(dict.fromkeys(long["input"]))
    pick = alt.selection_point(fields=["group"], bind="legend")
    enc = dict(x=alt.X("input:N", sort=order, title="changed input"),
               color=alt.Color("group:N", sort=groups, title=None),
               xOffset=alt.XOffset("group:N", sort=groups),
               opacity=alt.condition(pick, alt.value(1), alt.value(0.15)))
    points = alt.Chart().mark_point(filled=True, size=50).encode(
        y=alt.Y("value:Q", title="share of changes", scale=alt.Scale(domain=[0, 1])),
        tooltip=["group", "input", "measure", "instances", "changes", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("lo:Q", format=".3f"), alt.Tooltip("hi:Q", format=".3f")], **enc).add_params(pick)
    bars = alt.Chart().mark_rule().encode(y="lo:Q", y2="hi:Q", **enc)
    return alt.layer(bars, points, data=long).properties(width=50 * len(order), height=150).facet(
        row=alt.Row("measure:N", title=None, sort=["label kept", "changed question answered correctly"],
                    header=alt.Header(labelAngle=0, labelOrient="top", labelAnchor="start", labelFontSize=12)),
        title=lines(title))


# ---- Observation 3: outlier heuristics ---------------------------------------------------------------

def neuron_heatmap_chart(cells: pd.DataFrame, marks: pd.DataFrame, title: str = "") -> alt.Chart:
    """One neuron's mean activation over the clean grid per (a digit, b digit) (`cells`), with the
    noisy instance (`marks`) drawn as a circle in its cell, filled with its own activation on the
    same colour scale: the shift is the contrast between circle and cell."""
    if cells is None or cells.empty:
        return alt.Chart(pd.DataFrame({"text": ["no driving neuron to show"]}), title=title).mark_text().encode(text="text:N")
    lo = float(min(cells["activation"].min(), marks["activation"].min()))
    hi = float(max(cells["activation"].max(), marks["activation"].max()))
    scale = alt.Scale(scheme="viridis", domain=[lo, hi])
    axis = dict(sort=list(range(10)))
    heat = alt.Chart(cells).mark_rect().encode(
        x=alt.X("b digit:O", title="digit of b", **axis), y=alt.Y("a digit:O", title="digit of a", **axis),
        color=alt.Color("activation:Q", scale=scale, title="activation"),
        tooltip=["a digit", "b digit", alt.Tooltip("activation:Q", format=".2f"), "n"])
    point = alt.Chart(marks).mark_point(shape="circle", size=420, filled=True, stroke="red", strokeWidth=3).encode(
        x=alt.X("b digit:O", **axis), y=alt.Y("a digit:O", **axis), color=alt.Color("activation:Q", scale=scale),
        tooltip=["instance", alt.Tooltip("activation:Q", format=".2f"), alt.Tooltip("neighbour mean:Q", format=".2f"),
                 alt.Tooltip("z:Q", format=".2f")])
    return (heat + point).properties(width=300, height=300, title=lines(title))


def rescue_curve_chart(curve: pd.DataFrame, title: str = "") -> alt.Chart:
    """Share of memorized noisy instances rescued (greedy answer = true sum) against the number of
    neurons patched to their clean neighbours' means: the top driving neurons and random neurons of
    the same layers, with 95% Wilson intervals."""
    if curve.empty:
        return alt.Chart(pd.DataFrame({"text": ["no memorized noisy instances"]}), title=title).mark_text().encode(text="text:N")
    long = pd.concat([pd.DataFrame({"k": curve["k"], "patched": name, "rescued": curve[f"rescue_{key}"],
                                    "lo": curve[f"{key}_lo"], "hi": curve[f"{key}_hi"]})
                      for name, key in (("top driving neurons", "driving"), ("random neurons, same layers", "control"))])
    enc = dict(x=alt.X("k:Q", scale=alt.Scale(type="log"), title="neurons patched per instance"),
               color=alt.Color("patched:N", title=None))
    line = alt.Chart(long).mark_line(point=True).encode(
        y=alt.Y("rescued:Q", scale=alt.Scale(domain=[0, 1]), title="share rescued (true sum written)"),
        tooltip=["patched", "k", alt.Tooltip("rescued:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f"),
                 alt.Tooltip("hi:Q", format=".3f")], **enc)
    band = alt.Chart(long).mark_area(opacity=0.2).encode(y="lo:Q", y2="hi:Q", **enc)
    return (band + line).properties(width=360, height=220, title=lines(title))


def shift_chart(neurons: pd.DataFrame, control: pd.DataFrame, title: str = "") -> alt.Chart:
    """Histogram of the shift z (noisy instance against its clean neighbours) of the driving
    neurons and of the random control neurons, overlaid, in bins of 0.25 clipped to [-6, 6]."""
    if neurons.empty:
        return alt.Chart(pd.DataFrame({"text": ["no memorized noisy instances"]}), title=title).mark_text().encode(text="text:N")
    both = pd.concat([pd.DataFrame({"z": neurons["z"], "neurons": "driving"}),
                      pd.DataFrame({"z": control["z"], "neurons": "random, same layers"})]).dropna()
    # binned here, not by Vega-Lite: one row per bin keeps the chart small at any noise rate
    both["from"] = (both["z"].clip(-6, 5.99) // 0.25) * 0.25
    counts = both.groupby(["neurons", "from"]).size().rename("count").reset_index()
    counts["to"] = counts["from"] + 0.25
    return alt.Chart(counts).mark_bar(opacity=0.55, binSpacing=0).encode(
        x=alt.X("from:Q", bin="binned", title="shift z against clean neighbours (bins of 0.25, clipped to [-6, 6])"),
        x2="to:Q",
        y=alt.Y("count:Q", stack=None, title="neurons"), color=alt.Color("neurons:N", title=None),
        tooltip=["neurons", alt.Tooltip("from:Q", title="z from"), alt.Tooltip("to:Q", title="z to"), "count"],
    ).properties(width=360, height=200, title=lines(title))


# ---- Shared circuits ------------------------------------------------------------------------------------

MEMBERSHIP = {"both circuits": "#6a3d9a", "clean circuit only": "#1f78b4", "noisy circuit only": "#e6550d"}


def _node_xy(name: str, n_layer: int, n_head: int) -> tuple[float, float]:
    """Where a node of the circuit graph is drawn: heads of layer l in a row at height 2l + 1, its
    MLP to their right one row up, the embeddings below and the logits above."""
    if name == "embed":
        return (n_head - 1) / 2, 0.0
    if name == "logits":
        return (n_head - 1) / 2, 2.0 * n_layer + 1
    layer, rest = name[1:].split(".") if "." in name else (name[1:], "")
    if rest:
        return float(int(rest[1:])), 2.0 * int(layer) + 1
    return n_head + 0.5, 2.0 * int(layer) + 2


def circuit_graph_chart(edges: pd.DataFrame, n_layer: int, n_head: int, title: str = "") -> alt.Chart:
    """The clean circuit and the noisy circuit on one drawing of the model's graph: every edge of
    either circuit (columns "in clean A", "in noisy" of `rote.observations.circuits`), coloured by
    which circuits hold it, its width by its larger |mean score|. An edge into a head's query, key
    or value input ends left of, under or right of that head. Click a legend entry to highlight it."""
    e = edges[edges["in clean A"] | edges["in noisy"]].copy()
    if e.empty:
        return alt.Chart(pd.DataFrame({"text": ["no circuits"]}), title=title).mark_text().encode(text="text:N")
    e["circuits"] = np.select([e["in clean A"] & e["in noisy"], e["in clean A"]],
                              ["both circuits", "clean circuit only"], "noisy circuit only")
    start = [_node_xy(u, n_layer, n_head) for u in e["upstream"]]
    ends = []
    for d in e["downstream"]:
        owner, _, part = d.partition("<")
        x, y = _node_xy(owner, n_layer, n_head)
        ends.append((x + {"q": -0.25, "k": 0.0, "v": 0.25}.get(part[:1], 0.0), y - (0.3 if part else 0.0)))
    e["x"], e["y"] = [p[0] for p in start], [p[1] for p in start]
    e["x2"], e["y2"] = [p[0] for p in ends], [p[1] for p in ends]
    e["|score|"] = e[["score clean A", "score noisy"]].abs().max(axis=1)
    names = ["embed"] + [f"a{l}.h{j}" for l in range(n_layer) for j in range(n_head)] + [f"m{l}" for l in range(n_layer)]
    nodes = pd.DataFrame([{"node": n, "x": _node_xy(n, n_layer, n_head)[0], "y": _node_xy(n, n_layer, n_head)[1]}
                          for n in names + ["logits"]])
    pick = alt.selection_point(fields=["circuits"], bind="legend")
    x = alt.X("x:Q", axis=None, scale=alt.Scale(domain=[-0.8, n_head + 1.3]))
    y = alt.Y("y:Q", axis=None, scale=alt.Scale(domain=[-0.6, 2 * n_layer + 1.6]))
    lines_ = alt.Chart(e).mark_rule().encode(
        x=x, y=y, x2="x2:Q", y2="y2:Q",
        color=alt.Color("circuits:N", title=None, scale=alt.Scale(domain=list(MEMBERSHIP), range=list(MEMBERSHIP.values())),
                        legend=alt.Legend(orient="top")),
        strokeWidth=alt.StrokeWidth("|score|:Q", scale=alt.Scale(range=[0.3, 4]), legend=None),
        opacity=alt.condition(pick, alt.value(0.55), alt.value(0.04)),
        tooltip=["upstream", "downstream", "circuits", alt.Tooltip("score clean A:Q", format=".4f"),
                 alt.Tooltip("score noisy:Q", format=".4f")]).add_params(pick)
    dots = alt.Chart(nodes).mark_circle(size=140, color="#444", opacity=1).encode(x=x, y=y, tooltip=["node"])
    text = alt.Chart(nodes).mark_text(dy=-11, fontSize=10).encode(x=x, y=y, text="node:N")
    return (lines_ + dots + text).properties(width=560, height=70 * n_layer + 80, title=lines(title))


CURVES = {("clean A", "clean A"): "clean circuit A on its questions", ("clean A", "clean B"): "clean circuit A on clean B",
          ("clean A", "noisy"): "clean circuit A on the noisy labels", ("noisy", "noisy"): "noisy circuit on its instances",
          ("noisy", "clean B"): "noisy circuit on clean B"}


def faithfulness_chart(curves: pd.DataFrame, size: int, keep: float, title: str = "") -> alt.Chart:
    """Faithfulness (share of the metric kept with only the circuit's top-n edges clean) against n
    (symlog axis), per circuit and the questions it is run on; the rule at `keep` and the circuit
    size `size` chosen with it. Click a legend entry to highlight it."""
    if curves.empty:
        return alt.Chart(pd.DataFrame({"text": ["no circuits"]}), title=title).mark_text().encode(text="text:N")
    c = curves.assign(curve=[CURVES[(a, b)] for a, b in zip(curves["circuit"], curves["on"])])
    pick = alt.selection_point(fields=["curve"], bind="legend")
    line = alt.Chart(c).mark_line(point=alt.OverlayMarkDef(size=20)).encode(
        x=alt.X("n:Q", title="edges kept clean (top n by |score|)", scale=alt.Scale(type="symlog", nice=False),
                axis=alt.Axis(values=[v for v in (0, 1, 10, 100, 1000, 10000) if v <= c["n"].max()], format="d")),
        y=alt.Y("share:Q", title="share of the metric kept"),
        color=alt.Color("curve:N", title=None, sort=list(CURVES.values()), legend=alt.Legend(orient="bottom", columns=2)),
        opacity=alt.condition(pick, alt.value(1), alt.value(0.15)),
        tooltip=["curve", "n", alt.Tooltip("share:Q", format=".3f"), alt.Tooltip("metric:Q", format=".3f")]).add_params(pick)
    marks = pd.DataFrame({"keep": [keep], "k": [size]})
    rule_y = alt.Chart(marks).mark_rule(color="gray", strokeDash=[4, 4]).encode(y="keep:Q")
    rule_x = alt.Chart(marks).mark_rule(color="gray", strokeDash=[2, 2]).encode(
        x="k:Q", tooltip=[alt.Tooltip("k:Q", title="circuit size k")])
    return (line + rule_y + rule_x).properties(width=520, height=260, title=lines(title))


# ---- The scorecard -------------------------------------------------------------------------------------

SUMMARY_COLORS = {"holds in every run": "#1a7f37", "holds in most runs": "#7fbf7b", "holds in some runs": "#f1b6da",
                  "holds in no run": "#c51b7d", "cannot be tested": "#9e9e9e", "not run yet": "#e0e0e0"}


def scorecard_chart(frame: pd.DataFrame, title: str = "") -> alt.Chart:
    """Observation (rows) x noise rate (columns), one panel per task: how often the observation held
    over seeds; the tooltip gives each seed's verdict and number."""
    return alt.Chart(frame, title=lines(title)).mark_rect(stroke="white").encode(
        x=alt.X("noise:O", title="noise rate", sort=sorted(frame["noise"].unique(), key=lambda n: float(n.rstrip("%")))),
        y=alt.Y("observation:O", title="observation"),
        color=alt.Color("summary:N", title=None,
                        scale=alt.Scale(domain=list(SUMMARY_COLORS), range=list(SUMMARY_COLORS.values()))),
        tooltip=["task", "observation", "claim", "noise", "counts", "runs"],
    ).properties(width=180, height=200).facet(column=alt.Column("task:N", title=None))
