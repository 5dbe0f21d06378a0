"""Explore single instances: the layer-by-layer readout and the effect of each removal.

With a live kernel (Colab, local Jupyter) `explorer` builds ipywidgets that recompute for any
task, noisy instance and layer. For the static book `explorer_data` precomputes the same for a
few hundred instances, drawn by `charts.explorer_chart`: click an instance (or pick it in the
dropdown) and its panels follow, with no kernel.
"""
from __future__ import annotations

import html

import pandas as pd
import torch

from rote.book.vega import static_book
from rote.interp.instances import differing_places
from rote.interp.lens import lens_states, logit_lens, read_out, readout_batch
from rote.interp.sites import place_name
from rote.observations.observation2 import REMOVED, Reliance, removal_effects

LIVE_ONLY = ("<p><i>With a live kernel this cell is an explorer: pick a task, any memorized noisy instance "
             "or clean reference question, and a layer, and it recomputes the top-5 logit-lens readout and "
             "the effect of each removal there. Open this page in Colab (the rocket button above) or run the "
             "notebook in Jupyter to use it; the static chart above shows the same for a fixed sample of "
             "instances.</i></p>")
ROLES = {"true": "correct label", "label": "noisy label", "bridge": "bridge entity"}


def instance_label(row) -> str:
    """How an instance is named in the dropdowns: id, kind, question, label and true answer."""
    kind = "noisy" if row["noisy"] else "clean"
    extra = f", bridge {row['bridge']}" if isinstance(row.get("bridge"), str) else ""
    return f"#{row['id']} [{kind}] {row['prompt']} {row['label']} (true {row['true']}{extra})"


def pick_instances(result: Reliance, n: int = 20, seed: int = 0) -> pd.DataFrame:
    """Up to `n` instances to explore: memorized noisy ones first (a seeded sample), then clean
    reference questions to fill up."""
    mem = result.memorized
    mem = mem.sample(min(n, len(mem)), random_state=seed) if len(mem) else mem
    clean = result.clean
    clean = clean.sample(min(n - len(mem), len(clean)), random_state=seed) if len(clean) and len(mem) < n else clean.iloc[:0]
    return pd.concat([mem, clean], ignore_index=True)


def explorer_data(models: dict, n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`instance_data` of every task in `models` ({task: (model, tokenizer, Reliance)}), about `n`
    instances in all, as three tables joined on `key` (one number per instance)."""
    parts = [instance_data(model, tok, result, max(1, n // len(models)), seed)
             for model, tok, result in models.values()]
    tables = [pd.concat([p[i] for p in parts], ignore_index=True) for i in range(3)]
    keys = {(task, i): k for k, (task, i) in enumerate(zip(tables[0]["task"], tables[0]["id"]))}
    return tuple(t.assign(key=[keys[(task, i)] for task, i in zip(t["task"], t["id"])]) for t in tables)


def instance_data(model, tokenizer, result: Reliance, n: int = 20, seed: int = 0) -> tuple[pd.DataFrame, ...]:
    """For up to `n` instances (`pick_instances`): the instances (task, id, group, name, and
    `strongest`: the lowest change of the label's log-prob after removing the target at any layer);
    the readout ranks per layer and scored answer place (one row per instance, layer, place and
    token: correct label, noisy label, bridge); the removal effects per method, layer and removed
    thing (from `result.effects`)."""
    task = result.task.upper()
    picked = pick_instances(result, n, seed)
    instances = pd.DataFrame({"task": task, "id": picked["id"].astype(int),
                              "group": ["memorized noisy" if x else "clean" for x in picked["noisy"]],
                              "name": [f"{task} " + instance_label(row) for _, row in picked.iterrows()]})
    cols = ["task", "id", "layer", "place", "token", "text", "rank", "top1"]
    if picked.empty:
        return (instances.assign(strongest=[]), pd.DataFrame(columns=cols),
                pd.DataFrame(columns=["task", "id", "method", "what", "layer", "delta_logp", "mem_after"]))
    lens = logit_lens(model, tokenizer, picked, teacher_forcing="label")
    lens = lens.merge(differing_places(picked, result.task), on=["id", "place"])
    texts = picked.set_index("id")
    rows = []
    for role, name in ROLES.items():
        if role == "bridge" and result.task != "thr":
            continue
        part = lens[["id", "layer", "place", "top1", f"{role}_rank"]].rename(columns={f"{role}_rank": "rank"})
        if role == "label":  # the noisy label only differs from the correct one on noisy instances
            part = part[part["id"].map(texts["noisy"]).astype(bool)]
        part = part.assign(token=name, text=[str(texts.loc[i, role])[p] if result.task == "fda" else texts.loc[i, role]
                                             for i, p in zip(part["id"], part["place"])])
        rows.append(part)
    readout = pd.concat(rows, ignore_index=True).assign(task=task)
    readout["rank"] = readout["rank"].astype(float)
    readout["place"] = readout["place"].map(lambda p: place_name(result.task, p))
    order = {i: k for k, i in enumerate(picked["id"])}
    readout = readout.sort_values(["id", "layer"], key=lambda s: s.map(order) if s.name == "id" else s, kind="stable")
    eff = result.effects[result.effects["id"].isin(order)].copy()
    eff = eff[eff.apply(lambda r: (r["group"] == "clean") != bool(texts.loc[r["id"], "noisy"]), axis=1)] if len(eff) else eff
    eff["what"] = [REMOVED[(result.task, m)][0 if r == "target" else 1] for m, r in zip(eff["method"], eff["removed"])]
    eff["mem_after"] = eff["mem_after"].astype(bool)
    effects = eff.assign(task=task)[["task", "id", "method", "what", "layer", "delta_logp", "mem_after"]]
    target = eff[eff["removed"] == "target"].groupby("id")["delta_logp"].min()
    instances["strongest"] = instances["id"].map(target).astype(float)
    return instances, readout[cols].reset_index(drop=True), effects.reset_index(drop=True)


@torch.no_grad()
def top_readout(model, tokenizer, row: pd.DataFrame, layer: int, k: int = 5) -> pd.DataFrame:
    """The top-`k` tokens of the logit lens at `layer` (-1: embedding) at each answer place of
    one instance (teacher-forced on its label), with probabilities."""
    ids, where, place, _, _ = readout_batch(tokenizer, row, "label")
    logits = read_out(model, lens_states(model, ids, where))[layer + 1]
    probs = logits.float().softmax(-1)
    top = probs.topk(min(k, probs.shape[-1]), dim=-1)
    out = []
    for p in range(len(place)):
        tokens = tokenizer.convert_ids_to_tokens(top.indices[p].tolist())
        out.append({"answer place": int(place[p]),
                    **{f"top {j + 1}": f"{t} ({v:.2f})" for j, (t, v) in enumerate(zip(tokens, top.values[p].tolist()))}})
    return pd.DataFrame(out)


def explorer(models: dict):
    """ipywidgets (needs a live kernel): pick a task, an instance (memorized noisy ones first, then
    clean reference questions) and a layer; see the top-5 readout there and the effect of each
    removal at that layer. `models`: {task: (model, tokenizer, Reliance)}."""
    import ipywidgets as w
    from IPython.display import HTML, display

    if static_book():
        return HTML(LIVE_ONLY)
    tasks = [t for t, (_, _, r) in models.items() if len(pick_instances(r, 10**6))]
    if not tasks:
        return w.HTML("<i>No instances to explore: no memorized noisy instance and no correctly answered clean question.</i>")
    task_box = w.Dropdown(options=tasks, description="task")
    instance_box = w.Dropdown(description="instance", layout=w.Layout(width="95%"))
    layer_box = w.IntSlider(description="layer", min=0, max=1, value=0)
    out = w.Output()

    def instances_of(task):
        return pick_instances(models[task][2], n=10**6)

    def on_task(*_):
        model, _, result = models[task_box.value]
        table = instances_of(task_box.value)
        layer_box.max = result.n_layer - 1
        instance_box.options = [(instance_label(r), int(r["id"])) for _, r in table.iterrows()]
        instance_box.value = instance_box.options[0][1] if instance_box.options else None
        layer_box.value = min(layer_box.value, layer_box.max)

    def show(*_):
        if instance_box.value is None:
            return
        model, tok, result = models[task_box.value]
        table = instances_of(task_box.value)
        row = table[table["id"] == instance_box.value]
        group = "memorized noisy" if bool(row["noisy"].iloc[0]) else "clean"
        layer = layer_box.value
        effects = removal_effects(model, tok, {group: row}, result.task, [layer], result.fits, seed=0)
        effects["removed"] = [REMOVED[(result.task, m)][0 if r == "target" else 1]
                              for m, r in zip(effects["method"], effects["removed"])]
        out.clear_output(wait=True)
        with out:
            display(w.HTML(f"<b>{html.escape(instance_label(row.iloc[0]))}</b>"))
            display(w.HTML(f"Logit lens at layer {layer} (teacher-forced on the label in data):"))
            display(top_readout(model, tok, row, layer))
            display(w.HTML(f"Removing at layer {layer}: change of the label's log-prob (nats per token) "
                           "and whether the label is still the greedy answer:"))
            display(effects[["method", "removed", "logp_before", "logp_after", "delta_logp", "mem_after"]].round(3))

    task_box.observe(on_task, names="value")  # sets the instance, which shows it
    instance_box.observe(show, names="value")
    layer_box.observe(show, names="value")
    on_task()
    return w.VBox([w.HBox([task_box, layer_box]), instance_box, out])
