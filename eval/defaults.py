"""The evaluated default retrieval configuration and the fixed-token baseline, as evaluation points.

Both are ``retrieval.config``'s settings (``BEST_RETRIEVAL``, ``BASELINE_RETRIEVAL``) counted in
characters, the benchmark's way; see there for how the best one was chosen.
"""

from __future__ import annotations

from eval.base import EvalConfig
from retrieval.config import BASELINE_RETRIEVAL, BEST_RETRIEVAL

BASELINE_CONFIG = EvalConfig.of(BASELINE_RETRIEVAL)
BEST_CONFIG = EvalConfig.of(BEST_RETRIEVAL)
