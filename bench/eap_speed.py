"""Speed of one edge attribution patching pass (`rote.interp.eap.edge_scores`): nnsight against the
plain-torch twin (inside `rote.interp.edits.plain_hooks()`).

    python bench/eap_speed.py                          # cpu profile, both tasks, 2 threads
    python bench/eap_speed.py --profile tiny --threads 1 --repeats 7
    python bench/eap_speed.py --untrained --threads 1      # the cpu profile's shape, untrained
    python bench/eap_speed.py --analysis               # also the circuits chapter's whole analysis per task

Each model comes from `rote.get_or_train` (trained first if no finished run exists: with the cpu
profile that takes many minutes); with `--untrained`, a freshly initialized model of the profile's
shape (the time of a pass does not depend on the weights). One pass = every edge's score over `--rows` clean training
questions and their corrupted inputs (`rote.interp.eap.corrupted_inputs`), in one batch: a forward pass
on the corrupted input and a forward and backward pass on the clean one. Measured interleaved in
one process, median of `--repeats` runs after one warm-up each; "model fwd+bwd" is the HF model's
own forward on both inputs and backward on the clean one, the floor of any implementation. The two
paths are checked to agree before timing. Target: nnsight within 1.2x of the twin.

With `--analysis`, then the circuits chapter's analysis of each task's trained model, as the
chapter runs it (`rote.observations.circuits.shared_circuits` and `circuit_claims`: the instances,
Observation 1's readout for the override layer, three EAP passes, the faithfulness curves by real
patching, the random circuits and 1,000 bootstrap resamples), median of `--analysis-repeats` runs,
against the chapter's budget of 2 minutes per task.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import rote
from readout_speed import median_ms  # interleaved medians, as the readout benchmark times them
from rote import parameters
from rote.interp import eap
from rote.interp.edits import plain_hooks
from rote.interp.instances import questions
from rote.runs.model import build_model, build_tokenizer
from rote.runs.train import is_finished

TARGET = 1.2
BUDGET = 120.0  # seconds: the circuits chapter's analysis of one task, cpu profile, 2 cores


def twin_scores(model, pairs, **kwargs):
    with plain_hooks():
        return eap.edge_scores(model, pairs, **kwargs)


def model_pass(model, pairs):
    """The HF model alone: forward on the corrupted input, forward and backward on the clean one."""
    with torch.no_grad():
        model(pairs.corrupt)
    with torch.enable_grad():
        eap.logit_difference(model(pairs.clean).logits, pairs).sum().backward()
    model.zero_grad(set_to_none=True)


def model_of(config, untrained: bool):
    """The trained model of `config` and its tokenizer, or a fresh one of its shape."""
    if untrained:
        tok = build_tokenizer(config)
        return build_model(config, len(tok)).eval(), tok
    if not is_finished(config):
        print(f"{config.task}: no finished run of {rote.config_hash(config)}; training it first", flush=True)
    return rote.get_or_train(config, device="cpu", progress=False)


def measure(task: str, profile: str, n_rows: int, repeats: int, overrides: dict, untrained: bool) -> dict:
    config = rote.make_config(task, profile, **overrides)
    model, tok = model_of(config, untrained)
    frame = rote.load_dataset(config)
    rows = questions(frame)
    rows = rows[~rows["noisy"]].head(n_rows)
    pairs = eap.pair_batch(tok, rows, eap.corrupted_inputs(rows, frame, task))
    a, b = eap.edge_scores(model, pairs, batch_size=n_rows), twin_scores(model, pairs, batch_size=n_rows)
    worst = float((a - b).abs().max() / a.abs().max())
    assert worst < 1e-4, worst
    ms = median_ms({"nnsight": lambda: eap.edge_scores(model, pairs, batch_size=n_rows),
                    "twin": lambda: twin_scores(model, pairs, batch_size=n_rows),
                    "fwd_bwd": lambda: model_pass(model, pairs)}, repeats)
    return {"task": task, "model": f"{config.n_layer}x{config.n_embd}/{config.n_head}", "rows": len(pairs),
            "edges": len(a), "worst": worst, **ms}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr", "both"], default="both")
    parser.add_argument("--profile", default="cpu", choices=rote.config.PROFILES)
    parser.add_argument("--rows", type=int, default=200, help="clean questions in the pass (one batch)")
    parser.add_argument("-o", "--overrides", type=json.loads, default={}, help="config overrides as JSON")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the book's CPU)")
    parser.add_argument("--untrained", action="store_true", help="a fresh model of the profile's shape")
    parser.add_argument("--analysis", action="store_true", help="also time the circuits chapter's analysis per task")
    parser.add_argument("--analysis-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(t, args.profile, args.rows, args.repeats, args.overrides, args.untrained)
            for t in parameters.chapter_tasks(args.task)]
    which = "untrained" if args.untrained else "trained"
    print(f"\none EAP pass, {args.profile} profile ({which}), {args.threads} thread(s), median of {args.repeats} (ms)\n")
    head = (f"{'task':<5} {'model':<9} {'rows':>5} {'edges':>6} | {'nnsight':>8} {'twin':>8} {'ratio':>6} | "
            f"{'model fwd+bwd':>13} | {'max rel. diff':>13}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['task']:<5} {r['model']:<9} {r['rows']:>5} {r['edges']:>6} | {r['nnsight']:>8.1f} {r['twin']:>8.1f} "
              f"{r['nnsight'] / r['twin']:>5.2f}x | {r['fwd_bwd']:>13.1f} | {r['worst']:>13.1e}")
    worst = max(r["nnsight"] / r["twin"] for r in rows)
    print(f"\nnnsight / twin: at most {worst:.2f}x ({'within' if worst <= TARGET else 'OVER'} the {TARGET}x target)")
    if args.analysis:
        analysis_table(args)


def analysis_table(args) -> None:
    """The circuits chapter's analysis per task (trained models only), median seconds against BUDGET."""
    from rote.observations import circuits

    print(f"\nthe circuits chapter's analysis, {args.profile} profile, {args.threads} thread(s), "
          f"median of {args.analysis_repeats} (s)\n")
    print(f"{'task':<5} {'k':>5} {'edges':>6} | {'seconds':>8} {'of budget':>10}")
    for task in parameters.chapter_tasks(args.task):
        config = rote.make_config(task, args.profile, **args.overrides)
        rote.get_or_train(config, device="cpu", progress=False)
        times = []
        for _ in range(args.analysis_repeats):
            t = time.perf_counter()
            result = circuits.shared_circuits(config, progress=False)
            circuits.circuit_claims(result)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        print(f"{task:<5} {result.size:>5} {len(result.edges):>6} | {seconds:>8.1f} {seconds / BUDGET:>9.2f}x")


if __name__ == "__main__":
    main()
