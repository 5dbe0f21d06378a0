"""Intervals: bootstrap means and differences, Wilson intervals of shares, and the comparison of
a statistic with its matched control that every claim reads.

All bootstrap intervals are percentile intervals of seeded resamples of instances (1,000 by
default), except for a share of 0 or 1, which no resample changes: it gets the Wilson interval
(Newcombe's for a difference of shares) instead of one without width. `Comparison` holds a
statistic, its control and their difference, each with its interval.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

NAN = float("nan")


class Comparison(NamedTuple):
    """A statistic and its matched control, each with a 95% interval, and their difference (the
    fields of a `rote.claims.Claim` with the same names)."""
    value: float
    lo: float
    hi: float
    control_value: float
    control_lo: float
    control_hi: float
    difference: float
    difference_lo: float
    difference_hi: float

    @classmethod
    def missing(cls) -> "Comparison":
        """Nothing to compare: every field NaN."""
        return cls(*(NAN,) * 9)


def bootstrap_ci(values, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and its percentile-bootstrap confidence interval (resampling the values
    with replacement, seeded). NaN for an empty input."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    if lo == hi and _binary(x):  # a share of 0 or 1: no resample differs, the Wilson interval does
        lo, hi = wilson_interval(x.mean(), x.size)
    return float(x.mean()), float(lo), float(hi)


def bootstrap_diff_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) of two independent samples and its percentile-bootstrap interval (each
    sample resampled on its own, seeded)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)
    diffs = (a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(1)
             - b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(1))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    return float(a.mean() - b.mean()), float(lo), float(hi)


def paired_diff_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """mean(a - b) over paired values and its percentile-bootstrap interval (`bootstrap_ci`)."""
    return bootstrap_ci(np.asarray(a, float) - np.asarray(b, float), n_resamples, seed, level)


def cluster_median_ci(table: pd.DataFrame, column: str, n_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """Median of `column` over all rows and its percentile-bootstrap interval, resampling instances
    (ids) with their rows (seeded). NaN rows are left out."""
    t = table.dropna(subset=[column])
    if t.empty:
        return NAN, NAN, NAN
    groups = [g[column].to_numpy(float) for _, g in t.groupby("id", sort=True)]
    rng = np.random.default_rng(seed)
    meds = [np.median(np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))]))
            for _ in range(n_resamples)]
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(meds, [tail, 100 - tail])
    return float(np.median(t[column].to_numpy(float))), float(lo), float(hi)


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share observed on n trials."""
    if n == 0:
        return NAN, NAN
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def newcombe_interval(a: float, n_a: int, b: float, n_b: int) -> tuple[float, float]:
    """The 95% interval of the difference a - b of two shares from their Wilson intervals
    (Newcombe's hybrid score interval): it has width where a bootstrap of shares at 0 or 1 has none."""
    a_lo, a_hi = wilson_interval(a, n_a)
    b_lo, b_hi = wilson_interval(b, n_b)
    return a - b - ((a - a_lo) ** 2 + (b_hi - b) ** 2) ** 0.5, a - b + ((a_hi - a) ** 2 + (b - b_lo) ** 2) ** 0.5


def _binary(x: np.ndarray) -> bool:
    return bool(x.size) and bool(np.isin(x, (0.0, 1.0)).all())


def _at_zero_or_one(c: "Comparison", a: np.ndarray, b: np.ndarray) -> "Comparison":
    """`c` of two samples of 0s and 1s, with every interval that has no width (a share of 0 or 1,
    which no resample changes) replaced by a score interval: Wilson's for a share, Newcombe's for
    the difference (as for independent samples: wider than a paired one would be)."""
    if not (_binary(a) and _binary(b)):
        return c
    v = list(c)
    for i, interval in ((1, wilson_interval(a.mean(), a.size)), (4, wilson_interval(b.mean(), b.size)),
                        (7, newcombe_interval(a.mean(), a.size, b.mean(), b.size))):
        if v[i] == v[i + 1]:
            v[i], v[i + 1] = map(float, interval)
    return Comparison(*v)


def seeds_then_instances(values, los, his, n_resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float, float]:
    """The mean of a statistic over runs (seeds) and its two-level bootstrap interval: the seeds
    resampled with replacement, then each drawn seed's value drawn again within its run. A run's
    record keeps its 95% interval, not its instances, so that inner draw is normal with the spread
    the interval implies (its width / 3.92). Runs without a number are left out."""
    v = np.asarray(values, dtype=float)
    spread = (np.asarray(his, dtype=float) - np.asarray(los, dtype=float)) / (2 * 1.959964)
    keep = ~np.isnan(v)
    v, spread = v[keep], np.nan_to_num(spread[keep])
    if v.size == 0:
        return NAN, NAN, NAN
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_resamples, v.size))
    means = rng.normal(v[idx], spread[idx]).mean(1)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(v.mean()), float(lo), float(hi)


# ---- a statistic against its control --------------------------------------------------------------

def paired_share_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """Means of a and b (paired per instance) and of a - b, each with a percentile-bootstrap
    interval from the same resampling of instances: (a, a_lo, a_hi, b, b_lo, b_hi, d, d_lo, d_hi)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0:
        return Comparison.missing()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_resamples, a.size))
    return _at_zero_or_one(_with_intervals([(x.mean(), x[idx].mean(1)) for x in (a, b, a - b)], level), a, b)


def independent_share_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """`paired_share_ci` for two independent samples (each resampled on its own)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0 or b.size == 0:
        return Comparison.missing()
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(1)
    mb = b[rng.integers(0, b.size, size=(n_resamples, b.size))].mean(1)
    return _at_zero_or_one(_with_intervals([(a.mean(), ma), (b.mean(), mb), (a.mean() - b.mean(), ma - mb)], level),
                           a, b)


def grid_share_ci(a, b, n_resamples: int = 1000, seed: int = 0, level: float = 0.95):
    """`independent_share_ci` where the values also depend on a random grid: a [G, n_a] and b
    [G, n_b] hold each instance's value under each of G grids drawn independently. Each resample
    draws one grid and resamples the instances of a and of b, so the intervals cover both random
    choices; the values are means over grids."""
    a, b = np.atleast_2d(np.asarray(a, dtype=float)), np.atleast_2d(np.asarray(b, dtype=float))
    if a.shape[1] == 0 or b.shape[1] == 0:
        return Comparison.missing()
    rng = np.random.default_rng(seed)
    g = rng.integers(0, len(a), n_resamples)
    ma = np.take_along_axis(a[g], rng.integers(0, a.shape[1], size=(n_resamples, a.shape[1])), 1).mean(1)
    mb = np.take_along_axis(b[g], rng.integers(0, b.shape[1], size=(n_resamples, b.shape[1])), 1).mean(1)
    return _with_intervals([(a.mean(), ma), (b.mean(), mb), (a.mean() - b.mean(), ma - mb)], level)


def _with_intervals(estimates, level: float) -> "Comparison":
    """(value, lo, hi) for each (value, bootstrap resamples) pair, flattened: percentile intervals."""
    tail = (1 - level) / 2 * 100
    out = []
    for value, resampled in estimates:
        lo, hi = np.percentile(resampled, [tail, 100 - tail])
        out += [float(value), float(lo), float(hi)]
    return Comparison(*out)


def resampled_comparison(value: float, value_resampled, control: float, control_resampled,
                         level: float = 0.95, centred: bool = False, bounds: tuple | None = None) -> Comparison:
    """A statistic and its control from one set of resamples (the r-th of each computed on the same
    resample, so their difference is paired): each with its percentile interval, NaN draws left out.
    `centred`: the resamples' spread around the value instead (their quantiles shifted by the value
    minus their median), for a statistic whose resamples sit to one side of it (a selection redone on
    each resample is noisier than the one made on all rows). `bounds` (lo, hi): the range of the
    statistic and its control, which their intervals are clipped to."""
    a, b = np.asarray(value_resampled, dtype=float), np.asarray(control_resampled, dtype=float)
    tail = (1 - level) / 2 * 100
    out = []
    for v, draws in ((value, a), (control, b), (value - control, a - b)):
        draws = draws[~np.isnan(draws)]
        lo, hi = np.percentile(draws, [tail, 100 - tail]) if draws.size else (NAN, NAN)
        if centred and draws.size:
            lo, hi = lo + v - np.median(draws), hi + v - np.median(draws)
        if bounds is not None and len(out) < 6:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        out += [float(v), float(lo), float(hi)]
    return Comparison(*out)
