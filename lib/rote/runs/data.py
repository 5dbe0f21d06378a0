"""The two tasks with label noise, generated from a seed.

FDA, four-digit addition: `1357+2473=3830`. Operands are four-digit numbers whose sum stays below
10,000, so every answer is four digits. A noisy label is a uniformly random four-digit number
(1000-9999) other than the true sum.

THR, two-hop relational reasoning over a random knowledge graph of named people: every person has
one partner per relation. Every one-hop fact (`The neighbor of Adam is Parker`) is in training,
clean. Two-hop questions (`Who is the debtor of the neighbor of Adam ? Answer: Bella`) are split
into training (with noise) and a held-out test set whose questions compose facts the model has
seen used as first and second hops in training. A noisy answer is a random person other than the
true answer and the bridge entity.

Exactly round(noise * n) training questions are noisy (n: all FDA training questions, or the THR
two-hop training questions), chosen once at generation time.

The instance table (`COLUMNS`): `label` is what the data say, the answer the model is trained on,
noisy or not; `true` is the correct answer; `noisy` says whether the two differ.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from rote.config import RELATIONS, Config, OneLineError, data_fields, names, validate
from rote.store import RESOURCES, atomic_dir, home


class DataError(OneLineError, ValueError):
    """A dataset folder whose files are not what was generated."""

COLUMNS = ["id", "split", "kind", "prompt", "label", "true", "noisy",
           "a", "b", "subject", "r1", "r2", "bridge"]
FORMAT = 2  # the layout of instances.csv (its columns): part of the dataset folder's key, not of any config hash


def n_noisy(noise: float, n: int) -> int:
    """How many of n training instances get a noisy label."""
    return int(round(noise * n))


def operand_pairs(n: int, rng: np.random.Generator, excluded=frozenset(), unordered: bool = False,
                  batch: int | None = None) -> np.ndarray:
    """n distinct FDA operand pairs (a, b), both in 1000..8999 with a + b <= 9999, drawn uniformly
    from `rng` in batches of `batch` candidates (default: twice the pairs still missing, plus 64),
    leaving out the pairs in `excluded`; with `unordered`, (a, b) and (b, a) are the same pair."""
    pairs, seen = [], set()
    while len(pairs) < n:
        cand = rng.integers(1000, 9000, size=(batch or 2 * (n - len(pairs)) + 64, 2))
        for a, b in cand[cand.sum(1) <= 9999].tolist():
            key = (min(a, b), max(a, b)) if unordered else (a, b)
            if key not in seen and (a, b) not in excluded:
                seen.add(key)
                pairs.append((a, b))
                if len(pairs) == n:
                    break
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def generate_fda(config: Config) -> pd.DataFrame:
    rng = np.random.default_rng(config.seed)
    pairs = operand_pairs(config.n_train + config.n_test, rng, unordered=True)
    true = pairs.sum(1)
    label = true.copy()
    noisy = np.zeros(len(pairs), dtype=bool)
    noisy_idx = rng.choice(config.n_train, n_noisy(config.noise, config.n_train), replace=False)
    wrong = rng.integers(1000, 9999, size=len(noisy_idx))  # 1000..9998, then skip the true sum
    label[noisy_idx] = wrong + (wrong >= true[noisy_idx])
    noisy[noisy_idx] = True
    split = np.where(np.arange(len(pairs)) < config.n_train, "train", "test")
    return pd.DataFrame({
        "id": np.arange(len(pairs)), "split": split, "kind": "add",
        "prompt": [f"{a}+{b}=" for a, b in pairs],
        "label": [f"{x:04d}" for x in label], "true": [f"{x:04d}" for x in true],
        "noisy": noisy, "a": pairs[:, 0], "b": pairs[:, 1],
    }).reindex(columns=COLUMNS)


def knowledge_graph(n_entities: int, n_relations: int, rng: np.random.Generator) -> np.ndarray:
    """graph[e, r] = the r-partner of person e: a random other person."""
    partner = rng.integers(0, n_entities - 1, size=(n_entities, n_relations))
    return partner + (partner >= np.arange(n_entities)[:, None])


def fact_prompt(relation: str, subject: str) -> str:
    return f"The {relation} of {subject} is"


def two_hop_prompt(r1: str, r2: str, subject: str) -> str:
    return f"Who is the {r2} of the {r1} of {subject} ? Answer:"


def generate_thr(config: Config) -> pd.DataFrame:
    people = names()
    if config.n_entities > len(people):
        raise ValueError(f"n_entities must be <= {len(people)} (the names in lib/rote/resources/names.txt)")
    if config.n_relations > len(RELATIONS):
        raise ValueError(f"n_relations must be <= {len(RELATIONS)} (rote.config.RELATIONS)")
    rng = np.random.default_rng(config.seed)
    n, R = config.n_entities, config.n_relations
    people, rels = people[:n], RELATIONS[:R]
    graph = knowledge_graph(n, R, rng)

    e, r = np.divmod(np.arange(n * R), R)
    facts = pd.DataFrame({
        "split": "train", "kind": "fact",
        "prompt": [fact_prompt(rels[j], people[i]) for i, j in zip(e, r)],
        "true": [people[t] for t in graph[e, r]], "noisy": False,
        "subject": [people[i] for i in e], "r1": [rels[j] for j in r],
    })

    e, r1, r2 = np.unravel_index(np.arange(n * R * R), (n, R, R))
    bridge = graph[e, r1]
    true = graph[bridge, r2]
    train = rng.random(len(e)) < config.two_hop_train_fraction
    # A test question must compose a first hop (e, r1) and a second hop (bridge, r2) that training
    # questions also use; the few that do not move to training.
    first_seen = set(zip(e[train], r1[train]))
    second_seen = set(zip(bridge[train], r2[train]))
    for i in np.flatnonzero(~train):
        if (e[i], r1[i]) not in first_seen or (bridge[i], r2[i]) not in second_seen:
            train[i] = True
    label = true.copy()
    noisy = np.zeros(len(e), dtype=bool)
    train_idx = np.flatnonzero(train)
    noisy_idx = rng.choice(train_idx, n_noisy(config.noise, len(train_idx)), replace=False)
    for i in noisy_idx:  # a random person other than the true answer and the bridge
        allowed = np.setdiff1d(np.arange(n), [true[i], bridge[i]])
        label[i] = rng.choice(allowed)
    noisy[noisy_idx] = True
    two_hop = pd.DataFrame({
        "split": np.where(train, "train", "test"), "kind": "two_hop",
        "prompt": [two_hop_prompt(rels[a], rels[b], people[s]) for s, a, b in zip(e, r1, r2)],
        "true": [people[t] for t in true], "noisy": noisy,
        "subject": [people[s] for s in e], "r1": [rels[a] for a in r1], "r2": [rels[b] for b in r2],
        "bridge": [people[b] for b in bridge], "label": [people[t] for t in label],
    })
    facts["label"] = facts["true"]
    frame = pd.concat([facts, two_hop], ignore_index=True)
    frame["id"] = np.arange(len(frame))
    return frame.reindex(columns=COLUMNS)


def generate(config: Config) -> pd.DataFrame:
    """The instance table of `config`'s task: one row per question, train and test."""
    return generate_fda(config) if config.task == "fda" else generate_thr(config)


def dataset_dir(config: Config) -> Path:
    """The folder of `config`'s dataset: keyed by its data fields and the table's `FORMAT`."""
    fields = {**data_fields(config), "format": FORMAT}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return home() / "data" / f"{config.task}-{key}"


def counts(frame: pd.DataFrame) -> dict:
    """Instances per split and kind, and noisy ones."""
    out = {f"{s}_{k}": int(n) for (s, k), n in frame.groupby(["split", "kind"]).size().items()}
    out["noisy"] = int(frame["noisy"].sum())
    return out


def load_dataset(config: Config) -> pd.DataFrame:
    """The dataset of `config`, generated and written (with a manifest) on first use."""
    path = dataset_dir(validate(config))
    if not (path / "manifest.json").exists():
        frame = generate(config)
        with atomic_dir(path) as tmp:
            frame.to_csv(tmp / "instances.csv", index=False)
            digest = hashlib.sha256((tmp / "instances.csv").read_bytes()).hexdigest()
            manifest = {"config": data_fields(config), "counts": counts(frame), "sha256": digest}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    verify(path, config)
    return pd.read_csv(path / "instances.csv", dtype={"label": str, "true": str, "prompt": str})


def verify(path: Path, config: Config) -> None:
    """A one-line error unless the dataset at `path` is `config`'s as generated: its manifest names
    `config`'s data fields and instances.csv has the manifest's sha256 (an edited label is never
    trained on)."""
    fix = f"delete {path} and rerun to generate it again"
    try:
        recorded = json.loads((path / "manifest.json").read_text())
        digest = hashlib.sha256((path / "instances.csv").read_bytes()).hexdigest()
    except (OSError, ValueError) as err:
        raise DataError(f"dataset {path} is incomplete or unreadable ({type(err).__name__}); {fix}") from None
    if not isinstance(recorded, dict) or recorded.get("config") != data_fields(config):
        raise DataError(f"{path / 'manifest.json'} is not the manifest of this config's dataset; {fix}")
    if recorded.get("sha256") != digest:
        raise DataError(f"{path / 'instances.csv'} does not match the sha256 in its manifest.json "
                        f"(changed or corrupt); {fix}")


def manifest(config: Config) -> dict:
    """The manifest (config, counts, checksum) of `config`'s dataset, generating it if needed."""
    load_dataset(config)
    return json.loads((dataset_dir(config) / "manifest.json").read_text())


def composition(frame: pd.DataFrame) -> pd.DataFrame:
    """Instances per split, kind and noise (label clean or noisy): the shape of a dataset."""
    noise = np.where(frame["noisy"], "noisy", "clean")
    return (frame.assign(noise=noise).groupby(["split", "kind", "noise"]).size()
            .rename("instances").reset_index())


def examples(frame: pd.DataFrame, n: int = 3, seed: int = 0) -> pd.DataFrame:
    """A few clean and noisy training instances and test questions of each kind, as the model
    sees them (prompt + label) beside the true answer."""
    groups = frame.assign(noise=np.where(frame["noisy"], "noisy", "clean")).groupby(["split", "kind", "noise"])
    picked = groups.sample(n=n, random_state=seed, replace=False) if groups.size().min() >= n else groups.head(n)
    return picked[["split", "kind", "noise", "prompt", "label", "true"]].rename(
        columns={"label": "label in data", "true": "true answer"}).reset_index(drop=True)


def partner_counts(frame: pd.DataFrame) -> pd.Series:
    """THR: for each person, how many one-hop facts name them as the answer (in-degree)."""
    facts = frame[frame["kind"] == "fact"]
    people = pd.unique(pd.concat([facts["subject"], facts["true"]]))
    return facts["true"].value_counts().reindex(people, fill_value=0)


def frozen_manifest_path(task: str, profile: str) -> Path:
    return RESOURCES / "manifests" / f"{task}-{profile}.json"


def freeze_manifests(profiles=("tiny", "cpu")) -> list[Path]:
    """Write the manifests of each task's default dataset per profile into lib/rote/resources/manifests/, so
    that anyone can check that their generator writes the same bytes (`python -m rote.runs.data`)."""
    from rote.config import TASKS, make_config
    from rote.store import write_json

    paths = []
    for task in TASKS:
        for profile in profiles:
            path = frozen_manifest_path(task, profile)
            write_json(path, manifest(make_config(task, profile)))
            paths.append(path)
    return paths


if __name__ == "__main__":
    for written in freeze_manifests():
        print(written)
