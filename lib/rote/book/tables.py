"""Tables as a reader sees them: every row and every cell whole (no pandas display limit cuts one),
no row index, headers in words, shares in percent, a dash where there is no number, and a long
table folded into a block the reader opens.

Importing this module makes it the HTML of every DataFrame a chapter displays (an IPython
formatter), so a bare `frame` at the end of a cell is shown the same way as `show(frame)`.
"""
from __future__ import annotations

import numbers
from html import escape

import pandas as pd

FOLD_AFTER = 30  # rows: a longer table is folded (a <details> block the reader opens)
WORDS = {"acc": "accuracy", "logp": "log-prob", "mem": "Mem", "nbr": "neighbour", "eta2": "eta²", "ci": "CI",
         "lo": "95% CI low", "hi": "95% CI high", "id": "id", "thr": "THR", "fda": "FDA",
         "pct": "%", "std": "sd"}


def header(name) -> str:
    """A column's name in words: `share_correct_above_noisy` -> "share correct above noisy"."""
    if not isinstance(name, str):
        return " ".join(header(part) for part in name) if isinstance(name, tuple) else str(name)
    if name == "n":  # a count of instances (n_layer, a config field, keeps its n)
        return "instances"
    return " ".join(WORDS.get(word, word) for word in name.replace("_", " ").split())


def is_share(name) -> bool:
    """Whether a column holds shares (shown in percent): its name says share, rate or accuracy."""
    words = header(name).split()
    return any(w in ("share", "rate", "accuracy", "Mem") for w in words)


def cell(value, share: bool = False) -> str:
    """One cell as text: a dash for a missing number, at most three decimals, and a share in percent with
    the decimals it carries, one or two (an accuracy over 2,000 questions, 94.95%, is not shown as 95.0%;
    a share a chapter rounded to 0.957 is not shown as 95.70%)."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        if share and 0 <= value <= 1:
            text = f"{value:.2%}"
            return text[:-2] + "%" if text.endswith("0%") else text
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def html_table(frame: pd.DataFrame, caption: str = "", fold_after: int = FOLD_AFTER) -> str:
    """`frame` as an HTML table: every row, no index (a named index becomes columns), headers in
    words; folded into a <details> block past `fold_after` rows."""
    if frame.index.names != [None] or not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index() if any(n is not None for n in frame.index.names) else frame.reset_index(drop=True)
    shares = [is_share(c) for c in frame.columns]
    head = "".join(f"<th>{escape(header(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell(v, s))}</td>" for v, s in zip(row, shares)) + "</tr>"
                   for row in frame.itertuples(index=False, name=None))
    table = ('<div class="rote-table-wrap"><table class="rote-table">'
             + (f"<caption>{escape(caption)}</caption>" if caption else "")
             + f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")
    if len(frame) > fold_after:
        summary = f"{escape(caption or 'The table')}: {len(frame):,} rows"
        return f'<details class="rote-fold"><summary>{summary}</summary>{table}</details>'
    return table


class Table:
    """A table shown whole in a notebook and in the book (`html_table`)."""

    def __init__(self, frame: pd.DataFrame, caption: str = "", fold_after: int = FOLD_AFTER):
        self.frame, self.caption, self.fold_after = frame, caption, fold_after

    def _repr_html_(self) -> str:
        return html_table(self.frame, self.caption, self.fold_after)


def show(frame: pd.DataFrame, caption: str = "", fold_after: int = FOLD_AFTER) -> Table:
    """`frame` to display whole, with a caption (a long table folds)."""
    return Table(frame, caption, fold_after)


def _register() -> None:
    try:
        from IPython import get_ipython
    except ImportError:  # no IPython: nothing displays tables
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, lambda frame: html_table(frame))


_register()
