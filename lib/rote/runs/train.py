"""Training: answer-token cross-entropy, AdamW, warmup then a constant or cosine rate.

Each config trains in its own run directory (`runs/<task>-<config hash>/`):

    config.json               the full config
    metrics.csv               one row per evaluation (test/train-clean/fact accuracy, Mem-Noisy,
                              Mem-Corrected, loss, wall time, throughput), rewritten atomically
    noisy_predictions.csv     the model's answer to every noisy instance at every evaluation
    state.pt                  everything needed to resume (weights, optimizer, schedule, step)
    checkpoints/step-NNNNNN/  HF checkpoints (safetensors + tokenizer + sha256.json) every `checkpoint_every` steps
    final/                    the last checkpoint; written last, so its presence means "finished"
                              (deleted, it is written again from state.pt without training)

Stop it at any time and run the same command again: it resumes from the last evaluation, and on
CPU the final weights equal those of an uninterrupted run. On one machine and thread count, one
config trains to the same weights every time (`kernels_context`); another thread count or CPU sums
in another order, another floating-point path.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from rote.config import Config, OneLineError, config_hash, validate
from rote.runs import reference
from rote.runs.data import load_dataset
from rote.runs.evaluate import evaluate, evaluation_sets
from rote.runs.model import build_model, build_tokenizer, encode, load, save
from rote.store import atomic_path, locked, run_dir, write_csv, write_json


class RunError(OneLineError, RuntimeError):
    """A run directory that cannot be resumed as it is."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def decay_start(config: Config, rows=()) -> int:
    """The step at which the wsd decay begins: the first evaluation in `rows` (the metrics so far)
    whose train-clean accuracy reached `decay_when_train_acc`, and at the latest `max_steps -
    decay_steps`. Composition sets in after a plateau whose length varies with seed and floating-point
    path; decaying once it is under way, not at a fixed step, fits the noise after composing on every
    run. Read from the evaluations, so a resumed run decays where an uninterrupted one does."""
    latest = config.max_steps - config.decay_steps
    if config.decay_when_train_acc is not None:
        for row in rows:
            if row["step"] < latest and row.get("train_clean_acc", 0.0) >= config.decay_when_train_acc:
                return int(row["step"])
    return latest


def last_step(config: Config, rows=()) -> int:
    """The step at which the schedule ends: `max_steps`, or `decay_steps` after a wsd decay began."""
    return decay_start(config, rows) + config.decay_steps if config.schedule == "wsd" else config.max_steps


def learning_rate(config: Config, step: int, decay_from: int | None = None) -> float:
    """Linear warmup over `warmup_steps`, then constant, cosine decay to 0 at `max_steps`, or
    warmup-stable-decay (`wsd`): constant, then cosine decay to 0 over `decay_steps` from
    `decay_from` (`decay_start`; by default the last `decay_steps` of the run)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    if config.schedule == "cosine":
        start, length = config.warmup_steps, config.max_steps - config.warmup_steps
    else:
        start, length = decay_start(config) if decay_from is None else decay_from, config.decay_steps
    progress = max(0, step - start) / max(1, length)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_order(n: int, config: Config, epoch: int) -> torch.Tensor:
    """The order of training examples in `epoch`: a permutation that depends on seed and epoch
    only, so a resumed run sees the same batches."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + epoch))


def weight_decay(config: Config, step: int, decay_from: int | None = None) -> float:
    """`weight_decay`, or `decay_weight_decay` from the start of the wsd decay phase (`decay_from`, by
    default the last `decay_steps`): a strong decay holds memorization back while the model
    composes; a weaker one lets the noise be fitted."""
    start = decay_start(config) if decay_from is None else decay_from
    if config.decay_weight_decay is not None and step >= start:
        return config.decay_weight_decay
    return config.weight_decay


def batch_at(step: int, config: Config, n_rows: int, facts: torch.Tensor, orders: dict) -> torch.Tensor:
    """The rows of training step `step`: the facts alone for the first `facts_first_steps` steps (the
    curriculum), then epochs over all training rows. Every step is a full batch (static shapes);
    `orders` caches the current epoch's permutation."""
    if step < config.facts_first_steps:
        pool, local = facts, step
    else:
        pool, local = None, step - config.facts_first_steps
    n = n_rows if pool is None else len(pool)
    batch_size = min(config.batch_size, n)
    epoch, i = divmod(local, n // batch_size)
    key = (pool is None, epoch)
    if key not in orders:
        orders.clear()
        order = batch_order(n, config, epoch).to(facts.device)
        orders[key] = order if pool is None else pool[order]
    return orders[key][i * batch_size: (i + 1) * batch_size]


def training_rows(frame: pd.DataFrame, config: Config) -> pd.DataFrame:
    """The questions of one epoch: every training question, then (THR) the one-hop facts
    `fact_repeats - 1` more times, so that the facts are learned before the two-hop questions
    are memorized (see the THR regime appendix)."""
    rows = frame[frame["split"] == "train"]
    facts = rows[rows["kind"] == "fact"]
    return pd.concat([rows] + [facts] * (config.fact_repeats - 1), ignore_index=True)


def readout_pos_of(mask: torch.Tensor) -> torch.Tensor:
    """Per sequence, the readout pos of its answer: the pos whose next token is an answer token
    ([N, answer length]; every answer of a task has the same number of tokens)."""
    rows, pos = mask[:, 1:].nonzero(as_tuple=True)
    return pos.view(mask.shape[0], -1)


def answer_loss(model, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (the prompt is context, not a target). Logits are
    computed at the readout pos `pos` only, with static shapes so that the step compiles."""
    hidden = model.transformer(ids).last_hidden_state
    picked = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    logits = model.lm_head(picked)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.gather(1, pos + 1).flatten())


def loss_function(config: Config, device: str, compile: bool | None):
    """`answer_loss`, compiled with torch.compile on CPU for long runs (1.1x faster steps on an idle
    2-core machine, 2.4x on a loaded one; compiling costs about a minute once, so short runs stay
    eager). `compile` or the ROTE_COMPILE environment variable (0/1) overrides the choice."""
    if compile is None:
        env = os.environ.get("ROTE_COMPILE")
        compile = env == "1" if env is not None else device == "cpu" and config.max_steps >= 1000
    return torch.compile(answer_loss, dynamic=False) if compile else answer_loss


def precision_context(config: Config, model, device: str):
    """The autocast context of `config.precision` for training steps. bf16 runs the forward's
    matrix products in bf16 (4x fp32's rate on a CPU with AVX-512 BF16) and keeps weights, gradients
    and AdamW in fp32; it also switches `model` to the plain attention, since the fused kernel's
    bf16 backward on CPU is slower than the whole rest of the step at these sequence lengths."""
    bf16 = config.precision == "bf16"
    if bf16:
        model.config._attn_implementation = "eager"
        if device == "cpu" and not native_bf16():
            warnings.warn("this CPU has no bf16 units (AVX-512 BF16 or AMX): precision=bf16 trains several times "
                          "slower than fp32 here; precision='fp32' trains in fp32 (another config, another run)",
                          stacklevel=2)
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)


@contextlib.contextmanager
def kernels_context(config: Config, device: str):
    """The kernels of `config.kernels` for training steps. On several CPU threads the compiled
    step's backward of the embeddings adds each token's gradient into its row with atomic adds
    (`embedding_dense_backward` in inductor's C++: `atomic_add_vec`), in an order that changes from
    run to run: one config would train to other weights each time. `deterministic` turns on torch's
    deterministic algorithms, under which the compiled step calls aten's `index_put_` for it, the
    same sums in the same order on every run; on one thread both compute the same numbers. `fast`
    keeps the atomic adds. On a GPU it asks cuBLAS for its deterministic workspace and warns (not
    stops) at an op without a deterministic kernel."""
    if config.kernels == "fast":
        yield
        return
    cuda = device.startswith("cuda")
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    torch.utils.deterministic.fill_uninitialized_memory = False  # no step reads memory it did not write
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = before[2]


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products natively (oneDNN's check)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_optimizer(model, config: Config) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98))


def train(config: Config, device: str | None = None, stop_after: int | None = None,
          progress: bool = True, compile: bool | None = None) -> Path:
    """Train `config` to the end (or to `stop_after` steps, leaving it resumable); return its run
    directory. A finished run is left as it is; a config with a published reference run that has
    not begun here gets that run instead (`rote.runs.reference.install_for`); a run being trained by
    another process is waited for (`store.locked`)."""
    validate(config)
    run = run_dir(config)
    if (run / "final" / "model.safetensors").exists():
        return run
    if not (run / "state.pt").exists() and reference.install_for(config):
        return run
    device = device or default_device()
    with locked(run), kernels_context(config, device):
        if not (run / "final" / "model.safetensors").exists():
            _train(config, run, device, stop_after, progress, compile)
    return run


def resume_state(run: Path, device: str) -> dict:
    """The training state saved in `run`: tensors and numbers only (`weights_only`: a run directory
    on a shared file system must not be able to run code in whoever resumes it)."""
    try:
        return torch.load(run / "state.pt", map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means a corrupt or foreign file
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise RunError(f"cannot resume {run}: state.pt is unreadable ({reason}); delete {run / 'state.pt'} "
                       "to restart this run from step 0 (or the whole directory)") from None


def run_table(run: Path, name: str, *columns: str) -> pd.DataFrame:
    """A table of `run` (metrics.csv, noisy_predictions.csv) with `columns`; a one-line error saying
    what to do if it is missing or unreadable."""
    read = dict(dtype={"prediction": str}, keep_default_na=False) if name == "noisy_predictions.csv" else {}
    try:
        table = pd.read_csv(run / name, **read)
        missing = [c for c in columns if c not in table.columns]
        said = f"lacks the column(s) {', '.join(missing)}" if missing else ""
    except (OSError, ValueError) as err:  # pandas' parser errors are ValueErrors
        said = f"is missing or unreadable ({type(err).__name__})"
    if said:
        raise RunError(f"{run / name} {said}; {restart(run)}")
    return table


def restart(run: Path) -> str:
    """How to start `run` again from step 0, in a few words."""
    if (run / "state.pt").exists() and not (run / "final").exists():
        return f"delete {run / 'state.pt'} to restart this run from step 0"
    return f"delete {run} and rerun (it trains again)"


def training_segments(run: Path) -> list[dict]:
    """How `run` was trained, one entry per stretch trained without a break (a resumed run has
    several): from_step, to_step (the last evaluation it wrote), device, threads, host, torch. []
    for a run that recorded none."""
    try:
        segments = json.loads((run / "segments.json").read_text())
    except (OSError, ValueError):
        return []
    return segments if isinstance(segments, list) else []


def _train(config: Config, run: Path, device: str, stop_after: int | None, progress: bool,
           compile: bool | None) -> None:
    frame = load_dataset(config)
    tokenizer = build_tokenizer(config)
    train_rows = training_rows(frame, config)
    ids, mask = encode(tokenizer, train_rows["prompt"], train_rows["label"])
    ids, pos = ids.to(device), readout_pos_of(mask).to(device)
    sets = evaluation_sets(frame, config.n_eval, config.seed)

    model = build_model(config, len(tokenizer)).to(device)
    step_loss = loss_function(config, device, compile)
    optimizer = make_optimizer(model, config)
    step, seconds, rows, predictions = 0, 0.0, [], []
    if (run / "state.pt").exists():
        state = resume_state(run, device)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            step, seconds = int(state["step"]), float(state["seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:  # another config's state, or a damaged one
            raise RunError(f"cannot resume {run}: state.pt does not fit this run's config ({type(err).__name__}); "
                           f"{restart(run)}") from None
        rows = [r for r in run_table(run, "metrics.csv", "step").to_dict("records") if r["step"] <= step]
        old = run_table(run, "noisy_predictions.csv", "step", "id", "prediction")
        if not rows or rows[-1]["step"] != step:
            raise RunError(f"cannot resume {run}: metrics.csv has no evaluation at step {step} of state.pt; {restart(run)}")
        predictions = [old[old["step"] <= step]]
    else:
        write_json(run / "config.json", dataclasses.asdict(config))

    segments = [dict(seg, to_step=min(seg.get("to_step", step), step)) for seg in training_segments(run)
                if isinstance(seg, dict) and seg.get("from_step", step) < step]
    if step and not segments:  # resumed from a run that recorded none
        segments = [{"from_step": 0, "to_step": step, "device": "not recorded"}]
    segment = {"from_step": step, "to_step": step, "device": device, "threads": torch.get_num_threads(),
               "host": platform.node(), "torch": torch.__version__}
    segments.append(segment)
    steps_per_epoch = len(ids) // min(config.batch_size, len(ids))  # full batches only: static shapes
    amp = precision_context(config, model, device)
    bar = tqdm(total=config.max_steps, initial=step, desc=f"{config.task} {config_hash(config)}",
               disable=not progress, dynamic_ncols=True)
    losses, tokens, train_seconds, start = [], 0, 0.0, time.perf_counter()

    def record():
        nonlocal losses, tokens, train_seconds
        scores, said = evaluate(model, tokenizer, sets)
        row = {"step": step, "epoch": step / steps_per_epoch, "seconds": seconds + time.perf_counter() - start,
               "loss": float(sum(losses) / len(losses)) if losses else float("nan"),
               "lr": learning_rate(config, max(step - 1, 0), decay_start(config, rows)),
               "tokens_per_s": tokens / train_seconds if train_seconds else float("nan"), **scores}
        rows.append(row)
        predictions.append(said.assign(step=step)[["step", "id", "prediction"]])
        write_csv(run / "metrics.csv", pd.DataFrame(rows))
        write_csv(run / "noisy_predictions.csv", pd.concat(predictions, ignore_index=True))
        segment["to_step"] = step
        write_json(run / "segments.json", segments)
        with atomic_path(run / "state.pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "seconds": row["seconds"]}, tmp)
        bar.set_postfix(test=f"{scores.get('test_acc', 0):.2f}", noisy=f"{scores['mem_noisy']:.2f}",
                        corrected=f"{scores['mem_corrected']:.2f}")
        losses, tokens, train_seconds = [], 0, 0.0
        return row

    if step == 0 and not rows:
        record()
    def done(row) -> bool:
        memorized = config.stop_mem_noisy is not None and row["mem_noisy"] >= config.stop_mem_noisy
        return row["step"] >= last_step(config, rows) or memorized

    model.train()
    facts = torch.from_numpy(np.flatnonzero(train_rows["kind"].to_numpy() == "fact"))
    facts = facts[: len(facts) // config.fact_repeats].to(device)  # each fact once
    orders = {}
    decay_from, end = decay_start(config, rows), last_step(config, rows)  # both move only at an evaluation
    while (stop_after is None or step < stop_after) and not done(rows[-1]):
        t0 = time.perf_counter()
        batch = batch_at(step, config, len(ids), facts, orders)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step, decay_from)
        optimizer.param_groups[0]["weight_decay"] = weight_decay(config, step, decay_from)  # group 0: matrices
        with amp:
            loss = step_loss(model, ids[batch], pos[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        losses.append(loss.item())
        tokens += batch.numel() * ids.shape[1]
        train_seconds += time.perf_counter() - t0
        bar.update(1)
        if step % config.checkpoint_every == 0:
            save(model, tokenizer, run / "checkpoints" / f"step-{step:06d}")
        if step % config.eval_every == 0 or step == end:
            record()
            decay_from, end = decay_start(config, rows), last_step(config, rows)
    bar.close()
    if done(rows[-1]):
        save(model, tokenizer, run / "checkpoints" / f"step-{step:06d}")
        save(model, tokenizer, run / "final")  # one rename: its presence means finished


def is_finished(config: Config) -> bool:
    return (run_dir(config) / "final" / "model.safetensors").exists()


def get_or_train(config: Config, device: str | None = None, progress: bool = True):
    """The trained model of `config` and its tokenizer, training (or resuming) only if no finished
    run exists."""
    run = train(config, device=device, progress=progress)
    return load(run / "final", device=device or default_device())


def metrics(config: Config) -> pd.DataFrame:
    """The evaluation table of `config`'s run."""
    return run_table(run_dir(config), "metrics.csv", "step")


def first_row(table: pd.DataFrame, column: str, threshold: float) -> pd.Series | None:
    """The first evaluation (metrics row) at which `column` reached `threshold` (None: never)."""
    hit = table[table[column] >= threshold]
    return None if hit.empty else hit.iloc[0]


def first_reached(table: pd.DataFrame, column: str, threshold: float) -> dict | None:
    """The first evaluation at which `column` reached `threshold`: its step and minutes, and the
    test accuracy and Mem-Noisy there."""
    row = first_row(table, column, threshold)
    if row is None:
        return None
    return {"step": int(row["step"]), "minutes": float(row["seconds"]) / 60,
            **{k: float(row[k]) for k in ("test_acc", "mem_noisy") if k in row}}


def noisy_predictions(config: Config) -> pd.DataFrame:
    """Per evaluation step and noisy instance: what the model answered."""
    return run_table(run_dir(config), "noisy_predictions.csv", "step", "id", "prediction")
