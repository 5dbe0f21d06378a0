"""Observation 1 (rote.observations.observation1): which readouts enter, the per-layer shares and ranks, and the
claims, on planted cases whose answer is known: labels taken from a random model's own readout,
so that the correct label is the top-1 readout at layer 0 and the noisy one at the last layer."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import torch

from rote.book import charts
from rote.config import make_config
from rote.interp.edits import plain_hooks
from rote.interp.instances import differing_places
from rote.interp.lens import lens_states, read_out, readout_batch
from rote.observations import observation1
from rote.runs.data import generate
from rote.runs.evaluate import greedy_answers
from rote.runs.model import build_model, build_tokenizer

SPECIAL = {"<pad>", "<unk>"}
PLANTED = {"fda": (0, 2), "thr": (0,)}  # the answer places where the correct label is planted


@lru_cache
def planted(task):
    """A random-init tiny model (last block scaled up, so that layer 0 and the output disagree)
    and a table of training questions relabelled from its own readout:

    - noisy rows (memorized by construction): label = the model's greedy answer; true answer = the
      label with answer token 0 (FDA: tokens 0 and 2) replaced by the layer-0 readout's top-1
      token there under teacher forcing of the label (where that differs from the label), so the
      correct label is the top-1 readout of layer 0 and the noisy one of the last layer at exactly
      those places (FDA place 2 reads the noisy prefix: teacher forcing matters there);
    - clean rows (answered correctly): true answer = label = the greedy answer.
    """
    config = make_config(task, "tiny", noise=0.2, seed=1)
    tok = build_tokenizer(config)
    model = build_model(config, len(tok)).eval()
    with torch.no_grad():
        for p in model.transformer.h[-1].parameters():
            p.mul_(3.0)
    frame = generate(config)
    q = frame[(frame["kind"] != "fact") & (frame["split"] == "train")].head(240).copy()
    n = 4 if task == "fda" else 1
    said = greedy_answers(model, tok, q["prompt"], n)
    ids, where, place, row, _ = readout_batch(tok, q.assign(label=said, true=said), "label")
    with torch.no_grad():
        layer0 = read_out(model, lens_states(model, ids, where))[1].argmax(-1)
    top = np.array(tok.convert_ids_to_tokens(layer0.tolist()), dtype=object).reshape(len(q), n)
    tokens = [tok.convert_ids_to_tokens(tok(s, add_special_tokens=False)["input_ids"]) for s in said]
    join = "".join if task == "fda" else " ".join
    planted_at = PLANTED[task]
    rows, clean_rows = [], []
    for (_, r), toks, f in zip(q.iterrows(), tokens, top):
        if len(toks) != n or SPECIAL & set(toks) or SPECIAL & set(f) or (task == "fda" and not all(len(t) == 1 for t in toks)):
            continue
        label = join(toks)
        if all(f[k] != toks[k] for k in planted_at) and len(rows) < 40:
            true = [f[k] if k in planted_at else t for k, t in enumerate(toks)]
            rows.append({**r, "label": label, "true": join(true), "noisy": True})
        elif len(clean_rows) < 40:
            clean_rows.append({**r, "label": label, "true": label, "noisy": False})
    table = pd.DataFrame(rows + clean_rows)
    table["id"] = np.arange(len(table))
    assert table["noisy"].sum() >= 10 and (~table["noisy"]).sum() >= 10
    return config, model, tok, table


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_planted_override_is_read_out_where_it_was_planted(task):
    config, model, tok, table = planted(task)
    result = observation1.layer_readout_of(model, tok, table, task, n_clean=500)
    n_noisy = int(table["noisy"].sum())
    assert result.memorized["id"].tolist() == table.loc[table["noisy"], "id"].tolist()
    assert len(result.clean) == (~table["noisy"]).sum()
    shares = result.shares

    def s(group, place):
        rows = shares[(shares["group"] == group) & (shares["place"].astype(str) == str(place))]
        return rows.set_index("layer")
    last = config.n_layer - 1
    # only the planted places differ: one readout per memorized instance, layer and place
    assert set(result.entries.loc[result.entries["group"] == "memorized noisy", "place"]) == set(PLANTED[task])
    for place in PLANTED[task]:
        mem = s("memorized noisy", place)
        assert (mem["n"] == n_noisy).all()
        assert mem.loc[0, "share_correct"] == 1.0 and mem.loc[0, "share_noisy"] == 0.0
        assert mem.loc[0, "mean_rank_correct"] == 0.0 and mem.loc[0, "share_correct_above_noisy"] == 1.0
        assert mem.loc[last, "share_noisy"] == 1.0 and mem.loc[last, "share_correct"] == 0.0
        assert mem.loc[last, "mean_rank_noisy"] == 0.0 and mem.loc[last, "mean_rank_correct"] >= 1.0
    clean = shares[shares["group"] == "clean"]
    assert (clean.loc[clean["layer"] == last, "share_correct"] == 1.0).all()  # greedy = teacher-forced argmax
    assert clean["share_noisy"].isna().all()  # label = true answer: no separate noisy readout
    if task == "fda":
        assert (s("memorized noisy", "all")["n"] == 2 * n_noisy).all()
        assert (s("clean", "all")["n"] == 4 * len(result.clean)).all()
        assert s("memorized noisy", "all")["share_bridge"].isna().all()
    else:
        assert mem["share_bridge"].notna().all()
    claims = observation1.override_claims(result)
    assert [c.verdict for c in claims] == ["holds"] * 3 and all(c.n == n_noisy for c in claims)
    assert all(c.value == 1.0 and "(layer 0)" in c.statistic for c in claims)  # planted at layer 0, on every instance
    # the plain-hook path agrees
    with plain_hooks():
        hooks = observation1.layer_readout_of(model, tok, table, task, n_clean=500)
    pd.testing.assert_frame_equal(hooks.shares, result.shares, atol=1e-9)


def test_a_correct_label_never_computed_does_not_hold():
    """The same instances with the correct label set to the token that layer 0 ranks last: the
    correct label never outranks the noisy one at an intermediate layer, and the claims do not hold."""
    config, model, tok, table = planted("thr")
    noisy = table[table["noisy"]]
    ids, where, *_ = readout_batch(tok, noisy, "label")
    with torch.no_grad():
        layer0 = read_out(model, lens_states(model, ids, where))[1]
    layer0[:, tok.convert_tokens_to_ids(sorted(SPECIAL))] = float("inf")
    swapped = table.copy()
    swapped.loc[swapped["noisy"], "true"] = tok.convert_ids_to_tokens(layer0.argmin(-1).tolist())
    result = observation1.layer_readout_of(model, tok, swapped, "thr", n_clean=500)
    mem = result.shares[(result.shares["group"] == "memorized noisy") & (result.shares["layer"] == 0)]
    assert mem["share_correct"].item() == 0 and mem["share_correct_above_noisy"].item() == 0
    assert mem["mean_rank_correct"].item() >= len(tok) - 1 - len(SPECIAL)
    claims = observation1.override_claims(result)
    assert [c.verdict for c in claims] == ["does not hold"] * 3 and all(c.value == 0 for c in claims)


def test_differing_places_on_hand_made_answers():
    table = pd.DataFrame({"id": [1, 2, 3], "noisy": [True, True, False],
                          "label": ["3880", "9830", "3830"], "true": ["3830", "3831", "3830"]})
    got = differing_places(table, "fda")
    assert got.values.tolist() == [[1, 2, True], [2, 0, True], [2, 3, False],
                                   [3, 0, True], [3, 1, False], [3, 2, False], [3, 3, False]]
    assert differing_places(table, "thr")["place"].tolist() == [0, 0, 0]
    assert differing_places(table.iloc[:0], "fda").empty


def test_layer_shares_on_a_hand_made_lens_table():
    """Two noisy readouts and one clean one, two layers: shares and mean ranks by hand."""
    lens = pd.DataFrame({
        "id": [1, 1, 2, 2, 3, 3, 4, 4], "layer": [0, 1] * 4, "place": [0] * 8,
        "true_rank": pd.array([0, 3, 2, 1, 0, 0, 7, 2], dtype="Int64"),
        "label_rank": pd.array([1, 0, 0, 0, 0, 0, 0, 0], dtype="Int64"),
        "bridge_rank": pd.array([5, 1, 0, 2, 0, 4, 9, 9], dtype="Int64")})
    noisy = lens[lens["id"] != 3]
    first_of = lambda ids: pd.DataFrame({"id": ids, "place": 0, "first": True})  # noqa: E731
    entries = pd.concat([observation1.readout_entries(noisy, first_of([1, 2, 4]), "memorized noisy"),
                         observation1.readout_entries(lens[lens["id"] == 3], first_of([3]), "clean")])
    assert entries.set_index(["id", "layer"])["readout"].to_dict() == {
        (1, 0): "correct", (1, 1): "noisy", (2, 0): "noisy", (2, 1): "noisy", (4, 0): "noisy", (4, 1): "noisy",
        (3, 0): "correct", (3, 1): "correct"}
    shares = observation1.layer_shares(entries, "thr").set_index(["group", "layer"])
    np.testing.assert_allclose(shares.loc[("memorized noisy", 0), ["n", "share_correct", "share_noisy", "share_bridge",
                                                                   "share_correct_above_noisy", "mean_rank_correct",
                                                                   "mean_rank_noisy", "mean_rank_bridge"]].astype(float),
                               [3, 1 / 3, 2 / 3, 1 / 3, 1 / 3, 3.0, 1 / 3, 14 / 3])
    second = shares.loc[("memorized noisy", 1), ["share_correct", "share_noisy", "mean_rank_correct"]]
    np.testing.assert_allclose(second.astype(float), [0.0, 1.0, 2.0])
    assert np.isnan(shares.loc[("clean", 0), "share_noisy"]) and shares.loc[("clean", 1), "share_correct"] == 1.0
    fda = observation1.layer_shares(entries, "fda")
    assert fda["share_bridge"].isna().all() and set(fda["place"]) == {0, "all"}


def test_nothing_memorized_cannot_be_tested_and_still_charts():
    config, model, tok, table = planted("thr")
    said = set(greedy_answers(model, tok, table["prompt"], 1))
    unsaid = next(t for t in tok.convert_ids_to_tokens(list(range(len(tok)))) if t not in said | SPECIAL)
    nothing = table.assign(label=np.where(table["noisy"], unsaid, table["label"]))
    result = observation1.layer_readout_of(model, tok, nothing, "thr", n_clean=500)
    assert result.memorized.empty and len(result.noisy) == table["noisy"].sum()
    assert {c.verdict for c in observation1.override_claims(result)} == {"cannot be tested"}
    empty = observation1.layer_readout_of(model, tok, table.iloc[:0], "thr")
    assert empty.shares.empty and {c.verdict for c in observation1.override_claims(empty)} == {"cannot be tested"}
    assert "note" in observation1.readout_table(empty)
    no_steps = pd.DataFrame(columns=["step", "layer", "n", "share_correct", "share_noisy"])
    for chart in (charts.layer_readout_chart(empty.shares, "thr"), charts.layer_readout_chart(result.shares, "thr"),
                  charts.readout_over_training_chart(no_steps)):
        chart.to_dict()
