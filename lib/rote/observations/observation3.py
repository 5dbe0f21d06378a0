"""Observation 3 (book/observation3.ipynb): FDA noisy labels are fitted by shifting heuristic neurons ("outlier heuristics").

For every memorized noisy FDA instance (the final model's greedy answer is the noisy label):

- Where: the answer place k of the first digit where the noisy label differs from the true
  sum, read at its readout pos (the token before digit k; pos 9 + k of "abcd+efgh=" plus
  the answer), teacher-forced on the noisy label. Before k the label and the true sum agree, so
  the prefix there is the true one and the same pos can be read on clean operand pairs.
- The driving neurons: every MLP neuron of every layer at that pos gets the attribution
  a * dD/da, its post-GELU activation a times the gradient of D = logit(noisy digit k) -
  logit(true digit k) at that pos (full backpropagation through the later layers). The `K`
  = 10 neurons with the largest attribution (argument `k`; all positive on the cpu model) are the
  driving neurons of the instance.
- Heuristic or dedicated: with the clean operand grid of `rote.observations.heuristics` (activations at the
  same answer place, teacher-forced on the true sums), a driving neuron is "dedicated" (the
  look-up alternative) when it is on for the noisy instance (a > 0) and reaches half of that
  activation on fewer than `DEDICATED` = 1% of the grid; otherwise it is "heuristic" when its type
  at that place is one of the heuristic kinds of `rote.observations.heuristics` (eta^2 >= 0.5 and active on
  at least 1% of the grid), else "other".
- The shift: clean neighbours of the instance are the operand pairs with exactly one of the 8
  operand digits changed to another value (72 at most), kept when both operands stay in 1000..8999,
  the sum stays <= 9999 and the pair is not a noisy training pair; each is teacher-forced on its
  own true sum and read at the same pos. The shift of a neuron is
  z = (a - mean of the neighbours) / (sample standard deviation of the neighbours, ddof=1),
  NaN when that deviation is below 1e-6; its direction is "toward the noisy label" when
  (a - neighbour mean) * dD/da > 0.
- Patching: the driving neurons are set to their neighbour means at that pos only (the
  rest of the run is unchanged); an instance is rescued when the model then writes the true digit
  there (argmax of the patched logits at that pos, teacher-forced on the label, whose prefix
  is the true one: what greedy decoding writes). We also decode the whole answer greedily with the
  patch in place at every step and report how often it is the true sum: the later digits are
  recalled at their own readout pos, which are not patched. Control: for each driving neuron a
  random other neuron of the same layer (seeded, not a driving neuron of the instance), patched
  to its neighbour mean in the same way. The rescue curve repeats this with the top 5, 10, 20, 50,
  100 and 200 neurons by attribution (those up to a quarter of all neurons; as many random ones,
  control seed = seed + number patched, and seed itself for K).

Intervals: shares and medians over driving neurons are bootstrapped over instances (1,000
resamples of instances, neurons kept with their instance; percentile intervals); rescue rates
have Wilson intervals; rescue minus control is a paired bootstrap over instances.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from rote.claims import below, compared, exceeds, untestable
from rote.config import Config
from rote.interp.instances import first_differing_place, memorized, noisy_instances, noisy_pairs, token_ids
from rote.interp.sites import prompt_batch, readout_pos
from rote.observations.drivers import (
    KS,
    NEURON_COLUMNS,
    K,
    clean_drivers,
    control_picks,
    neighbour_stats,
    neuron_attribution,
    neuron_table,
    patch_drivers,
)
from rote.observations.heuristics import (
    DEDICATED,
    KINDS,
    N_GRIDS,
    Heuristics,
    categories_on_grid,
    neuron_heatmap,
    neuron_heuristics,
)
from rote.runs.data import load_dataset
from rote.runs.train import get_or_train
from rote.stats import (
    bootstrap_ci,
    cluster_median_ci,
    grid_share_ci,
    independent_share_ci,
    paired_diff_ci,
    paired_share_ci,
    wilson_interval,
)

CATEGORIES = ("heuristic", "dedicated", "other")


# ---- one call per model --------------------------------------------------------------------------------

@dataclass
class Outliers:
    """Observation 3 for one FDA model (see the module docstring)."""
    noisy: pd.DataFrame  # every noisy training instance, with the final prediction
    instances: pd.DataFrame  # the memorized ones analysed: place, D before and after each patch, rescue
    neurons: pd.DataFrame  # one row per (instance, driving neuron), NEURON_COLUMNS
    control: pd.DataFrame  # the same for the random control neurons (rank: of the driving neuron it stands for)
    heuristics: Heuristics
    curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # per instance, k patched and driving/control
    k: int = K
    dedicated: float = DEDICATED
    config: Config | None = None
    clean_neurons: pd.DataFrame = field(default_factory=pd.DataFrame)  # `clean_drivers`: the matched control
    clean_patch: pd.DataFrame = field(default_factory=pd.DataFrame)
    grids: dict = field(default_factory=dict)  # grid seed -> (categories of `neurons`, of `clean_neurons`)


def outlier_heuristics_of(model, tokenizer, frame: pd.DataFrame, k: int = K, n_grid: int = 3000, n_ablate: int = 32,
                          seed: int = 0, dedicated: float = DEDICATED, heuristics: Heuristics | None = None,
                          config: Config | None = None, ks=KS, n_clean: int = 200, n_grids: int = N_GRIDS) -> Outliers:
    """`outlier_heuristics` for a given model, tokenizer and FDA instance table (no training);
    `n_grids` more grids (seeds seed + 1 ..) recompute the driving neurons' categories."""
    heur = heuristics or neuron_heuristics(model, tokenizer, frame, n_grid, n_ablate, seed)
    noisy = noisy_instances(model, tokenizer, frame)
    inst = memorized(noisy).reset_index(drop=True)
    m = heur.acts.shape[3]
    if inst.empty:
        empty = pd.DataFrame(columns=NEURON_COLUMNS)
        return Outliers(noisy, inst.assign(place=pd.Series(dtype=int)), empty, empty.copy(), heur,
                        k=k, dedicated=dedicated, config=config)
    place = first_differing_place(inst)
    ids, _, plen = prompt_batch(tokenizer, inst, "label")
    pos = readout_pos(plen[0], torch.as_tensor(place))
    plus = ids[torch.arange(len(inst)), pos + 1]
    minus = token_ids(tokenizer, [t[j] for t, j in zip(inst["true"], place)])
    acts, grad, diff = neuron_attribution(model, ids, pos, plus, minus)
    attribution = (acts * grad).reshape(len(inst), -1)
    ks = sorted({k, *[x for x in ks if x <= attribution.shape[1] // 4]})  # at most a quarter of all neurons
    top = attribution.topk(min(max(ks), attribution.shape[1]), dim=1).indices.numpy()
    picks = np.stack([top // m, top % m], -1)
    excluded = noisy_pairs(frame)
    mean, std, count = neighbour_stats(model, tokenizer, inst, place, excluded)
    values = torch.where(torch.isnan(mean), acts, mean)  # no neighbours: a neuron keeps its value
    ctrl = control_picks(picks[:, :k], m, seed)
    neurons = neuron_table(inst, place, picks[:, :k], acts, grad, mean, std, heur.acts, heur, dedicated)
    control = neuron_table(inst, place, ctrl, acts, grad, mean, std, heur.acts, heur, dedicated)
    table = inst[["id", "prompt", "label", "true", "a", "b"]].copy()
    table["place"], table["n_neighbours"], table["D_before"] = place, count, diff.numpy()
    curve = []
    for kk in ks:
        ctrl_k = ctrl if kk == k else control_picks(picks[:, :kk], m, seed + kk)
        for name, p in (("driving", picks[:, :kk]), ("control", ctrl_k)):
            d, digit, answers, _ = patch_drivers(model, tokenizer, inst, pos, p, values)
            whole = np.array(answers) == table["true"].to_numpy()
            if kk == k:
                table[f"D_{name}"], table[f"rescued_{name}"] = d, digit
                table[f"answer_{name}"], table[f"answer_rescued_{name}"] = answers, whole
            curve.append(pd.DataFrame({"id": table["id"], "k": kk, "patched": name, "D": d, "rescued": digit,
                                       "answer_rescued": whole,
                                       "still_noisy": np.array(answers) == table["label"].to_numpy()}))
    clean_neurons, clean_patch = clean_drivers(model, tokenizer, frame, place, heur, k, ks, n_clean, seed, dedicated)
    grids = {seed: (neurons["category"].to_numpy(), clean_neurons["category"].to_numpy())}
    for j in range(1, n_grids + 1):
        grids[seed + j] = tuple(categories_on_grid(model, tokenizer, frame, [neurons, clean_neurons], heur,
                                                   len(heur.grid), seed + j, dedicated))
    return Outliers(noisy, table, neurons, control, heur, pd.concat(curve, ignore_index=True), k, dedicated, config,
                    clean_neurons=clean_neurons, clean_patch=clean_patch, grids=grids)


def outlier_heuristics(config: Config, k: int = K, n_grid: int = 3000, n_ablate: int = 32,
                       device: str | None = None, progress: bool = True) -> Outliers:
    """Train `config` (FDA; or load its finished run), read its neuron heuristics over a clean grid
    and analyse the neurons that drive each memorized noisy label."""
    if config.task != "fda":
        raise ValueError(f"Observation 3 is about FDA; task must be 'fda', got {config.task!r}")
    model, tokenizer = get_or_train(config, device=device, progress=progress)
    return outlier_heuristics_of(model, tokenizer, load_dataset(config), k, n_grid, n_ablate, config.seed,
                                 config=config)


# ---- summary ------------------------------------------------------------------------------------------

def _by_instance(table: pd.DataFrame, column: str) -> pd.Series:
    return table.groupby("id", sort=True)[column].mean()


def rescue_curve(result: Outliers, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per number k of patched neurons: the rescue rate (the first differing digit becomes the true
    digit) with the top-k driving neurons and with k random neurons of the same layers (Wilson 95%
    intervals), the paired difference (bootstrap), the share whose whole greedy answer becomes the
    true sum, the share still writing the noisy label, and mean D after."""
    columns = ["k", "rescue_driving", "driving_lo", "driving_hi", "rescue_control", "control_lo", "control_hi",
               "diff", "diff_lo", "diff_hi", "answer_driving", "answer_control", "still_noisy_driving",
               "still_noisy_control", "D_driving", "D_control"]
    rows = []
    for kk, g in result.curve.groupby("k", sort=True) if len(result.curve) else []:
        d, c = g[g["patched"] == "driving"].set_index("id"), g[g["patched"] == "control"].set_index("id")
        rd, rc = float(d["rescued"].mean()), float(c["rescued"].mean())
        diff = paired_diff_ci(d["rescued"].astype(float), c.loc[d.index, "rescued"].astype(float), n_resamples, seed)
        rows.append([int(kk), rd, *wilson_interval(rd, len(d)), rc, *wilson_interval(rc, len(c)), *diff,
                     float(d["answer_rescued"].mean()), float(c["answer_rescued"].mean()), float(d["still_noisy"].mean()),
                     float(c["still_noisy"].mean()), float(d["D"].mean()), float(c["D"].mean())])
    return pd.DataFrame(rows, columns=columns)


def summary(result: Outliers, n_resamples: int = 1000, seed: int = 0) -> dict:
    """The numbers the verdict is computed from (module docstring): counts, category shares (95%
    bootstrap over instances), median |z| of driving and control neurons, the share shifted toward
    the noisy label, rescue rates (Wilson) and rescue minus control (paired bootstrap), and D
    before and after each patch."""
    inst, nr, ct = result.instances, result.neurons, result.control
    s = {"n_noisy": len(result.noisy), "n_memorized": len(inst), "k": result.k,
         "n_neurons": len(nr), "units_heuristic_share": float(np.isin(result.heuristics.table["type"], KINDS).mean())}
    if inst.empty:
        return s
    s["positive_attribution_share"] = float((nr["attribution"] > 0).mean())
    for cat in CATEGORIES:
        s[cat], s[f"{cat}_lo"], s[f"{cat}_hi"] = bootstrap_ci(_by_instance(nr.assign(x=nr["category"] == cat), "x"),
                                                            n_resamples, seed)
    s["heur_minus_ded"], s["hmd_lo"], s["hmd_hi"] = bootstrap_ci(
        _by_instance(nr.assign(x=(nr["category"] == "heuristic").astype(float)
                                - (nr["category"] == "dedicated").astype(float)), "x"), n_resamples, seed)
    s["matters_share"] = float(nr["matters"].mean())
    s["sparse_5pct"] = float((nr["clean_high_share"] < 0.05).mean())  # sensitivity of "dedicated" to its 1%
    for name, t in (("driving", nr), ("control", ct)):
        s[f"abs_z_{name}"], s[f"abs_z_{name}_lo"], s[f"abs_z_{name}_hi"] = cluster_median_ci(
            t.assign(absz=t["z"].abs()), "absz", n_resamples, seed)
    s["z_nan"] = int(nr["z"].isna().sum())
    s["toward_control"] = float(ct["toward_noisy"].mean())
    s["toward"], s["toward_lo"], s["toward_hi"] = bootstrap_ci(_by_instance(nr.assign(x=nr["toward_noisy"].astype(float)), "x"),
                                                             n_resamples, seed)
    n = len(inst)
    for name in ("driving", "control"):
        r = float(inst[f"rescued_{name}"].mean())
        s[f"rescue_{name}"], (s[f"rescue_{name}_lo"], s[f"rescue_{name}_hi"]) = r, wilson_interval(r, n)
        s[f"answer_rescue_{name}"] = float(inst[f"answer_rescued_{name}"].mean())
        s[f"still_noisy_{name}"] = float((inst[f"answer_{name}"] == inst["label"]).mean())
        s[f"D_{name}"] = float(inst[f"D_{name}"].mean())
    s["D_before"] = float(inst["D_before"].mean())
    s["rescue_diff"], s["rescue_diff_lo"], s["rescue_diff_hi"] = paired_diff_ci(
        inst["rescued_driving"].astype(float), inst["rescued_control"].astype(float), n_resamples, seed)
    curve = rescue_curve(result, n_resamples, seed)
    s["curve_ks"] = [int(x) for x in curve["k"]]
    passed = curve[curve["diff_lo"] > 0]
    row = passed.iloc[0] if len(passed) else (curve.iloc[-1] if len(curve) else None)
    if row is not None:
        s["rescue_k_pass"] = bool(len(passed))
        for key in ("k", "rescue_driving", "driving_lo", "driving_hi", "rescue_control", "control_lo", "control_hi",
                    "diff", "diff_lo", "diff_hi", "answer_driving"):
            s[f"curve_{key}"] = float(row[key])
    return s


def matched_pairs(result: Outliers) -> np.ndarray:
    """For each analysed noisy instance, the index (row of `clean_patch`) of the clean control
    instance nearest in logit gap (noisy: noisy minus true digit; clean: written minus runner-up
    digit), with replacement."""
    gaps = result.clean_patch["D_before"].to_numpy(float)
    return np.abs(result.instances["D_before"].to_numpy(float)[:, None] - gaps[None, :]).argmin(1)


def outlier_claims(result: Outliers, rescue_margin: float = 0.0, shift_margin: float = 0.0,
                   dedicated_margin: float = 0.05, heuristic_margin: float = 0.05, n_resamples: int = 1000,
                   seed: int = 0) -> list:
    """Observation 3 as claims (`rote.claims`), each against the matched control of clean answers'
    own driving neurons (`clean_drivers`, computed the same way), every choice fixed in advance:
    the top `result.k` neurons by attribution, the cuts of 1% and 5% of the grid.

    (1, 2) not dedicated: at each cut, the share of noisy drivers that are dedicated (on for the
    instance, half that activation on under the cut's share of the grid) exceeds the clean
    drivers' by less than `dedicated_margin` (holds when the 95% interval of noisy minus clean
    lies below it); at 1% the categories are recomputed on every grid of `result.grids` and the
    interval draws a grid and resamples instances (`grid_share_ci`).
    (3) heuristic: the share of noisy drivers that are heuristics (`rote.observations.heuristics`)
    falls short of the clean drivers' by less than `heuristic_margin` (the interval of noisy minus
    clean lies above -margin): outlier *heuristics* are heuristic neurons at least as often.
    (4) shifted: the mean per instance of |z| of noisy drivers exceeds the clean drivers' by more
    than `shift_margin` (instances resampled in both groups); the note gives the share shifted
    toward the noisy label beside the clean drivers' share toward their favoured digit.
    (5) undoing the shift rescues: patching the `result.k` driving neurons, the rescue rate of
    noisy instances minus the change rate of the clean instances matched to them on the logit gap
    (`matched_pairs`) exceeds `rescue_margin`, each noisy instance and its match resampled together
    (a paired bootstrap); the note gives the same at the other numbers patched, not tested."""
    base = dict(observation=3, task="fda", n=len(result.instances))
    cuts = (result.dedicated, 0.05)
    tests = [*[dict(claim=f"noisy labels are not fitted by dedicated look-up neurons ({cut:.0%} cut)",
                    statistic=f"share of driving neurons that are dedicated (cut: {cut:.0%} of the grid)",
                    control="clean answers' driving neurons",
                    rule=f"top {result.k} neurons by attribution; holds when noisy minus clean lies below "
                         f"{dedicated_margin:g} (95% interval)") for cut in cuts],
             dict(claim="noisy labels' driving neurons are heuristics as often as clean answers'",
                  statistic="share of driving neurons that are heuristic neurons",
                  control="clean answers' driving neurons",
                  rule=f"top {result.k} neurons by attribution; holds when noisy minus clean lies above "
                       f"-{heuristic_margin:g} (95% interval)"),
             dict(claim="driving neurons are shifted against their clean neighbours",
                  statistic="mean per instance of |z| of the driving neurons", control="clean answers' driving neurons",
                  rule=f"holds when noisy minus clean lies above {shift_margin:g} (95% interval)"),
             dict(claim="undoing the shift gives back the true digit",
                  statistic=f"share of noisy instances rescued by patching the top {result.k} drivers",
                  control="change rate of clean answers matched on logit gap, same patch",
                  rule=f"holds when noisy minus clean lies above {rescue_margin:g} (95% interval, matched pairs "
                       "resampled together)")]
    if result.instances.empty or result.clean_patch.empty:
        return [untestable("no memorized noisy instance or clean control", **t, **base) for t in tests]
    nr, cn = result.neurons, result.clean_neurons
    share = lambda t, x: _by_instance(t.assign(x=np.asarray(x, dtype=float)), "x")  # noqa: E731
    grids = result.grids or {seed: (nr["category"].to_numpy(), cn["category"].to_numpy())}
    per_grid = lambda t, j, kind: np.stack([share(t, c[j] == kind).to_numpy() for c in grids.values()])  # noqa: E731
    note = f"{len(grids)} grids (seeds {', '.join(map(str, grids))}), each with its instances resampled"
    cmp = grid_share_ci(per_grid(nr, 0, "dedicated"), per_grid(cn, 1, "dedicated"), n_resamples, seed)
    out = [compared(cmp, below(cmp.difference, cmp.difference_hi, -dedicated_margin), note=note, **tests[0], **base)]
    five = independent_share_ci(*[share(t, (t["act"] > 0) & (t["clean_high_share"] < cuts[1])) for t in (nr, cn)],
                                n_resamples, seed)
    out.append(compared(five, below(five.difference, five.difference_hi, -dedicated_margin),
                        note="on the main grid", **tests[1], **base))
    cmp = grid_share_ci(per_grid(nr, 0, "heuristic"), per_grid(cn, 1, "heuristic"), n_resamples, seed)
    out.append(exceeds(cmp, -heuristic_margin, note=note, **tests[2], **base))
    absz = lambda t: _by_instance(t.assign(x=t["z"].abs()), "x").dropna()  # noqa: E731
    toward = lambda t: float(t["toward_noisy"].mean())  # noqa: E731
    note = (f"shifted toward the noisy label {toward(nr):.0%}; clean drivers toward their own digit {toward(cn):.0%} "
            f"(a selection effect); random neurons' |z| median {result.control['z'].abs().median():.2f}")
    out.append(exceeds(independent_share_ci(absz(nr), absz(cn), n_resamples, seed), shift_margin, note=note,
                       **tests[3], **base))
    match, others, tested = matched_pairs(result), [], None
    for kk, g in result.curve[result.curve["patched"] == "driving"].groupby("k", sort=True):
        col = f"changed_{int(kk)}"
        if col not in result.clean_patch:
            continue
        rescued = g.set_index("id").loc[result.instances["id"], "rescued"].astype(float).to_numpy()
        cmp = paired_share_ci(rescued, result.clean_patch[col].to_numpy(float)[match], n_resamples, seed)
        if int(kk) == result.k:
            tested = cmp
        else:
            others.append(f"{int(kk)}: {cmp.value:.0%} against {cmp.control_value:.0%}")
    note = (f"{len(result.clean_patch)} clean answers, matched with replacement; at the other numbers patched "
            f"(described, not tested): {'; '.join(others) or 'none'}")
    if tested is None:
        out.append(untestable(f"no patch of {result.k} neurons on the clean answers", **tests[4], **base))
    else:
        out.append(exceeds(tested, rescue_margin, note=note, **tests[4], **base))
    return out


def summary_table(result: Outliers, digits: int = 3) -> pd.DataFrame:
    """The verdict's numbers as a table: measure, value, 95% interval."""
    s = summary(result)
    if s["n_memorized"] == 0:
        return pd.DataFrame({"note": [f"no memorized noisy instance (of {s['n_noisy']} noisy)"]})
    rows = [("memorized noisy instances", s["n_memorized"], None, None),
            ("driving neurons per instance", s["k"], None, None),
            ("share with positive attribution", s["positive_attribution_share"], None, None)]
    rows += [(f"share {c}", s[c], s[f"{c}_lo"], s[f"{c}_hi"]) for c in CATEGORIES]
    rows += [("share heuristic - share dedicated", s["heur_minus_ded"], s["hmd_lo"], s["hmd_hi"]),
             ("share that matter on clean (ablation)", s["matters_share"], None, None),
             ("share reaching half their noisy activation on < 5% of the grid", s["sparse_5pct"], None, None),
             ("median |z| driving", s["abs_z_driving"], s["abs_z_driving_lo"], s["abs_z_driving_hi"]),
             ("median |z| control", s["abs_z_control"], s["abs_z_control_lo"], s["abs_z_control_hi"]),
             ("share shifted toward noisy", s["toward"], s["toward_lo"], s["toward_hi"]),
             ("share shifted toward noisy, random neurons", s["toward_control"], None, None),
             ("rescue rate (true digit), driving patched", s["rescue_driving"], s["rescue_driving_lo"], s["rescue_driving_hi"]),
             ("rescue rate (true digit), random patched", s["rescue_control"], s["rescue_control_lo"], s["rescue_control_hi"]),
             ("rescue driving - random", s["rescue_diff"], s["rescue_diff_lo"], s["rescue_diff_hi"]),
             ("whole answer = true sum, driving patched", s["answer_rescue_driving"], None, None),
             ("whole answer = true sum, random patched", s["answer_rescue_control"], None, None),
             ("still the noisy label, driving patched", s["still_noisy_driving"], None, None),
             ("still the noisy label, random patched", s["still_noisy_control"], None, None),
             ("mean D (noisy - correct logit) before", s["D_before"], None, None),
             ("mean D after patching driving", s["D_driving"], None, None),
             ("mean D after patching random", s["D_control"], None, None)]
    return pd.DataFrame(rows, columns=["measure", "value", "lo", "hi"]).round(digits)



# ---- figure data ---------------------------------------------------------------------------------------

def example_neuron(result: Outliers) -> pd.Series | None:
    """The driving neuron with the largest attribution among heuristic ones shifted by z >= 1 (a
    visible shift), else among heuristic ones, else among all."""
    nr = result.neurons
    if nr.empty:
        return None
    heur = nr[nr["category"] == "heuristic"]
    shifted = heur[heur["z"] >= 1]
    pool = shifted if len(shifted) else heur if len(heur) else nr
    return pool.loc[pool["attribution"].idxmax()]


def heatmap_data(result: Outliers, row: pd.Series | None = None):
    """`rote.observations.heuristics.neuron_heatmap` of one driving neuron (default `example_neuron`) and its
    noisy instance: (cells, marks, description), or None without a driving neuron."""
    row = example_neuron(result) if row is None else row
    if row is None:
        return None
    return neuron_heatmap(result.heuristics, row, result.instances.set_index("id").loc[row["id"]])
