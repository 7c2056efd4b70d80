"""Small stand-ins for evaluation tests (no model needed): a bag-of-words encoder, a tiny dataset."""

from __future__ import annotations

import hashlib
import re

import numpy as np

from eval.base import EvalDataset, Question, Reference

DIM = 64


class BagOfWordsEncoder:
    """Deterministic hashed bag-of-words vectors (L2-normalised); counts what it encodes."""

    model_id = "fake-bow@test"
    dim = DIM

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts, *, show_progress: bool = False) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


ANIMALS = (
    "The cat sleeps on the warm mat all afternoon. "
    "Dogs bark loudly at the postman every morning. "
    "A parrot can repeat words it hears often. "
    "Goldfish swim slowly around their small glass bowl. "
    "Horses gallop across the open green field at dawn. "
)
PLANETS = (
    "Mars is a cold red planet with thin air. "
    "Jupiter is the largest planet and has a great red spot. "
    "Saturn has bright rings made of ice and rock. "
    "Venus is the hottest planet because of its thick clouds. "
)


def _ref(corpus: str, phrase: str) -> Reference:
    start = corpus.index(phrase)
    return Reference(start, start + len(phrase), phrase)


def tiny_dataset() -> EvalDataset:
    corpora = {"animals": ANIMALS, "planets": PLANETS}
    questions = (
        Question("0", "Which animal sleeps on the mat?", "animals", (_ref(ANIMALS, "The cat sleeps on the warm mat all afternoon."),)),
        Question("1", "What do goldfish swim around?", "animals", (_ref(ANIMALS, "Goldfish swim slowly around their small glass bowl."),)),
        Question("2", "Which planet has rings of ice?", "planets", (_ref(PLANETS, "Saturn has bright rings made of ice and rock."),)),
        Question(
            "3",
            "Which planets are red?",
            "planets",
            (_ref(PLANETS, "Mars is a cold red planet"), _ref(PLANETS, "has a great red spot.")),
        ),
    )
    return EvalDataset("tiny", corpora, questions)
