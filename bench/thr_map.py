"""The THR regime map: train two-hop set-ups and record which compose, memorize, both or neither.

    python bench/thr_map.py --set n_entities=50 n_relations=20 weight_decay=0.1   # one set-up
    python bench/thr_map.py --grid                  # every set-up of GRID not yet in the map
    python bench/thr_map.py --grid --threads 1 --part 0/2 & python bench/thr_map.py --grid --threads 1 --part 1/2

Each set-up is the THR `cpu` profile with the given fields changed. It trains like any run (in
ROTE_HOME, resumable; a finished run is not trained again), then `rote.regimes.record` writes its
configuration, outcome and metrics to data/thr_map/, from which the appendix draws the map. Minutes
are wall time on this machine with `--threads` threads per run: compare runs made the same way.
"""
from __future__ import annotations

import argparse

import torch

import rote
from rote import regimes

# The set-ups of the map, in the order they were tried (see the appendix for what each showed).
GRID = [
    dict(n_entities=100, n_relations=10, two_hop_train_fraction=0.5, max_steps=4000),  # the naive start
    dict(n_entities=100, n_relations=10, two_hop_train_fraction=0.9, weight_decay=0.1, max_steps=6000),
    dict(n_entities=50, n_relations=20, two_hop_train_fraction=0.9, weight_decay=0.1, max_steps=6000),
]


def parse(pairs: list[str]) -> dict:
    """["n_layer=6", "lr=3e-3", "schedule=cosine"] -> {"n_layer": "6", ...}; Config casts the types."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set takes field=value pairs, got {pair!r}")
        out[key] = value
    return out


def run(overrides: dict, note: str = "") -> dict:
    config = rote.make_config("thr", "cpu", **overrides)
    rote.train(config)
    row = regimes.record(config, rote.metrics(config), note)
    print(f"{row['run']} {overrides}: {row['regime']}; test peak {row['peak_test']:.3f} final {row['final_test']:.3f}, "
          f"Mem-Noisy {row['final_mem_noisy']:.3f}; min to 95% test {row['min_to_test_95']:.1f}, "
          f"to 99% Mem-Noisy {row['min_to_mem_99']:.1f} (test then {row['test_at_mem_99']:.3f})", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", nargs="+", default=None, metavar="FIELD=VALUE", help="one set-up")
    parser.add_argument("--grid", action="store_true", help="every set-up of GRID not yet recorded")
    parser.add_argument("--part", default="0/1", help="k/n: run every n-th grid set-up from the k-th")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.set is not None:
        run(parse(args.set), args.note)
    if args.grid:
        k, n = map(int, args.part.split("/"))
        done = set(regimes.runs_map()[0]["run"]) if (regimes.MAP_DIR / "runs.csv").exists() else set()
        for overrides in GRID[k::n]:
            if rote.config_hash(rote.make_config("thr", "cpu", **overrides)) not in done:
                run(overrides)


if __name__ == "__main__":
    main()
