"""The project's evaluated default retrieval configuration and the fixed-token baseline.

``BEST_CONFIG`` is the winner of ``benchmarks/eval_grid.py`` on the shared Chroma corpora (see
``benchmarks/results/eval_grid.md`` for the grid, the selection rule and its gain over
``BASELINE_CONFIG``): recursive chunks of 150 tokens, hybrid scoring (0.8 × dense + 0.2 × BM25,
both min-max normalised per query, ``retrieval.lexical.fuse``) and embeddings that mix in two
neighbouring chunks on each side at weight 0.5 (``retrieval.postprocess.with_neighbour_context``),
top 5. The demo and the pipeline reuse it; changing it means re-running that benchmark.
"""

from __future__ import annotations

from eval.base import EvalConfig
from eval.pipeline_base import PipelineConfig

BASELINE_CONFIG = EvalConfig(chunker="token", chunk_size=200, overlap=0, k=5, retrieval="dense")
BEST_CONFIG = EvalConfig(
    chunker="recursive", chunk_size=150, overlap=0, k=5, retrieval="hybrid", hybrid_weight=0.8, context_chunks=2
)
# What ``ragpress query`` passes as ``hybrid_weight`` to serve BEST_CONFIG (None: plain dense search).
BEST_HYBRID_WEIGHT = BEST_CONFIG.hybrid_weight if BEST_CONFIG.retrieval == "hybrid" else None

# The configuration ``ragpress pipeline`` and the demo run when no file is given: the one the
# pipeline grid (benchmarks/sweeps/pipeline_grid.yaml, see README) recommends.
RECOMMENDED_PIPELINE = PipelineConfig(retrieval=BEST_CONFIG, compression="none", kv_mode="naive")
