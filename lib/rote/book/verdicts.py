"""How a chapter shows its claims: the result box under its title, a chart of each claim's number
against its control, and a table a reader can read (every claim whole, its rule one click away).
All three are computed from the claim records (`rote.claims`)."""
from __future__ import annotations

from html import escape

import altair as alt
import pandas as pd

from rote.book import vega  # noqa: F401 - registers the offline renderer the book is executed with
from rote.claims import Claim, _with_ci, is_share, overall
from rote.grid import scorecard
from rote.observations import OBSERVATIONS

COLORS = {"holds": "#1a7f37", "holds in part": "#9a6700", "does not hold": "#cf222e", "cannot be tested": "#6e7781"}
CLAIMS_ANCHOR = "#what-this-run-shows"  # the chapters' claims section


def _tasks(records: list[Claim]) -> dict[str, list[Claim]]:
    return {t: [c for c in records if c.task == t] for t in dict.fromkeys(c.task for c in records)}


def headline(claims: list[Claim]) -> Claim:
    """The claim that carries a task's verdict: its first claim with a number (the observation's own)."""
    return next((c for c in claims if c.value == c.value), claims[0])


def against(c: Claim) -> str:
    """"<statistic> <value> against <control value> for <control>", or why it has no number."""
    if c.value != c.value:
        return f"{c.claim}: {c.note or 'no number'}"
    p = is_share(c)
    return (f"{c.statistic}: {_with_ci(c.value, c.lo, c.hi, p)}, against "
            f"{_with_ci(c.control_value, c.control_lo, c.control_hi, p)} for {c.control}")


def _badge(verdict: str) -> str:
    return f'<span class="rote-verdict" style="background:{COLORS[verdict]}">{escape(verdict)}</span>'


class Box:
    """HTML shown as is in a notebook and in the book."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        return self.html


def result_box(records: list[Claim], number: int, name: str) -> Box:
    """The chapter's result in a few lines: per task its verdict, the number that carries it against
    its control, and how many of its claims hold; a link to the claims with their controls."""
    items = []
    for task, claims in _tasks(records).items():
        tested = [c for c in claims if c.verdict != "cannot be tested"]
        holding = sum(c.verdict == "holds" for c in tested)
        items.append(f"<li><b>{task.upper()}</b> {_badge(overall(claims))} {escape(against(headline(claims)))}"
                     f" <span class=\"rote-count\">({holding} of {len(tested)} tested claims hold)</span></li>")
    body = "".join(items) or "<li>No claim could be tested on this run.</li>"
    return Box(f'<div class="rote-result"><p class="rote-result-title">Observation {number}: {escape(name)}</p>'
               f'<ul>{body}</ul><p><a href="{CLAIMS_ANCHOR}">Every claim with its control and rule</a></p></div>')


SUMMARY_COLORS = {"holds in every run": COLORS["holds"], "holds in most runs": COLORS["holds"],
                  "holds in some runs": COLORS["holds in part"], "holds in no run": COLORS["does not hold"]}


def scorecard_box(verdicts: pd.DataFrame) -> Box:
    """The scorecard's result: per observation and task, how often it held over the grid's runs in
    the regime (`rote.grid.scorecard.run_verdicts`)."""
    items = []
    for (number, task), group in verdicts.groupby(["observation", "task"], sort=True):
        runs = list(group["verdict"])
        summary = scorecard.summarize(runs)
        badge = f'<span class="rote-verdict" style="background:{SUMMARY_COLORS.get(summary, COLORS["cannot be tested"])}">' \
                f"{escape(summary)}</span>"
        items.append(f"<li><b>Observation {number}</b> ({escape(OBSERVATIONS[number].name)}), {task.upper()} {badge} "
                     f"{escape(scorecard.counts(runs))}</li>")
    return Box(f'<div class="rote-result"><p class="rote-result-title">Over the grid: how often each observation holds</p>'
               f'<ul>{"".join(items) or "<li>No run has records yet.</li>"}</ul></div>')


def claims_frame(records: list[Claim]) -> pd.DataFrame:
    """One row per claim and side (the statistic, its control): value and interval, for `claims_chart`."""
    rows = []
    for i, c in enumerate(records, 1):
        p = is_share(c)
        label = f"{i}. {c.task.upper()}: {c.claim}"
        for side, value, lo, hi, what in (("measured", c.value, c.lo, c.hi, c.statistic),
                                          ("control", c.control_value, c.control_lo, c.control_hi, c.control)):
            rows.append({"claim": label, "number": i, "side": side, "what": what, "verdict": c.verdict,
                         "value": value, "lo": lo if lo == lo else value, "hi": hi if hi == hi else value,
                         "unit": "share" if p else "mean", "text": _with_ci(value, lo, hi, p)})
    return pd.DataFrame(rows)


def claims_chart(records: list[Claim], width: int = 420) -> alt.Chart:
    """Each claim's number (coloured by verdict) against its control (grey), with 95% intervals:
    one row per claim, each with its own scale; claims without a number are left out."""
    frame = claims_frame(records).dropna(subset=["value"])
    if frame.empty:
        return alt.Chart(pd.DataFrame({"text": ["no claim has a number on this run"]})).mark_text().encode(text="text:N")
    color = alt.condition(alt.datum.side == "measured",
                          alt.Color("verdict:N", scale=alt.Scale(domain=list(COLORS), range=list(COLORS.values())),
                                    legend=alt.Legend(title="verdict", orient="bottom")),
                          alt.value("#8c959f"))
    base = alt.Chart().encode(y=alt.Y("side:N", title=None, sort=["measured", "control"],
                                      axis=alt.Axis(labelLimit=80)),
                              tooltip=["claim", "side", "what", "text", "verdict"])
    rules = base.mark_rule(strokeWidth=2).encode(x=alt.X("lo:Q", title=None, scale=alt.Scale(zero=False)), x2="hi:Q",
                                                 color=color)
    dots = base.mark_point(filled=True, size=70).encode(x="value:Q", color=color)
    return alt.layer(rules, dots, data=frame).properties(width=width, height=40).facet(
        row=alt.Row("number:O", title=None, header=alt.Header(labelExpr="'claim ' + datum.value", labelAngle=0,
                                                               labelAlign="left", labelPadding=4)),
    ).resolve_scale(x="independent")


def claims_table(records: list[Claim]) -> Box:
    """The claims as a reader reads them: number, task, the claim in full, the measured value and
    its control with intervals, the verdict; the rule and the sample size in a block under the claim."""
    rows = []
    for i, c in enumerate(records, 1):
        p = is_share(c)
        measured = "–" if c.value != c.value else f"{escape(c.statistic)}: {_with_ci(c.value, c.lo, c.hi, p)}"
        control = "–" if c.control_value != c.control_value else \
            f"{escape(c.control)}: {_with_ci(c.control_value, c.control_lo, c.control_hi, p)}"
        detail = f"Rule: {escape(c.rule)}" + (f" On {c.n:,} instances." if c.n else "") + \
            (f" Note: {escape(c.note)}" if c.note else "")
        rows.append(f"<tr><td>{i}</td><td>{c.task.upper()}</td><td>{escape(c.claim)}<details><summary>rule</summary>"
                    f"{detail}</details></td><td>{measured}</td><td>{control}</td><td>{_badge(c.verdict)}</td></tr>")
    return Box('<table class="rote-table rote-claims"><thead><tr><th>#</th><th>task</th><th>claim</th>'
               "<th>measured [95% CI]</th><th>control [95% CI]</th><th>verdict</th></tr></thead>"
               f"<tbody>{''.join(rows)}</tbody></table>")


def sentence(records: list[Claim], number: int, name: str) -> str:
    """What the reader needs in one line per task: the observation's verdict and how many claims hold."""
    lines = []
    for task, claims in _tasks(records).items():
        tested = [c for c in claims if c.verdict != "cannot be tested"]
        holding = sum(c.verdict == "holds" for c in tested)
        lines.append(f"**{task.upper()}**: Observation {number} ({name}) {overall(claims)} in this run: "
                     f"{holding} of {len(tested)} tested claims hold" + (f", {len(claims) - len(tested)} cannot be "
                                                                        "tested" if len(claims) > len(tested) else "") + ".")
    return "\n\n".join(lines) or f"Observation {number}: no claim could be tested."
