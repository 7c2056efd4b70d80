"""The answer stage's settings: how chunk caches are reused and how long an answer may get."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import Field, model_validator

from compression.kv.modes import BLEND_SCORES, DEFAULT_BLEND_SCORE, KV_REUSE_MODES
from generation.base import ReuseOptions
from retrieval.config import ConfigModel, PositiveInt, Share, one_of


class GenerationConfig(ConfigModel):
    """``kv_mode``: a ``--kv-reuse`` mode (``compression.kv.modes``); ``blend_r`` and ``blend_score``
    matter only for ``blend``, ``edge_tokens`` only for ``edge``: they are reset to their defaults
    otherwise, so equal configurations compare (and cache) equal."""

    kv_mode: Annotated[str, one_of(KV_REUSE_MODES, "kv_mode")] = Field("naive", description="one of " + ", ".join(KV_REUSE_MODES))
    blend_r: Share = Field(0.15, description="a number in [0, 1] (share of context tokens blend recomputes), e.g. 0.15")
    edge_tokens: PositiveInt = Field(16, description="a positive integer (first tokens of each chunk edge recomputes), e.g. 16")
    blend_score: Annotated[str, one_of(BLEND_SCORES, "blend_score")] = Field(DEFAULT_BLEND_SCORE, description="one of " + ", ".join(BLEND_SCORES))
    max_new_tokens: PositiveInt = Field(32, description="a positive integer (tokens to generate at most), e.g. 64")

    @model_validator(mode="after")
    def _normalised(self) -> Self:
        fields = type(self).model_fields
        if self.kv_mode != "blend":
            object.__setattr__(self, "blend_r", fields["blend_r"].default)
            object.__setattr__(self, "blend_score", fields["blend_score"].default)
        if self.kv_mode != "edge":
            object.__setattr__(self, "edge_tokens", fields["edge_tokens"].default)
        return self

    def reuse(self, kv_mode: str | None = None) -> ReuseOptions:
        """The generator's reuse options (``kv_mode`` overrides the configured mode, e.g. ``none``)."""
        return ReuseOptions(kv_mode or self.kv_mode, self.blend_r, self.edge_tokens, self.blend_score)

    @property
    def label(self) -> str:
        """E.g. ``blend(0.15)``, ``edge(16)``, ``full prefill``."""
        if self.kv_mode == "blend":
            score = "" if self.blend_score == DEFAULT_BLEND_SCORE else f",{self.blend_score}"
            return f"blend({self.blend_r:g}{score})"
        return {"edge": f"edge({self.edge_tokens})", "none": "full prefill"}.get(self.kv_mode, self.kv_mode)
