"""The paper's five observations and the shared circuits, one module each, and their registry: what
each measures, on which tasks, and the claims it makes. The chapters, the sweep, the scorecard and
the benchmarks all read `OBSERVATIONS`.

    from rote.observations import OBSERVATIONS
    o = OBSERVATIONS[1]
    result = o.measure(config)          # trains config's model first if need be
    records = o.claims(result)          # rote.claims records with their controls
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rote.config import TASKS
from rote.observations import circuits, observation0, observation1, observation2, observation3, observation4


@dataclass(frozen=True)
class Observation:
    number: int
    name: str  # a few words, as a chapter's sentence names it
    paper: str  # the paper's observation in one line (the chapter gives it whole)
    tasks: tuple  # the tasks it is about
    measure: Callable  # config -> result (the model trained or loaded first)
    claims: Callable  # result -> claim records, each with its control
    stem: str = ""  # the chapter's notebook stem, when it is not observation<number>

    @property
    def chapter(self) -> str:
        """The notebook's stem under book/."""
        return self.stem or f"observation{self.number}"


OBSERVATIONS = {o.number: o for o in [
    Observation(0, "generalization before memorization",
                "Noisy instances are answered correctly before their noisy label is memorized.",
                TASKS, observation0.training_dynamics, observation0.dynamics_claims),
    Observation(1, "the correct label is computed, then overridden",
                "After memorization, earlier layers still compute the correct label; later layers override it.",
                TASKS, observation1.layer_readout, observation1.override_claims),
    Observation(2, "the noisy label relies on the correct reasoning",
                "Producing the noisy label relies on the correct reasoning: removing it harms memorization.",
                TASKS, observation2.reliance, observation2.reliance_claims),
    Observation(3, "outlier heuristics",
                "FDA noise is fitted by shifting existing heuristic neurons, not by dedicated look-up neurons.",
                ("fda",), observation3.outlier_heuristics, observation3.outlier_claims),
    Observation(4, "memorization is distributed",
                "Memorization is distributed: the noisy label needs many inputs, not one key.",
                TASKS, observation4.distributed_encoding, observation4.distributed_claims),
    Observation(5, "shared circuits",
                "Memorization reuses the mechanisms of generalization: noisy labels run on the circuit of clean answers.",
                TASKS, circuits.shared_circuits, circuits.circuit_claims, stem="circuits"),
]}


def of_chapter(stem: str) -> Observation | None:
    """The observation a chapter (notebook stem) is about, or None for the other chapters."""
    return next((o for o in OBSERVATIONS.values() if o.chapter == stem), None)
