"""How a sweep should use this machine's cores: aggregate training throughput of one process with
all threads, against one process per core with one thread each (what `rote.grid.sweep` runs).

    python bench/sweep_throughput.py                 # FDA cpu model, 40 timed steps per process
    python bench/sweep_throughput.py --task thr --steps 60

Every variant trains the model of the cpu profile with rote.runs.train's step (the compiled loss), in
fresh worker processes of `bench/training_speed.py` that start stepping together once all have
compiled; a variant's throughput is the sum over its processes of tokens per second (median step
time of each). The baseline is one process on one thread, measured in the same run. The last
variant is the sweep's under Dask's default MALLOC_TRIM_THRESHOLD_=65536, which `rote.grid.sweep`
keeps from its workers.
"""
from __future__ import annotations

import argparse
import os

from training_speed import concurrent_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr"], default="fda")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    trim = {"MALLOC_TRIM_THRESHOLD_": "65536"}
    variants = [("1 process x 1 thread (baseline)", 1, 1, {}), (f"1 process x {cores} threads", 1, cores, {}),
                (f"{cores} processes x 1 thread (rote.grid.sweep)", cores, 1, {}),
                (f"{cores} processes x 1 thread, MALLOC_TRIM_THRESHOLD_=65536 (Dask's default)", cores, 1, trim)]
    print(f"{args.task}: {args.steps} timed steps per process, {cores} cores")
    print("| variant | ms/step (median) | tokens/s (all processes) | vs baseline |\n|---|---|---|---|")
    base = None
    for name, processes, threads, environ in variants:
        r = concurrent_workers(args.task, args.steps, processes, threads, environ=environ)
        base = base or r["tokens_per_s"]
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
