"""`make paper`: the paper's scale on a GPU machine, in one command.

Trains the `paper` profile of both tasks at the chapters' defaults (5% noise, seed 0), analyses each
run as the scorecard does (every observation's claim records, `rote.grid.sweep.run_cell`) into
<out>/lib/rote/resources/scorecard/paper/, publishes it as a reference run
(<out>/data/reference/<task>-paper/, the manifest written anew) and builds the book on it
(`rote.book.build`, profile paper) into <out>/_build/. <out> is the repository unless told.
Without a GPU it stops with one line before any work, unless --allow-cpu. `--dry-run` takes the
same path on the CPU with tiny models trained a few steps, into a scratch folder: `make test` runs
it, so the command is known to work before a GPU is lent.

    make paper                                          # on a GPU machine; then commit what it wrote
    python -m rote.book.paper --dry-run --out /tmp/paper
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from rote.book.build import build, chapters_named, device_checked
from rote.config import TASKS, OneLineError
from rote.grid.sweep import cell_dir, grid, missing_observations, run_cell
from rote.parameters import parse
from rote.runs import reference
from rote.runs.train import train
from rote.store import REPO_ROOT, home

PROFILE = "paper"
NOISE, SEED = 0.05, 0  # the chapters' defaults: the runs the book is built from
# The dry run: the paper profile's recipe at the tiny profile's sizes, trained 40 steps.
DRY_RUN = dict(n_train=600, n_test=200, n_entities=30, n_relations=4, n_layer=2, n_embd=32, n_head=2,
               batch_size=64, max_steps=40, eval_every=20, checkpoint_every=40, n_eval=200, stop_mem_noisy=None)
DRY_RUN_CHAPTERS = ["observation0"]


def paper(out: Path = REPO_ROOT, overrides: dict | None = None, only: list[str] | None = None,
          allow_cpu: bool = False) -> dict:
    """Train, analyse, publish and build (the module's docstring); returns where each part went."""
    with device_checked(PROFILE, allow_cpu):
        chapters_named(only)  # every name and field checked before any work
        cells = grid(TASKS, (NOISE,), {t: [SEED] for t in TASKS}, PROFILE, overrides)
        return _paper(cells, Path(out), overrides, only, allow_cpu)


def _paper(cells: list, out: Path, overrides: dict | None, only: list[str] | None, allow_cpu: bool) -> dict:
    records, runs = out / "lib" / "rote" / "resources" / "scorecard", out / "data" / "reference"
    for cell in cells:
        started = time.perf_counter()
        print(f"{cell.task}: training {cell.name} (paper profile) ...", flush=True)
        train(cell.config, progress=True)
        print(f"{cell.task}: trained in {(time.perf_counter() - started) / 60:.1f} min here", flush=True)
    for cell in cells:
        if missing_observations(cell, records):
            started = time.perf_counter()
            print(f"{cell.task}: analysing {cell.name} (every observation) ...", flush=True)
            run_cell(cell, str(home()), str(records), threads=torch.get_num_threads())
            print(f"{cell.task}: analysed in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        reference.publish(cell.config, f"{cell.task}-{PROFILE}", runs)
    manifest = reference.write_manifest(runs, out / "lib" / "rote" / "resources" / reference.MANIFEST.name)
    html = build(PROFILE, {"overrides": overrides} if overrides else None, only, root=out, allow_cpu=allow_cpu)
    return {"records": [cell_dir(c, records) for c in cells], "reference runs": runs, "manifest": manifest,
            "book": html}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="where data/reference/, the scorecard records and _build/ go (default: the "
                                      "repository; with --dry-run a new scratch folder)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="FIELD=VALUE",
                        help="a rote.Config field for both tasks")
    parser.add_argument("--only", action="append", help="build only this chapter (by file stem)")
    parser.add_argument("--allow-cpu", action="store_true", help="run the paper profile without a GPU")
    parser.add_argument("--dry-run", action="store_true",
                        help=f"on the CPU at tiny sizes ({len(DRY_RUN)} fields overridden), "
                             f"building {', '.join(DRY_RUN_CHAPTERS)} only")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse(o) for o in args.override)
        if args.dry_run:
            overrides = {**DRY_RUN, **overrides}
            out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="rote-paper-dry-run-"))
            os.environ["ROTE_HOME"] = str(out / "home")  # its tiny runs stay in the scratch folder too
            done = paper(out, overrides, args.only or DRY_RUN_CHAPTERS, allow_cpu=True)
        else:
            done = paper(Path(args.out) if args.out else REPO_ROOT, overrides, args.only, args.allow_cpu)
    except (ValueError, OneLineError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps({k: [str(p) for p in v] if isinstance(v, list) else str(v) for k, v in done.items()}, indent=1))


if __name__ == "__main__":
    main()
