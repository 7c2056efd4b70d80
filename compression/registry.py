"""Compressor registry: a plain dict from method name to a factory, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from compression.base import Compressor

# name -> "module:factory"; factories take keyword options and return a Compressor.
COMPRESSORS: dict[str, str] = {
    "llmlingua": "compression.llmlingua.compressor:LLMLinguaCompressor",
    "extractive": "compression.extractive.compressor:ExtractiveCompressor",
    "extractive+llmlingua": "compression.chain:extractive_then_llmlingua",
}


def compressor_target(name: str) -> str:
    """The ``"module:factory"`` registered as ``name``; unknown names list the valid ones."""
    try:
        return COMPRESSORS[name]
    except KeyError:
        raise ValueError(f"unknown compression method '{name}'; valid: {', '.join(sorted(COMPRESSORS))}") from None


def make_compressor(name: str, **options: Any) -> Compressor:
    """Build the compressor registered as ``name``; unknown names list the valid ones."""
    module_name, factory_name = compressor_target(name).split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(**options)
