"""A script the SIGKILL-during-commit test runs and kills: commits a growing index in a loop.

    python tests/helpers_commit_loop.py INDEX_DIR

Every commit adds a document of many short chunks, so most of the time goes to writing the
version (FAISS, vectors, BM25 files, meta.json), where the kill is meant to land.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

WORDS = "river stone garden lamp violin harbor pepper engine cloud ladder copper meadow signal canvas".split()
DIM = 16
CHUNKS_PER_DOC = 3000


def document_chunks(number: int) -> list[str]:
    rng = np.random.default_rng(number)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(CHUNKS_PER_DOC)]


def main(index_dir: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from retrieval.base import Chunk, Document
    from retrieval.index_store import IndexStore

    store = IndexStore(index_dir, "fake-commit-loop", DIM, "Flat")
    for number in range(10_000):
        texts = document_chunks(number)
        text = "\n".join(texts)
        chunks, start = [], 0
        for piece in texts:
            chunks.append(Chunk(piece, start, start + len(piece), len(piece.split())))
            start += len(piece) + 1
        vectors = np.random.default_rng(number).normal(size=(len(texts), DIM)).astype(np.float32)
        store.add_document(Document(f"doc{number}", f"doc{number}.txt", text, str(number)), chunks, vectors)
        store.commit()
        print(store.version, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
