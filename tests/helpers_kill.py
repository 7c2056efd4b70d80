"""Test helpers: a deterministic fake encoder, and a script the SIGKILL test runs and kills.

    python tests/helpers_kill.py CORPUS_DIR INDEX_DIR COMMIT_EVERY DELAY_SECONDS

indexes CORPUS_DIR with the token chunker and a ``FakeEncoder`` that sleeps ``DELAY_SECONDS``
per batch, so the parent can kill it between checkpoints.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FAKE_DIM = 16


class FakeEncoder:
    """Vectors from a hash of the text: same text, same vector, in any process; no model needed."""

    model_id = "fake-sha256-encoder"
    dim = FAKE_DIM

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls = 0

    def encode(self, texts: Sequence[str], *, show_progress: bool = False) -> np.ndarray:
        self.calls += 1
        time.sleep(self.delay)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = [np.random.default_rng(int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")).normal(size=self.dim)
                for t in texts]
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def small_chunker():
    """The project's token chunker at a small size, so tiny documents still give several chunks."""
    from retrieval.chunkers import make_chunker

    return make_chunker("token", 24, 4)


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from retrieval.indexing import index_paths

    corpus, index_dir, commit_every, delay = argv[1], argv[2], int(argv[3]), float(argv[4])
    index_paths([corpus], index_dir, small_chunker(), FakeEncoder(delay), commit_every=commit_every)
    print("finished", flush=True)


if __name__ == "__main__":
    main(sys.argv)
