"""transformers' KV-cache argument, named for the installed version.

transformers 5.24 renamed ``past_key_values`` to ``cache``: in the forward arguments of models and
decoder layers (the old name is deprecated and goes in 5.40), in the keyword arguments that
forward pre-hooks see (the old name is gone there already), and in model outputs (the old
attribute warns). Every call in ragpress that hands a cache to a model, or reads one back, goes
through these helpers, so both sides of 5.24 work without warnings.
"""

from __future__ import annotations

import inspect
from functools import cache
from typing import Any


@cache
def _cache_name(cls: Any) -> str:
    parameters = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def cache_arg(module: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``module(**...)``: ``cache`` on transformers >= 5.24, else ``past_key_values``."""
    return {_cache_name(module.__class__): cache}


def hook_cache(kwargs: dict[str, Any]) -> Any:
    """The cache among the keyword arguments a forward pre-hook receives (either name), or None."""
    return kwargs.get("cache", kwargs.get("past_key_values"))


def returned_cache(output: Any) -> Any:
    """The cache a forward call returned (``output.cache`` on >= 5.24, ``output.past_key_values`` before)."""
    if "cache" in output.keys():
        return output["cache"]
    return output.past_key_values
