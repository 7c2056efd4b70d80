"""Measures of the probe: attack success and the clean recall/IoU of the target questions."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from eval.base import Question, Span
from eval.metrics import retrieval_scores
from eval.poison.search import PLANTED_PREFIX, corpus_of, is_planted
from retrieval.base import Hit


def planted_name(attack: str, topic_id: int, number: int) -> str:
    """The document name of passage ``number`` of ``attack`` aimed at topic ``topic_id``."""
    return f"{attack}/topic{topic_id}/{number}"


def planted_topic(hit: Hit) -> int | None:
    """The topic a planted hit was aimed at; None for a real passage."""
    if not is_planted(hit):
        return None
    return int(hit.doc_id.removeprefix(PLANTED_PREFIX).split("/")[1].removeprefix("topic"))


def kept(hits: Sequence[Hit], flagged: Collection[int], k: int) -> list[Hit]:
    """The first ``k`` hits whose chunk id is not flagged (the defence's query-time filter)."""
    return [hit for hit in hits if hit.chunk_id not in flagged][:k]


def unjudged(rankings: Sequence[Sequence[Hit]], verdicts: Mapping[int, bool], k: int) -> set[int]:
    """The chunk ids without a verdict (flagged or not) that the query-time filter would look at to
    keep ``k`` hits of each ranking, every unjudged hit counted as kept: judging them can only make
    the filter look further, so repeat until nothing is returned."""
    todo: set[int] = set()
    for hits in rankings:
        count = 0
        for hit in hits:
            if count >= k:
                break
            verdict = verdicts.get(hit.chunk_id)
            if verdict is None:
                todo.add(hit.chunk_id)
            count += not verdict
    return todo


def success_rate(rankings: Sequence[Sequence[Hit]], topic_ids: Sequence[int]) -> float:
    """Share of questions whose hits hold a passage planted for the question's own topic."""
    taken = [any(planted_topic(hit) == topic for hit in hits) for hits, topic in zip(rankings, topic_ids)]
    return float(np.mean(taken)) if taken else 0.0


def clean_scores(question: Question, hits: Sequence[Hit]) -> tuple[float, float]:
    """Recall and IoU (fractions) of ``hits`` for ``question``; planted hits count in the retrieved length."""
    spans = [Span(corpus_of(hit), hit.start, hit.end) for hit in hits]
    scores = retrieval_scores([(ref.start, ref.end) for ref in question.references], spans, question.corpus_id)
    return scores.recall, scores.iou
