"""Neuron heuristics in four-digit addition, in the manner of Nikankin et al. (arXiv 2410.21272).

Nikankin et al. find that language models add with a "bag of heuristics": single MLP neurons that
fire on simple patterns of the operands or the result (a range, a digit value, a residue). We read
the same here in the FDA models trained from scratch.

What is read, and where:
- The grid: `n_grid` clean operand pairs (a, b), both in 1000..8999 with a + b <= 9999 (the data's
  own distribution), drawn uniformly (seeded, on a stream of its own), distinct, leaving out every
  training pair (either order): the grid is never the training set. Each is teacher-forced on its
  true sum, "a+b=" followed by its 4 digits.
- The activation: the post-GELU output of every MLP neuron (`transformer.h[l].mlp.act`, the input of
  `mlp.c_proj`) at the readout pos of each of the four answer places: place k (0 = thousands .. 3 =
  units) is read at the token just before answer digit k, whose logits predict digit k (the "="
  sign for k = 0). One unit is (place k, layer l, neuron j). Every answer place is read because
  each predicts a different digit and may use different heuristics.

The classification. For each unit and each pattern family below, the match score is eta^2, the
share of the unit's activation variance over the grid explained by the family's categories (one-way
ANOVA: 1 - within-category sum of squares / total sum of squares). A unit's family is the one with the
fewest categories among those whose score is within `TOLERANCE` (0.05) of the largest (a finer
family, such as 100-wide ranges, explains at least as much as the digits it refines; among equally
coarse ones, the family listed first). The unit is a heuristic neuron of that family when the
largest score is at least `MATCH` (0.5), unless it is rarely
active (post-GELU activation > 0, i.e. positive pre-activation, on less than `RARE` = 1% of the
grid); units below the threshold are "unclassified". Families (d: place, thousands .. units):
- "operand digit": digit d of a, or of b (10 categories each);
- "result digit": digit d of the sum s = a + b, i.e. floor(s / 10^(3-d)) mod 10 (a modular pattern);
- "digit sum mod 10": (a_d + b_d) mod 10, the result digit before the carry (modular);
- "carry": whether a carry enters digit d (d = thousands, hundreds, tens; 2 categories);
- "operand range", "result range": a, b or s in one of 10 equal-count bins (deciles over the grid),
  or, narrow ranges, in one of the 100-wide bins floor(x / 100) (its first two digits);
- "same digit": a_d == b_d (identical operand digits; 2 categories).
Each unit also gets the category with the highest mean activation ("value") and the ROC AUC of that
category's indicator against the activation.

The neurons that matter: each neuron is mean-ablated (set to its grid mean at that place) at the
readout pos of all four answer places at once, on the first `n_ablate` (32) grid rows teacher-forced on the
true sum; its importance at place k is the mean drop of the true digit k's logit margin (its
logit minus the largest other logit; log-probs barely move on answers the model is sure of), and
it "matters" at place k from `important` = 0.05.

The drivers of a label (Observation 3) are read against these units: a driving neuron is
"dedicated" when it is on and reaches half its activation on under 1% of the grid, else "heuristic"
when its unit is a heuristic neuron (`driver_category`); `categories_on_grid` recomputes that on
other grids, and `neuron_heatmap` draws one unit's activation over the grid's digit pairs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from transformers import DynamicCache

from rote.interp.edits import read, run
from rote.interp.instances import carries, digits, operand_grid
from rote.interp.sites import PLACES, hf, prompt_batch, readout_pos

KINDS = ("operand digit", "result digit", "digit sum mod 10", "carry", "operand range", "result range",
         "same digit")
TYPES = (*KINDS, "unclassified", "rarely active")
MATCH = 0.5  # eta^2 at or above which a unit is a heuristic neuron of its best family
TOLERANCE = 0.05  # families within this of the best eta^2 count as equally good: the coarsest wins
RARE = 0.01  # share of grid rows with a positive activation below which a unit is "rarely active"


# ---- the patterns -------------------------------------------------------------------------------------

def pattern_families(a, b, edges: dict | None = None) -> dict:
    """{family name: (kind, integer category of each pair)} for operand pairs (module docstring).
    `edges`: {"a", "b", "s": decile edges} for the range families (default: the pairs' own)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    s = a + b
    edges = edges or range_edges(a, b)
    out = {}
    for d, place in enumerate(PLACES):
        out[f"a {place} digit"] = ("operand digit", digits(a, d))
        out[f"b {place} digit"] = ("operand digit", digits(b, d))
    for d, place in enumerate(PLACES):
        out[f"sum {place} digit"] = ("result digit", digits(s, d))
    for d, place in enumerate(PLACES):
        out[f"{place} digit sum mod 10"] = ("digit sum mod 10", (digits(a, d) + digits(b, d)) % 10)
    carry = carries(a, b)
    for d, place in enumerate(PLACES[:3]):
        out[f"carry into {place}"] = ("carry", carry[:, d])
    for name, x in (("a", a), ("b", b)):
        out[f"{name} range"] = ("operand range", np.searchsorted(edges[name], x, side="right"))
    out["sum range"] = ("result range", np.searchsorted(edges["s"], s, side="right"))
    for name, x in (("a", a), ("b", b)):
        out[f"{name} narrow range"] = ("operand range", x // 100)
    out["sum narrow range"] = ("result range", s // 100)
    for d, place in enumerate(PLACES):
        out[f"same {place} digit"] = ("same digit", (digits(a, d) == digits(b, d)).astype(np.int64))
    return out


def range_edges(a, b) -> dict:
    """The inner decile edges of a, b and a + b (9 each): bins of equal count."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    q = np.linspace(0.1, 0.9, 9)
    return {"a": np.quantile(a, q), "b": np.quantile(b, q), "s": np.quantile(a + b, q)}


# ---- activations ----------------------------------------------------------------------------------

def answer_activations(model, tokenizer, rows: pd.DataFrame, column: str = "true", batch_size: int = 512) -> torch.Tensor:
    """Post-GELU MLP activations at the readout pos of the four answer places, teacher-forced on
    `column`: [N, 4 places, n_layer, n_neurons] (float32, cpu)."""
    ids, _, plen = prompt_batch(tokenizer, rows, column)
    if (plen != plen[0]).any():
        raise ValueError("prompts of different lengths")
    pos = readout_pos(plen[0], torch.arange(4))
    keys = [(layer, "neuron") for layer in range(hf(model).config.n_layer)]
    ids, out = ids[:, : int(pos.max()) + 1], []  # a causal model: the last answer token is not needed
    for start in range(0, len(ids), batch_size):
        store, _ = read(model, ids[start: start + batch_size].to(hf(model).device), keys, select=lambda h: h[:, pos])
        out.append(torch.stack([store[key].cpu() for key in keys], 2))
    return torch.cat(out).float()


# ---- match scores and classification -----------------------------------------------------------------

def eta_squared(x: np.ndarray, codes: np.ndarray, total: np.ndarray | None = None) -> np.ndarray:
    """Share of each column's variance explained by the categories `codes` (one-way ANOVA eta^2):
    x [N, U], codes [N] -> [U]. Columns without variance get 0. `total`: each column's sum of
    squares about its mean, when already computed (the same for every family)."""
    x = np.asarray(x, dtype=np.float64)
    _, inverse, counts = np.unique(codes, return_inverse=True, return_counts=True)
    onehot = np.zeros((len(counts), len(x)))
    onehot[inverse, np.arange(len(x))] = 1.0
    sums = onehot @ x  # per category, the sum of each column (a matrix product: much faster than np.add.at)
    means, mean = sums / counts[:, None], x.mean(0)
    total = ((x - mean) ** 2).sum(0) if total is None else total
    between = (counts[:, None] * (means - mean) ** 2).sum(0)
    return np.where(total > 1e-12, between / np.maximum(total, 1e-300), 0.0)


def auc(x: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC of a boolean indicator against each column of x [N, U] (ties count half): the
    probability that a random positive row has a higher activation than a random negative one."""
    x = np.asarray(x, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return np.full(x.shape[1], np.nan)
    ranks = pd.DataFrame(x).rank(axis=0, method="average").to_numpy()
    return (ranks[positive].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def match_scores(x: np.ndarray, families: dict) -> pd.DataFrame:
    """eta^2 of every family (rows) for every unit (columns) of activations x [N, U]."""
    x = np.asarray(x, dtype=np.float64)
    total = ((x - x.mean(0)) ** 2).sum(0)
    return pd.DataFrame({name: eta_squared(x, codes, total) for name, (_, codes) in families.items()}).T


def classify(x: np.ndarray, families: dict, match: float = MATCH, rare: float = RARE,
             tolerance: float = TOLERANCE) -> pd.DataFrame:
    """One row per unit (column of x [N, U]): its best family (the one with the fewest categories
    among those whose eta^2 is within `tolerance` of the largest), that family's kind and eta^2, the
    category with the highest mean activation ("value") and the AUC of its indicator, the share of
    rows with a positive activation ("active_rate"), and the type: "rarely active" when active_rate <
    `rare`, else the best family's kind when the largest eta^2 ("eta2_max") is at least `match`,
    else "unclassified"."""
    x = np.asarray(x, dtype=np.float64)
    scores = match_scores(x, families)
    names, sc = list(scores.index), scores.to_numpy()
    # the coarsest family within `tolerance` of the best score: a refinement (100-wide ranges refine
    # the thousands and hundreds digits) always explains at least as much
    sizes = np.array([len(np.unique(families[name][1])) for name in names])
    near = sc >= sc.max(0) - tolerance
    best = np.where(near, sizes[:, None], np.iinfo(np.int64).max).argmin(0)
    eta = sc[best, np.arange(x.shape[1])]
    value, auc_best = np.zeros(x.shape[1], dtype=np.int64), np.zeros(x.shape[1])
    for f, name in enumerate(names):
        units = np.flatnonzero(best == f)
        if not len(units):
            continue
        codes = families[name][1]
        cats = np.unique(codes)
        means = np.stack([x[codes == c][:, units].mean(0) for c in cats])
        top = cats[means.argmax(0)]
        value[units] = top
        for c in np.unique(top):
            sel = units[top == c]
            auc_best[sel] = auc(x[:, sel], codes == c)
    active = (x > 0).mean(0)
    kind = np.array([families[names[f]][0] for f in best], dtype=object)
    typ = np.where(active < rare, "rarely active", np.where(sc.max(0) >= match, kind, "unclassified"))
    return pd.DataFrame({"family": [names[f] for f in best], "kind": kind, "eta2": eta, "eta2_max": sc.max(0),
                         "value": value,
                         "auc": auc_best, "active_rate": active, "mean": x.mean(0), "std": x.std(0),
                         "type": typ})


# ---- importance by ablation ----------------------------------------------------------------------

def digit_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target token's logit minus the largest other logit: logits [..., V], target [...]."""
    t = logits.gather(-1, target[..., None]).squeeze(-1)
    other = logits.scatter(-1, target[..., None], float("-inf")).amax(-1)
    return t - other


def _prefix_cache(model_hf, kv: list, copies: int, repeated_from: int) -> DynamicCache:
    """A cache holding the prefix keys and values `kv` for `copies` copies of the batch; layers
    below `repeated_from` are only counted for pos (their blocks are skipped), not repeated."""
    cache = DynamicCache(config=model_hf.config)
    for i, (k, v) in enumerate(kv):
        n = copies if i >= repeated_from else 1
        cache.update(k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1), i)
    return cache


@torch.no_grad()
def ablation_importance(model, tokenizer, rows: pd.DataFrame, means: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Per answer place, layer and neuron, the mean drop in the true digit's logit margin
    (`digit_margin`: its logit minus the largest other logit) when the
    neuron is set to `means` [4, n_layer, M] (its grid mean per place) at the readout pos of all
    four answer places, over `rows` (teacher-forced on the true sum): [4, n_layer, M].

    The prompt before the first readout pos is run once and its keys and values reused (a
    cache). Setting neuron j of layer L from a to m changes that block's output by exactly
    (m - a) W[j], W the MLP's output projection (linear after the activation), so each ablation
    gives block L its output and runs only the blocks after it (`run`'s skip)."""
    model_hf = hf(model)
    ids, _, plen = prompt_batch(tokenizer, rows, "true")
    ids = ids.to(model_hf.device)
    pos = readout_pos(plen[0], torch.arange(4))
    first, targets = int(pos[0]), ids[:, pos + 1]
    prefix = model_hf(ids[:, :first], use_cache=True)
    kv = [(layer.keys, layer.values) for layer in prefix.cache.layers]
    suffix = ids[:, first:int(pos[-1]) + 1]  # the four readout pos
    n_layer, m = means.shape[1], means.shape[2]
    keys = [(layer, point) for layer in range(n_layer) for point in ("neuron", "resid")]
    store, logits = read(model, suffix, keys, cache=_prefix_cache(model_hf, kv, 1, 0))
    base = digit_margin(logits, targets)  # [R, 4]
    out = torch.zeros(4, n_layer, m)
    for layer in range(n_layer):
        w = model_hf.transformer.h[layer].mlp.c_proj.weight  # [M, d] (GPT-2's Conv1D: x @ w)
        acts, resid = store[(layer, "neuron")], store[(layer, "resid")]  # [R, 4, M], [R, 4, d]
        for start in range(0, m, chunk):
            js = torch.arange(start, min(start + chunk, m))
            shift = means[:, layer, js].T.to(acts)[:, None] - acts[..., js].permute(2, 0, 1)  # [C, R, 4]
            given = (resid + shift[..., None] * w[js][:, None, None]).flatten(0, 1)  # block `layer`'s output
            skip = {below: store[(below, "resid")].repeat(len(js), 1, 1)  # shapes only: never read
                    for below in range(layer)}
            logits = run(model, suffix.repeat(len(js), 1), {}, skip={**skip, layer: given},
                         cache=_prefix_cache(model_hf, kv, len(js), layer + 1))
            drop = base.repeat(len(js), 1) - digit_margin(logits, targets.repeat(len(js), 1))
            out[:, layer, start:start + len(js)] = drop.view(len(js), len(ids), 4).mean(1).T.cpu()
    return out


# ---- one call ------------------------------------------------------------------------------------

@dataclass
class Heuristics:
    """Neuron heuristics of one FDA model over a clean grid (see the module docstring)."""
    grid: pd.DataFrame  # the operand pairs, teacher-forced on their true sums
    acts: torch.Tensor  # [N, 4, n_layer, M] post-GELU activations at the readout pos of the answer places
    table: pd.DataFrame  # one row per (place, layer, neuron): `classify` plus importance
    edges: dict  # decile edges of the range families
    match: float = MATCH
    rare: float = RARE
    important: float = 0.05

    def unit(self, place: int, layer: int, neuron: int) -> pd.Series:
        """The table row of one unit."""
        m = self.acts.shape[3]
        return self.table.iloc[(place * self.acts.shape[2] + layer) * m + neuron]


def neuron_heuristics(model, tokenizer, frame: pd.DataFrame | None = None, n_grid: int = 3000,
                      n_ablate: int = 32, seed: int = 0, match: float = MATCH, rare: float = RARE,
                      important: float = 0.05) -> Heuristics:
    """Activations of every MLP neuron over a clean operand grid at the readout pos of the four
    answer places, their heuristic type, and their importance by mean ablation on the first `n_ablate`
    grid rows (a unit "matters" when its importance is at least `important` nats)."""
    grid = operand_grid(frame, n_grid, seed)
    acts = answer_activations(model, tokenizer, grid)
    n, p, n_layer, m = acts.shape
    edges = range_edges(grid["a"], grid["b"])
    fams = pattern_families(grid["a"], grid["b"], edges)
    table = classify(acts.reshape(n, -1).numpy(), fams, match, rare)
    importance = ablation_importance(model, tokenizer, grid.head(n_ablate), acts.mean(0))
    table.insert(0, "neuron", np.tile(np.arange(m), p * n_layer))
    table.insert(0, "layer", np.tile(np.repeat(np.arange(n_layer), m), p))
    table.insert(0, "place", np.repeat(np.arange(p), n_layer * m))
    table["importance"] = importance.reshape(-1).numpy()
    table["matters"] = table["importance"] >= important
    return Heuristics(grid, acts, table, edges, match, rare, important)


def type_counts(h: Heuristics) -> pd.DataFrame:
    """Per answer place and type: how many units, and how many of them matter."""
    order = {t: i for i, t in enumerate(TYPES)}
    t = h.table.assign(place=h.table["place"].map(lambda k: PLACES[k]))
    out = t.groupby(["place", "type"], sort=False).agg(units=("neuron", "size"),
                                                          matter=("matters", "sum")).reset_index()
    out["_o"] = out["type"].map(order)
    out["_p"] = out["place"].map(PLACES.index)
    return out.sort_values(["_p", "_o"]).drop(columns=["_o", "_p"]).reset_index(drop=True)


# ---- the drivers of a label among them ----------------------------------------------------------------

def driver_category(act, high_share, unit_type, dedicated: float) -> np.ndarray:
    """What a neuron that drives a label is: "dedicated" when it is on (act > 0) and reaches half
    that activation on less than `dedicated` of the clean grid (`high_share`), else "heuristic" when
    its unit's type is one of KINDS, else "other"."""
    return np.where((np.asarray(act) > 0) & (np.asarray(high_share) < dedicated), "dedicated",
                    np.where(np.isin(unit_type, KINDS), "heuristic", "other"))


DEDICATED = 0.01  # a neuron on for the noisy instance that reaches half its activation on less than
#                   this share of the clean grid is dedicated to the instance
N_GRIDS = 3  # independent grids drawn besides the main one, so that intervals cover the grid's draw


def categories_on_grid(model, tokenizer, frame: pd.DataFrame, tables: list[pd.DataFrame], heur: Heuristics,
                       n_grid: int, seed: int, dedicated: float) -> list[np.ndarray]:
    """The `driver_category` of every row of each neuron table in `tables` (columns place, layer,
    neuron, act) recomputed on another grid (`operand_grid` with `seed`): the share of that grid
    reaching half the neuron's activation and the unit's type classified on that grid, only for the
    units the tables use."""
    grid = operand_grid(frame, n_grid, seed)
    acts = answer_activations(model, tokenizer, grid)
    rows = pd.concat(tables, ignore_index=True)
    units = rows[["place", "layer", "neuron"]].astype(np.int64).drop_duplicates().reset_index(drop=True)
    x = acts[:, *(torch.tensor(units[c].to_numpy()) for c in units.columns)].numpy()
    typ = classify(x, pattern_families(grid["a"], grid["b"], range_edges(grid["a"], grid["b"])),
                   heur.match, heur.rare)["type"].to_numpy()
    where = {u: i for i, u in enumerate(units.itertuples(index=False, name=None))}
    out = []
    for t in tables:
        u = np.array([where[k] for k in t[["place", "layer", "neuron"]].astype(np.int64).itertuples(
            index=False, name=None)], dtype=np.int64)
        a = t["act"].to_numpy(float)
        high = np.where(a > 0, (x[:, u] >= a / 2).mean(0), np.nan) if len(u) else np.zeros(0)
        out.append(driver_category(a, high, typ[u], dedicated))
    return out


def _place_of(family: str) -> int:
    """The operand digit place a family is about (the place the carry comes from; thousands for ranges)."""
    for d, place in enumerate(PLACES):
        if f"carry into {place}" == family:
            return d + 1
        if place in family:
            return d
    return 0


def neuron_heatmap(h: Heuristics, row: pd.Series, inst: pd.Series):
    """For one driving neuron (`row`: place, layer, neuron, family, eta2, act, nbr_mean, z) of the
    noisy instance `inst`: its mean activation over the clean grid per (a digit, b digit) at the
    place its family is about, at that neuron's answer place; the instance (its digits, its activation,
    the neighbour mean, z). Returns (cells, marks, description)."""
    k, layer, j = int(row["place"]), int(row["layer"]), int(row["neuron"])
    d = _place_of(str(row["family"]))
    x = h.acts[:, k, layer, j].numpy()
    cells = pd.DataFrame({"a digit": digits(h.grid["a"], d), "b digit": digits(h.grid["b"], d), "activation": x})
    cells = cells.groupby(["a digit", "b digit"]).agg(activation=("activation", "mean"), n=("activation", "size")).reset_index()
    marks = pd.DataFrame({"a digit": [int(digits(inst["a"], d))], "b digit": [int(digits(inst["b"], d))],
                          "activation": [float(row["act"])], "neighbour mean": [float(row["nbr_mean"])],
                          "z": [float(row["z"])], "instance": [f"{inst['prompt']}{inst['label']} (true {inst['true']})"]})
    desc = (f"layer {layer}, neuron {j}, at the {PLACES[k]} readout pos: {row['family']} "
            f"(eta² = {row['eta2']:.2f}); digits at the {PLACES[d]} place")
    return cells, marks, desc
