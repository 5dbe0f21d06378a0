"""Altair figures of the book: interactive in the static HTML (zoom, tooltips, legend selection)."""
from __future__ import annotations

import altair as alt
import pandas as pd

MEASURES = {
    "test_acc": "test accuracy",
    "train_clean_acc": "train-clean accuracy",
    "facts_acc": "one-hop facts",
    "mem_noisy": "Mem-Noisy",
    "mem_corrected": "Mem-Corrected",
}


def training_curves(metrics: pd.DataFrame, title: str = "") -> alt.Chart:
    """Test and train-clean accuracy, Mem-Noisy and Mem-Corrected over training steps."""
    present = [m for m in MEASURES if m in metrics]
    long = metrics.melt(id_vars=["step", "seconds"], value_vars=present, var_name="measure", value_name="share")
    long["measure"] = long["measure"].map(MEASURES)
    long["minutes"] = long["seconds"] / 60
    pick = alt.selection_point(fields=["measure"], bind="legend")
    return alt.Chart(long, title=title).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=alt.X("step:Q", title="training step"),
        y=alt.Y("share:Q", title="share of questions", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("measure:N", sort=[MEASURES[m] for m in present], title=None),
        opacity=alt.condition(pick, alt.value(1), alt.value(0.15)),
        tooltip=["measure", "step", alt.Tooltip("minutes:Q", format=".1f"), alt.Tooltip("share:Q", format=".3f")],
    ).add_params(pick).properties(width=520, height=260).interactive(bind_y=False)


def first_answers_chart(first: pd.DataFrame, title: str = "") -> alt.Chart:
    """Per noisy instance: first evaluation with the correct answer (x) against first evaluation
    with the noisy label (y). Points above the diagonal were answered correctly first."""
    counted = (first.dropna(subset=["first_correct", "first_noisy"])
               .groupby(["first_correct", "first_noisy"]).size().rename("instances").reset_index())
    top = float(max(first[["first_correct", "first_noisy"]].max().max(), 1))
    points = alt.Chart(counted, title=title).mark_circle(opacity=0.7).encode(
        x=alt.X("first_correct:Q", title="first evaluation answered correctly (step)", scale=alt.Scale(domain=[0, top])),
        y=alt.Y("first_noisy:Q", title="first evaluation with the noisy label (step)", scale=alt.Scale(domain=[0, top])),
        size=alt.Size("instances:Q", title="instances"),
        tooltip=["first_correct", "first_noisy", "instances"],
    )
    diagonal = alt.Chart(pd.DataFrame({"x": [0, top], "y": [0, top]})).mark_line(color="gray", strokeDash=[4, 4]).encode(x="x", y="y")
    return (diagonal + points).properties(width=360, height=360)


def order_bars(first: pd.DataFrame, title: str = "") -> alt.Chart:
    """How many noisy instances were answered correctly first, memorized first, or never memorized."""
    counts = first["order"].value_counts().rename_axis("order").rename("instances").reset_index()
    return alt.Chart(counts, title=title).mark_bar().encode(
        x=alt.X("instances:Q"), y=alt.Y("order:N", sort="-x", title=None), tooltip=["order", "instances"],
    ).properties(width=360, height=120)
