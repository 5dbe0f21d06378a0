"""Claims as data: each observation's conclusion is a set of records, one per claim tested.

A `Claim` holds what was measured (statistic, value, 95% interval), what it is compared with (a
matched control or base rate computed the same way, with its value and interval), the difference
between the two (with its interval, which is what the rule reads), the rule in words with its
thresholds, and the verdict. Thresholds are arguments of the functions that make claims, so a
checker can pass another one and see the verdict flip.

Records are saved beside the run, one flat JSON file per observation
(`<run dir>/claims/observation<N>.json`), each record carrying the run's config hash, so that a
scorecard can collect them over a grid of runs. `rote.book.verdicts` renders a chapter's result
box, claims chart and table from the records alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from rote.config import OneLineError, config_hash
from rote.stats import Comparison
from rote.store import atomic_path, run_dir

VERDICTS = ("holds", "holds in part", "does not hold", "cannot be tested")


class ClaimsError(OneLineError, ValueError):
    """A saved claims file that cannot be read."""


@dataclass
class Claim:
    """One claim tested on one run."""
    observation: int
    task: str
    claim: str  # what the paper's observation needs, in words
    statistic: str  # what is measured
    value: float
    lo: float
    hi: float
    control: str  # the matched control or base rate, in words
    control_value: float
    control_lo: float
    control_hi: float
    difference: float  # value - control_value (paired where both are measured on the same instances)
    difference_lo: float
    difference_hi: float
    rule: str  # the rule in words, with its thresholds
    verdict: str
    n: int = 0  # instances the statistic is measured on
    config_hash: str = ""
    note: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def compared(comparison: Comparison, verdict: str, **fields) -> Claim:
    """A claim from a statistic measured against its control (`rote.stats.Comparison`)."""
    return Claim(**comparison._asdict(), verdict=verdict, **fields)


def exceeds(comparison: Comparison, margin: float = 0.0, **fields) -> Claim:
    """The claim "the statistic exceeds its control by more than `margin`" (verdict by `above`)."""
    return compared(comparison, above(comparison.difference, comparison.difference_lo, margin), **fields)


def untestable(note: str, **fields) -> Claim:
    """A claim that cannot be tested on this run, and why (`note`)."""
    return Claim(**Comparison.missing()._asdict(), verdict="cannot be tested", note=note, **fields)


def above(difference: float, lo: float, margin: float = 0.0) -> str:
    """The verdict of "the statistic exceeds its control by more than `margin`": holds when the
    difference's 95% interval lies above `margin`, holds in part when only the difference itself
    does, does not hold otherwise; cannot be tested without a number."""
    if difference != difference:
        return "cannot be tested"
    if lo == lo and lo > margin:
        return "holds"
    return "holds in part" if difference > margin else "does not hold"


def below(difference: float, hi: float, margin: float = 0.0) -> str:
    """`above` mirrored: the statistic falls below its control by more than `margin`."""
    return above(-difference, -hi if hi == hi else float("nan"), margin)


def overall(claims: list[Claim]) -> str:
    """An observation's verdict from its claims: cannot be tested when none can; holds when every
    testable claim holds; does not hold when none holds even in part; holds in part otherwise."""
    tested = [c.verdict for c in claims if c.verdict != "cannot be tested"]
    if not tested:
        return "cannot be tested"
    if all(v == "holds" for v in tested):
        return "holds"
    if all(v == "does not hold" for v in tested):
        return "does not hold"
    return "holds in part"


# ---- saved beside the run ------------------------------------------------------------------------------

def claims_path(run: Path, observation: int) -> Path:
    """Where the claims of `observation` are saved in the run directory `run`."""
    return Path(run) / "claims" / f"observation{observation}.json"


def save(claims: list[Claim], run: Path, observation: int, task: str | None = None) -> Path:
    """Write `claims` (of one observation) to `claims_path`; with `task`, records of other tasks
    already there are kept (one file per run and observation)."""
    path = claims_path(run, observation)
    kept = [c for c in load(run, observation) if c.task != task] if task is not None and path.exists() else []
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(kept + list(claims)))
    return path


def record(claims: list[Claim], config, observation: int) -> list[Claim]:
    """Stamp `claims` with `config`'s hash and save them beside its run (`save`); returns them."""
    for c in claims:
        c.config_hash = config_hash(config)
    save(claims, run_dir(config), observation, config.task)
    return claims


def load(run: Path, observation: int) -> list[Claim]:
    """The claims saved by `save` (empty when there are none)."""
    path = claims_path(run, observation)
    if not path.exists():
        return []
    try:
        return [from_record(r) for r in json.loads(path.read_text())]
    except (ValueError, TypeError, KeyError):
        raise ClaimsError(f"{path} is not a claims file (corrupt or changed); delete it and rerun the "
                          "observation's analysis to write it again") from None


def to_json(claims: list[Claim]) -> str:
    """Claims as the JSON list `save` writes (NaN as null)."""
    return json.dumps([_plain(asdict(c)) for c in claims], indent=1) + "\n"


def from_record(record: dict) -> Claim:
    """A Claim from a saved record or a table row: other keys (a grid's noise, seed) are left out,
    null numbers read as NaN."""
    names = {f.name for f in fields(Claim)}
    return Claim(**{k: (float("nan") if v is None else v) for k, v in record.items() if k in names})


def _plain(record: dict) -> dict:
    """JSON-safe: numpy scalars to Python, NaN and infinities to None."""
    out = {}
    for k, v in record.items():
        if isinstance(v, (np.floating, float)):
            v = float(v)
            v = v if np.isfinite(v) else None
        elif isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.bool_):
            v = bool(v)
        out[k] = v
    return out


# ---- rendered for a chapter -----------------------------------------------------------------------------

def places(share: float) -> int:
    """The decimals a share carries in percent, one or two: 0.9495 -> 2 (94.95%, an accuracy over 2,000
    questions, not rounded across a threshold), 0.957 -> 1 (95.7%, no invented digit)."""
    return 1 if f"{share:.2%}".endswith("0%") else 2


def percent(share: float, decimals: int | None = None) -> str:
    """A share in percent with `decimals`, else with the decimals it carries (`places`)."""
    return f"{share:.{places(share) if decimals is None else decimals}%}"


def _num(x: float, share: bool) -> str:
    if x != x:
        return "n/a"
    return f"{x:.1%}" if share else f"{x:+.2f}" if x < 0 else f"{x:.2f}"


def _with_ci(x, lo, hi, share: bool) -> str:
    if lo != lo or hi != hi:
        return _num(x, share)
    return f"{_num(x, share)} [{_num(lo, share)}, {_num(hi, share)}]"


def is_share(c: Claim) -> bool:
    """Whether the claim's statistic is a share (shown in percent) rather than a mean (nats, |z|)."""
    return "share" in c.statistic or c.statistic.startswith("%")
