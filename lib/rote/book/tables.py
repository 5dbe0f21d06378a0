"""Tables as a reader sees them: every row and every cell whole (no pandas display limit cuts one),
no row index, headers in words, shares in percent, a value and its 95% interval in one cell, a dash
where there is no number, and a long table folded into a block the reader opens.

Importing this module makes it the HTML of every DataFrame a chapter displays (an IPython
formatter), so a bare `frame` at the end of a cell is shown the same way as `show(frame)`.
"""
from __future__ import annotations

import numbers
from html import escape

import pandas as pd

from rote.claims import percent, places

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


DIFFERENCE = ("change", "diff", "difference", "delta", "minus", "-")  # words of a column that holds differences


def is_share(name) -> bool:
    """Whether a column holds shares (shown in percent): its name says share, rate, accuracy or Mem
    (Mem-Noisy, Mem-Corrected), and not that it is a change or difference (a difference of shares is a number)."""
    words = header(name).split()
    return (any(w in ("share", "rate", "accuracy") or w.startswith("Mem") for w in words)
            and not any(w in DIFFERENCE for w in words))


def intervals(columns) -> list[tuple[int, ...]]:
    """`columns` grouped as shown: a value followed by its interval's low and high end (`x`, `x_lo`, `x_hi`;
    `x`, `lo`, `hi`; `rescue_x`, `x_lo`, `x_hi`) is one group of three, every other column a group of one."""
    names = [c if isinstance(c, str) else "" for c in columns]
    groups, i = [], 0
    while i < len(names):
        low = names[i + 1] if i + 2 < len(names) else ""
        if (low == "lo" or low.endswith("_lo")) and names[i + 2] == low[:-2] + "hi" and not names[i].endswith(("lo", "hi")):
            groups.append((i, i + 1, i + 2))
            i += 3
        else:
            groups.append((i,))
            i += 1
    return groups


def percent_places(frame: pd.DataFrame, group: tuple[int, ...]) -> int | None:
    """How a group of columns shows its shares: None (as numbers) unless its value's name says it is a
    share and every number in it lies in [0, 1] (a column that also holds -0.004 is a difference);
    else in percent, every cell with the decimals the column carries (99.30% above 99.05%)."""
    if not is_share(frame.columns[group[0]]):
        return None
    values = pd.concat([pd.to_numeric(frame.iloc[:, j], errors="coerce") for j in group]).dropna()
    if not ((values >= 0) & (values <= 1)).all():
        return None
    return max((places(v) for v in values), default=1)


def interval_cell(values: tuple, decimals: int | None) -> str:
    """A value with its 95% interval, `0.25 [0.2, 0.3]`; the value alone where the interval is missing."""
    value, *ends = (cell(v, decimals is not None, decimals) for v in values)
    return value if len(ends) != 2 or "–" in ends or value == "–" else f"{value} [{ends[0]}, {ends[1]}]"


def cell(value, share: bool = False, decimals: int | None = None) -> str:
    """One cell as text: a dash for a missing number, at most three decimals, and a share in percent with
    `decimals`, else the decimals it carries (`rote.claims.percent`)."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA or value is pd.NaT:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        if share and 0 <= value <= 1:
            return percent(value, decimals)
        text = f"{value:,.3f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def breakable(text: str) -> str:
    """`text` as HTML that may wrap after an underscore (a config field, two_hop_train_fraction, is one
    long word that would widen its column); the text itself, as copied, is unchanged."""
    return escape(text).replace("_", "_<wbr>")


def html_table(frame: pd.DataFrame, caption: str = "", fold_after: int = FOLD_AFTER) -> str:
    """`frame` as an HTML table: every row, no row numbers (a named index or row labels become columns), headers in
    words, a value and its interval in one cell (`intervals`); folded into a <details> block past
    `fold_after` rows."""
    if frame.index.names != [None] or not isinstance(frame.index, pd.RangeIndex):
        labels = any(n is not None for n in frame.index.names) or not pd.api.types.is_integer_dtype(frame.index)
        frame = frame.reset_index() if labels else frame.reset_index(drop=True)  # row labels stay, row numbers go
    groups = intervals(frame.columns)
    decimals = [percent_places(frame, g) for g in groups]
    head = "".join(f"<th>{escape(header(frame.columns[g[0]]) + (' [95% CI]' if len(g) == 3 else ''))}</th>"
                   for g in groups)
    body = "".join("<tr>" + "".join(f"<td>{breakable(interval_cell(tuple(row[j] for j in g), s))}</td>"
                                    for g, s in zip(groups, decimals)) + "</tr>"
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
