"""The replication scorecard: every observation's verdicts over a grid of noise rates and seeds.

It reads the cell records written by `rote.grid.sweep` (one folder per trained config, holding its claim
records and metrics) and counts, per observation, task and noise rate, in how many runs the
observation held. A run's verdict on an observation is `claims.overall` of its claims, so the
scorecard applies exactly the rules and base rates of the chapters. The observations are about a
model that both generalizes and memorizes its noisy labels: a run whose analysed model (its last
evaluation's weights, `final/`) does not do both (`rote.grid.regimes.analysed_regime`) is out of the
paper's regime, and its verdicts are shown but not counted.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from rote.claims import _with_ci, from_record, is_share, overall
from rote.config import ConfigError
from rote.grid.regimes import REGIMES, analysed_regime
from rote.grid.sweep import NOISES, RECORDS, SEEDS, cell_dir, default_records, grid, is_done, sweep
from rote.observations import OBSERVATIONS, circuits
from rote.parameters import chapter_tasks, check_names
from rote.stats import seeds_then_instances

PARAMETERS = ("task", "profile", "noises", "seeds", "overrides", "run_sweep")  # the chapter's parameters cell

# What a cell of the table shows for the runs of one observation, task and noise rate.
SUMMARIES = ("holds in every run", "holds in most runs", "holds in some runs", "holds in no run", "cannot be tested",
             "not run yet")
IN_REGIME = REGIMES[:2]  # the analysed model generalizes and has memorized the noise (the order: Observation 0)
OUT_OF_REGIME = "out of regime"  # a run's verdict when its analysed model does not do both: shown, not counted


def default_cells(profile: str = "cpu", tasks=("fda", "thr"), noises=NOISES, seeds=None, overrides=None) -> list:
    """The grid the scorecard expects: the committed grid unless told otherwise."""
    return grid(tasks, noises, seeds if seeds is not None else {t: SEEDS[t] for t in tasks}, profile, overrides)


def check_parameters(namespace: dict) -> list:
    """The grid of the scorecard chapter's parameters in `namespace`, every name and value checked
    (one line naming what is allowed)."""
    p = check_names(namespace, PARAMETERS)
    if not isinstance(p["run_sweep"], bool):
        raise ConfigError(f"run_sweep must be True or False, got {p['run_sweep']!r}")
    return default_cells(p["profile"], chapter_tasks(p["task"]), p["noises"], p["seeds"], p["overrides"])


@dataclass
class Scorecard:
    cells: list  # the grid's cells
    verdicts: pd.DataFrame  # per cell and observation: the run's verdict (`run_verdicts`)
    claims: pd.DataFrame  # every claim record of the cells with records (`claim_records`)
    timings: pd.DataFrame  # per cell with records: its analysed model's regime and scores, training and analysis minutes


def record_dir(cell, records: Path | None = None) -> Path:
    """The folder of `cell`'s records: in `records` when given; else in the committed records
    (`RECORDS`) if they hold the cell, else in those of your own sweeps (`default_records()`)."""
    if records is not None:
        return cell_dir(cell, records)
    return cell_dir(cell, RECORDS if is_done(cell, RECORDS) else default_records())


def scorecard(cells: list, records: Path | None = None, run_sweep: bool = False) -> Scorecard:
    """The scorecard of `cells` from their saved records (`record_dir`); with `run_sweep`, the cells
    without records are run first (`rote.grid.sweep` on a LocalCluster on this machine), into
    `records` or `default_records()`: never into the committed records."""
    todo = [c for c in cells if not (record_dir(c, records) / "claims.json").exists()]
    if run_sweep and todo:
        sweep(todo, records=records)
    timings = []
    for cell in cells:
        path = record_dir(cell, records) / "cell.json"
        if path.exists():
            info = json.loads(path.read_text())
            timings.append({"task": cell.task.upper(), "noise": f"{cell.noise:.0%}", "seed": cell.seed,
                            "config": info["config_hash"], **run_regime(cell, records),
                            "training minutes": round(info["train_minutes"], 1),
                            "analysis minutes": round(sum(info["analysis_seconds"].values()) / 60, 1),
                            "trained on": info["device"]})
    columns = ["task", "noise", "seed", "config", "regime", "analysed step", "test accuracy", "Mem-Noisy",
               "training minutes", "analysis minutes", "trained on"]
    return Scorecard(cells, run_verdicts(cells, records), claim_records(cells, records), pd.DataFrame(timings, columns=columns))


def run_regime(cell, records: Path | None = None) -> dict:
    """The regime of a cell's analysed model (`rote.grid.regimes.analysed_regime`), with the step, test
    accuracy and Mem-Noisy (shares in [0, 1]) of its evaluation, the last; {} when the cell has no metrics."""
    path = record_dir(cell, records) / "metrics.csv"
    if not path.exists():
        return {}
    metrics = pd.read_csv(path)
    last = metrics.iloc[-1]
    return {"regime": analysed_regime(metrics), "analysed step": int(last["step"]), "test accuracy": float(last["test_acc"]),
            "Mem-Noisy": float(last["mem_noisy"])}


def claim_records(cells: list, records: Path | None = None) -> pd.DataFrame:
    """One row per claim record of every cell that has records, with the cell's noise and seed."""
    rows = []
    for cell in cells:
        path = record_dir(cell, records) / "claims.json"
        if path.exists():
            for record in json.loads(path.read_text()):
                rows.append({**asdict(from_record(record)), "noise": cell.noise, "seed": cell.seed})
    return pd.DataFrame(rows)


def run_verdicts(cells: list, records: Path | None = None) -> pd.DataFrame:
    """Per cell and observation: the run's verdict (`claims.overall`), "out of regime" when the run's
    analysed model does not both generalize and memorize (its own verdict is kept in "claims_verdict"), or
    "not run yet"."""
    claims = claim_records(cells, records)
    rows = []
    for cell in cells:
        mine = claims[(claims["noise"] == cell.noise) & (claims["seed"] == cell.seed) & (claims["task"] == cell.task)] \
            if len(claims) else claims
        run = run_regime(cell, records)
        for observation in OBSERVATIONS:
            if cell.task not in OBSERVATIONS[observation].tasks:
                continue
            found = [from_record(r) for r in mine[mine["observation"] == observation].to_dict("records")] if len(mine) else []
            own = overall(found) if found else "not run yet"
            counted = own if not found or run.get("regime") in IN_REGIME else OUT_OF_REGIME
            rows.append({"observation": observation, "task": cell.task, "noise": cell.noise, "seed": cell.seed,
                         "verdict": counted, "claims_verdict": own, "regime": run.get("regime")})
    return pd.DataFrame(rows)


def _tested(verdicts: list[str]) -> list[str]:
    return [v for v in verdicts if v not in ("not run yet", "cannot be tested", OUT_OF_REGIME)]


def summarize(verdicts: list[str]) -> str:
    """One of SUMMARIES for the verdicts of the runs of one group, over the runs where the
    observation could be tested."""
    tested = _tested(verdicts)
    if not tested:
        return "cannot be tested" if set(verdicts) & {"cannot be tested", OUT_OF_REGIME} else "not run yet"
    holding = sum(v == "holds" for v in tested)
    if holding == len(tested):
        return "holds in every run"
    if holding == 0:
        return "holds in no run"
    return "holds in most runs" if holding > len(tested) / 2 else "holds in some runs"


def counts(verdicts: list[str]) -> str:
    """"holds in 2 of 3 runs (holds in part 1)" for the verdicts of one group, with the runs where
    it could not be tested and those not run yet."""
    tested = _tested(verdicts)
    if verdicts.count("not run yet") == len(verdicts):
        return f"not run yet ({len(verdicts)} runs)"
    text = f"holds in {sum(v == 'holds' for v in tested)} of {len(tested)} runs" if tested else "no run tested"
    others = [f"{v} {tested.count(v)}" for v in ("holds in part", "does not hold") if v in tested]
    text += f" ({', '.join(others)})" if others else ""
    for v in ("cannot be tested", OUT_OF_REGIME, "not run yet"):
        if v in verdicts:
            text += f"; {v} in {verdicts.count(v)}"
    return text


def verdict_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """Observation x task rows, a column per noise rate and one over all: the verdict counts."""
    rows = []
    for (observation, task), group in verdicts.groupby(["observation", "task"], sort=True):
        row = {"observation": observation, "paper's claim": OBSERVATIONS[observation].paper, "task": task.upper()}
        for noise, runs in group.groupby("noise"):
            row[f"noise {noise:.0%}"] = counts(list(runs["verdict"]))
        row["all runs"] = counts(list(group["verdict"]))
        rows.append(row)
    return pd.DataFrame(rows)


def counted_claims(verdicts: pd.DataFrame, claims: pd.DataFrame) -> pd.DataFrame:
    """The claim records of the runs whose verdicts count: in regime, with records."""
    if not len(claims):
        return claims
    counted = verdicts[verdicts["verdict"] != OUT_OF_REGIME][["observation", "task", "noise", "seed"]]
    return claims.merge(counted, on=["observation", "task", "noise", "seed"])


def statistic_table(claims: pd.DataFrame, verdicts: pd.DataFrame) -> pd.DataFrame:
    """Per claim and noise rate: each seed's statistic with its interval against its control (out of
    regime runs marked so), the difference over the seeds in regime as their mean with a two-level
    interval (`rote.stats.seeds_then_instances`) and its range, and the verdict counts of those runs."""
    rows = []
    if not len(claims):
        return pd.DataFrame(rows)
    counted = counted_claims(verdicts, claims)
    for (observation, task, claim, noise), group in claims.groupby(["observation", "task", "claim", "noise"], sort=True):
        first = from_record(group.iloc[0].to_dict())
        p = is_share(first)
        mine = counted[(counted["observation"] == observation) & (counted["task"] == task)
                       & (counted["claim"] == claim) & (counted["noise"] == noise)]
        seeds = "; ".join(f"seed {r.seed}{'' if r.seed in set(mine['seed']) else ' (out of regime)'}: "
                          f"{_with_ci(r.value, r.lo, r.hi, p)} vs {_with_ci(r.control_value, r.control_lo, r.control_hi, p)}"
                          for r in group.sort_values("seed").itertuples())
        d = mine.dropna(subset=["difference"])
        over = _with_ci(*seeds_then_instances(d["difference"], d["difference_lo"], d["difference_hi"]), p) \
            if len(d) else "no run in regime"
        span = _with_ci(d["difference"].mean(), d["difference"].min(), d["difference"].max(), p) if len(d) else "n/a"
        rows.append({"observation": observation, "task": task.upper(), "claim": claim,
                     "statistic vs control": f"{first.statistic} vs {first.control}", "noise": f"{noise:.0%}",
                     "per seed: value [95% CI] vs control": seeds,
                     "difference over the seeds in regime: mean [95% CI, seeds then instances]": over,
                     "difference: mean [min, max] over those seeds": span,
                     "verdicts": counts(list(mine["verdict"])) if len(mine) else "no run in regime"})
    return pd.DataFrame(rows)


def circuit_table(claims: pd.DataFrame) -> pd.DataFrame:
    """Per run with shared-circuit records (`rote.observations.circuits`): the share of the noisy
    circuit's edges in clean circuit A beside its random floor and its clean-B ceiling, clean circuit
    A's faithfulness on the noisy labels beside the noisy circuit's own, and the run's verdict."""
    if not len(claims) or not (claims["observation"] == 5).any():
        return pd.DataFrame({"note": ["no run has shared-circuit records yet"]})
    rows = []
    for (task, noise, seed), group in claims[claims["observation"] == 5].groupby(["task", "noise", "seed"], sort=True):
        by, run = group.set_index("claim"), {"task": task.upper(), "noise": f"{noise:.0%}", "seed": seed}
        verdict = overall([from_record(r) for r in group.to_dict("records")])
        if circuits.EDGES_FLOOR not in by.index or by.loc[circuits.EDGES_FLOOR, "verdict"] == "cannot be tested":
            rows.append({**run, "verdict": verdict})
            continue
        floor, ceiling = by.loc[circuits.EDGES_FLOOR], by.loc[circuits.EDGES_CEILING]
        carries, own = by.loc[circuits.CARRIES], by.loc[circuits.CARRIES_OWN]
        rows.append({**run, "k": floor["note"].split("k = ")[1].split(" ")[0],
                     "noisy circuit's edges in clean circuit A": _with_ci(floor["value"], floor["lo"], floor["hi"], True),
                     "random edges (floor)": _with_ci(floor["control_value"], floor["control_lo"], floor["control_hi"], True),
                     "clean circuit B (ceiling)": _with_ci(ceiling["control_value"], ceiling["control_lo"],
                                                           ceiling["control_hi"], True),
                     "clean circuit A on the noisy labels": _with_ci(carries["value"], carries["lo"], carries["hi"], True),
                     "the noisy circuit's own": _with_ci(own["control_value"], own["control_lo"], own["control_hi"], True),
                     "verdict": verdict})
    return pd.DataFrame(rows)


def claim_table(verdicts: pd.DataFrame, claims: pd.DataFrame, observations=None) -> pd.DataFrame:
    """Per observation, task and claim (of `observations`, every one by default), the claim's own
    verdicts counted over the runs in regime, per noise rate and over all: which parts of an
    observation hold where its run verdicts say "in part"."""
    mine = counted_claims(verdicts, claims)
    if len(mine) and observations is not None:
        mine = mine[mine["observation"].isin(list(observations))]
    if not len(mine):
        return pd.DataFrame({"note": ["no run in regime has claim records of these observations yet"]})
    rows = []
    for (observation, task, claim), group in mine.groupby(["observation", "task", "claim"], sort=False):
        row = {"observation": observation, "task": task.upper(), "claim": claim}
        for noise, runs in group.groupby("noise"):
            row[f"noise {noise:.0%}"] = counts(list(runs["verdict"]))
        row["all runs"] = counts(list(group["verdict"]))
        rows.append(row)
    columns = ["observation", "task", "claim", *[f"noise {n:.0%}" for n in sorted(mine["noise"].unique())], "all runs"]
    return pd.DataFrame(rows, columns=columns).sort_values(["observation", "task"], kind="stable").fillna("no run in regime")


def heatmap_frame(verdicts: pd.DataFrame, claims: pd.DataFrame) -> pd.DataFrame:
    """One row per observation, task and noise rate: the summary, the counts and, for tooltips,
    each seed's verdict with the observation's first statistic against its control."""
    rows = []
    for (observation, task, noise), group in verdicts.groupby(["observation", "task", "noise"], sort=True):
        details = []
        for r in group.sort_values("seed").itertuples():
            mine = claims[(claims["observation"] == observation) & (claims["task"] == task) & (claims["noise"] == noise)
                          & (claims["seed"] == r.seed)] if len(claims) else claims
            number = ""
            if len(mine):
                c = mine.iloc[0]
                p = is_share(from_record(c.to_dict()))
                number = f": {_with_ci(c.value, c.lo, c.hi, p)} vs {_with_ci(c.control_value, float('nan'), float('nan'), p)}"
            verdict = r.verdict if r.verdict != OUT_OF_REGIME else f"out of regime ({r.regime}; its claims: {r.claims_verdict})"
            details.append(f"seed {r.seed} {verdict}{number}")
        rows.append({"observation": f"{observation}", "task": task.upper(), "noise": f"{noise:.0%}",
                     "summary": summarize(list(group["verdict"])), "counts": counts(list(group["verdict"])),
                     "claim": OBSERVATIONS[observation].paper, "runs": " | ".join(details)})
    return pd.DataFrame(rows)


def robustness(verdicts: pd.DataFrame) -> str:
    """The scorecard's conclusion in words: which observations hold in every run here, which in
    some, which in none, and what is not run yet; computed from the verdicts."""
    groups = {s: [] for s in SUMMARIES}
    for (observation, task), group in verdicts.groupby(["observation", "task"], sort=True):
        groups[summarize(list(group["verdict"]))].append(
            f"Observation {observation} in {task.upper()} ({counts(list(group['verdict']))})")
    said = {"holds in every run": "Robust here, holding in every run trained so far",
            "holds in most runs": "Holding in most runs but not all",
            "holds in some runs": "Holding in some runs only",
            "holds in no run": "Holding fully in no run (in part or not at all)",
            "cannot be tested": "Not testable in the runs so far",
            "not run yet": "Not run yet"}
    parts = [f"{said[s]}: {'; '.join(groups[s])}." for s in SUMMARIES if groups[s]]
    out = verdicts[verdicts["verdict"] == OUT_OF_REGIME].drop_duplicates(["task", "noise", "seed"])
    if len(out):
        runs = "; ".join(f"{r.task.upper()} {r.noise:.0%} seed {r.seed} ({r.regime})" for r in out.itertuples())
        parts.append(f"Not counted, because the analysed model (the last evaluation's) does not both generalize and "
                     f"memorize its noisy labels (out of the paper's regime): {runs}.")
    return " ".join(parts) if parts else "No cell of the grid has records yet."
