"""Properties of the two noisy datasets, checked by code independent of the generator's helpers:
sums are recomputed from the prompt text, two-hop answers from the fact rows of the same table."""
from __future__ import annotations

import hashlib
import json
import re

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import rote
from rote.config import make_config
from rote.runs.data import generate, load_dataset, manifest

FDA_PROMPT = re.compile(r"(\d{4})\+(\d{4})=")
FACT_PROMPT = re.compile(r"The (\S+) of (\S+) is")
TWO_HOP_PROMPT = re.compile(r"Who is the (\S+) of the (\S+) of (\S+) \? Answer:")

seeds = st.integers(0, 2**32 - 1)
noises = st.floats(0.0, 0.5, allow_nan=False)
small = settings(max_examples=12, deadline=None)


# ---------------------------------------------------------------- FDA

@small
@given(seed=seeds, noise=noises, n_train=st.integers(1, 300), n_test=st.integers(1, 100))
@example(seed=0, noise=0.0, n_train=50, n_test=10)
@example(seed=1, noise=0.5, n_train=301, n_test=7)
def test_fda_properties(seed, noise, n_train, n_test):
    config = make_config("fda", "tiny", n_train=n_train, n_test=n_test, noise=noise, seed=seed)
    frame = generate(config)

    assert (frame["split"] == "train").sum() == n_train
    assert (frame["split"] == "test").sum() == n_test
    assert len(frame) == n_train + n_test
    assert frame["id"].is_unique

    pairs = []
    for row in frame.itertuples(index=False):
        match = FDA_PROMPT.fullmatch(row.prompt)
        assert match, row.prompt
        a, b = int(match.group(1)), int(match.group(2))
        assert 1000 <= a <= 9999 and 1000 <= b <= 9999
        assert a + b <= 9999
        assert (int(row.a), int(row.b)) == (a, b)
        assert row.true == f"{a + b:04d}"
        assert re.fullmatch(r"\d{4}", row.label)
        if row.noisy:
            assert row.split == "train"
            assert row.label != row.true
            assert 1000 <= int(row.label) <= 9999
        else:
            assert row.label == row.true
        pairs.append((min(a, b), max(a, b)))

    # No unordered operand pair twice: neither within a split nor across train and test.
    assert len(set(pairs)) == len(pairs)
    train_pairs = {p for p, s in zip(pairs, frame["split"]) if s == "train"}
    test_pairs = {p for p, s in zip(pairs, frame["split"]) if s == "test"}
    assert not train_pairs & test_pairs

    assert int(frame["noisy"].sum()) == round(noise * n_train)


def test_fda_noise_rate_examples():
    """Exact noisy counts for a few hand-computed cases (round half to even, as Python's round)."""
    for noise, n_train, expected in [(0.0, 100, 0), (0.05, 100, 5), (0.1, 25, 2), (0.5, 3, 2),
                                     (0.3, 10, 3), (0.49, 200, 98)]:
        frame = generate(make_config("fda", "tiny", n_train=n_train, n_test=5, noise=noise))
        assert int(frame["noisy"].sum()) == expected, (noise, n_train)


# ---------------------------------------------------------------- THR

@small
@given(seed=seeds, noise=noises, n_entities=st.integers(3, 30), n_relations=st.integers(1, 4),
       fraction=st.sampled_from([0.3, 0.5, 0.8]))
@example(seed=0, noise=0.5, n_entities=3, n_relations=1, fraction=0.5)
@example(seed=7, noise=0.0, n_entities=30, n_relations=4, fraction=0.5)
def test_thr_properties(seed, noise, n_entities, n_relations, fraction):
    config = make_config("thr", "tiny", n_entities=n_entities, n_relations=n_relations,
                         noise=noise, seed=seed, two_hop_train_fraction=fraction)
    frame = generate(config)
    assert set(frame["kind"]) <= {"fact", "two_hop"}
    assert frame["id"].is_unique

    # One-hop facts: all in training, clean, one per (subject, relation).
    facts = frame[frame["kind"] == "fact"]
    assert (facts["split"] == "train").all()
    assert not facts["noisy"].any()
    assert len(facts) == n_entities * n_relations
    entities = set(facts["subject"])
    relations = set(facts["r1"])
    assert len(entities) == n_entities and len(relations) == n_relations
    fact = {}
    for row in facts.itertuples(index=False):
        match = FACT_PROMPT.fullmatch(row.prompt)
        assert match, row.prompt
        assert (match.group(1), match.group(2)) == (row.r1, row.subject)
        assert row.label == row.true
        assert row.true in entities and row.true != row.subject
        assert (row.subject, row.r1) not in fact
        fact[row.subject, row.r1] = row.true
    assert set(fact) == {(e, r) for e in entities for r in relations}

    # Two-hop questions: answers recomputed from the fact rows.
    two_hop = frame[frame["kind"] == "two_hop"]
    assert len(two_hop)
    for row in two_hop.itertuples(index=False):
        match = TWO_HOP_PROMPT.fullmatch(row.prompt)
        assert match, row.prompt
        assert (match.group(1), match.group(2), match.group(3)) == (row.r2, row.r1, row.subject)
        assert row.r1 in relations and row.r2 in relations and row.subject in entities
        assert row.bridge == fact[row.subject, row.r1]
        assert row.true == fact[row.bridge, row.r2]
        if row.noisy:
            assert row.split == "train"
            assert row.label != row.true and row.label != row.bridge
            assert row.label in entities
        else:
            assert row.label == row.true

    train = two_hop[two_hop["split"] == "train"]
    test = two_hop[two_hop["split"] == "test"]
    assert len(train) + len(test) == len(two_hop)
    assert int(frame["noisy"].sum()) == int(train["noisy"].sum()) == round(noise * len(train))

    # Held-out questions: two-hop, clean, never seen, composed of hops that training uses.
    assert set(frame.loc[frame["split"] == "test", "kind"]) <= {"two_hop"}
    assert not test["noisy"].any()
    assert (test["label"] == test["true"]).all()
    assert frame["prompt"].is_unique
    assert not set(test["prompt"]) & set(frame.loc[frame["split"] == "train", "prompt"])
    first_hops = set(zip(train["subject"], train["r1"]))
    second_hops = set(zip(train["bridge"], train["r2"]))
    for row in test.itertuples(index=False):
        assert (row.subject, row.r1) in first_hops
        assert (row.bridge, row.r2) in second_hops


def test_thr_has_held_out_questions():
    """The tiny profile's THR data has a real test split (else the properties above are vacuous)."""
    frame = generate(make_config("thr", "tiny"))
    test = frame[frame["split"] == "test"]
    assert len(test) > 100
    assert frame["noisy"].sum() > 0


# ---------------------------------------------------------------- determinism and files

@pytest.mark.parametrize("task", ["fda", "thr"])
def test_generate_is_deterministic(task):
    config = make_config(task, "tiny", seed=3)
    pd.testing.assert_frame_equal(generate(config), generate(config))


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_different_seed_gives_different_data(task):
    a = generate(make_config(task, "tiny", seed=0))
    b = generate(make_config(task, "tiny", seed=1))
    assert not a.equals(b)
    assert list(a["prompt"]) != list(b["prompt"]) or list(a["label"]) != list(b["label"])


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_load_dataset_files_identical_across_homes(task, tmp_path, monkeypatch):
    config = make_config(task, "tiny", seed=5)
    files = []
    for name in ("home1", "home2"):
        monkeypatch.setenv("ROTE_HOME", str(tmp_path / name))
        load_dataset(config)
        found = list((tmp_path / name).rglob("instances.csv"))
        assert len(found) == 1
        files.append(found[0])
        assert str(found[0]).startswith(str(tmp_path / name))
        data = found[0].read_bytes()
        assert manifest(config)["sha256"] == hashlib.sha256(data).hexdigest()
    assert files[0].read_bytes() == files[1].read_bytes()


@pytest.mark.parametrize("task", ["fda", "thr"])
def test_load_dataset_matches_generate(task):
    """What is read back from disk is what was generated (answers stay strings, noise stays bool)."""
    config = make_config(task, "tiny", seed=2, noise=0.2)
    generated = generate(config)
    loaded = load_dataset(config)
    assert len(loaded) == len(generated)
    for column in ("id", "split", "kind", "prompt", "label", "true", "noisy"):
        assert list(loaded[column]) == list(generated[column]), column
    assert loaded["noisy"].dtype == bool
    # Second call reads the same table from disk.
    pd.testing.assert_frame_equal(load_dataset(config), loaded)


def test_manifest_fda(rote_home):
    config = make_config("fda", "tiny", n_train=120, n_test=30, noise=0.1, seed=4)
    m = manifest(config)
    assert {"config", "counts", "sha256"} <= set(m)
    assert m["config"]["task"] == "fda"
    assert m["config"]["noise"] == 0.1 and m["config"]["seed"] == 4
    assert m["config"]["n_train"] == 120 and m["config"]["n_test"] == 30
    assert m["counts"]["noisy"] == 12
    assert sum(v for k, v in m["counts"].items() if k.startswith("train")) == 120
    assert sum(v for k, v in m["counts"].items() if k.startswith("test")) == 30
    (csv,) = rote_home.rglob("instances.csv")
    assert m["sha256"] == hashlib.sha256(csv.read_bytes()).hexdigest()


def test_manifest_thr():
    config = make_config("thr", "tiny", n_entities=10, n_relations=3, noise=0.2, seed=1)
    m = manifest(config)
    frame = generate(config)
    n_train_two_hop = int(((frame["kind"] == "two_hop") & (frame["split"] == "train")).sum())
    assert m["config"]["task"] == "thr" and m["config"]["n_entities"] == 10
    assert m["counts"]["noisy"] == round(0.2 * n_train_two_hop)
    assert m["counts"]["train_fact"] == 30
    assert rote.manifest is manifest


def test_dataset_shared_by_model_changes_only():
    """A model or training change keeps the dataset; a data change makes another one."""
    base = make_config("fda", "tiny", seed=1)
    same = make_config("fda", "tiny", seed=1, n_layer=3, lr=1e-3, max_steps=5)
    other = make_config("fda", "tiny", seed=1, noise=0.1)
    assert manifest(base)["sha256"] == manifest(same)["sha256"]
    assert manifest(base)["sha256"] != manifest(other)["sha256"]


def test_a_new_table_format_gets_its_own_dataset_folder(monkeypatch):
    """Another layout of instances.csv (`rote.runs.data.FORMAT`) is written to another folder, so a
    dataset of the old layout is never read as the new one; run folders (config hashes) stay."""
    config = make_config("fda", "tiny")
    folder, run = rote.runs.data.dataset_dir(config), rote.config_hash(config)
    monkeypatch.setattr(rote.runs.data, "FORMAT", rote.runs.data.FORMAT + 1)
    assert rote.runs.data.dataset_dir(config) != folder and rote.config_hash(config) == run


@pytest.mark.parametrize("task", ["fda", "thr"])
@pytest.mark.parametrize("profile", ["tiny", "cpu"])
def test_dataset_matches_frozen_manifest(task, profile):
    """The committed manifest (lib/rote/resources/manifests) pins config, counts and the checksum of every byte
    of the default datasets: a change in the generator or in a profile's data shows here
    (refreeze with `python -m rote.runs.data` when the change is intended)."""
    from rote.runs.data import frozen_manifest_path

    frozen = json.loads(frozen_manifest_path(task, profile).read_text())
    assert rote.manifest(make_config(task, profile)) == frozen
