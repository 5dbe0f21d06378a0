"""Regime levers: does a change of the profile keep test accuracy while the noise is fitted?

Trains the profile itself (the baseline, in the same run) and then the profile with each lever's
overrides, at one noise rate and each seed, and prints per run: where it stopped, test accuracy and
Mem-Noisy there, the best test accuracy on the way, the first evaluation with both targets, and
its minutes (the ratio is against the baseline's on the same seed); then per lever the lowest test
accuracy over the seeds (a profile must hold on every seed) and the median minutes. Runs are kept
in $ROTE_HOME like any other, so a second call only reads them, and a config with a committed
reference run (the profile at 5% noise, seed 0) gets that run: its "minutes here" is then about 0.

    ROTE_HOME=/tmp/levers .venv/bin/python bench/regime_levers.py fda --noise 0.1 --seeds 0 1 2 \
        --threads 1 --lever weight_decay=0.1 --lever stop_mem_noisy=0.99
"""
from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

import rote
from rote.config import TASKS
from rote.runs.train import metrics, train


def lever(text: str) -> dict:
    """"a=1,b=2" as overrides {a: "1", b: "2"} (make_config casts and checks them)."""
    pairs = [part.split("=", 1) for part in text.split(",") if part]
    if any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"a lever is FIELD=VALUE[,FIELD=VALUE...], got {text!r}")
    return dict(pairs)


def measure(config, test: float, mem: float) -> dict:
    """Train `config` (or read its finished run) and summarize its metrics."""
    t0 = time.perf_counter()
    train(config, progress=True)
    m = metrics(config)
    last = m.iloc[-1]
    both = m[(m["test_acc"] >= test) & (m["mem_noisy"] >= mem)]
    return {"stop step": int(last["step"]), "test": float(last["test_acc"]), "Mem-Noisy": float(last["mem_noisy"]),
            "best test": float(m["test_acc"].max()),
            "first with both": int(both["step"].iloc[0]) if len(both) else None,
            "minutes (recorded)": round(float(last["seconds"]) / 60, 1),
            "minutes here": round((time.perf_counter() - t0) / 60, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--lever", type=lever, action="append", default=[], help="FIELD=VALUE[,FIELD=VALUE...]")
    parser.add_argument("--test", type=float, default=0.95, help="the test-accuracy target")
    parser.add_argument("--mem", type=float, default=0.99, help="the Mem-Noisy target")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runs = [("profile", {})] + [(",".join(f"{k}={v}" for k, v in o.items()), o) for o in args.lever]
    configs = [(name, seed, rote.make_config(args.task, args.profile, noise=args.noise, seed=seed, **o))
               for seed in args.seeds for name, o in runs]  # every config checked before any training
    rows = [{"lever": name, "seed": seed, "run": rote.config_hash(c), **measure(c, args.test, args.mem)}
            for name, seed, c in configs]
    table = pd.DataFrame(rows)
    baseline = table[table["lever"] == "profile"].set_index("seed")["minutes (recorded)"]
    table["minutes vs profile"] = (table["minutes (recorded)"] / table["seed"].map(baseline)).round(2)
    print(f"{args.task} {args.profile}, noise {args.noise}, seeds {', '.join(map(str, args.seeds))}, "
          f"{args.threads} thread(s); targets: test >= {args.test}, Mem-Noisy >= {args.mem}")
    print(table.to_string(index=False))
    summary = table.groupby("lever", sort=False).agg(
        **{"lowest test": ("test", "min"), "lowest Mem-Noisy": ("Mem-Noisy", "min"),
           "seeds with both": ("first with both", "count"), "median minutes": ("minutes (recorded)", "median")})
    print("\nper lever, over the seeds:")
    print(summary.to_string())


if __name__ == "__main__":
    main()
