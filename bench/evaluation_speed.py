"""Speed of one evaluation along training (`rote.runs.evaluate.evaluate`: test, train-clean and
fact accuracy and every noisy instance's answer) at the questions per forward pass it uses
(`BATCH`) against 2,048, on the committed reference models.

    python bench/evaluation_speed.py                 # both tasks, 2 threads, 5 repeats
    python bench/evaluation_speed.py --threads 1

Training evaluates every `eval_every` steps (51 times in an FDA cpu run), so this is part of every
training minute. Interleaved in one process, median of `--repeats` after one warm-up each. Both
sizes must give the same scores and answers, and those of the reference run's last evaluation.
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from rote.runs import evaluate
from rote.runs.data import load_dataset
from rote.runs.model import load
from rote.runs.reference import reference_runs

BASELINE = 2048


def evaluated_at(batch: int, model, tokenizer, sets) -> tuple[float, dict, list]:
    """Seconds, scores and noisy answers of one evaluation in chunks of `batch` questions."""
    evaluate.BATCH, start = batch, time.perf_counter()
    scores, said = evaluate.evaluate(model, tokenizer, sets)
    return time.perf_counter() - start, scores, said["prediction"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    used = evaluate.BATCH
    print(f"| task | {BASELINE:,} a pass (s) | {used:,} a pass (s) | ratio | same answers |\n|---|---|---|---|---|")
    for run, config in reference_runs().items():
        sets = evaluate.evaluation_sets(load_dataset(config), config.n_eval, config.seed)
        model, tokenizer = load(run / "final")
        last = pd.read_csv(run / "metrics.csv").iloc[-1]
        seconds, outputs = {BASELINE: [], used: []}, {}
        for batch in seconds:  # warm-up
            evaluated_at(batch, model, tokenizer, sets)
        for _ in range(args.repeats):
            for batch in seconds:
                took, scores, said = evaluated_at(batch, model, tokenizer, sets)
                seconds[batch].append(took)
                outputs[batch] = scores, said
        same = outputs[BASELINE] == outputs[used] and all(outputs[used][0][k] == last[k] for k in outputs[used][0])
        slow, fast = statistics.median(seconds[BASELINE]), statistics.median(seconds[used])
        print(f"| {config.task} | {slow:.2f} | {fast:.2f} | {slow / fast:.2f}x | {'yes' if same else 'NO'} |")
    evaluate.BATCH = used


if __name__ == "__main__":
    main()
