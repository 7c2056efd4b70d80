"""Topic clusters of a question file: KMeans on the question embeddings, each cluster split into
the attacker's questions and held-out targets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eval.base import Question
from eval.poison.base import Topic


def cluster_topics(questions: Sequence[Question], vectors: np.ndarray, clusters: int, topics: int,
                   attack_share: float, min_size: int, seed: int) -> tuple[Topic, ...]:
    """The ``topics`` largest KMeans clusters with at least ``min_size`` questions, each split at
    random (``seed``) into ``attack_share`` attack questions and the rest as targets."""
    from sklearn.cluster import KMeans

    if not 0.0 < attack_share < 1.0:
        raise ValueError(f"attack_share must be between 0 and 1, got {attack_share}; e.g. 0.5")
    if clusters > len(questions):
        raise ValueError(f"{clusters} clusters need at least as many questions, the file has {len(questions)}")
    labels = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit_predict(np.asarray(vectors, dtype=np.float64))
    members = sorted((np.flatnonzero(labels == label) for label in range(clusters)), key=lambda rows: (-len(rows), int(rows[0])))
    rng = np.random.default_rng(seed)
    chosen: list[Topic] = []
    for rows in members:
        if len(rows) < max(min_size, 2) or len(chosen) == topics:
            continue
        shuffled = rng.permutation(rows)
        cut = min(max(1, round(len(rows) * attack_share)), len(rows) - 1)
        chosen.append(Topic(len(chosen), tuple(questions[i] for i in sorted(shuffled[:cut])),
                            tuple(questions[i] for i in sorted(shuffled[cut:]))))
    if not chosen:
        raise ValueError(f"no cluster has {min_size} questions; lower min_size or the number of clusters")
    return tuple(chosen)
