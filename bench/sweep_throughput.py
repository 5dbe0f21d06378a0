"""How a sweep should use this machine's cores: aggregate training throughput of one process with
all threads, against one process per core with one thread each (what `rote.sweep` runs).

    python bench/sweep_throughput.py                 # FDA cpu model, 40 timed steps per process
    python bench/sweep_throughput.py --task thr --steps 60

Every variant trains the same model on the same batches (rote.train's step, eager) in fresh
processes; a variant's throughput is the sum over its processes of tokens per second (median step
time of each). The baseline is one process on one thread, measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

STEP = r"""
import json, statistics, sys, time, torch
torch.set_num_threads({threads})
import rote
from rote.data import load_dataset
from rote.model import build_model, build_tokenizer, encode
from rote.train import answer_loss, answer_positions, make_optimizer, training_rows
config = rote.make_config("{task}", "cpu")
rows = training_rows(load_dataset(config), config)
tokenizer = build_tokenizer(config)
ids, mask = encode(tokenizer, rows["prompt"], rows["answer"])
positions = answer_positions(mask)
model = build_model(config, len(tokenizer))
optimizer = make_optimizer(model, config)
times = []
for step in range({warmup} + {steps}):
    batch = torch.arange(step * config.batch_size, (step + 1) * config.batch_size) % len(ids)
    t0 = time.perf_counter()
    loss = answer_loss(model, ids[batch], positions[batch])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    times.append(time.perf_counter() - t0)
median = statistics.median(times[{warmup}:])
print(json.dumps({{"ms_per_step": median * 1000, "tokens_per_s": config.batch_size * ids.shape[1] / median}}))
"""


def run(task: str, processes: int, threads: int, steps: int) -> dict:
    """`processes` processes of `threads` torch threads each, started together."""
    code = STEP.format(task=task, threads=threads, steps=steps, warmup=5)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    return {"ms_per_step": statistics.median(r["ms_per_step"] for r in results),
            "tokens_per_s": sum(r["tokens_per_s"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr"], default="fda")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    variants = [("1 process x 1 thread (baseline)", 1, 1), (f"1 process x {cores} threads", 1, cores),
                (f"{cores} processes x 1 thread (rote.sweep)", cores, 1)]
    print(f"{args.task}: {args.steps} timed steps per process, {cores} cores")
    print("| variant | ms/step (median) | tokens/s (all processes) | vs baseline |\n|---|---|---|---|")
    base = None
    for name, processes, threads in variants:
        r = run(args.task, processes, threads, args.steps)
        base = base or r["tokens_per_s"]
        print(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f}x |",
              flush=True)


if __name__ == "__main__":
    main()
