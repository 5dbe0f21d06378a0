"""Observation 1: after memorization, the correct label is still computed, then overridden.

The logit lens (`rote.lens`) reads every layer's residual stream at the answer positions, under
teacher forcing of the label in data. On the *memorized noisy instances* (training questions with
a noisy label that the final model answers with that label) we count, per layer, how often the
top-1 readout is the correct label ("Mem-Corrected" readout) and how often it is the noisy label
("Mem-Noisy" readout), with the mean rank of each (0 = top). Clean training questions that the
model answers correctly give the reference curves. THR adds the bridge entity's share and rank.

FDA answers are four digit tokens. A memorized noisy instance enters at every answer position
whose noisy digit differs from the correct digit (teacher-forced on the noisy label, so at later
positions the prefix is the noisy one); positions where both agree are left out, since there the
correct and the noisy readout are the same token. Clean instances enter at all four positions.
Summaries are per position and pooled ("all").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .data import load_dataset
from .evaluate import answer_length, greedy_answers
from .lens import logit_lens, logit_lens_hooks
from .model import load
from .train import default_device, get_or_train, metrics, run_dir

GROUPS = ("memorized noisy", "clean")
FDA_POSITIONS = ("thousands", "hundreds", "tens", "units")  # answer position 0..3


def position_name(task: str, position) -> str:
    """A readable name of an answer position (FDA digits; THR has a single answer token)."""
    if position == "all":
        return "all"
    return FDA_POSITIONS[int(position)] if task == "fda" else "answer"


# ---- which instances enter -----------------------------------------------------------------------

def questions(frame: pd.DataFrame) -> pd.DataFrame:
    """Training questions (FDA additions, THR two-hop questions; not THR one-hop facts)."""
    return frame[(frame["split"] == "train") & (frame["kind"] != "fact")]


def noisy_instances(model, tokenizer, frame: pd.DataFrame) -> pd.DataFrame:
    """Every noisy training instance with the final model's greedy answer ("prediction") and
    whether that answer is the noisy label ("memorized") or the true answer ("corrected")."""
    noisy = questions(frame)
    noisy = noisy[noisy["noisy"]].copy()
    n = answer_length(tokenizer, noisy["answer"].iloc[0]) if len(noisy) else 1
    noisy["prediction"] = greedy_answers(model, tokenizer, noisy["prompt"], n)
    noisy["memorized"] = noisy["prediction"] == noisy["answer"]
    noisy["corrected"] = noisy["prediction"] == noisy["true"]
    return noisy.reset_index(drop=True)


def clean_instances(model, tokenizer, frame: pd.DataFrame, n: int = 200, seed: int = 0,
                    exclude=()) -> pd.DataFrame:
    """A seeded sample of at most `n` clean training questions that the final model answers
    correctly (the reference), leaving out the ids in `exclude`."""
    clean = questions(frame)
    clean = clean[~clean["noisy"] & ~clean["id"].isin(list(exclude))]
    if clean.empty:
        return clean.assign(prediction=pd.Series(dtype=object), correct=pd.Series(dtype=bool))
    length = answer_length(tokenizer, clean["true"].iloc[0])
    # shuffle once (seeded), then take the first n answered correctly, in batches
    order = clean.sample(frac=1.0, random_state=seed)
    picked = []
    for start in range(0, len(order), max(4 * n, 256)):
        chunk = order.iloc[start: start + max(4 * n, 256)].copy()
        chunk["prediction"] = greedy_answers(model, tokenizer, chunk["prompt"], length)
        chunk["correct"] = chunk["prediction"] == chunk["true"]
        picked.append(chunk[chunk["correct"]])
        if sum(len(p) for p in picked) >= n:
            break
    out = pd.concat(picked).head(n)
    return out.sort_values("id").reset_index(drop=True)


def differing_positions(instances: pd.DataFrame, task: str) -> pd.DataFrame:
    """One row per (id, position) that enters the readout: for a noisy FDA instance every digit
    where label and true answer differ (`first`: the first such digit, whose prefix is still the
    true one); for a clean one every digit; THR: the one answer token."""
    rows = []
    for inst in instances.itertuples(index=False):
        if task == "fda":
            label, true = str(inst.answer), str(inst.true)
            keep = [k for k in range(len(true)) if label[k] != true[k]] if inst.noisy else list(range(len(true)))
        else:
            keep = [0]
        for k in keep:
            rows.append({"id": inst.id, "position": k, "first": k == keep[0]})
    return pd.DataFrame(rows, columns=["id", "position", "first"])


# ---- readout --------------------------------------------------------------------------------------

def readout_entries(lens: pd.DataFrame, entries: pd.DataFrame, group: str) -> pd.DataFrame:
    """The lens rows of the (id, position) `entries`, with the group and what the top-1 readout
    is: "correct" (the true answer's token), "noisy" (the label's token, on noisy instances),
    "bridge" (THR) or "other"."""
    if entries.empty:
        return lens.iloc[:0].assign(group=pd.Series(dtype=object), first=pd.Series(dtype=bool),
                                    readout=pd.Series(dtype=object))
    rows = lens.merge(entries, on=["id", "position"], how="inner")
    correct = rows["true_rank"].eq(0).fillna(False).to_numpy(bool)
    noisy = rows["label_rank"].eq(0).fillna(False).to_numpy(bool) & ~correct
    bridge = rows["bridge_rank"].eq(0).fillna(False).to_numpy(bool)
    rows["readout"] = np.select([correct, noisy, bridge], ["correct", "noisy", "bridge"], "other")
    rows["group"] = group
    return rows


def layer_shares(entries: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per group, answer position (and pooled: "all") and layer: how many readouts enter, the
    share whose top-1 is the correct label (Mem-Corrected readout), the noisy label (Mem-Noisy
    readout; NaN on clean instances, where both are the same token), the bridge (THR), the share
    where the correct label outranks the noisy one, and mean ranks (0 = top)."""
    columns = ["group", "position", "layer", "n", "share_correct", "share_noisy", "share_bridge",
               "share_correct_above_noisy", "mean_rank_correct", "mean_rank_noisy", "mean_rank_bridge"]
    if entries.empty:
        return pd.DataFrame(columns=columns)
    e = entries.assign(
        is_correct=entries["true_rank"].eq(0).astype(float),
        is_noisy=entries["label_rank"].eq(0).astype(float),
        is_bridge=entries["bridge_rank"].eq(0).astype(float),
        above=(entries["true_rank"] < entries["label_rank"]).astype(float),
        r_true=entries["true_rank"].astype(float), r_label=entries["label_rank"].astype(float),
        r_bridge=entries["bridge_rank"].astype(float))
    clean = e["group"] == "clean"
    e.loc[clean, ["is_noisy", "above", "r_label"]] = np.nan
    if task != "thr":
        e[["is_bridge", "r_bridge"]] = np.nan
    pooled = e.assign(position="all") if task == "fda" else e.iloc[:0]
    both = pd.concat([e.assign(position=e["position"].astype(object)), pooled], ignore_index=True)
    out = both.groupby(["group", "position", "layer"], sort=False).agg(
        n=("id", "size"), share_correct=("is_correct", "mean"), share_noisy=("is_noisy", "mean"),
        share_bridge=("is_bridge", "mean"), share_correct_above_noisy=("above", "mean"),
        mean_rank_correct=("r_true", "mean"), mean_rank_noisy=("r_label", "mean"),
        mean_rank_bridge=("r_bridge", "mean")).reset_index()
    order = {g: i for i, g in enumerate(GROUPS)}
    out["_g"] = out["group"].map(order)
    out["_p"] = out["position"].map(lambda p: 99 if p == "all" else int(p))
    return out.sort_values(["_g", "_p", "layer"]).drop(columns=["_g", "_p"]).reset_index(drop=True)[columns]


@dataclass
class LayerReadout:
    """Observation 1 for one model: the instances, every readout entry, and the per-layer table."""
    task: str
    n_layer: int
    noisy: pd.DataFrame  # every noisy training instance, with the final prediction
    clean: pd.DataFrame  # the clean reference instances (answered correctly)
    entries: pd.DataFrame  # lens rows that enter, with group and readout category
    shares: pd.DataFrame  # `layer_shares` of entries
    config: Config | None = None
    extra: dict = field(default_factory=dict)

    @property
    def memorized(self) -> pd.DataFrame:
        return self.noisy[self.noisy["memorized"]]


def control_answers(instances: pd.DataFrame, frame: pd.DataFrame, task: str, seed: int = 0) -> pd.Series:
    """Per noisy instance, a matched control answer drawn the way true answers are drawn (the label
    prior), of the label's length. THR: a person drawn from the true answers of the training
    questions that ask the same second relation, other than the question's subject, bridge, true
    answer and label. FDA: the label with each digit that differs from the true sum replaced by a
    digit drawn from the true sums' digits at that place over the clean training questions, other
    than the true and the label digit there. Seeded."""
    rng = np.random.default_rng(seed)
    clean = questions(frame)
    clean = clean[~clean["noisy"]]
    out = []
    if task == "thr":
        prior = {r: g["true"].to_numpy() for r, g in clean.groupby("r2")}
        for inst in instances.itertuples(index=False):
            taken = {inst.subject, inst.bridge, inst.true, inst.answer}
            pool = [x for x in prior.get(inst.r2, clean["true"].to_numpy()) if x not in taken]
            out.append(pool[rng.integers(len(pool))] if pool else inst.answer)
        return pd.Series(out, index=instances.index, dtype=object)
    places = [np.array([t[k] for t in clean["true"].astype(str)]) for k in range(4)]
    for label, true in zip(instances["answer"].astype(str), instances["true"].astype(str)):
        digits = list(label)
        for k in range(len(true)):
            if label[k] != true[k]:
                pool = places[k][(places[k] != true[k]) & (places[k] != label[k])]
                digits[k] = pool[rng.integers(len(pool))] if len(pool) else label[k]
        out.append("".join(digits))
    return pd.Series(out, index=instances.index, dtype=object)


def layer_readout_of(model, tokenizer, frame: pd.DataFrame, task: str, n_clean: int = 200,
                     seed: int = 0, hooks: bool = False, config: Config | None = None) -> LayerReadout:
    """`layer_readout` for a given model, tokenizer and instance table (no training). Memorized
    noisy instances also rank their `control_answers` token (the label-prior base rate)."""
    noisy = noisy_instances(model, tokenizer, frame)
    clean = clean_instances(model, tokenizer, frame, n_clean, seed)
    lens_fn = logit_lens_hooks if hooks else logit_lens
    memorized = noisy[noisy["memorized"]]
    memorized = memorized.assign(control=control_answers(memorized, frame, task, seed)) if len(memorized) else memorized
    parts = []
    for group, rows in (("memorized noisy", memorized), ("clean", clean)):
        if rows.empty:
            continue
        lens = lens_fn(model, tokenizer, rows, teacher_forcing="answer")
        parts.append(readout_entries(lens, differing_positions(rows, task), group))
    entries = (pd.concat(parts, ignore_index=True) if parts
               else readout_entries(pd.DataFrame(columns=["id", "layer", "position", "true_rank",
                                                          "label_rank", "bridge_rank"]),
                                    pd.DataFrame(), "clean"))
    n_layer = int(getattr(getattr(model, "config", None), "n_layer", 0) or entries["layer"].max() + 1)
    return LayerReadout(task, n_layer, noisy, clean, entries, layer_shares(entries, task), config)


def layer_readout(config: Config, n_clean: int = 200, device: str | None = None,
                  progress: bool = True) -> LayerReadout:
    """Train `config` (or load its finished run) and read out every layer on its memorized noisy
    instances and on up to `n_clean` correctly answered clean training questions."""
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    result = layer_readout_of(model, tokenizer, load_dataset(config), config.task, n_clean,
                              config.seed, config=config)
    result.extra["test_acc"] = final_test_accuracy(config)
    return result


def final_test_accuracy(config: Config) -> float | None:
    """Held-out test accuracy at the last evaluation of `config`'s run (None without a run)."""
    try:
        return float(metrics(config).iloc[-1]["test_acc"])
    except (FileNotFoundError, KeyError, IndexError):
        return None


def reasoning_caveat(test_acc: float | None, task: str) -> str:
    """A sentence for verdicts when the model has hardly learned the task's reasoning."""
    if test_acc is None or test_acc >= 0.5:
        return ""
    return (f" Note that this model answers only {test_acc:.0%} of held-out {task.upper()} questions correctly: "
            "it has hardly learned the reasoning that the observation is about.")


# ---- along training (optional) -----------------------------------------------------------------

def checkpoints(config: Config) -> list[tuple[int, Path]]:
    """The saved checkpoints of `config`'s run: (step, path), in order."""
    base = run_dir(config) / "checkpoints"
    found = [(int(p.name.split("-")[1]), p) for p in base.glob("step-*") if (p / "model.safetensors").exists()]
    return sorted(found)


def readout_over_training(config: Config, instances: pd.DataFrame, device: str | None = None) -> pd.DataFrame:
    """The layer readout of the final model's memorized noisy `instances` at every saved
    checkpoint: per step and layer, the share of readouts that are the correct label and the noisy
    label (FDA: pooled over the differing digits)."""
    columns = ["step", "layer", "n", "share_correct", "share_noisy"]
    if instances.empty:
        return pd.DataFrame(columns=columns)
    entries = differing_positions(instances, config.task)
    rows = []
    for step, path in checkpoints(config):
        model, tok = load(path, device=device or default_device())
        lens = logit_lens(model, tok, instances, teacher_forcing="answer")
        e = readout_entries(lens, entries, "memorized noisy")
        for layer, g in e.groupby("layer"):
            rows.append({"step": step, "layer": int(layer), "n": len(g),
                         "share_correct": float(g["true_rank"].eq(0).mean()),
                         "share_noisy": float(g["label_rank"].eq(0).mean())})
    return pd.DataFrame(rows, columns=columns)


# ---- in words -------------------------------------------------------------------------------------

def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a share observed on n readouts."""
    if n == 0:
        return float("nan"), float("nan")
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((share * (1 - share) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return centre - half, centre + half


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _pooled(shares: pd.DataFrame, group: str, task: str) -> pd.DataFrame:
    pos = "all" if task == "fda" else 0
    s = shares[(shares["group"] == group) & (shares["position"].astype(str) == str(pos))]
    return s.set_index("layer").sort_index()


def override_summary(result: LayerReadout) -> dict:
    """The numbers the verdict is computed from: on the memorized noisy readouts (pooled), the
    intermediate block layer (0..n_layer-2) where the correct label is most often top-1, its share
    there and the noisy label's share there, the largest share where the correct label outranks
    the noisy one, the final layer's noisy share, the first layer where the noisy label is top-1
    on at least half; on clean readouts the first layer where the correct label is top-1 on at
    least half; THR: the bridge's peak share per group."""
    task, last = result.task, result.n_layer - 1
    mem, clean = _pooled(result.shares, "memorized noisy", task), _pooled(result.shares, "clean", task)
    s = {"task": task, "n_layer": result.n_layer, "n_noisy": len(result.noisy),
         "n_memorized": int(result.noisy["memorized"].sum()) if len(result.noisy) else 0,
         "n_corrected": int(result.noisy["corrected"].sum()) if len(result.noisy) else 0,
         "n_clean": len(result.clean), "n_entries": int(mem["n"].iloc[0]) if len(mem) else 0}
    middle = mem[(mem.index >= 0) & (mem.index < last)]
    if len(middle):
        peak = int(middle["share_correct"].astype(float).idxmax())
        above = int(middle["share_correct_above_noisy"].astype(float).idxmax())
        share = float(middle.loc[above, "share_correct_above_noisy"])
        lo, hi = wilson_interval(share, int(middle.loc[above, "n"]))
        s.update(peak_layer=peak, peak_correct=float(middle.loc[peak, "share_correct"]),
                 peak_noisy=float(middle.loc[peak, "share_noisy"]),
                 max_correct_above_noisy=share, above_layer=above, above_lo=lo, above_hi=hi)
    if len(mem) and last in mem.index:
        s["final_noisy"] = float(mem.loc[last, "share_noisy"])
        s["final_correct"] = float(mem.loc[last, "share_correct"])
        takeover = mem[(mem.index >= 0) & (mem["share_noisy"].astype(float) >= 0.5)]
        s["takeover_layer"] = int(takeover.index[0]) if len(takeover) else None
    if len(clean):
        blocks = clean[clean.index >= 0]
        up = blocks[blocks["share_correct"].astype(float) >= 0.5]
        s["clean_layer"] = int(up.index[0]) if len(up) else None
        s["clean_final"] = float(clean.loc[last, "share_correct"]) if last in clean.index else float("nan")
    if task == "thr":
        for name, table in (("mem", mem), ("clean", clean)):
            blocks = table[table.index >= 0]
            if len(blocks) and blocks["share_bridge"].notna().any():
                layer = int(blocks["share_bridge"].astype(float).idxmax())
                s[f"bridge_{name}_layer"], s[f"bridge_{name}"] = layer, float(blocks.loc[layer, "share_bridge"])
    return s


def verdict(result: LayerReadout, strong: float = 0.5) -> str:
    """Observation 1 for this run, in plain words (see `_verdict`), with a caveat when the model
    has hardly learned the task (test accuracy below 50%)."""
    return _verdict(result, strong) + reasoning_caveat(result.extra.get("test_acc"), result.task)


def _verdict(result: LayerReadout, strong: float = 0.5) -> str:
    """Observation 1 for this run, in plain words, computed from `override_summary`.

    It holds when at some intermediate block layer (not the last) the correct label is the top-1
    readout of more memorized noisy readouts than the noisy label is, and of at least `strong`
    times the share it reaches on clean readouts at that layer (without a clean reference: on at
    least `strong` of them), and the correct label outranks the noisy one beyond chance at some
    intermediate layer (below); it holds in part when the correct label only outranks the noisy one
    on more than half of the readouts at some intermediate layer (95% Wilson interval above one
    half); otherwise it does not hold."""
    s = override_summary(result)
    c = result.config
    where = f"In this {s['task'].upper()} run" + (f" ({c.noise:.0%} noise, seed {c.seed})" if c else "")
    unit = ("answer digits where the noisy label differs from the true sum (teacher-forced on the noisy label)"
            if s["task"] == "fda" else "answers")
    head = (f"{where}, the final model answers {s['n_memorized']:,} of its {s['n_noisy']:,} noisy training "
            f"instances with the noisy label (and {s['n_corrected']:,} with the true answer). ")
    if s["n_clean"] and s.get("clean_layer") is not None:
        ref = (f"On {_count(s['n_clean'], 'correctly answered clean question')} the correct label is the "
               f"top-1 readout on at least half from layer {s['clean_layer']} on. ")
    elif s["n_clean"]:
        ref = (f"On {_count(s['n_clean'], 'correctly answered clean question')} the correct label is the "
               "top-1 readout on fewer than half at every block layer. ")
    else:
        ref = "The model answers no clean training question correctly, so there is no clean reference. "
    if s["n_noisy"] == 0:
        return head + ref + "Without noisy instances Observation 1 cannot be tested."
    if s["n_memorized"] == 0:
        return head + ref + ("No noisy label is memorized, so Observation 1 cannot be tested in this "
                             "run: train longer.")
    body = (f"Over their {s['n_entries']:,} {unit}, the final layer reads out the noisy label on "
            f"{s.get('final_noisy', float('nan')):.0%}")
    if s.get("takeover_layer") is not None:
        body += f", and the noisy label is top-1 on at least half from layer {s['takeover_layer']} on"
    body += ". "
    bridge = ""
    if s["task"] == "thr" and "bridge_mem" in s:
        bridge = (f"The bridge entity is the top-1 readout of {s['bridge_mem']:.0%} of the memorized noisy "
                  f"instances at its peak (layer {s['bridge_mem_layer']})")
        bridge += (f" and of {s['bridge_clean']:.0%} of the clean questions (layer {s['bridge_clean_layer']}). "
                   if "bridge_clean" in s else ". ")
    if "peak_layer" not in s:
        return head + ref + body + bridge + ("With a single block there is no intermediate layer to read, "
                                             "so Observation 1 cannot be tested.")
    clean_at = _pooled(result.shares, "clean", s["task"])
    clean_share = (float(clean_at.loc[s["peak_layer"], "share_correct"])
                   if s["peak_layer"] in clean_at.index else float("nan"))
    mid = (f"At intermediate layer {s['peak_layer']} the correct label is the top-1 readout of "
           f"{s['peak_correct']:.0%} of them (the noisy label of {s['peak_noisy']:.0%}"
           + (f"; the correct label of {clean_share:.0%} of clean readouts there" if clean_share == clean_share else "")
           + f"), and the correct label outranks the noisy one on up to {s['max_correct_above_noisy']:.0%} "
           f"(layer {s['above_layer']}; 95% interval {s['above_lo']:.0%} to {s['above_hi']:.0%}). ")
    bar = strong * clean_share if clean_share == clean_share else strong
    if s["peak_correct"] > s["peak_noisy"] and s["peak_correct"] >= bar and s["above_lo"] > 0.5:
        end = ("The paper's Observation 1 holds in this run: earlier layers compute the correct label and "
               "later layers override it with the noisy one.")
    elif s["above_lo"] > 0.5:
        end = ("The paper's Observation 1 holds only in part here: at an intermediate layer the correct "
               "label outranks the noisy one on more than half of the readouts (the interval excludes "
               "chance), but it is rarely the top-1 readout.")
    else:
        end = ("The paper's Observation 1 does not hold in this run: no intermediate layer favours the "
               "correct label over the noisy one on most memorized noisy instances.")
    return head + ref + body + mid + bridge + end


# ---- claims ---------------------------------------------------------------------------------------------

def per_instance_layers(result: LayerReadout) -> pd.DataFrame:
    """Per memorized noisy instance and layer (block layers 0..n_layer-2: the intermediate ones),
    averaged over its entering answer positions: whether the correct label, and the control
    answer, outrank the noisy label, and whether each is the top-1 readout."""
    e = result.entries
    e = e[(e["group"] == "memorized noisy") & (e["layer"] >= 0) & (e["layer"] < result.n_layer - 1)]
    if e.empty or "control_rank" not in e:
        return pd.DataFrame(columns=["id", "layer", "correct_above", "control_above", "correct_top", "control_top"])
    t, l, c = (e[x].astype(float) for x in ("true_rank", "label_rank", "control_rank"))
    return (e.assign(correct_above=(t < l).astype(float), control_above=(c < l).astype(float),
                     correct_top=(t == 0).astype(float), control_top=(c == 0).astype(float))
            .groupby(["id", "layer"])[["correct_above", "control_above", "correct_top", "control_top"]]
            .mean().reset_index())


def override_claims(result: LayerReadout, margin: float = 0.05, top_margin: float = 0.02,
                    n_resamples: int = 1000, seed: int = 0) -> list:
    """Observation 1 as claims (`rote.claims`), each against the label-prior base rate: the same
    readout of a control answer drawn the way true answers are drawn (`control_answers`).

    (1) At some intermediate layer the correct label outranks the noisy label on more memorized
    noisy instances than the control answer does, by more than `margin` (the layer where the
    difference is largest; paired bootstrap over instances). (2) At some intermediate layer the
    correct label is the top-1 readout more often than the control answer, by more than
    `top_margin`. The layer is picked by the largest difference, which favours the claim a little:
    its interval does not cover that choice."""
    from .claims import Claim, above, paired_share_ci
    per = per_instance_layers(result)
    base = dict(observation=1, task=result.task, n=int(per["id"].nunique()) if len(per) else 0)
    what = ("a label-prior person (same second relation's true answers)" if result.task == "thr"
            else "a label-prior digit (true sums' digits at that place)")
    tests = (("the correct label outranks the noisy label at an intermediate layer",
              "share of memorized noisy instances where it outranks the noisy label", "correct_above",
              "control_above", margin),
             ("the correct label is the top-1 readout at an intermediate layer",
              "share of memorized noisy instances where it is top-1", "correct_top", "control_top", top_margin))
    out = []
    for claim, statistic, col, ctrl, m in tests:
        rule = f"holds when the 95% interval of correct minus control lies above {m:g} at the best intermediate layer"
        if per.empty:
            out.append(Claim(claim=claim, statistic=statistic, value=float("nan"), lo=float("nan"), hi=float("nan"),
                             control=what, control_value=float("nan"), control_lo=float("nan"),
                             control_hi=float("nan"), difference=float("nan"), difference_lo=float("nan"),
                             difference_hi=float("nan"), rule=rule, verdict="cannot be tested",
                             note="no memorized noisy instance or no intermediate layer", **base))
            continue
        gaps = per.groupby("layer").apply(lambda g: (g[col] - g[ctrl]).mean())
        layer = int(gaps.idxmax())
        g = per[per["layer"] == layer]
        a, alo, ahi, b, blo, bhi, d, dlo, dhi = paired_share_ci(g[col], g[ctrl], n_resamples, seed)
        out.append(Claim(claim=claim, statistic=statistic + f" (layer {layer})", value=a, lo=alo, hi=ahi,
                         control=what, control_value=b, control_lo=blo, control_hi=bhi, difference=d,
                         difference_lo=dlo, difference_hi=dhi, rule=rule, verdict=above(d, dlo, m), **base))
    return out


def readout_table(result: LayerReadout, digits: int = 3) -> pd.DataFrame:
    """`result.shares` for reading: rounded, positions named, columns that are empty for this task
    left out."""
    if result.shares.empty:
        return pd.DataFrame({"note": ["nothing to read out: no memorized noisy instance and no clean reference"]})
    table = result.shares.copy()
    table["position"] = [position_name(result.task, p) for p in table["position"]]
    table = table.dropna(axis=1, how="all")
    return table.round(digits).reset_index(drop=True)
