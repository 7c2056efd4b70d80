"""On-disk embedding cache keyed by (model_id, sha256 of the text), so sweeps embed each text once.

Layout: ``<root>/<model_id slug>/<shard>.npz``, each shard holding ``keys`` (hex digests) and
``vectors`` (float32). New vectors go into a new shard written atomically (temp file in the same
directory + ``os.replace``), so a killed run never leaves a half-written shard and concurrent
runs at worst embed a text twice.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from retrieval.base import Encoder

MAX_SHARDS = 16  # above this, loading compacts the shards into one
PROGRESS_SLICE = 256  # texts per encode call when progress is reported


def default_cache_dir() -> Path:
    """``$RAGPRESS_CACHE/eval-embeddings`` (default ``~/.cache/ragpress``)."""
    return Path(os.environ.get("RAGPRESS_CACHE", Path.home() / ".cache" / "ragpress")) / "eval-embeddings"


def text_key(text: str) -> str:
    """The cache key of a text: its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeds through ``encoder`` only the texts not cached yet for its ``model_id``;
    ``progress(n)``, when given, is called as each slice of ``n`` new texts is embedded."""

    def __init__(self, root: Path | None = None, progress: Callable[[int], None] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.progress = progress
        self._memory: dict[str, dict[str, np.ndarray]] = {}
        self.hits = 0
        self.misses = 0

    def _dir(self, model_id: str) -> Path:
        return self.root / re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)

    def _load(self, model_id: str) -> dict[str, np.ndarray]:
        if model_id in self._memory:
            return self._memory[model_id]
        table: dict[str, np.ndarray] = {}
        shards = sorted(self._dir(model_id).glob("*.npz"))
        for shard in shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    table.update(zip(data["keys"].tolist(), data["vectors"]))
            except (OSError, ValueError, KeyError):
                continue  # an unreadable shard only costs a re-embedding
        self._memory[model_id] = table
        if len(shards) > MAX_SHARDS and table:
            self._write(model_id, list(table), np.stack(list(table.values())))
            for shard in shards:
                shard.unlink(missing_ok=True)
        return table

    def _write(self, model_id: str, keys: list[str], vectors: np.ndarray) -> None:
        directory = self._dir(model_id)
        directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:20] + ".npz"
        handle, temp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, keys=np.asarray(keys), vectors=vectors.astype(np.float32))
            os.replace(temp, directory / name)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def _encode(self, encoder: Encoder, texts: list[str]) -> np.ndarray:
        if self.progress is None:
            return encoder.encode(texts)
        parts = []
        for start in range(0, len(texts), PROGRESS_SLICE):
            parts.append(encoder.encode(texts[start:start + PROGRESS_SLICE]))
            self.progress(len(parts[-1]))
        return np.concatenate(parts)

    def embed(self, encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32 vectors, identical to ``encoder.encode(texts)``."""
        table = self._load(encoder.model_id)
        keys = [text_key(text) for text in texts]
        missing = list(dict.fromkeys(key for key in keys if key not in table))
        self.hits += len(keys) - sum(key not in table for key in keys)
        self.misses += len(missing)
        if missing:
            first_text = {key: text for key, text in zip(keys, texts)}
            vectors = self._encode(encoder, [first_text[key] for key in missing])
            table.update(zip(missing, vectors))
            self._write(encoder.model_id, missing, vectors)
        if not keys:
            return np.zeros((0, encoder.dim), dtype=np.float32)
        return np.stack([table[key] for key in keys]).astype(np.float32)
