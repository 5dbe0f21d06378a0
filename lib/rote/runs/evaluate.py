"""The paper's measures: test accuracy, train-clean accuracy, Mem-Noisy and Mem-Corrected.

All are exact match of the whole answer under greedy decoding. Under teacher forcing on a target,
"every answer token's argmax equals the target token" holds exactly when greedy decoding writes
that target, so accuracy against a known target needs a single forward pass (`matches`);
`greedy_answers` decodes what the model actually says (for the per-instance record).
"""
from __future__ import annotations

import pandas as pd
import torch

from rote.runs.model import encode

# Questions a forward pass: on 2 cores an evaluation is 1.2-1.4x faster than at 2,048, with the same answers
# (bench/evaluation_speed.py).
BATCH = 128


@torch.no_grad()
def matches(model, tokenizer, prompts, targets) -> torch.Tensor:
    """Per question: does greedy decoding after `prompt` produce exactly `target`?"""
    if len(prompts) == 0:
        return torch.zeros(0, dtype=torch.bool)
    ids, mask = encode(tokenizer, prompts, targets)
    device = model.device
    out = []
    for i in range(0, len(ids), BATCH):
        x, m = ids[i: i + BATCH].to(device), mask[i: i + BATCH].to(device)
        pred = model(x).logits[:, :-1].argmax(-1)
        ok = (pred == x[:, 1:]) | ~m[:, 1:]
        out.append(ok.all(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts, n_tokens: int) -> list[str]:
    """What the model answers after each prompt: `n_tokens` greedily decoded tokens (each step
    runs only the new token, with the keys and values of the earlier ones cached)."""
    model = getattr(model, "_module", model)  # the HF model under an nnsight wrapper
    prompts = list(prompts)
    answers = [""] * len(prompts)
    if not prompts:
        return answers
    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    by_length: dict[int, list[int]] = {}
    for i, x in enumerate(ids):
        by_length.setdefault(len(x), []).append(i)
    for rows in by_length.values():
        for j in range(0, len(rows), BATCH):
            chunk = rows[j: j + BATCH]
            x = torch.tensor([ids[i] for i in chunk], device=model.device)
            step, cache = x, None
            for _ in range(n_tokens):
                out = model(step, cache=cache, use_cache=True)
                step, cache = out.logits[:, -1].argmax(-1, keepdim=True), out.cache
                x = torch.cat([x, step], dim=1)
            for i, row in zip(chunk, x[:, -n_tokens:].tolist()):
                answers[i] = tokenizer.decode(row)
    return answers


def answer_length(tokenizer, answer: str) -> int:
    return len(tokenizer(answer, add_special_tokens=False)["input_ids"])


def evaluation_sets(frame: pd.DataFrame, n_eval: int, seed: int) -> dict[str, pd.DataFrame]:
    """Fixed question sets evaluated along training: held-out test, clean training questions
    (two-hop in THR), THR one-hop facts (at most `n_eval` each, a seeded sample) and every noisy
    training instance."""
    question = frame["kind"] != "fact"
    sets = {
        "test": frame[(frame["split"] == "test")],
        "train_clean": frame[(frame["split"] == "train") & question & ~frame["noisy"]],
        "facts": frame[frame["kind"] == "fact"],
    }
    sets = {k: v.sample(min(n_eval, len(v)), random_state=seed).sort_values("id")
            for k, v in sets.items() if len(v)}
    sets["noisy"] = frame[frame["noisy"]]
    return sets


def evaluate(model, tokenizer, sets: dict[str, pd.DataFrame]) -> tuple[dict, pd.DataFrame]:
    """Accuracy on each set, Mem-Noisy and Mem-Corrected, and the model's answer to every noisy
    instance."""
    was_training = model.training
    model.eval()
    scores = {}
    for name in ("test", "train_clean", "facts"):
        if name in sets:
            scores[f"{name}_acc"] = matches(model, tokenizer, sets[name]["prompt"], sets[name]["true"]).float().mean().item()
    noisy = sets["noisy"]
    if len(noisy):
        said = greedy_answers(model, tokenizer, noisy["prompt"], answer_length(tokenizer, noisy["label"].iloc[0]))
        predictions = pd.DataFrame({"id": noisy["id"].to_numpy(), "prediction": said})
        scores["mem_noisy"] = float((predictions["prediction"].to_numpy() == noisy["label"].to_numpy()).mean())
        scores["mem_corrected"] = float((predictions["prediction"].to_numpy() == noisy["true"].to_numpy()).mean())
    else:
        predictions = pd.DataFrame({"id": [], "prediction": []})
        scores["mem_noisy"] = scores["mem_corrected"] = float("nan")
    model.train(was_training)
    return scores, predictions
