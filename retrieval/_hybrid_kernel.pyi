# The compiled bounded hybrid search (retrieval/_hybrid_kernel.c), built with the package when a C
# compiler is at hand; retrieval.search falls back to its NumPy path without it.
from typing import Any

import numpy as np

def prepare(arrays: tuple[np.ndarray, ...], /) -> Any: ...
def bounded_search(index: Any, faiss_scores: np.ndarray, faiss_positions: np.ndarray, columns: list[int],
                   query: np.ndarray, weight: float, words: int, per_word: int,
                   depth: int, /) -> list[tuple[int, float]]: ...
