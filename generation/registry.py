"""Generator registry: a plain dict from back-end name to its class, imported lazily."""

from __future__ import annotations

import importlib
from typing import Any

from generation.base import Generator

# name -> "module:class"; classes take keyword options and implement generation.base.Generator.
GENERATORS: dict[str, str] = {
    "local": "generation.local:LocalGenerator",
    "openai": "generation.openai_http:OpenAIHTTPGenerator",
    "langchain": "generation.langchain:LangChainGenerator",
}


def make_generator(name: str, **options: Any) -> Generator:
    """Build the generator registered as ``name``; unknown names list the valid ones."""
    try:
        target = GENERATORS[name]
    except KeyError:
        raise ValueError(f"unknown generator '{name}'; valid: {', '.join(sorted(GENERATORS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)


def generator_from_options(options: dict[str, Any], cache_dir: str | None = None) -> Generator:
    """The generator of the CLI's LLM options (``backend`` plus that back-end's keyword options, JSON
    values so flows can pass them as parameters); a local one keeps chunk caches in ``cache_dir``."""
    options = dict(options)
    name = options.pop("backend", "local")
    if name == "local":
        options["cache_dir"] = cache_dir
    return make_generator(name, **options)
