"""The pipeline's configuration: one validated config per stage, and the recommended one.

The YAML/JSON form (``--config``, sweep files, the run store) is flat: the retrieval keys next to
``compression`` (the method), ``rate``, ``kv_mode``, ``blend_r``, ``edge_tokens``, ``blend_score``,
``max_new_tokens`` and ``fidelity``; ``from_dict`` sorts each key to its stage's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, Field, model_validator

from compression.config import CompressionConfig
from generation.config import GenerationConfig
from retrieval.config import BEST_RETRIEVAL, ConfigError, ConfigModel, RetrievalConfig

# The flat form's keys of CompressionConfig (it names the method "compression", an alias of ``method``).
COMPRESSION_KEYS = {"compression": "method", "rate": "rate"}
FLAT_KEYS = (*RetrievalConfig.model_fields, *COMPRESSION_KEYS, *GenerationConfig.model_fields, "fidelity")


class PipelineConfig(ConfigModel):
    """Retrieval, compression and the answer stage; ``fidelity``: also answer with a full prefill and
    score the output against it. With compression, chunk caches are still reused: the kept tokens'
    entries are taken from each chunk's cache and re-rotated (``compression.kv.subset``);
    ``kv_mode="none"`` prefills the compressed prompt instead."""

    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    compression: CompressionConfig = Field(default_factory=CompressionConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    fidelity: bool = Field(False, strict=True, description="true or false")

    @property
    def label(self) -> str:
        """E.g. ``recursive 150/0 k=5 hybrid(0.8) ctx±2 | llmlingua@0.33 | blend(0.15)``."""
        return f"{self.retrieval.label} | {self.compression.label} | {self.generation.label}"

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping (retrieval keys next to the pipeline keys), the YAML/JSON form."""
        compression = {flat: getattr(self.compression, name) for flat, name in COMPRESSION_KEYS.items()}
        return {**self.retrieval.to_dict(), **compression, **self.generation.to_dict(), "fidelity": self.fidelity}

    @model_validator(mode="before")
    @classmethod
    def _from_flat(cls, data: Any) -> Any:
        """Sort the flat form's keys to their stage's config (each validated with its own one-line error)."""
        if not isinstance(data, Mapping):
            return data
        values = dict(data)
        stages: dict[str, Any] = {"fidelity": values.pop("fidelity", False)}
        for stage, model in (("retrieval", RetrievalConfig), ("compression", CompressionConfig), ("generation", GenerationConfig)):
            given = values.pop(stage, None)
            if not isinstance(given, BaseModel | Mapping | None):  # a flat key of that name: the retrieval mode, the compression method
                values[stage], given = given, None
            settings = given.model_dump(mode="json") if isinstance(given, BaseModel) else dict(given or {})
            keys = COMPRESSION_KEYS if model is CompressionConfig else model.model_fields
            settings.update({key: values.pop(key) for key in keys if key in values})
            # An evaluation point (``eval.base.EvalConfig``) carries scoring keys the pipeline does not take.
            stages[stage] = model.from_dict({key: value for key, value in settings.items() if key in keys or key in model.model_fields})
        if values:
            raise ConfigError(f"unknown key '{sorted(map(str, values))[0]}'; valid keys: {', '.join(sorted(FLAT_KEYS))}")
        return stages


# The configuration ``ragpress pipeline`` and the demo run when no file is given: the one the
# pipeline grid recommends (benchmarks/pipeline_grid.py -> benchmarks/results/pipeline_grid.md, rule in
# eval/pareto.py: recommend). With blend recomputing the tokens the question attends to, the
# best answer F1 of the grid is BEST_RETRIEVAL's top 5, extractive at a third, blend (26.9, 220 tokens
# sent); no configuration is within both tolerances (fixed-token 200/0 dense, no compression, naive:
# 24.9, just over 2 points below, with recall 86.9 vs 67.3), so the rule falls back to the best answer
# F1. On 20 questions these F1 gaps are within noise; changing this means re-running that grid.
RECOMMENDED_PIPELINE = PipelineConfig(
    retrieval=BEST_RETRIEVAL,
    compression=CompressionConfig(method="extractive", rate=0.33),
    generation=GenerationConfig(kv_mode="blend"),
)
