"""Speed of the layer-by-layer readout (Observation 1): the full logit lens over every noisy
training instance of a task's model, with nnsight against plain torch forward hooks.

    python bench/readout_speed.py                         # cpu profile, both tasks, 2 threads
    python bench/readout_speed.py --profile tiny --repeats 5
    python bench/readout_speed.py --task fda -o '{"n_layer": 2}'

Each model comes from `rote.get_or_train` (trained first if no finished run exists: with the cpu
profile that takes many minutes). Measured interleaved in one process, median of `--repeats`
runs after one warm-up each:

- "lens table": `rote.interp.lens.logit_lens` with nnsight vs inside `rote.interp.edits.plain_hooks()`, the whole
  readout as the chapter runs it: teacher-forced batch, residual states of every layer, the
  readout through ln_f and the unembedding, and the table of top-1 tokens, ranks and probabilities;
- "states": only the step that differs, one forward pass collecting the embedding and every block
  output at the readout pos (`lens_states`, nnsight vs plain hooks), on the same batch;
- "forward": a plain forward pass of the same batch, for scale.

The two paths are checked to agree before timing. Target: nnsight within 1.5x of plain hooks.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

import rote
from rote import parameters
from rote.interp.edits import plain_hooks
from rote.interp.instances import questions
from rote.interp.lens import lens_states, logit_lens, readout_batch
from rote.runs.data import load_dataset
from rote.runs.train import is_finished


def hooked(call):
    """`call` with plain torch hooks instead of nnsight."""
    def run(*args, **kwargs):
        with plain_hooks():
            return call(*args, **kwargs)
    return run


lens_states_hooks, logit_lens_hooks = hooked(lens_states), hooked(logit_lens)


def median_ms(fns: dict, repeats: int) -> dict:
    """Median wall time (ms) of each function, run interleaved after one warm-up each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def bench_task(task: str, profile: str, noise: float, seed: int, overrides: dict, repeats: int) -> dict:
    config = rote.make_config(task, profile, noise=noise, seed=seed, **overrides)
    if not is_finished(config):
        print(f"{task}: no finished run of {rote.config_hash(config)}; training it first", flush=True)
    model, tok = rote.get_or_train(config, device="cpu")
    with torch.no_grad():
        return measure(config, model, tok, repeats)


def measure(config, model, tok, repeats: int) -> dict:
    noisy = questions(load_dataset(config))
    noisy = noisy[noisy["noisy"]]
    if noisy.empty:
        raise SystemExit(f"{config.task}: no noisy instances (noise={config.noise})")
    a, b = logit_lens(model, tok, noisy), logit_lens_hooks(model, tok, noisy)
    assert (a["top1"] == b["top1"]).all()
    worst = max(np.abs(a[c].to_numpy(float) - b[c].to_numpy(float)).max()
                for c in ("true_prob", "label_prob", "top1_prob"))
    assert worst < 1e-5, worst
    ids, where, *_ = readout_batch(tok, noisy, "label")
    ms = median_ms({
        "table nnsight": lambda: logit_lens(model, tok, noisy),
        "table hooks": lambda: logit_lens_hooks(model, tok, noisy),
        "states nnsight": lambda: lens_states(model, ids, where),
        "states hooks": lambda: lens_states_hooks(model, ids, where),
        "forward": lambda: model(ids),
    }, repeats)
    return {"task": config.task, "config": rote.config_hash(config), "layers": config.n_layer, "width": config.n_embd,
            "instances": len(noisy), "readouts": len(a), **ms}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr", "both"], default="both")
    parser.add_argument("--profile", default="cpu", choices=rote.config.PROFILES)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--overrides", type=json.loads, default={}, help="config overrides as JSON")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the book's CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [bench_task(t, args.profile, args.noise, args.seed, args.overrides, args.repeats)
            for t in parameters.chapter_tasks(args.task)]
    print(f"\nlogit lens over every noisy training instance, {args.profile} profile, {args.threads} thread(s), "
          f"median of {args.repeats} (ms)\n")
    head = (f"{'task':<5} {'model':<7} {'noisy':>6} {'readouts':>9} | {'table nnsight':>13} {'table hooks':>11} "
            f"{'ratio':>6} | {'states nnsight':>14} {'states hooks':>12} {'ratio':>6} | {'forward':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['task']:<5} {r['layers']}x{r['width']:<5} {r['instances']:>6} {r['readouts']:>9} | "
              f"{r['table nnsight']:>13.1f} {r['table hooks']:>11.1f} {r['table nnsight'] / r['table hooks']:>5.2f}x | "
              f"{r['states nnsight']:>14.1f} {r['states hooks']:>12.1f} {r['states nnsight'] / r['states hooks']:>5.2f}x | "
              f"{r['forward']:>8.1f}")
    worst = max(r["table nnsight"] / r["table hooks"] for r in rows)
    print(f"\nnnsight / hooks, whole readout: at most {worst:.2f}x ({'within' if worst <= 1.5 else 'OVER'} the 1.5x target)")


if __name__ == "__main__":
    main()
