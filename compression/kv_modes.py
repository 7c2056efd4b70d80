"""The user-facing KV-reuse modes (``--kv-reuse``) and the recovery each one means.

``none``: full prefill, no reuse; ``naive``: reuse chunk caches without recovery; ``edge``:
recompute each chunk's first tokens (EPIC-style); ``blend``: recompute the fraction r of tokens
whose cache deviates most (CacheBlend-style).
"""

from __future__ import annotations

from typing import Any

KV_REUSE_MODES = ("none", "naive", "edge", "blend")


def recovery_for(mode: str, blend_r: float = 0.15, edge_tokens: int = 16) -> Any:
    """The recovery of ``mode``; ``none`` means no reuse at all (returns None)."""
    from compression.kv.recovery import make_recovery

    if mode not in KV_REUSE_MODES:
        raise ValueError(f"unknown --kv-reuse mode '{mode}'; valid: {', '.join(KV_REUSE_MODES)}")
    if mode == "none":
        return None
    if mode == "naive":
        return make_recovery("none")
    return make_recovery("edge", n_tokens=edge_tokens) if mode == "edge" else make_recovery("blend", r=blend_r)
