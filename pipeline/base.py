"""Records of the pipeline: what one question got from each stage."""

from __future__ import annotations

from dataclasses import dataclass

from compression.base import CompressionResult
from generation.base import Answer
from retrieval.base import Hit


@dataclass(frozen=True)
class PipelineAnswer:
    """One question through retrieve -> compress -> generate.

    ``hits``: the retrieved chunks, best first; ``compressed``: the compressor's output (None when
    the configuration compresses nothing); ``answer``: the generator's answer and its costs.
    """

    question: str
    hits: tuple[Hit, ...]
    compressed: CompressionResult | None
    answer: Answer
