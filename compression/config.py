"""The compression stage's settings: which compressor and the share of tokens it keeps."""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import AliasChoices, Field, model_validator

from compression.registry import COMPRESSORS
from retrieval.config import ConfigModel, one_of

# "none" hands the retrieved chunks on whole; the others are the registry's compressors.
COMPRESSION_METHODS = ("none", *COMPRESSORS)
DEFAULT_RATE = 0.33


class CompressionConfig(ConfigModel):
    """``method``: a compressor of ``compression.registry`` or ``none``; ``rate``: its target keep-rate,
    reset to its default when nothing is compressed so equal configurations compare (and cache) equal."""

    # The flat pipeline form (``pipeline.config``) names the method "compression".
    method: Annotated[str, one_of(COMPRESSION_METHODS, "compression")] = Field("none", validation_alias=AliasChoices("method", "compression"), description="one of " + ", ".join(COMPRESSION_METHODS))
    rate: float = Field(DEFAULT_RATE, strict=True, gt=0.0, le=1.0, description="a number in (0, 1] (kept / original tokens), e.g. 0.33")

    @model_validator(mode="after")
    def _normalised(self) -> Self:
        if self.method == "none":
            object.__setattr__(self, "rate", DEFAULT_RATE)
        return self

    @property
    def label(self) -> str:
        """``none`` or e.g. ``llmlingua@0.33``."""
        return self.method if self.method == "none" else f"{self.method}@{self.rate:g}"
