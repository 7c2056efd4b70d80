"""The user-facing KV-reuse modes (``--kv-reuse``); ``compression.kv.recovery.recovery_for`` builds the recovery each one means.

``none``: full prefill, no reuse; ``naive``: reuse chunk caches without recovery; ``edge``:
recompute each chunk's first tokens (EPIC-style); ``blend``: recompute the fraction r of context
tokens (CacheBlend-style), by default the ones the question attends to most on the reused cache
(``blend_score="attention"``); ``blend_score="deviation"`` is CacheBlend's own choice, the tokens
whose layer-1 values deviate most from a fresh computation.

Why attention by default: in ``benchmarks/results/kv_reuse.md`` (30 questions, k = 4 / 8 / 12,
r = 0.15) it beats the deviation choice at every k, in output F1 against a full prefill
(0.686 / 0.660 / 0.710 vs 0.611 / 0.655 / 0.551) and in answer F1 (0.291 / 0.262 / 0.265 vs
0.245 / 0.249 / 0.236), for about 7 % more time to first token.
"""

from __future__ import annotations

KV_REUSE_MODES = ("none", "naive", "edge", "blend")
DEFAULT_BLEND_SCORE = "attention"
# How blend picks the tokens it recomputes (``compression.kv.recovery.BlendRecovery.score``).
BLEND_SCORES = ("deviation", "attention", "deviation*attention", "deviation*early_attention")
