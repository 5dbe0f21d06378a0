"""Sweeps: a grid of configs (tasks x noise rates x seeds) trained and analysed on Dask.

    python -m rote.grid.sweep --tasks fda thr --noise 0.02 0.05 0.1 --seeds 0 1 2    # a LocalCluster here
    python -m rote.grid.sweep ... --scheduler tcp://10.0.0.5:8786                     # an existing cluster
    python -m rote.grid.sweep ... --slurm --jobs 8 --slurm-option=--partition=cpu     # Slurm (dask-jobqueue)
    python -m rote.grid.sweep ... --gpus                                               # one worker per GPU

A cell is one config. Its task trains the config (or loads its finished run: runs are keyed by config
hash, locked while one process trains them, and resume from their last evaluation), runs every
observation's analysis on the model, and saves what the scorecard reads (`save_cell`):

    <records>/<profile>/<task>-<config hash>/
        cell.json     the cell (task, noise, seed, profile, overrides), timings, machine
        config.json   the full config
        claims.json   the claim records of every observation (rote.claims)
        metrics.csv   the run's evaluation table

A cell whose records exist is skipped, so a sweep stopped at any point continues where it was, and
committed records are never recomputed. A cell whose records lack an observation (one added to
`OBSERVATIONS` since) is completed: its run is trained again (or loaded), its evaluation table must
equal the recorded one (the same model, on the same machine), and only the missing analyses run; their
records are added to the cell's. `--redo 0 3` analyses Observations 0 and 3 again the same way, in
place of their records, after a change to their rules. A cell whose worker dies is sent to another
worker by the scheduler and resumes from its run's last saved state.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import numbers
import os
import platform
import shlex
import time
from pathlib import Path

import pandas as pd

from rote import claims
from rote.config import ALLOW_CPU, TASKS, Config, ConfigError, OneLineError, check_overrides, config_hash
from rote.observations import OBSERVATIONS
from rote.parameters import configs, parse
from rote.store import RESOURCES, atomic_dir, home

# The committed records of the cpu-profile grid: package data, so a pip install (Colab) has them too.
RECORDS = RESOURCES / "scorecard"
NOISES = (0.02, 0.05, 0.10)
SEEDS = {"fda": (0, 1, 2), "thr": (0, 1)}  # the committed grid (RECORDS / "cpu")


class SweepError(OneLineError, RuntimeError):
    """A sweep that cannot start (no scheduler there) or whose cells failed."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: a config, and the profile it was made from."""
    task: str
    noise: float
    seed: int
    profile: str = "cpu"
    overrides: tuple = ()  # sorted (field, value) pairs

    @property
    def config(self) -> Config:
        return configs(self.task, self.noise, self.seed, self.profile, dict(self.overrides))[self.task]

    @property
    def name(self) -> str:
        return f"{self.task}-{config_hash(self.config)}"


def grid(tasks, noises, seeds, profile: str = "cpu", overrides: dict | None = None) -> list[Cell]:
    """The cells of tasks x noises x seeds (`seeds` a list, or a dict task -> list), every config
    checked before any work: a bad name or value is a one-line ConfigError."""
    tasks, noises = _listed("tasks", tasks, str), _listed("noise rates", noises, float)
    per_task = seeds if isinstance(seeds, dict) else {t: seeds for t in tasks}
    for task in [*tasks, *per_task]:
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}{' in seeds' if task not in tasks else ''}; "
                              f"allowed: {', '.join(TASKS)}")
    if tasks and not set(tasks) <= set(per_task):
        raise ConfigError(f"seeds has no entry for {', '.join(t for t in tasks if t not in per_task)}; "
                          f"give seeds for every task: {', '.join(tasks)}")
    per_task = {t: _listed("seeds", s, int) for t, s in per_task.items()}
    if not tasks or not noises or not any(per_task.get(t) for t in tasks):
        raise ConfigError("empty grid: give at least one task, one noise rate and one seed")
    pairs = tuple(sorted(check_overrides(overrides or {}).items()))
    cells = [Cell(t, n, s, profile, pairs) for t in tasks for n in noises for s in per_task.get(t, ())]
    for cell in cells:
        cell.config  # noqa: B018 - every field checked before any work
    return list(dict.fromkeys(cells))


def _listed(name: str, values, kind: type) -> list:
    """`values` as a list of `kind` (a number with a fraction is not an int seed, a string is not a
    rate); a one-line error otherwise."""
    allowed = {str: "names", float: "numbers", int: "whole numbers"}[kind]
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} must be a list of {allowed}, got {values!r}")
    out = []
    for v in values:
        ok = isinstance(v, str) if kind is str else \
            isinstance(v, numbers.Real) and not isinstance(v, bool) and (kind is float or float(v).is_integer())
        if not ok:
            raise ConfigError(f"{name} must be a list of {allowed}, got {v!r} in {list(values)!r}")
        out.append(kind(v))
    return out


def cell_dir(cell: Cell, records: Path = RECORDS) -> Path:
    return Path(records) / cell.profile / cell.name


def is_done(cell: Cell, records: Path = RECORDS) -> bool:
    """Whether the cell has records (some observations may be missing: `missing_observations`)."""
    return (cell_dir(cell, records) / "claims.json").exists()


def missing_observations(cell: Cell, records: Path = RECORDS, redo=()) -> list[int]:
    """The observations of the cell's task that its records lack (every one without records), and
    those in `redo` that they have (analysed again after a change to their rules)."""
    wanted = [n for n, o in OBSERVATIONS.items() if cell.task in o.tasks]
    path = cell_dir(cell, records) / "claims.json"
    have = {r["observation"] for r in json.loads(path.read_text())} if path.exists() else set()
    return [n for n in wanted if n not in have or n in redo]


def analyse(config: Config, only=None) -> tuple[list, dict]:
    """Every observation's claims on `config`'s model (trained first if need be), or those numbered
    in `only`, and the seconds each analysis took."""
    records, seconds = [], {}
    for number, observation in OBSERVATIONS.items():
        if config.task not in observation.tasks or (only is not None and number not in only):
            continue
        t0 = time.perf_counter()
        records += claims.record(observation.claims(observation.measure(config)), config, number)
        seconds[number] = round(time.perf_counter() - t0, 1)
    return records, seconds


def run_cell(cell: Cell, rote_home: str, records: str, threads: int = 1, gpu: bool = False, redo=()) -> dict:
    """Train and analyse one cell, save its records (`save_cell`) and return its `cell.json`; a cell
    with records gets only its missing observations and those in `redo` (`complete_cell`). Runs
    on a Dask worker or in this process; `rote_home` (where runs live) must be the same path for
    every worker, a shared file system on a cluster."""
    import torch

    from rote.runs.train import default_device, train, training_segments

    before, threads_before = os.environ.get("ROTE_HOME"), torch.get_num_threads()
    os.environ["ROTE_HOME"] = str(rote_home)
    torch.set_num_threads(threads)
    if gpu:  # one worker per GPU: worker i uses GPU i
        from distributed import get_worker
        torch.cuda.set_device(int(get_worker().name) % torch.cuda.device_count())
    saved = cell_dir(cell, Path(records))
    only = missing_observations(cell, Path(records), redo) if is_done(cell, Path(records)) else None
    try:
        config = cell.config
        t0 = time.perf_counter()
        run = train(config, progress=False)
        trained = time.perf_counter() - t0
        if only is not None:
            same_run(saved / "metrics.csv", run / "metrics.csv")
        claim_records, seconds = analyse(config, only)
    finally:  # as it was: run in this process, a cell leaves no trace in its settings
        if before is None:
            del os.environ["ROTE_HOME"]
        else:
            os.environ["ROTE_HOME"] = before
        torch.set_num_threads(threads_before)
    if only is not None:
        return complete_cell(cell, Path(records), config, claim_records, seconds, trained, threads)
    metrics = pd.read_csv(run / "metrics.csv")
    info = {**dataclasses.asdict(cell), "overrides": dict(cell.overrides), "config_hash": config_hash(config),
            "train_minutes": round(float(metrics["seconds"].iloc[-1]) / 60, 2),
            "train_wall_seconds_here": round(trained, 1), "analysis_seconds": seconds,
            "device": torch.cuda.get_device_name() if default_device() == "cuda" else f"{threads} CPU thread(s)",
            "training_segments": training_segments(run), "host": platform.node(), "torch": torch.__version__,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    save_cell(cell, Path(records), info, config, claim_records, run / "metrics.csv")
    return info


def same_run(recorded: Path, trained: Path) -> None:
    """Refuse to complete a cell whose run, trained here, is not the recorded one: their evaluation
    tables must agree on every measure at every step (timings aside)."""
    a, b = pd.read_csv(recorded), pd.read_csv(trained)
    columns = [c for c in a.columns if c not in ("seconds", "tokens_per_s")]
    if list(a.columns) != list(b.columns) or len(a) != len(b) or not a[columns].equals(b[columns]):
        where = "in shape"
        if list(a.columns) == list(b.columns) and len(a) == len(b):
            x, y = a[columns], b[columns]
            differ = ~((x == y) | (x.isna() & y.isna())).all(axis=1)
            where = f"first at step {int(a['step'][differ.idxmax()])}"
        raise SweepError(f"the run trained here differs from the recorded one ({where}): its model is not the one "
                         f"the records describe; rerun the whole cell into other records (--records DIR)")


def complete_cell(cell: Cell, records: Path, config: Config, added: list, seconds: dict, trained: float,
                  threads: int) -> dict:
    """Put the records of the observations analysed here (`seconds`' keys) in a cell's, in place of
    any it had of them (`save_cell`, its config and metrics kept)."""
    import torch

    saved = cell_dir(cell, records)
    info = json.loads((saved / "cell.json").read_text())
    info["analysis_seconds"] = {**info["analysis_seconds"], **{str(k): v for k, v in seconds.items()}}
    info["completed"] = {"observations": sorted(seconds), "device": f"{threads} CPU thread(s)", "host": platform.node(),
                         "torch": torch.__version__, "train_wall_seconds_here": round(trained, 1),
                         "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    kept = [claims.from_record(r) for r in json.loads((saved / "claims.json").read_text())
            if r["observation"] not in seconds]
    # the recorded config.json and metrics.csv are kept byte for byte (read before the folder is replaced)
    ordered = sorted(kept + added, key=lambda c: c.observation)  # as a whole run's: by observation
    save_cell(cell, records, info, config, ordered, saved / "metrics.csv", (saved / "config.json").read_text())
    return info


def save_cell(cell: Cell, records: Path, info: dict, config: Config, claim_records: list, metrics: Path,
              config_json: str | None = None) -> Path:
    """Write a cell's records in one step (a folder renamed into place): all of them or none.
    `config_json`: the text of config.json, when it is already recorded."""
    from rote.claims import to_json

    with atomic_dir(cell_dir(cell, records)) as tmp:
        (tmp / "cell.json").write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")
        (tmp / "config.json").write_text(config_json or json.dumps(dataclasses.asdict(config), indent=1, sort_keys=True) + "\n")
        (tmp / "claims.json").write_text(to_json(claim_records))
        (tmp / "metrics.csv").write_bytes(Path(metrics).read_bytes())
    return cell_dir(cell, records)


# ---- where the cells run ----------------------------------------------------------------------------------

def local_workers(threads: int = 1, gpu: bool = False) -> int:
    """Workers for this machine: one per GPU, else one per `threads` cores."""
    if threads < 1:
        raise ConfigError(f"threads must be a whole number >= 1, got {threads}")
    if gpu:
        import torch
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // threads)


# Dask's nannies start each worker with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's
# dynamic mmap threshold: every large tensor is mapped and unmapped anew, and a one-thread training
# step ran 1.7x slower in a sweep (bench/sweep_throughput.py compares). Workers here keep glibc's default.
UNSET_IN_WORKERS = {"MALLOC_TRIM_THRESHOLD_": None}  # None: Dask's way to drop one of its variables


def slurm_cluster(jobs: int = 1, threads: int = 1, memory: str = "8GB", walltime: str = "04:00:00",
                  options: list[str] | None = None, rote_home: str | None = None):
    """A dask-jobqueue SLURMCluster with `jobs` jobs, one Dask worker of `threads` torch threads
    each; `options` are extra #SBATCH lines (e.g. --partition=cpu). `cluster.job_script()` shows
    what is submitted."""
    from dask_jobqueue import SLURMCluster

    prologue = [f"export ROTE_HOME={shlex.quote(str(rote_home or home()))}", f"export OMP_NUM_THREADS={int(threads)}",
                f"export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON={shlex.quote(repr(UNSET_IN_WORKERS))}"]
    cluster = SLURMCluster(cores=1, processes=1, memory=memory, walltime=walltime,
                           job_cpu=threads, job_extra_directives=list(options or []),
                           job_script_prologue=prologue)
    cluster.scale(jobs=jobs)
    return cluster


def connect(scheduler: str | None = None, workers: int | None = None, threads: int = 1, gpu: bool = False,
            slurm: dict | None = None):
    """A Dask client: to the scheduler at `scheduler`, to a Slurm cluster (`slurm`: the arguments
    of `slurm_cluster`), or to a LocalCluster of `workers` processes (one task at a time each)."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as err:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler} ({type(err).__name__}); start one "
                             "(`dask scheduler`) or leave --scheduler out for a cluster on this machine") from None
    if slurm is not None:
        return Client(slurm_cluster(threads=threads, **slurm))
    # Dask's statistical profiler samples every worker thread 100 times a second: 8% of a core
    # beside a training loop on one thread (measured). The workers inherit this setting.
    unset = {f"distributed.nanny.pre-spawn-environ.{name}": value for name, value in UNSET_IN_WORKERS.items()}
    with dask.config.set({"distributed.worker.profile.enabled": False, **unset}):
        cluster = LocalCluster(n_workers=workers or local_workers(threads, gpu), threads_per_worker=1,
                               processes=True, memory_limit=0)
    return Client(cluster)


def head_start(cell: Cell) -> int:
    """A cell's priority: a finished run first (its records land in minutes), then a run with a
    saved state (by steps done), then a fresh one."""
    from rote.runs.train import run_dir, run_table

    run = run_dir(cell.config)
    if (run / "final" / "model.safetensors").exists():
        return cell.config.max_steps + 1
    if (run / "metrics.csv").exists():
        steps = run_table(run, "metrics.csv", "step")["step"]
        return int(steps.iloc[-1]) if len(steps) else 0
    return 0


def priorities(cells: list[Cell]) -> dict:
    """Dask priorities (higher runs first): runs with more steps done first (`head_start`), then the
    grid's order, which Dask does not keep among equal priorities."""
    return {c: head_start(c) * (len(cells) + 1) + len(cells) - i for i, c in enumerate(cells)}


def default_records() -> Path:
    """Where a sweep writes its records unless told: beside the runs, never into the package's
    committed records (`RECORDS`: written only when asked, `make sweep`)."""
    return home() / "scorecard"


def sweep(cells: list[Cell], client=None, records: Path | None = None, threads: int = 1, gpu: bool = False,
          progress: bool = True, redo=()) -> pd.DataFrame:
    """Run every cell without records (in `records`, by default `default_records()`) on `client`'s
    cluster (a LocalCluster when None), with a progress bar over cells; a cell with records gets its
    missing observations and those in `redo` (`run_cell`). Returns one row per cell (its
    `cell.json`). A cell that raised is reported at the end; the others still finish."""
    from distributed import wait
    from tqdm.auto import tqdm

    records = Path(records) if records is not None else default_records()
    todo = [c for c in cells if missing_observations(c, records, redo)]
    own = client is None and bool(todo)
    if own:
        client = connect(threads=threads, gpu=gpu)
    if client is not None and progress:
        print(f"Dask dashboard: {client.dashboard_link}", flush=True)
    ahead = priorities(todo)  # submitted in this order too: the first go to idle workers at once
    futures = {client.submit(run_cell, c, str(home()), str(records), threads, gpu, tuple(redo),
                             key=f"cell-{c.name}-{c.profile}",
                             pure=False, retries=1, priority=ahead[c]): c for c in sorted(todo, key=ahead.get, reverse=True)}
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), desc="cells", unit="cell",
               disable=not progress, dynamic_ncols=True)
    failed, pending = [], set(futures)
    try:
        while pending:
            try:
                finished, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:  # nothing finished in 5 s: refresh the counts
                finished = ()
            for future in finished:
                if future.status == "error":
                    failed.append(f"{futures[future].name} ({type(future.exception()).__name__}: {future.exception()})")
                bar.update(1)
            running = min(len(pending), sum(client.nthreads().values()))  # one cell per worker thread
            bar.set_postfix(done=bar.n, running=running, left=len(pending) - running)
    finally:
        bar.close()
        if own:
            client.close()
            client.cluster.close()
    if failed:
        raise SweepError(f"{len(failed)} of {len(todo)} cells failed: " + "; ".join(failed))
    return pd.DataFrame([json.loads((cell_dir(c, records) / "cell.json").read_text()) for c in cells])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train and analyse a grid of configs on Dask; records go to "
                                                 "<records>/<profile>/ (the scorecard chapter reads them).")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), metavar="TASK", help="fda, thr")
    parser.add_argument("--noise", nargs="+", type=float, default=list(NOISES), metavar="RATE")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="default: 0 1 2 for fda, 0 1 for thr (the committed grid)")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="a rote.Config field for every cell")
    parser.add_argument("--records", help="where cell records are written (default: $ROTE_HOME/scorecard, or "
                                           "runs/scorecard in a checkout; `make sweep` writes the committed "
                                           "records, lib/rote/resources/scorecard)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="LocalCluster workers (default: cores / threads, or one per GPU)")
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://host:8786")
    where.add_argument("--slurm", action="store_true", help="submit workers as Slurm jobs (dask-jobqueue)")
    parser.add_argument("--jobs", type=int, default=4, help="Slurm jobs (one worker each)")
    parser.add_argument("--memory", default="8GB", help="Slurm memory per job")
    parser.add_argument("--walltime", default="04:00:00", help="Slurm walltime per job")
    parser.add_argument("--slurm-option", action="append", default=[], metavar="OPTION",
                        help="an extra #SBATCH option, e.g. --slurm-option=--partition=cpu")
    parser.add_argument("--gpus", action="store_true", help="one LocalCluster worker per GPU")
    parser.add_argument("--allow-cpu", action="store_true", help=f"run the paper profile without a GPU (sets {ALLOW_CPU}=1)")
    parser.add_argument("--redo", nargs="+", type=int, default=[], metavar="OBSERVATION",
                        help="analyse these observations again in cells that have records (after a change to their "
                             "rules; each run is loaded or trained again, and must be the recorded one)")
    args = parser.parse_args(argv)
    if args.allow_cpu:
        os.environ[ALLOW_CPU] = "1"  # inherited by the local workers
    try:
        for name in ("threads", "workers", "jobs"):
            if getattr(args, name) is not None and getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be a whole number >= 1, got {getattr(args, name)}")
        for option in [args.memory, args.walltime, *args.slurm_option]:
            if not option.isprintable():  # a line break would add a line to the Slurm job script
                raise ConfigError(f"a Slurm option must be one line of printable characters, got {option!r}")
        unknown = sorted(set(args.redo) - set(OBSERVATIONS))
        if unknown:
            raise ConfigError(f"--redo: no observation {', '.join(map(str, unknown))}; allowed: "
                              f"{', '.join(map(str, OBSERVATIONS))}")
        args.records = args.records or str(default_records())
        overrides = dict(parse(o) for o in args.override)
        seeds = args.seeds if args.seeds is not None else SEEDS
        cells = grid(args.tasks, args.noise, seeds, args.profile, overrides)
        slurm = dict(jobs=args.jobs, memory=args.memory, walltime=args.walltime, options=args.slurm_option) \
            if args.slurm else None
        todo = [c for c in cells if missing_observations(c, args.records, args.redo)]
        partial = sum(is_done(c, args.records) for c in todo)
        print(f"{len(cells)} cells, {len(cells) - len(todo)} with every observation's records already"
              + (f", {partial} to complete (their runs trained again, only the missing analyses"
                 f"{' and observations ' + ', '.join(map(str, args.redo)) if args.redo else ''} run)" if partial else ""),
              flush=True)
        client = connect(args.scheduler, args.workers, args.threads, args.gpus, slurm) if todo else None
        t0 = time.perf_counter()
        try:
            done = sweep(cells, client, args.records, args.threads, args.gpus, redo=args.redo)
        finally:
            if client is not None:
                client.close()
                if client.cluster is not None:
                    client.cluster.close()
    except OneLineError as err:
        raise SystemExit(f"error: {err}") from None
    print(f"{len(todo)} cells run in {(time.perf_counter() - t0) / 60:.1f} min; records in {args.records}/{args.profile}")
    print(done[["task", "noise", "seed", "config_hash", "train_minutes"]].to_string(index=False))


if __name__ == "__main__":
    main()
