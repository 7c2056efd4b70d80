"""Cache keys: what a chunk's KV depends on, a stable digest of it, and field-level comparison."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from compression.kv.base import CacheKey, CacheMismatch, PrefixKV
from compression.kv.rope import rope_signature


def tokenizer_signature(tokenizer: Any) -> str:
    """Name, size and a hash of the vocabulary: two tokenizers that split text differently differ here."""
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
    return f"{type(tokenizer).__name__}:{len(vocab)}:{hashlib.sha256(vocab.encode()).hexdigest()[:16]}:{name}"


def make_key(lm: Any, prefix: PrefixKV, token_ids: Sequence[int], tokenizer_sig: str) -> CacheKey:
    """The key of a chunk computed right after ``prefix`` with the loaded LM ``lm``."""
    return CacheKey(
        model_id=lm.model_id,
        weights_hash=lm.weights_hash,
        dtype=lm.dtype,
        tokenizer=tokenizer_sig,
        token_ids=tuple(int(t) for t in token_ids),
        prefix_hash=prefix.digest,
        start=len(prefix.token_ids),
        rope=rope_signature(lm.model.config),
    )


def key_digest(key: CacheKey) -> str:
    """sha256 of the key's canonical JSON: the file name of a stored cache."""
    return hashlib.sha256(json.dumps(key.as_dict(), sort_keys=True).encode()).hexdigest()


def key_from_json(text: str) -> CacheKey:
    """The ``CacheKey`` stored as JSON (``as_dict``) in a cache file's header."""
    data = json.loads(text)
    data["token_ids"] = tuple(data["token_ids"])
    return CacheKey(**data)


def differing_fields(expected: CacheKey, found: CacheKey) -> list[str]:
    """Names of the fields where two keys differ."""
    a, b = expected.as_dict(), found.as_dict()
    return [name for name in a if a[name] != b[name]]


def require_match(expected: CacheKey, found: CacheKey, where: str) -> None:
    """Raise CacheMismatch naming every differing field (and both values, shortened)."""
    diff = differing_fields(expected, found)
    if diff:
        shown = "; ".join(f"{name}: expected {_short(getattr(expected, name))}, found {_short(getattr(found, name))}" for name in diff)
        raise CacheMismatch(f"KV cache {where} was computed under different settings ({shown}); it will be recomputed")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
