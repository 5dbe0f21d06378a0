"""Claims as data (rote.claims) and the claims of Observations 0-2: planted results give the expected
verdict on each side of every threshold, a lens share that only reflects the label prior does not
hold, a removal that removes nothing from the clean reference is uninformative, and records
round-trip through the run directory."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rote import claims, stats
from rote.book import verdicts
from rote.config import make_config
from rote.interp import instances
from rote.observations import observation0, observation1, observation2
from rote.runs.data import generate


def test_rules_flip_at_their_thresholds():
    assert claims.above(0.10, 0.05, margin=0.0) == "holds"
    assert claims.above(0.10, 0.05, margin=0.06) == "holds in part"
    assert claims.above(0.10, 0.05, margin=0.10) == "does not hold"
    assert claims.below(-0.10, -0.05, margin=0.0) == "holds"
    assert claims.below(-0.10, -0.05, margin=0.2) == "does not hold"
    assert claims.above(float("nan"), float("nan")) == "cannot be tested"
    mk = lambda v: claims.Claim(0, "fda", "c", "share", 0, 0, 0, "k", 0, 0, 0, 0, 0, 0, "r", v)  # noqa: E731
    assert claims.overall([mk("holds"), mk("cannot be tested")]) == "holds"
    assert claims.overall([mk("holds"), mk("does not hold")]) == "holds in part"
    assert claims.overall([mk("does not hold")]) == "does not hold"
    assert claims.overall([mk("cannot be tested")]) == "cannot be tested"
    with pytest.raises(ValueError):
        mk("maybe")


def test_records_round_trip_and_render(tmp_path):
    c = claims.Claim(1, "thr", "a claim", "share of x", 0.4, 0.35, 0.45, "a control", 0.2, 0.15, 0.25,
                     0.2, 0.15, 0.25, "holds when ...", "holds", n=10, note="n.b.")
    d = claims.Claim(1, "fda", "b claim", "share of y", float("nan"), float("nan"), float("nan"), "k",
                     float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), "r",
                     "cannot be tested", note="why")
    claims.save([c, d], tmp_path, 1)
    back = claims.load(tmp_path, 1)
    assert back[0] == c and back[1].verdict == "cannot be tested" and back[1].value != back[1].value
    claims.save([claims.Claim(**{**c.__dict__, "verdict": "does not hold"})], tmp_path, 1, task="thr")
    again = claims.load(tmp_path, 1)
    assert {x.task: x.verdict for x in again} == {"fda": "cannot be tested", "thr": "does not hold"}
    table = verdicts.claims_table([c]).html
    assert "40.0% [35.0%, 45.0%]" in table and ">holds<" in table
    text, box = verdicts.sentence([c, d], 1, "what"), verdicts.result_box([c, d], 1, "what").html
    assert "**THR**: Observation 1 (what) holds in this run" in text and "40.0% [35.0%, 45.0%], against 20.0%" in box
    assert "**FDA**: Observation 1 (what) cannot be tested in this run" in text and "why" in box


# ---- Observation 1: the label-prior base rate ----

def _readout(correct_rank, control_rank, task="thr", n_layer=3, clean_rank=None):
    """A LayerReadout whose memorized noisy entries at layers 0..n_layer-1 have the given ranks of
    the correct label and the control answer (per instance, the same at every layer), the noisy
    label at rank 5; and 100 clean questions whose correct label has rank `clean_rank[layer]` (by
    default 0 from layer 0: the answer is computed there)."""
    clean_rank = clean_rank or [0] * n_layer
    rows = []
    for i, (t, c) in enumerate(zip(correct_rank, control_rank)):
        for layer in range(-1, n_layer):
            rows.append({"id": i, "place": 0, "layer": layer, "group": "memorized noisy", "true_rank": t,
                         "label_rank": 5, "control_rank": c, "bridge_rank": 9})
    for i in range(100):
        for layer in range(-1, n_layer):
            rows.append({"id": 10_000 + i, "place": 0, "layer": layer, "group": "clean",
                         "true_rank": clean_rank[max(layer, 0)], "label_rank": 0, "bridge_rank": 9})
    entries = pd.DataFrame(rows)
    noisy = pd.DataFrame({"id": range(len(correct_rank)), "memorized": True, "corrected": False})
    return observation1.LayerReadout(task, n_layer, noisy, noisy.iloc[:0], entries, pd.DataFrame())


def test_a_lens_share_that_only_reflects_the_label_prior_does_not_hold():
    rng = np.random.default_rng(0)
    prior = rng.integers(0, 8, size=(2, 400))  # correct label and control drawn the same way
    cs = observation1.override_claims(_readout(prior[0], prior[1]))
    assert [c.verdict for c in cs] == ["does not hold"] * 3
    assert cs[0].lo > 0.5  # against one half it would have "held"
    # computed on 60% of the memorized instances: above the label prior, but not as often as on clean questions
    some = np.where(rng.random(400) < 0.6, 0, prior[0])
    signal = observation1.override_claims(_readout(some, prior[1]))
    assert [c.verdict for c in signal] == ["holds", "holds", "does not hold"]
    assert signal[2].control_value == 1.0 and "as often as on clean questions" in signal[2].claim
    assert observation1.override_claims(_readout(some, prior[1]), margin=0.5, top_margin=0.5)[0].verdict == "does not hold"
    # computed on every memorized instance, as on clean questions: the general reading holds too
    everywhere = observation1.override_claims(_readout(np.zeros(400, int), prior[1]))
    assert [c.verdict for c in everywhere] == ["holds"] * 3


def test_the_layer_is_fixed_on_clean_questions_before_the_noisy_result_is_read():
    rng = np.random.default_rng(1)
    prior = rng.integers(1, 8, size=(2, 400))
    # clean questions compute their answer at layer 1 (top-1 on all of them from there), not at 0
    readout = _readout(prior[0], prior[1], n_layer=4, clean_rank=[3, 0, 0, 0])
    assert observation1.answer_layer(readout) == 1
    # memorized instances get the correct label on top at layer 0 only: the claims read layer 1 and do not hold
    readout.entries.loc[(readout.entries["group"] == "memorized noisy") & (readout.entries["layer"] == 0), "true_rank"] = 0
    assert observation1.answer_layer(readout) == 1
    cs = observation1.override_claims(readout)
    assert all("(layer 1)" in c.statistic and "fixed before the noisy instances are read" in c.rule for c in cs)
    assert [c.verdict for c in cs] == ["does not hold"] * 3
    # no layer reaches one half on clean questions: the one where the answer is top-1 most often
    assert observation1.answer_layer(_readout(prior[0], prior[1], n_layer=4, clean_rank=[3, 2, 0, 0])) == 2
    assert observation1.answer_layer(_readout(prior[0], prior[1], n_layer=3, clean_rank=[3, 2, 1])) == 0


def test_control_answers_follow_the_label_prior():
    for task in ("thr", "fda"):
        frame = generate(make_config(task, "tiny", noise=0.2, seed=1))
        noisy = instances.questions(frame)
        noisy = noisy[noisy["noisy"]]
        control = instances.control_answers(noisy, frame, task, seed=0)
        assert (control != noisy["label"]).all() and (control != noisy["true"]).all()
        assert (control.str.len() == noisy["label"].str.len()).all() or task == "thr"
        if task == "thr":
            truths = instances.questions(frame)
            for inst, c in zip(noisy.itertuples(), control):
                assert c in set(truths.loc[(truths["r2"] == inst.r2) & ~truths["noisy"], "true"])
                assert c not in (inst.subject, inst.bridge)
        else:
            for label, true, c in zip(noisy["label"], noisy["true"], control):
                assert all((c[k] == label[k]) == (label[k] == true[k]) for k in range(4))


# ---- Observation 2: a removal counts only where it removes something from the clean reference ----

def _reliance(clean_contrast, noisy_contrast, width=0.02, task="thr"):
    """A Reliance whose contrasts at each layer are `clean_contrast[layer]` and `noisy_contrast[layer]`
    (a number: one layer), in a model one block deeper (its last block, the answer's readout, is
    not an intermediate layer: every given layer is)."""
    clean_contrast, noisy_contrast = np.atleast_1d(clean_contrast), np.atleast_1d(noisy_contrast)
    rows, sizes = [], []
    for method in observation2.METHODS[task]:
        for layer in range(len(clean_contrast)):
            for group, d in (("memorized noisy", noisy_contrast[layer]), ("clean", clean_contrast[layer])):
                rows.append({"method": method, "layer": layer, "comparison": "target - control", "group": group,
                             "n": 100, "delta_logp": d, "lo": d - width, "hi": d + width, "acc": 0.0, "acc_lo": 0.0,
                             "acc_hi": 0.0})
                for removed, v in (("target", d), ("control", 0.0)):
                    sizes.append({"method": method, "layer": layer, "group": group, "removed": removed, "n": 100,
                                  "acc_before": 1.0, "acc_after": 1.0, "acc_change": 0.0, "acc_change_lo": 0.0,
                                  "acc_change_hi": 0.0, "delta_logp": v, "delta_logp_lo": v - width,
                                  "delta_logp_hi": v + width})
    noisy = pd.DataFrame({"id": range(100), "memorized": True})
    return observation2.Reliance(task, len(clean_contrast) + 1, noisy, noisy, pd.DataFrame(), pd.DataFrame(sizes),
                                 pd.DataFrame(rows))


def test_the_removal_layer_is_fixed_on_the_clean_reference_not_on_the_noisy_result():
    # layer 1 takes most from clean answers; the noisy label is harmed at layer 0 only: the claim reads layer 1
    cs = observation2.reliance_claims(_reliance([-0.5, -1.0], [-0.8, 0.01]))
    assert all("layer 1" in c.statistic and c.verdict == "does not hold" for c in cs)
    assert all("layer 0: -0.80" in c.note and "not tested" in c.note for c in cs)
    # the same at the layer chosen on clean answers: holds
    assert {c.verdict for c in observation2.reliance_claims(_reliance([-0.5, -1.0], [0.01, -0.8]))} == {"holds"}


def test_a_removal_with_no_effect_on_the_clean_reference_is_uninformative():
    cs = observation2.reliance_claims(_reliance(clean_contrast=-0.01, noisy_contrast=-0.5))
    assert all(c.verdict == "cannot be tested" and "uninformative" in c.note for c in cs)
    assert [c.verdict for c in observation2.reliance_claims(_reliance(-1.0, -0.5))] == ["holds", "holds"]
    assert {c.verdict for c in observation2.reliance_claims(_reliance(-1.0, 0.01))} == {"does not hold"}
    # the thresholds are parameters: a weaker clean bar makes the removal count, a larger margin fails it
    assert observation2.reliance_claims(_reliance(-0.05, -0.5), min_clean_effect=0.01)[0].verdict == "holds"
    assert observation2.reliance_claims(_reliance(-0.05, -0.5))[0].verdict == "cannot be tested"
    assert observation2.reliance_claims(_reliance(-1.0, -0.5), margin=0.6)[0].verdict == "does not hold"


# ---- Observation 0: robust to chance hits ----

def test_chance_hits_do_not_count_as_memorization():
    inst = pd.DataFrame({"id": [0, 1, 2], "noisy": True, "prompt": "p", "label": ["N", "N", "N"], "true": ["T"] * 3})
    said = {0: "xNxTTNNN", 1: "NNTTTNNN", 2: "xTxNxTxx"}  # one-off hit then correct; memorized first; chance only
    pred = pd.DataFrame([{"step": s, "id": i, "prediction": c} for i, seq in said.items() for s, c in enumerate(seq)])
    on = observation0.stable_onsets(pred, inst, min_streak=2).set_index("id")
    assert on.loc[0, "order"] == "correct first" and on.loc[0, "stable_noisy"] == 5 and on.loc[0, "chance_hits"] == 1
    assert on.loc[1, "order"] == "memorized first" and on.loc[2, "order"] == "never memorized"
    # the chance hit counts there
    assert observation0.first_answers(pred, inst).set_index("id").loc[0, "order"] == "memorized first"
    assert observation0.stable_onsets(pred, inst, min_streak=4).set_index("id").loc[0, "stable_noisy"] == 5  # final streak
    assert observation0.stable_onsets(pred, inst, min_streak=1).set_index("id").loc[0, "order"] == "memorized first"


def _planted_dynamics(config, sequences):
    """A run of `config` whose evaluations said, per noisy instance, `sequences[k % len(sequences)]`
    (T: the true answer, N: the noisy label, D: its label-prior decoy, x: something else)."""
    from rote.runs.data import load_dataset
    noisy = load_dataset(config)
    noisy = noisy[(noisy["split"] == "train") & (noisy["kind"] != "fact") & noisy["noisy"]]
    decoys = observation0.decoy_answers(config)
    rows = []
    for k, inst in enumerate(noisy.itertuples()):
        said = {"T": inst.true, "N": inst.label, "D": decoys[inst.id], "x": "nobody"}
        rows += [{"step": 10 * j, "id": inst.id, "prediction": said[c]}
                 for j, c in enumerate(sequences[k % len(sequences)])]
    predictions = pd.DataFrame(rows)
    return observation0.TrainingDynamics(config, pd.DataFrame(), observation0.first_answers(predictions, load_dataset(config)),
                                         predictions)


@pytest.mark.parametrize("task", ["thr", "fda"])
def test_observation0_holds_against_its_decoy_only_when_the_truth_comes_first_more_often(task):
    config = make_config(task, "tiny", noise=0.2)
    # the truth held before the label on every instance: holds
    (c,) = observation0.dynamics_claims(_planted_dynamics(config, ["xTTxNNN"]))
    assert c.verdict == "holds" and c.value == 1.0 and c.control_value == 0.0
    # a model that tries answers before it memorizes: the truth first as often as the decoy, does not hold
    (c,) = observation0.dynamics_claims(_planted_dynamics(config, ["xTTxNNN", "xDDxNNN"]))
    assert c.value == pytest.approx(0.5, abs=0.05) and c.difference == pytest.approx(0.0, abs=0.1)
    assert c.verdict != "holds"
    # the truth said once only (no streak) counts no more than the decoy said once
    (c,) = observation0.dynamics_claims(_planted_dynamics(config, ["xTxDxNNN"]))
    assert (c.value, c.control_value, c.verdict) == (0.0, 0.0, "does not hold")
    assert "decoy" in c.control and "same instances" in c.control


def test_the_decoy_is_a_label_prior_answer_other_than_the_truth_and_the_label():
    from rote.runs.data import load_dataset
    for task in ("thr", "fda"):
        config = make_config(task, "tiny", noise=0.2)
        frame = load_dataset(config)
        noisy = frame[(frame["split"] == "train") & (frame["kind"] != "fact") & frame["noisy"]].set_index("id")
        decoys = observation0.decoy_answers(config)
        assert sorted(decoys.index) == sorted(noisy.index)
        assert (decoys != noisy.loc[decoys.index, "label"].astype(str)).mean() > 0.9
        assert (decoys != noisy.loc[decoys.index, "true"].astype(str)).mean() > 0.9


# ---- Observation 3: the grid is not the training set ----

def test_operand_grid_never_overlaps_the_training_pairs():
    from rote.interp.instances import operand_grid, training_pairs
    for seed in (0, 1):
        frame = generate(make_config("fda", "tiny", noise=0.1, seed=seed))
        grid = operand_grid(frame, 2000, seed=seed)
        pairs = {(int(a), int(b)) for a, b in zip(grid["a"], grid["b"])}
        assert len(pairs) == 2000 and not pairs & training_pairs(frame)


# ---- Observation 4: same-sum inputs and the persistence of a noisy digit by place ----

def test_same_sum_changes_keep_the_sum():
    from rote.observations.changes import same_sum_changes
    frame = generate(make_config("fda", "tiny", noise=0.2, seed=1))
    noisy = instances.questions(frame)
    noisy = noisy[noisy["noisy"]].head(30)
    changes = same_sum_changes(noisy, frame, seed=0)
    sums = dict(zip(noisy["id"], noisy["a"].astype(int) + noisy["b"].astype(int)))
    assert set(changes["kind"]) == {"swap", "offset"}
    for i, prompt in zip(changes["id"], changes["prompt"]):
        x, y = (int(v) for v in prompt.rstrip("=").split("+"))
        assert x + y == sums[i] and 1000 <= x <= 9999 and 1000 <= y <= 9999


def test_digit_persistence_by_place_splits_on_the_true_digit():
    from rote.observations.changes import digit_persistence_by_place
    changes = pd.DataFrame({"id": [0, 0], "label": ["7143", "7143"], "orig_true": ["3830", "3830"],
                            "true": ["3831", "4830"], "prediction": ["7141", "4830"]})
    per = digit_persistence_by_place(changes)
    unchanged = per[per["place_unchanged"]]
    assert unchanged["persists"].sum() == 3 and len(unchanged) == 3 + 3  # 7,1,4 kept; second change: 1,4,3 lost
    assert not per[~per["place_unchanged"]]["persists"].any()


def _planted_distributed(noisy_share, clean_share, one=(0.5, 0.5), two=(0.9, 0.5), n=200):
    """A THR Distributed whose memorized noisy and clean instances are distributed on the given
    shares (the trained look-up's labels on none), and whose changed questions get their own answer on
    one[0] / two[0] (noisy) and one[1] / two[1] (clean) of single- and two-input changes."""
    from rote.observations import observation4
    from rote.observations.observation2 import Reliance
    rng = np.random.default_rng(0)
    counts, changes, twos = [], [], []
    for group, share, j in (("memorized noisy", noisy_share, 0), ("clean", clean_share, 1),
                            (observation4.LOOKUP_MODEL, 0.0, 0)):
        counts.append(pd.DataFrame({"group": group, "id": range(n), "distributed": rng.random(n) < share}))
        if group != observation4.LOOKUP_MODEL:
            changes.append(pd.DataFrame({"group": group, "id": np.repeat(range(n), 3),
                                         "correct": rng.random(3 * n) < one[j], "kept": False}))
            twos.append(pd.DataFrame({"group": group, "id": np.repeat(range(n), 3),
                                      "correct": rng.random(3 * n) < two[j], "kept": False}))
    noisy = pd.DataFrame({"id": range(n), "memorized": True})
    rel = Reliance("thr", 2, noisy, noisy, pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    e = pd.DataFrame()
    return observation4.Distributed("thr", 2, rel, pd.concat(changes, ignore_index=True), e, None, e, e,
                                   pd.concat(counts, ignore_index=True), e, e, pd.concat(twos, ignore_index=True))


def test_distributed_claims_need_most_labels_a_sensitive_clean_control_and_a_distance_effect():
    from rote.observations import observation4
    # noisy and clean labels alike rarely distributed: the look-up comparison alone would have "held"
    look = observation4.distributed_claims(_planted_distributed(0.07, 0.07, one=(1, 1), two=(1, 1)), n_resamples=200)
    assert [c.verdict for c in look] == ["does not hold", "cannot be tested", "does not hold"]
    assert look[0].difference_lo > 0 and "measure finds only" in look[1].note
    assert claims.overall(look) == "does not hold"
    assert observation4.distributed_claims(_planted_distributed(0.07, 0.07), min_share=0.01,
                                          n_resamples=200)[0].verdict == "holds"
    # noisy labels distributed, but less than computed answers
    r = _planted_distributed(0.7, 1.0)
    cs = observation4.distributed_claims(r, n_resamples=200)
    assert [c.verdict for c in cs] == ["holds", "does not hold", "holds"]
    assert observation4.distributed_claims(r, min_share=0.8, n_resamples=200)[0].verdict == "does not hold"
    assert observation4.distributed_claims(r, clean_tolerance=0.5, n_resamples=200)[1].verdict == "holds"
    assert observation4.distributed_claims(r, distance_margin=0.6, n_resamples=200)[2].verdict == "does not hold"


def test_two_input_changes_change_two_inputs_and_recompute_the_answer():
    from rote.interp.instances import knowledge_graph_of
    from rote.observations.changes import fda_two_changes, thr_two_changes
    frame = generate(make_config("fda", "tiny", noise=0.2, seed=1))
    inst = instances.questions(frame).head(40)
    ch = fda_two_changes(inst, n_changes=3, seed=0)
    orig = inst.set_index("id")
    assert len(ch) == 3 * len(inst)
    for row in ch.itertuples():
        o = orig.loc[row.id]
        before, after = f"{int(o.a)}{int(o.b)}", f"{row.a}{row.b}"
        assert sum(x != y for x, y in zip(before, after)) == 2 and row.a + row.b <= 9999
        assert row.true == f"{row.a + row.b:04d}" and min(row.a, row.b) >= 1000
    frame = generate(make_config("thr", "tiny", noise=0.2, seed=1))
    graph, inst = knowledge_graph_of(frame), instances.questions(frame).head(20)
    ch = thr_two_changes(inst, graph, seed=0)
    assert set(ch["input"]) == {"subject & r1", "subject & r2", "r1 & r2"}
    for row in ch.itertuples():
        o = inst.set_index("id").loc[row.id]
        assert sum(getattr(row, k) != o[k] for k in ("subject", "r1", "r2")) == 2
        assert row.true == graph[(graph[(row.subject, row.r1)], row.r2)]


def test_dynamics_claims_on_a_tiny_run_report_the_definition_and_the_chance_rate():
    from rote.runs.data import load_dataset
    config = make_config("thr", "tiny", noise=0.5)
    run = observation0.training_dynamics(config, progress=False)
    (c,) = observation0.dynamics_claims(run)
    assert c.verdict != "cannot be tested" and c.n > 0
    assert "first streak of >= 2 evaluations" in c.rule
    # the chance rate, recomputed by hand: the noisy label said before its stable onset (all evaluations without one)
    p = run.predictions.merge(load_dataset(config)[["id", "label"]], on="id").sort_values(["id", "step"])
    hits = evals = 0
    for _, g in p.groupby("id"):
        said, steps = (g["prediction"] == g["label"]).to_numpy(), g["step"].to_numpy()
        onset = next((steps[j] for j in range(len(said))
                      if said[j] and (steps[j] == steps.max() or (j + 1 < len(said) and said[j + 1]))), None)
        before = said if onset is None else said[steps < onset]
        hits, evals = hits + before.sum(), evals + len(before)
    assert f"chance rate: the noisy label said at {hits / evals:.1%} of evaluations" in c.note
    text = verdicts.claims_table([c]).html  # the note is on the page, under the claim
    assert "chance rate" in text and "by the first single evaluation" in text
    # the margin is a parameter: one above any possible difference fails the claim
    assert observation0.dynamics_claims(run, margin=1.0)[0].verdict == "does not hold"
    assert c.verdict == claims.above(c.difference, c.difference_lo)


def test_grid_share_ci_covers_the_grid_draw():
    a = np.array([[0.1] * 50, [0.3] * 50, [0.2] * 50])  # instances identical, grids not
    b = np.zeros((3, 40))
    m, lo, hi, *_ , d, dlo, dhi = stats.grid_share_ci(a, b, n_resamples=500)
    assert m == pytest.approx(0.2) and lo == pytest.approx(0.1) and hi == pytest.approx(0.3)
    assert stats.independent_share_ci(a[0], b[0])[1] == pytest.approx(0.1)  # one grid: no spread at all
    assert dlo == pytest.approx(0.1) and dhi == pytest.approx(0.3)


@pytest.mark.parametrize("n", [20, 200])
def test_a_share_of_zero_or_one_gets_a_score_interval_with_width(n):
    ones, zeros = np.ones(n), np.zeros(n)
    value, lo, hi = stats.bootstrap_ci(ones)
    assert (value, hi) == (1.0, 1.0) and lo == pytest.approx(stats.wilson_interval(1.0, n)[0]) and lo < 1.0
    c = stats.paired_share_ci(ones, zeros)
    assert (c.lo, c.hi) == pytest.approx(stats.wilson_interval(1.0, n))
    assert (c.control_lo, c.control_hi) == pytest.approx(stats.wilson_interval(0.0, n))
    assert c.control_lo == 0.0 and c.control_hi > 0.0 and 0.0 < c.difference_lo < 1.0 == c.difference_hi
    # both at 1: the difference's interval straddles 0, so "exceeds its control" cannot hold
    same = stats.paired_share_ci(ones, ones)
    assert same.difference_lo < 0.0 < same.difference_hi
    assert claims.above(same.difference, same.difference_lo) == "does not hold"
    # fewer instances, a wider interval
    assert stats.wilson_interval(1.0, 20)[0] < stats.wilson_interval(1.0, 200)[0]


def test_a_share_strictly_between_zero_and_one_keeps_its_bootstrap_interval():
    x = np.r_[np.ones(30), np.zeros(70)]
    rng = np.random.default_rng(0)
    means = x[rng.integers(0, x.size, size=(1000, x.size))].mean(1)
    assert stats.bootstrap_ci(x)[1:] == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    # not 0s and 1s (a mean of nats): no score interval, even at zero width
    assert stats.bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5, 0.5)


def test_the_interval_over_seeds_resamples_seeds_then_instances():
    # one run: its own interval back (the inner draw is normal with the interval's spread)
    value, lo, hi = stats.seeds_then_instances([0.4], [0.3], [0.5], n_resamples=20000)
    assert value == 0.4 and lo == pytest.approx(0.3, abs=0.01) and hi == pytest.approx(0.5, abs=0.01)
    # runs that disagree, each measured exactly: the seeds' spread is the interval
    value, lo, hi = stats.seeds_then_instances([0.0, 1.0], [0.0, 1.0], [0.0, 1.0])
    assert (value, lo, hi) == (0.5, 0.0, 1.0)
    # many agreeing seeds: narrower than one run's; a run without a number is left out
    value, lo, hi = stats.seeds_then_instances([0.4] * 9 + [float("nan")], [0.3] * 10, [0.5] * 10)
    assert value == pytest.approx(0.4) and 0.3 < lo < 0.4 < hi < 0.5
    assert all(x != x for x in stats.seeds_then_instances([float("nan")], [0.0], [1.0]))
