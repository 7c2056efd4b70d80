"""Records and protocols of the poisoning probe.

A *topic* is a cluster of the question file: its *attack* questions are what an attacker aims
planted passages at, its *target* questions (held out, same cluster) are where success is measured.
Success at k = the share of target questions whose top k holds a passage planted for their topic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from eval.base import Question

RETRIEVAL_MODES = ("dense", "bm25", "hybrid")


@dataclass(frozen=True)
class Topic:
    """One cluster of questions split into the attacker's questions and the held-out targets."""

    topic_id: int
    attack: tuple[Question, ...]
    targets: tuple[Question, ...]


@dataclass(frozen=True)
class SuccessCell:
    """Attack success (fraction in [0, 1]) of one attack with ``n`` planted passages per topic."""

    attack: str
    n: int
    mode: str
    k: int
    defence: str  # "none" or the defence's name
    success: float
    n_targets: int


@dataclass(frozen=True)
class CleanCell:
    """Mean recall and IoU (×100) of the target questions; ``attack`` None is the unpoisoned index."""

    attack: str | None
    n: int
    mode: str
    k: int
    defence: str
    recall: float
    iou: float


@dataclass(frozen=True)
class AttackObjective:
    """Mean cosine of an attack's passages to their topic's attack (and target) questions."""

    attack: str
    topic_id: int
    attack_cosine: float
    target_cosine: float


@dataclass(frozen=True)
class PoisonReport:
    """Everything one probe measured."""

    dataset: str
    n_chunks: int
    topics: tuple[Topic, ...]
    success: tuple[SuccessCell, ...]
    clean: tuple[CleanCell, ...]
    objectives: tuple[AttackObjective, ...]
    defence: dict[str, dict[str, float | None]]  # per defence: its calibration and false alarms
    settings: dict[str, object]
    timings: dict[str, float]


class Attack(Protocol):
    """Writes ``n`` distinct passages aimed at a topic's attack questions."""

    name: str

    def passages(self, topic: Topic, n: int) -> tuple[str, ...]:
        """``n`` different passage texts; the first ``m`` of them are the attack with ``m`` passages."""
        ...


class Defence(Protocol):
    """Flags indexed passages (by their chunk ids, texts and stored vectors) that look planted."""

    name: str

    def flagged(self, chunk_ids: Sequence[int], texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        """A boolean mask, one entry per passage; True = keep out of every top k."""
        ...

    def flagged_as_new(self, doc_ids: Sequence[str], chunk_ids: Sequence[int], texts: Sequence[str],
                       vectors: np.ndarray) -> np.ndarray:
        """The flags the indexed passages would get had their document arrived after calibration
        (the false alarms on genuine new documents)."""
        ...
