"""Re-rotating cached keys to new positions: R(p + delta) = R(delta) R(p).

Only RoPE variants whose per-dimension frequencies do not depend on the sequence length are
handled; for them the rotation composes exactly. Others are refused by name.
"""

from __future__ import annotations

import json
from typing import Any

import torch

# Static frequencies (any attention scaling multiplies cos/sin of both R(p) and the question's
# own rotation, so an unscaled R(delta) keeps cached keys consistent).
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(config: Any) -> dict[str, Any]:
    """The model's RoPE settings as a plain dict (transformers 5 ``rope_parameters``)."""
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    params = dict(params)
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", getattr(config, "rope_theta", None))
    return params


def check_rope(config: Any) -> dict[str, Any]:
    """RoPE settings, or ValueError when the scaling type cannot be re-rotated exactly."""
    params = rope_parameters(config)
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise ValueError(
            f"RoPE type '{params['rope_type']}' is not supported for KV reuse (its frequencies depend on "
            f"the sequence length); supported: {', '.join(SUPPORTED_ROPE_TYPES)}. Use --kv-reuse none."
        )
    return params


def rope_signature(config: Any) -> str:
    """A stable string of everything RoPE-related that cached keys depend on."""
    params = check_rope(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return json.dumps({**params, "head_dim": head_dim}, sort_keys=True, default=str)


def inv_freq(model: Any) -> torch.Tensor:
    """The model's own inverse frequencies (already including static scaling)."""
    check_rope(model.config)
    return model.model.rotary_emb.inv_freq.detach().to(torch.float64)


def rerotate(keys: torch.Tensor, delta: int | torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    """Keys ``[..., T, head_dim]`` rotated from positions p to p + ``delta`` (rotate-half layout).

    ``delta`` is one shift for every token, or a ``[T]`` tensor of per-token shifts (tokens kept
    from a cache whose neighbours were dropped each move by a different amount).
    """
    if isinstance(delta, int):
        if delta == 0:
            return keys
        angles = delta * frequencies  # float64: exact angle before the cast
    else:
        angles = delta.to(torch.float64)[:, None] * frequencies[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    cos, sin = emb.cos().to(keys.dtype), emb.sin().to(keys.dtype)
    half = keys.shape[-1] // 2
    rotated_half = torch.cat((-keys[..., half:], keys[..., :half]), dim=-1)
    return keys * cos + rotated_half * sin
