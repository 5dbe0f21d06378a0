"""Observation 4 (rote.observations.observation4, rote.observations.changes): the single-input changes
are valid, the measures agree with plain torch, an identity change changes nothing, the look-up
baselines give what a look-up gives, the dependence rules and the verdict follow the numbers."""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.book import charts
from rote.config import make_config
from rote.interp.edits import plain_hooks
from rote.interp.instances import scored_places
from rote.observations import changes as changing
from rote.observations import observation4
from rote.runs.data import two_hop_prompt
from rote.runs.evaluate import greedy_answers
from rote.runs.model import encode
from test_edits import setup  # a random-init tiny model, its tokenizer, questions and the frame

# ---- the changes ----

def test_fda_changes_differ_in_exactly_one_digit():
    _, _, _, rows, frame = setup("fda")
    changes = changing.single_input_changes(rows, frame, "fda", n_replacements=3, seed=2)
    assert set(changes["input"]) == set(observation4.INPUTS["fda"])
    orig = rows.set_index("id")
    for c in changes.itertuples(index=False):
        a, b = int(orig.loc[c.id, "a"]), int(orig.loc[c.id, "b"])
        assert 1000 <= c.a <= 9999 and 1000 <= c.b <= 9999 and c.a + c.b <= 9999
        assert c.prompt == f"{c.a}+{c.b}=" and c.true == f"{c.a + c.b:04d}" and c.true != c.label
        before, after = f"{a:04d}{b:04d}", f"{c.a:04d}{c.b:04d}"
        diff = [k for k in range(8) if before[k] != after[k]]
        assert len(diff) == 1 and observation4.INPUTS["fda"][diff[0]] == c.input and after[diff[0]] == c.replacement
        assert c.label == orig.loc[c.id, "label"] and c.orig_true == orig.loc[c.id, "true"]
    per = changes.groupby(["id", "input"]).size()
    assert per.max() <= 3 and per.median() == 3
    assert not changes.duplicated(["id", "prompt"]).any()
    again = changing.single_input_changes(rows, frame, "fda", n_replacements=3, seed=2)
    pd.testing.assert_frame_equal(changes, again)  # seeded
    assert not again.equals(changing.single_input_changes(rows, frame, "fda", n_replacements=3, seed=3))


def test_fda_changes_respect_the_sum_limit():
    inst = pd.DataFrame({"id": [0], "a": [5000], "b": [4999], "label": ["1234"], "true": ["9999"], "noisy": [True]})
    changes = changing.fda_changes(inst, n_replacements=9)
    assert (changes["a"] + changes["b"] <= 9999).all() and (changes["a"] >= 1000).all()
    # every digit of a can only go down (4999 + 5000 = 9999): a thousands 1..4, others 0..(old - 1)
    assert sorted(changes.loc[changes["input"] == "a thousands", "replacement"]) == list("1234")
    assert changes.loc[changes["input"] == "a units", "replacement"].tolist() == []


def test_thr_changes_recompute_the_chain_from_the_facts():
    _, _, _, rows, frame = setup("thr")
    changes = changing.single_input_changes(rows, frame, "thr", n_replacements=2, seed=0)
    facts = frame[frame["kind"] == "fact"]
    partner = {(s, r): t for s, r, t in zip(facts["subject"], facts["r1"], facts["true"])}
    orig = rows.set_index("id")
    status = dict(zip(frame["prompt"], np.where(frame["noisy"], "noisy", frame["split"])))
    assert set(changes["input"]) == {"subject", "r1", "r2"}
    for c in changes.itertuples(index=False):
        o = orig.loc[c.id]
        changed = [k for k in ("subject", "r1", "r2") if getattr(c, k) != o[k]]
        assert changed == [c.input] and getattr(c, c.input) == c.replacement
        assert c.bridge == partner[(c.subject, c.r1)] and c.true == partner[(c.bridge, c.r2)]
        assert c.prompt == two_hop_prompt(c.r1, c.r2, c.subject)
        assert c.true != c.label and status.get(c.prompt) != "noisy"  # left out (module docstring)
        assert c.orig_bridge == o["bridge"] and c.label == o["label"]
    assert (changes["status"] == "train").any() and set(changes["status"]) <= {"train", "test", "unseen"}
    with pytest.raises(ValueError, match="allowed: fda, thr"):
        changing.single_input_changes(rows, frame, "abc")


# ---- the measures ----

def _identity(rows):
    return rows.assign(input="identity", replacement="", orig_true=rows["true"], orig_bridge=rows["bridge"])


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_identity_change_leaves_the_label_unchanged(task):
    config, model, tok, rows, _ = setup(task)
    table = changing.change_effects(model, tok, rows, _identity(rows), task)
    np.testing.assert_allclose(table["delta_logp"], 0.0, atol=1e-6)
    n = 4 if task == "fda" else 1
    said = greedy_answers(model, tok, rows["prompt"], n)
    assert (table["kept"].to_numpy() == (np.array(said) == rows["label"].to_numpy())).all()
    moves = changing.intermediate_moves(model, tok, _identity(rows).assign(
        true=rows["true"], bridge=rows["bridge"]), task)
    assert moves.empty  # nothing changed, nothing can move


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_label_logprob_is_the_plain_forward_pass(task):
    """Per changed question, one at a time without padding: mean log-softmax of the label's
    scored tokens."""
    config, model, tok, rows, frame = setup(task)
    changes = changing.single_input_changes(rows, frame, task, 1, seed=0).head(10)
    table = changing.change_effects(model, tok, rows, changes, task)
    scored = scored_places(rows, task)
    row = {i: n for n, i in enumerate(rows["id"])}
    for i, c in enumerate(changes.itertuples(index=False)):
        ids = torch.tensor([tok(c.prompt + (c.label if task == "fda" else " " + c.label),
                                add_special_tokens=False)["input_ids"]])
        k = scored.shape[1]
        with torch.no_grad():
            lp = model(ids).logits[0, -k - 1:-1].log_softmax(-1).gather(-1, ids[0, -k:, None]).squeeze(-1)
        keep = scored[row[c.id]]
        assert table["logp_after"].iloc[i] == pytest.approx(float(lp[keep].mean()), abs=1e-5)
    assert (table["delta_logp"].abs() > 1e-6).any()  # the changes do change something


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_intermediate_moves_match_plain_torch(task):
    """nnsight and plain hooks agree, and at one layer both match a readout computed from
    `output_hidden_states` by hand."""
    config, model, tok, rows, frame = setup(task)
    changes = changing.single_input_changes(rows, frame, task, 1, seed=0).head(40).reset_index(drop=True)
    a = changing.intermediate_moves(model, tok, changes, task)
    with plain_hooks():
        b = changing.intermediate_moves(model, tok, changes, task)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) and 0 < a["moved"].mean() < 1
    layer = 0
    ids, mask = encode(tok, changes["prompt"], changes["label"])
    with torch.no_grad():
        h = model(ids, output_hidden_states=True).hidden_states[layer + 1]
        logits = model.lm_head(model.transformer.ln_f(h))
    rows_at = a[a["layer"] == layer].set_index("change")
    for i, c in changes.iterrows():
        where = mask[i].nonzero().squeeze(-1) - 1  # the readout pos: they predict the answer tokens
        if task == "thr":
            if c["bridge"] == c["orig_bridge"]:
                assert i not in rows_at.index
                continue
            new, old = tok.convert_tokens_to_ids([c["bridge"], c["orig_bridge"]])
            moved = [float(logits[i, where[0], new] > logits[i, where[0], old])]
        else:
            moved = [float(logits[i, t, tok.convert_tokens_to_ids(c["true"][k])]
                           > logits[i, t, tok.convert_tokens_to_ids(c["orig_true"][k])])
                     for k, t in enumerate(where.tolist()) if c["true"][k] != c["orig_true"][k]]
        assert rows_at.loc[i, "moved"] == pytest.approx(np.mean(moved)), i


# ---- look-ups and dependence ----

def _synthetic(task):
    """Changes of three memorized noisy instances, every input changed twice."""
    _, _, _, rows, frame = setup(task)
    rows = rows[rows["noisy"]].head(3)
    return changing.single_input_changes(rows, frame, task, n_replacements=2, seed=0)


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_lookup_baselines(task):
    changes = _synthetic(task)
    whole_key, one_key = changing.LOOKUP_KEYS[task]
    whole = changing.lookup_effects(changes, task, whole_key)
    one = changing.lookup_effects(changes, task, one_key)
    effects = pd.concat([whole, one], ignore_index=True)
    s = observation4.survival(effects, pd.DataFrame(), None, n_resamples=50)
    w = s[s["group"] == changing.lookup_name(whole_key)]
    assert (w["kept"] == 0).all() and (w["correct"] == 1).all() and (w["delta_logp"] == -np.inf).all()
    o = s[s["group"] == changing.lookup_name(one_key)].set_index("input")
    key = set(changing.key_inputs(task, one_key))
    assert key == ({"subject"} if task == "thr" else set(observation4.INPUTS["fda"][:4]))
    for name, r in o.iterrows():
        assert (r["kept"], r["correct"], r["delta_logp"]) == ((0.0, 1.0, -np.inf) if name in key else (1.0, 0.0, 0.0))
    if task == "fda":
        assert (w["noisy_digit_persists"] == 0).all()
    inputs = observation4.input_dependence(effects)
    empty = pd.DataFrame(columns=["group", "id", "intermediate", "n_layers", "depends"])
    counts = observation4.dependence_counts(inputs, empty, task).set_index("group")
    cw, co = counts.loc[[changing.lookup_name(whole_key)]], counts.loc[[changing.lookup_name(one_key)]]
    assert (cw["n_inputs"] == cw["n_changed"]).all() and cw["like_whole_lookup"].all()
    assert (cw["n_intermediate"] == 0).all() and not cw["distributed"].any() and not cw["like_one_lookup"].any()
    assert (co["n_inputs"] == len(key)).all() and co["like_one_lookup"].all() and not co["like_whole_lookup"].any()
    summary = observation4.dependence_summary(counts.reset_index()).set_index("group")
    assert summary.loc[changing.lookup_name(whole_key), "mean_intermediate"] == 0
    with pytest.raises(ValueError, match="allowed"):
        changing.key_inputs(task, "operand b")


def test_input_dependence_threshold_and_majority():
    effects = pd.DataFrame({"group": "g", "id": 1, "input": ["x", "x", "y", "y", "z", "z"],
                            "kept": [True, False, True, True, True, True],
                            "delta_logp": [-0.1, -5.0, -1.25, -1.2, -0.5, -2.0]})
    dep = observation4.input_dependence(effects, threshold=1.0).set_index("input")
    assert dep["share_harmed"].tolist() == [0.5, 1.0, 0.5] and dep["depends"].all()
    dep = observation4.input_dependence(effects, threshold=1.3).set_index("input")
    assert dep["depends"].tolist() == [True, False, True]
    assert observation4.harmed([False, True], [-2.0, 0.0], 1.0).tolist() == [True, True]
    assert observation4.harmed([False], [-0.5], 1.0).tolist() == [False]


def test_intermediate_dependence_needs_the_control_unharmed():
    rows = []
    for i, (t, k) in enumerate([(-2.0, -0.1), (-2.0, -2.0), (-0.1, -0.1)]):
        for removed, d in (("target", t), ("control", k)):
            rows.append({"method": "projection", "layer": 0, "group": "memorized noisy", "removed": removed,
                         "id": i, "delta_logp": d, "mem_before": True, "mem_after": True})
    rows.append({**rows[-2], "layer": 1, "mem_after": False})  # instance 2 loses its label at layer 1
    rows.append({**rows[-2], "layer": 1})
    table = observation4.intermediate_dependence(pd.DataFrame(rows), "thr").set_index("id")
    assert table["depends"].tolist() == [True, False, True] and table["n_layers"].tolist() == [1, 0, 1]
    assert set(table["intermediate"]) == {"bridge"}


def test_an_intermediate_result_is_read_from_one_test_fixed_on_clean_answers():
    # clean contrasts: projection takes most from clean answers at layer 1, LEACE at layer 0 (less)
    contrasts = pd.DataFrame([{"method": m, "layer": layer, "comparison": "target - control", "group": "clean",
                               "delta_logp": d, "lo": d - 0.05, "hi": d + 0.05}
                              for m, ds in (("projection", (-0.3, -1.0)), ("LEACE", (-0.5, -0.02))) for layer, d in
                              enumerate(ds)])
    assert observation4.fixed_tests(contrasts, "thr", 3) == {"bridge": ("projection", 1)}
    assert observation4.fixed_tests(contrasts.assign(delta_logp=-0.01, lo=-0.02, hi=0.0), "thr", 3) == {}
    # in a two-block model layer 1 is the last block, the answer's readout: not an intermediate layer
    assert observation4.fixed_tests(contrasts, "thr", 2) == {"bridge": ("LEACE", 0)}
    # instance 0 is harmed by projection at layer 1 (the fixed test); instance 1 only by LEACE at layer 0 and
    # by projection at layer 0: any-of-four would count both, the fixed test counts instance 0 only
    rows = []
    for i, hits in enumerate([{("projection", 1)}, {("LEACE", 0), ("projection", 0)}]):
        for method in ("projection", "LEACE"):
            for layer in (0, 1):
                for removed in ("target", "control"):
                    hit = removed == "target" and (method, layer) in hits
                    rows.append({"method": method, "layer": layer, "group": "memorized noisy", "removed": removed,
                                 "id": i, "delta_logp": -2.0 if hit else 0.0, "mem_before": True, "mem_after": True})
    removals = pd.DataFrame(rows)
    anywhere = observation4.intermediate_dependence(removals, "thr").set_index("id")
    assert anywhere["depends"].tolist() == [True, True]
    fixed = observation4.intermediate_dependence(removals, "thr", tests=observation4.fixed_tests(contrasts, "thr", 3))
    fixed = fixed.set_index("id")
    assert fixed["depends"].tolist() == [True, False] and fixed["n_layers"].tolist() == [1, 1]
    # no informative test: no instance depends on the result
    none = observation4.intermediate_dependence(removals, "thr", tests={})
    assert not none["depends"].any()


# ---- one call and the verdict ----

@lru_cache
def planted():
    """A random FDA model whose noisy "labels" are its own greedy answers: every noisy instance is
    memorized and the whole pipeline runs on it."""
    config, model, tok, _, frame = setup("fda")
    frame = frame.copy()
    said = greedy_answers(model, tok, frame["prompt"], 4)
    noisy = frame["noisy"] & (np.array(said) != frame["true"].to_numpy()) & (frame["split"] == "train")
    frame["label"] = np.where(noisy, said, frame["label"])
    frame["noisy"] = noisy
    frame.loc[~noisy, "label"] = frame.loc[~noisy, "true"]
    return config, model, tok, frame


def test_distributed_encoding_runs_and_makes_its_claims():
    config, model, tok, frame = planted()
    frame = frame[frame["split"].eq("test") | ~frame["noisy"] | (frame["id"] < 200)]
    result = observation4.distributed_encoding_of(model, tok, frame, "fda", n_replacements=1, n_clean=10,
                                                 n_fit=100, n_resamples=50, config=config, lookup=(model, tok, frame))
    assert len(result.memorized) == frame["noisy"].sum() > 0
    # the model as its own trained look-up: the same instances, changes and tests give the same input
    # dependences; as its own control, "distributed" cannot hold
    counts = result.counts.set_index(["group", "id"])["n_inputs"]
    assert (counts.loc["memorized noisy"] == counts.loc[observation4.LOOKUP_MODEL]).all()
    assert set(result.changes["group"]) >= {"memorized noisy", "look-up on the whole input", "look-up on operand a"}
    assert set(result.survival["input"]) == set(observation4.INPUTS["fda"])
    assert set(result.two_changes["group"]) <= {"memorized noisy", "clean"} and len(result.two_changes)
    assert len(result.counts) == result.counts[["group", "id"]].drop_duplicates().shape[0]
    claims = observation4.distributed_claims(result, n_resamples=50)
    assert len(claims) == 5 and all(c.n == len(result.memorized) and c.task == "fda" for c in claims)
    assert claims[0].verdict != "holds"
    assert len(result.same_sum) and set(result.same_sum["kind"]) <= {"swap", "offset"}
    charts.single_change_chart(result.survival, observation4.INPUTS["fda"]).to_dict()
    assert "note" not in observation4.survival_table(result) and "note" not in observation4.dependence_table(result)
    with pytest.raises(ValueError, match="threshold"):
        observation4.distributed_encoding_of(model, tok, frame, "fda", threshold=0)


def test_nothing_memorized_cannot_be_tested():
    config, model, tok, _, frame = setup("thr")
    frame = frame.assign(label=np.where(frame["noisy"], "of", frame["label"]))  # a label never said
    result = observation4.distributed_encoding_of(model, tok, frame, "thr", n_clean=5, n_fit=50, n_resamples=20)
    assert result.memorized.empty
    assert {c.verdict for c in observation4.distributed_claims(result, n_resamples=20)} == {"cannot be tested"}
    charts.single_change_chart(result.survival).to_dict()
    charts.single_change_chart(pd.DataFrame()).to_dict()


def test_the_trained_lookup_makes_distributed_fail_when_it_is_as_distributed():
    """Planted counts: 80% of noisy labels distributed. Against a trained look-up at 10% the claim
    holds; against one the measure calls 80% distributed, it does not; with no look-up it cannot be
    tested."""
    rng = np.random.default_rng(0)

    def counts(group, share, n=60):
        return pd.DataFrame({"group": group, "id": range(n), "n_changed": 3, "n_inputs": 2, "n_intermediate": 1,
                             "distributed": rng.random(n) < share, "like_whole_lookup": False, "like_one_lookup": False})

    config, model, tok, rows, frame = setup("thr")
    noisy = rows.assign(memorized=True)
    reliance = observation4.Reliance("thr", 3, noisy, rows.iloc[:0], pd.DataFrame(), pd.DataFrame(), pd.DataFrame())
    empty = pd.DataFrame(columns=["group", "id", "correct", "kept"])

    def verdict(*parts):
        c = pd.concat(parts, ignore_index=True)
        result = observation4.Distributed("thr", 2, reliance, empty, empty, None, empty, empty, c, empty,
                                          observation4.dependence_summary(c), empty)
        return observation4.distributed_claims(result, n_resamples=200)[0].verdict

    planted = counts("memorized noisy", 0.8)
    assert verdict(planted, counts(observation4.LOOKUP_MODEL, 0.1)) == "holds"
    assert verdict(planted, counts(observation4.LOOKUP_MODEL, 0.8)) in ("does not hold", "holds in part")
    assert verdict(planted) == "cannot be tested"


def test_lookup_model_config_is_the_model_on_random_labels_only():
    for profile in ("tiny", "cpu"):
        fda = make_config("fda", profile, noise=0.05, seed=2)
        control = observation4.lookup_model_config(fda)
        assert (control.noise, control.n_train, control.seed) == (0.95, min(fda.n_train, 500), 2)
        assert control.stop_mem_noisy == 0.99  # it stops once it writes its labels, whatever the profile's stop
        assert replace(control, noise=fda.noise, n_train=fda.n_train, stop_mem_noisy=fda.stop_mem_noisy) == fda
        assert observation4.lookup_model_config(replace(fda, noise=0.1)) == control  # one look-up for every noise rate
        thr = make_config("thr", profile, seed=1)
        control = observation4.lookup_model_config(thr)
        assert (control.noise, control.n_relations, control.two_hop_train_fraction) == (0.95, 4, 0.5)
        assert replace(control, noise=thr.noise, n_relations=thr.n_relations, stop_mem_noisy=thr.stop_mem_noisy,
                       two_hop_train_fraction=thr.two_hop_train_fraction) == thr
