"""What deterministic training costs: the compiled training step of each cpu profile with
`kernels="deterministic"` (the default) against `kernels="fast"`, on 1 and 2 torch threads.

    python bench/determinism.py                 # both tasks, 1 and 2 threads, 30 timed steps each
    python bench/determinism.py --task fda --threads 2 --steps 50

Each task and thread count runs in a process of its own (inductor writes the thread count into the
kernels it compiles). There the two steps are timed interleaved on the same batches (median ms per
step after 3 untimed warm-up steps), so a load that comes and goes slows both alike; the ratio is
deterministic / fast. Each setting also steps a second copy of its model (the same initial weights,
the same batches), and the table says whether the two copies end bit-identical (on two threads
`fast` is a draw: it may match on a short run by chance, but not reliably).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import rote
from rote.runs.model import build_model
from rote.runs.train import answer_loss, kernels_context, make_optimizer, precision_context
from training_speed import rote_step, training_batches


def setting(config, kernels: str, vocab_size: int):
    """A fresh model (the config's seed), its AdamW and rote.runs.train's step (compiled loss, autocast),
    and the kernels context it runs under (a new one per step)."""
    config = dataclasses.replace(config, kernels=kernels)
    torch.manual_seed(config.seed)
    model = build_model(config, vocab_size)
    step = rote_step(torch.compile(answer_loss, dynamic=False), precision_context(config, model, "cpu"))
    return step, model, make_optimizer(model, config), lambda: kernels_context(config, "cpu")


def digest(model) -> int:
    return hash(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters()))


def measure(config, threads: int, steps: int) -> dict:
    torch.set_num_threads(threads)
    tok, ids, mask, pos = training_batches(config)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, len(ids), (config.batch_size,), generator=g) for _ in range(steps + 3)]
    runs = {k: [setting(config, k, len(tok)) for _ in range(2)] for k in ("deterministic", "fast")}
    times = {k: [] for k in runs}
    for i, b in enumerate(batches):
        for kernels, pair in runs.items():
            for j, (step, model, opt, context) in enumerate(pair):
                with context():
                    t = time.perf_counter()
                    step(model, opt, ids[b], mask[b], pos[b])
                    if i >= 3 and j == 0:
                        times[kernels].append(time.perf_counter() - t)
    return {k: {"ms": 1000 * statistics.median(times[k]),
                "same": digest(runs[k][0][1]) == digest(runs[k][1][1])} for k in runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr", "both"], default="both")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one task and thread count
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as home:
            os.environ["ROTE_HOME"] = home
            print(json.dumps(measure(rote.make_config(args.task, "cpu"), args.threads[0], args.steps)))
        return
    print(f"torch {torch.__version__}, CPU kernels: {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores")
    print("| task | threads | deterministic ms/step | fast ms/step | ratio | deterministic: two runs identical | "
          "fast: two runs identical |\n|---|---|---|---|---|---|---|")
    for task in ["fda", "thr"] if args.task == "both" else [args.task]:
        for threads in args.threads:
            out = subprocess.run([sys.executable, __file__, "--worker", "--task", task, "--threads", str(threads),
                                  "--steps", str(args.steps)], check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            d, f = r["deterministic"], r["fast"]
            print(f"| {task} | {threads} | {d['ms']:.1f} | {f['ms']:.1f} | {d['ms'] / f['ms']:.2f}x | "
                  f"{'yes' if d['same'] else 'no'} | {'yes' if f['same'] else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
