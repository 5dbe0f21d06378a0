"""Training speed on this machine: throughput against a naive HF loop, and minutes to the
milestones of the `cpu` profile.

    python bench/training_speed.py                  # both tasks: throughput, then full cpu runs
    python bench/training_speed.py --task fda --no-runs
    python bench/training_speed.py --task fda --set n_train=10000 lr=2e-3   # a candidate profile

Throughput: the same GPT-2 shape and batches, measured interleaved in this run (median ms per
step over `--steps` steps each). "naive" is the plain HF loop: GPT-2's default `gelu_new`
activation and `GPT2LMHeadModel(ids, labels=...)` with the prompt masked by -100 (logits at every
pos). "rote eager" is `rote.runs.train`'s fp32 step without compilation: the fused tanh-GELU and
logits at the readout pos only; "rote compiled" is the step `rote.runs.train` runs on CPU for long
fp32 runs (torch.compile of the loss; its one-off compile time is printed apart). Variants of it:
fused AdamW, the optimizer step compiled too (the whole step), the whole step on one thread. Then
bf16 autocast: eager with torch's fused attention (whose CPU backward in bf16 is slow at these
sequence lengths), eager with the plain attention, and "rote compiled bf16": the step `rote.runs.train`
runs for `precision=bf16` (compiled loss, plain attention; on a CPU without AVX-512 BF16 or AMX,
bf16 falls back to slow kernels). Several models trained together in one process
(`torch.func.stack_module_state` + `vmap`, compiled: the seeds of a scorecard cell), in fp32 and
bf16. Then two one-thread worker processes stepping at the same time (a LocalCluster's layout),
in each precision, against the naive loop's rate measured above (not interleaved).

Milestones: a fresh run of the cpu profile (a temporary ROTE_HOME, nothing reused), minutes of
wall time (training and evaluations) until test accuracy >= 90% and >= 95% and Mem-Noisy >= 99%,
each with the test accuracy and Mem-Noisy of that evaluation.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

import rote
from rote.runs.data import load_dataset
from rote.runs.model import build_model, build_tokenizer, encode
from rote.runs.train import answer_loss, first_reached, make_optimizer, precision_context, readout_pos_of, training_rows
from thr_map import parse  # --set's FIELD=VALUE pairs, as bench/thr_map.py reads them


def naive_step(model, optimizer, ids, mask, pos):
    labels = ids.masked_fill(~mask, -100)
    loss = model(ids, labels=labels).loss
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


def rote_step(loss_fn, amp=None):
    """rote.runs.train's step: the loss (under the autocast context `amp`, as `rote.runs.train.precision_context`
    gives it; none: fp32), clipping, AdamW."""
    amp = amp or contextlib.nullcontext()

    def step(model, optimizer, ids, mask, pos):
        with amp:
            loss = loss_fn(model, ids, pos)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return step


def compiled_optimizer(optimizer):
    """`optimizer` whose step is compiled by torch.compile (forward and backward are compiled
    with the loss): the whole training step compiled."""
    optimizer.step = torch.compile(optimizer.step)
    return optimizer


def fused(model, config):
    """`rote.runs.train`'s AdamW (same groups and betas) with the fused single-kernel implementation."""
    optimizer = make_optimizer(model, config)
    return torch.optim.AdamW(optimizer.param_groups, lr=config.lr, betas=(0.9, 0.98), fused=True)


def one_thread(step):
    """`step` run on one torch thread (in this process; the thread count is restored after)."""
    def run(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            step(*args)
        finally:
            torch.set_num_threads(threads)
    return run


def stacked(config, vocab_size: int, k: int, bf16: bool = False):
    """A step training `k` models of `config` (seeds 0..k-1) together: their parameters stacked
    (`torch.func.stack_module_state`), one compiled `vmap` of the gradient of `answer_loss` over
    (model, its own batch), one AdamW over the stacks with rote's groups, gradients clipped per
    model. Returns (step, stacked parameters, optimizer) in the bench's loop signature; the
    batch it is given holds the k batches one after another."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    models = [build_model(dataclasses.replace(config, seed=s), vocab_size) for s in range(k)]
    for model in models:
        model.config._attn_implementation = "eager"  # sdpa's CPU backward has no vmap rule
    params, buffers = stack_module_state(models)
    skeleton = models[0]

    def loss(p, b, ids, pos):
        return functional_call(skeleton, (p, b), (ids, pos), strict=False)

    skeleton.forward = lambda ids, pos: answer_loss(skeleton, ids, pos)  # noqa: E731
    grads = torch.compile(vmap(grad(loss)), dynamic=False)
    amp = precision_context(dataclasses.replace(config, precision="bf16" if bf16 else "fp32"), skeleton, "cpu")
    names = list(params)
    matrices = [params[n] for n in names if params[n].dim() >= 3]  # stacked: one more dimension
    rest = [params[n] for n in names if params[n].dim() < 3]
    optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": config.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))

    def step(_, opt, ids, mask, pos):
        with amp:
            g = grads(params, buffers, ids.view(k, -1, ids.shape[1]), pos.view(k, -1, pos.shape[1]))
        norms = torch.stack([g[n].flatten(1).pow(2).sum(1) for n in names]).sum(0).sqrt()
        scale = (1.0 / (norms + 1e-6)).clamp(max=1.0)
        for n in names:
            params[n].grad = g[n] * scale.view(-1, *[1] * (g[n].dim() - 1))
        opt.step()
    return step, params, optimizer


def training_batches(config):
    """The tokenizer and the training questions of `config` as rote.runs.train encodes them: (tokenizer,
    ids, mask, readout pos)."""
    tok = build_tokenizer(config)
    rows = training_rows(load_dataset(config), config)
    ids, mask = encode(tok, rows["prompt"], rows["label"])
    return tok, ids, mask, readout_pos_of(mask)


def throughput(config, steps: int, k: int = 4) -> tuple[dict, float]:
    """Median seconds per step of the naive loop and of rote's loop and its variants, interleaved,
    on the same batches."""
    tok, ids, mask, pos = training_batches(config)
    naive = build_model(config, len(tok))
    naive.config.activation_function = "gelu_new"
    from transformers.activations import ACT2FN
    for block in naive.transformer.h:
        block.mlp.act = ACT2FN["gelu_new"]
    compiled = lambda: torch.compile(answer_loss, dynamic=False)  # noqa: E731 - one compiled loss per loop

    fresh = lambda: build_model(config, len(tok))  # noqa: E731

    def bf16(model):
        """rote.runs.train's bf16: autocast, and the model switched to the plain attention."""
        return precision_context(dataclasses.replace(config, precision="bf16"), model, "cpu")

    def whole(precision: str = "fp32"):  # the optimizer step compiled too
        model = fresh()
        amp = precision_context(dataclasses.replace(config, precision=precision), model, "cpu")
        return rote_step(compiled(), amp), model, compiled_optimizer(make_optimizer(model, config))
    fused_attention_bf16 = torch.autocast("cpu", dtype=torch.bfloat16)  # without precision_context's switch

    loops = {"naive": (naive_step, naive, None), "rote eager": (rote_step(answer_loss), fresh(), None),
             "rote compiled": (rote_step(compiled()), fresh(), None),
             "compiled + fused AdamW": (rote_step(compiled()), m := fresh(), fused(m, config)),
             "compiled step + optimizer": whole(),
             "compiled step + optimizer, 1 thread": (lambda s, m, o: (one_thread(s), m, o))(*whole()),
             "eager bf16, fused attention": (rote_step(answer_loss, fused_attention_bf16), fresh(), None),
             "eager bf16, plain attention": (rote_step(answer_loss, bf16(m := fresh())), m, None),
             "rote compiled bf16": (rote_step(compiled(), bf16(m := fresh())), m, None),
             "compiled bf16 step + optimizer": whole("bf16"),
             f"{k} models together (vmap, compiled)": stacked(config, len(tok), k),
             f"{k} models together (vmap, compiled), bf16": stacked(config, len(tok), k, bf16=True)}
    loops = {name: (step, model, opt or make_optimizer(model, config)) for name, (step, model, opt) in loops.items()}
    models = {name: k if "together" in name else 1 for name in loops}  # models (batches) per step
    times = {name: [] for name in loops}
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for name, (step, model, opt) in loops.items():  # compile (and warm) every loop before timing
        n = config.batch_size * models[name]
        step(model, opt, ids[:n], mask[:n], pos[:n])
    compile_s = time.perf_counter() - start
    for i in range(steps + 3):
        batch = torch.randint(0, len(ids), (config.batch_size * k,), generator=g)
        for name, (step, model, opt) in loops.items():
            b = batch[: config.batch_size * models[name]]
            t = time.perf_counter()
            step(model, opt, ids[b], mask[b], pos[b])
            if i >= 3:  # warm-up steps are not timed
                times[name].append(time.perf_counter() - t)
    tokens = config.batch_size * ids.shape[1]
    out = {name: {"ms_per_step": 1000 * statistics.median(t), "tokens_per_s": models[name] * tokens / statistics.median(t)}
           for name, t in times.items()}
    return out, compile_s


def worker(task: str, steps: int, precision: str) -> None:
    """One worker process of `concurrent_workers` (its thread count from OMP_NUM_THREADS): compile and
    warm rote.runs.train's step of `precision`, say "ready", wait for "go", then print its median ms per
    step and tokens/s."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    config = rote.make_config(task, "cpu", precision=precision)
    tok, ids, mask, pos = training_batches(config)
    model = build_model(config, len(tok))
    step = rote_step(torch.compile(answer_loss, dynamic=False), precision_context(config, model, "cpu"))
    opt = make_optimizer(model, config)
    g = torch.Generator().manual_seed(os.getpid())
    batches = [torch.randint(0, len(ids), (config.batch_size,), generator=g) for _ in range(steps + 3)]
    for b in batches[:3]:
        step(model, opt, ids[b], mask[b], pos[b])
    print("ready", flush=True)
    sys.stdin.readline()
    times = []
    for b in batches[3:]:
        t = time.perf_counter()
        step(model, opt, ids[b], mask[b], pos[b])
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    print(json.dumps({"ms_per_step": 1000 * median, "tokens_per_s": config.batch_size * ids.shape[1] / median}), flush=True)


def concurrent_workers(task: str, steps: int, n: int = 2, threads: int = 1, precision: str | None = None,
                       environ: dict | None = None) -> dict:
    """`n` worker processes of `threads` torch threads each, stepping rote.runs.train's step of `precision`
    (default: the cpu profile's) at the same time (they start together once all have compiled): the
    median of their ms per step and the sum of their tokens per second. `environ`: more variables
    for the workers."""
    precision = precision or rote.make_config(task, "cpu").precision
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(environ or {})}
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", task, "--precision", precision,
                               "--steps", str(steps)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.stdout.readline()) for p in procs]
    for p in procs:
        p.wait()
    return {"ms_per_step": statistics.median(r["ms_per_step"] for r in results),
            "tokens_per_s": sum(r["tokens_per_s"] for r in results)}


def milestones(config, keep: bool) -> dict:
    """Train `config` from nothing in a temporary ROTE_HOME; with `keep`, move the finished run
    and its dataset into the real one afterwards (the book then loads it instead of training)."""
    real_home = rote.store.home()
    with tempfile.TemporaryDirectory() as home:
        os.environ["ROTE_HOME"] = home
        start = time.perf_counter()
        rote.train(config)
        wall = time.perf_counter() - start
        table = rote.metrics(config)
        if keep:
            for path in (rote.run_dir(config), rote.runs.data.dataset_dir(config)):
                target = real_home / path.relative_to(home)
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(path), target)
        del os.environ["ROTE_HOME"]
    last = table.iloc[-1]
    return {"test_90": first_reached(table, "test_acc", 0.90), "test_95": first_reached(table, "test_acc", 0.95),
            "mem_99": first_reached(table, "mem_noisy", 0.99),
            "both": first_reached(table.assign(both=(table["test_acc"] >= 0.95) & (table["mem_noisy"] >= 0.99)),
                                  "both", True),
            "wall_min": wall / 60, "steps": int(last["step"]), "test_acc": last["test_acc"],
            "mem_noisy": last["mem_noisy"], "mem_corrected": last["mem_corrected"],
            "peak_test_acc": table["test_acc"].max()}


def minutes(hit) -> str:
    if hit is None:
        return "not reached"
    return f"{hit['minutes']:.1f} (step {hit['step']}; test {hit['test_acc']:.3f}, Mem-Noisy {hit['mem_noisy']:.3f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["fda", "thr", "both"], default="both")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per loop")
    parser.add_argument("--no-runs", action="store_true", help="throughput only, no full training runs")
    parser.add_argument("--keep", action="store_true", help="keep the trained runs in ROTE_HOME for the book")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="the cpu profile with these fields changed, e.g. n_train=10000 lr=2e-3")
    parser.add_argument("--worker", choices=["fda", "thr"], help=argparse.SUPPRESS)  # see concurrent_workers
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.steps, args.precision)
    changes = parse(args.set)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU kernels: {torch.backends.cpu.get_cpu_capability()}")
    tasks = ["fda", "thr"] if args.task == "both" else [args.task]
    for task in tasks:
        try:
            config = rote.make_config(task, "cpu", **changes)
        except rote.config.ConfigError as err:
            raise SystemExit(f"ConfigError: {err}") from None
        with tempfile.TemporaryDirectory() as home:
            os.environ["ROTE_HOME"] = home
            t, compile_s = throughput(config, args.steps)
            for precision in ("fp32", "bf16"):
                t[f"2 one-thread workers at once (sum), {precision}"] = concurrent_workers(task, args.steps, precision=precision)
        del os.environ["ROTE_HOME"]
        print(f"\n{task}: {config.n_layer} layers x {config.n_embd}, batch {config.batch_size}")
        print("| loop | ms/step (median) | tokens/s |\n|---|---|---|")
        for name, r in t.items():
            print(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:,.0f} |")
        for name in t:
            if name != "naive":
                print(f"throughput ratio {name} / naive: {t[name]['tokens_per_s'] / t['naive']['tokens_per_s']:.2f}x")
        print(f"one-off compile and warm-up time of all loops: {compile_s:.0f} s")
        if not args.no_runs:
            m = milestones(config, args.keep)
            print("| task | min to 90% test | min to 95% test | min to 99% Mem-Noisy | wall min | steps | peak test | "
                  "final test | final Mem-Noisy | final Mem-Corrected |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            print(f"| {task} | {minutes(m['test_90'])} | {minutes(m['test_95'])} | {minutes(m['mem_99'])} | "
                  f"{m['wall_min']:.1f} | {m['steps']} | "
                  f"{m['peak_test_acc']:.3f} | {m['test_acc']:.3f} | {m['mem_noisy']:.3f} | {m['mem_corrected']:.3f} |",
                  flush=True)
            print(f"test >= 95% and Mem-Noisy >= 99% at one evaluation: {minutes(m['both'])}", flush=True)


if __name__ == "__main__":
    main()
