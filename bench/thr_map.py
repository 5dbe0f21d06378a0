"""The THR regime map: train two-hop set-ups and record which compose, memorize, both or neither.

    python bench/thr_map.py --set n_entities=100 n_relations=10 fact_repeats=1   # one set-up
    python bench/thr_map.py --set                   # the THR cpu profile itself
    python bench/thr_map.py --rerun 421a4a528e37     # train a recorded run again from its saved config
    python bench/thr_map.py --rerun --threads 1      # every run of the map, one thread each
    python bench/thr_map.py --robustness             # the profile's robustness check (4 runs)
    python bench/thr_map.py --robustness --noise 0.02 0.05 0.1
                                                     # the check at three rates (12 runs)
    python bench/thr_map.py --robustness --set weight_decay=1.0 decay_weight_decay=0
                                                     # the former profile's check (4 runs)

Each set-up is the THR `cpu` profile with the given fields changed. It trains like any run (in
ROTE_HOME, resumable; a finished run is not trained again), then `rote.grid.regimes.record` writes its
configuration, outcome and metrics to lib/rote/resources/thr_map/, from which the appendix draws the map. Minutes
are wall time on this machine with `--threads` threads per run: compare runs made the same way.
A run on another thread count is another record (`<run>-<N>threads`) but the same run directory:
give it its own ROTE_HOME (`ROTE_HOME=/tmp/two python bench/thr_map.py --set seed=0 --threads 2`).
`--robustness` does so itself: it trains seeds 0, 1 and 2 on one thread and seed 0 on two (the
profile, or the profile with `--set`'s fields changed), as child processes using at most this
machine's cores at once, records each and prints the check's outcome; with `--noise`, at each of
those noise rates (the one-thread runs of every rate first, then the two-thread ones).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

import rote
from rote.grid import regimes


def parse(pairs: list[str]) -> dict:
    """["n_layer=6", "lr=3e-3", "schedule=cosine"] -> {"n_layer": "6", ...}; Config casts the types."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes field=value pairs, got {pair!r}")
        out[key] = value
    return out


def run(config, note: str = "") -> dict:
    """Train `config` (or load its finished run) and add it to the map."""
    rote.train(config)
    row = regimes.record(config, rote.metrics(config), note)
    print(f"{row['run']}: {row['regime']}; test peak {row['peak_test']:.3f} final {row['final_test']:.3f}, "
          f"Mem-Noisy {row['final_mem_noisy']:.3f}; min to 95% test {row['min_to_test_95']:.1f}, "
          f"to 99% Mem-Noisy {row['min_to_mem_99']:.1f} (test then {row['test_at_mem_99']:.3f})", flush=True)
    return row


ROBUSTNESS = ((0, 1), (1, 1), (2, 1), (0, 2))  # (seed, torch threads) of the robustness check


def robustness(pairs: list[str], note: str, noises: list[float] | None = None) -> None:
    """Train the robustness check's runs of the profile with `pairs` changed, at each noise rate of
    `noises` (none: the set-up's own), in child processes of this script (a run on 2 threads in its
    own ROTE_HOME: the same config has one run directory), at most as many threads at once as this
    machine has cores; then print the check's outcome per noise rate."""
    rates = [[f"noise={rate}"] for rate in noises] if noises else [[]]  # --set pairs per noise rate
    configs = [rote.make_config("thr", "cpu", **parse([*pairs, *rate])) for rate in rates]  # a bad value stops here
    jobs = sorted(((rate, seed, threads) for rate in rates for seed, threads in ROBUSTNESS), key=lambda job: job[2])
    cores, running = os.cpu_count() or 1, []
    while jobs or running:
        running = [(threads, p) for threads, p in running if p.poll() is None]
        if jobs and (not running or sum(t for t, _ in running) + jobs[0][2] <= cores):
            rate, seed, threads = jobs.pop(0)
            home = rote.store.home() if threads == 1 else rote.store.home() / f"threads-{threads}"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ROTE_HOME": str(home)}
            at = "".join(f" at {float(pair.partition('=')[2]):.0%} noise" for pair in rate)
            command = [sys.executable, __file__, "--set", *pairs, *rate, f"seed={seed}", "--threads", str(threads),
                       "--note", f"{note or 'robustness check'}{at}: seed {seed} on {threads} thread(s)"]
            running.append((threads, subprocess.Popen(command, env=env)))
        else:
            time.sleep(5)
    runs, curves = regimes.runs_map()
    for config in configs:
        check = regimes.robustness_check(runs, curves, config)
        print(check.round(3).to_string(), regimes.robustness_text(check), sep="\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", nargs="*", default=None, metavar="FIELD=VALUE",
                        help="one set-up: the THR cpu profile with these fields changed (none: the profile itself)")
    parser.add_argument("--rerun", nargs="*", default=None, metavar="RUN",
                        help="train recorded runs again from their saved configs (none: every run of the map)")
    parser.add_argument("--robustness", action="store_true",
                        help="the robustness check: seeds 0, 1, 2 on one thread and seed 0 on two")
    parser.add_argument("--noise", nargs="+", type=float, default=None, metavar="RATE",
                        help="with --robustness: check at each of these noise rates (none: --set's, or the profile's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.noise and not args.robustness:
        parser.error("--noise is for --robustness; for one run give --set noise=RATE")
    if args.noise and "noise" in parse(args.set or []):
        parser.error("give the noise rates once: --noise or --set noise=RATE, not both")
    if args.robustness:
        return robustness(args.set or [], args.note, args.noise)
    if args.set is not None:
        run(rote.make_config("thr", "cpu", **parse(args.set)), args.note)
    if args.rerun is not None:
        runs = regimes.runs_map()[0].set_index("run")
        for name in args.rerun or list(runs.index):
            run(regimes.recorded_config(name), runs.loc[name, "note"])


if __name__ == "__main__":
    try:
        main()
    except rote.config.ConfigError as err:
        raise SystemExit(f"ConfigError: {err}") from None
