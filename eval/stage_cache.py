"""Content-addressed results of pipeline stages, one small JSON file per (stage, key).

A key is the SHA-256 of everything that decides the result (inputs, options, model ids and a
fingerprint of the code that computes it), so a re-run of a grid recomputes only what changed
and a code change can never serve a stale result. Each entry stores its key parts and the SHA-256
of its value next to the value (plain JSON: nothing read back can run code) and is checked on
read; an unreadable, edited or mismatched entry counts as a miss, with a ``CacheEntryWarning``,
and is overwritten. Writes are atomic, so a killed run leaves only whole entries and resumes from them.
A hit refreshes the entry's modification time, so ``prune`` can evict the least recently used.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from filestore import PruneSummary, atomic_write_text, prune_least_recent, sweep_temp_files, touch

REPO = Path(__file__).resolve().parents[1]


class CacheEntryWarning(UserWarning):
    """A cache entry was unreadable or failed its checksum; it is recomputed."""


def default_stage_cache_dir() -> Path:
    """``$RAGPRESS_CACHE/stages`` or ``~/.cache/ragpress/stages``."""
    root = os.environ.get("RAGPRESS_CACHE") or Path.home() / ".cache" / "ragpress"
    return Path(root) / "stages"


def digest(value: Any) -> str:
    """SHA-256 of a JSON-able value, key order ignored."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def text_digest(texts: Iterable[str]) -> str:
    """SHA-256 of a sequence of texts (length-prefixed, so boundaries matter)."""
    sha = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        sha.update(len(data).to_bytes(8, "little"))
        sha.update(data)
    return sha.hexdigest()


def _module_path(module: str, root: Path) -> Path | None:
    """The source file of a dotted module name under ``root``, or None (third-party modules)."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Dotted names imported anywhere in a file (also inside functions: lazy imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodule imports
    return names


@cache
def code_fingerprint(*modules: str, root: Path = REPO) -> str:
    """SHA-256 (16 hex) of the source of ``modules`` and every repo module they import, transitively.

    So a stage's cache key changes exactly when code that can change its result changes, and
    edits elsewhere in the repo keep the cache. Memoised for the process: the code that runs is
    the code imported at start, so a file edited mid-run must not change the keys of results
    the old code computes.
    """
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        path = _module_path(name, root)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(_imported(path))
    sha = hashlib.sha256()
    for name in sorted(seen):
        sha.update(name.encode())
        sha.update(seen[name].read_bytes())
    return sha.hexdigest()[:16]


class StageCache:
    """``get``/``put`` of JSON values by stage name and key parts."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_stage_cache_dir()

    def _path(self, stage: str, parts: Mapping[str, Any]) -> Path:
        key = digest(parts)
        return self.root / stage / key[:2] / f"{key}.json"

    def get(self, stage: str, parts: Mapping[str, Any]) -> Any | None:
        """The stored value, or None when absent; None with a ``CacheEntryWarning`` when the entry is
        unreadable, fails its checksum or is stored under other key parts."""
        path = self._path(stage, parts)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            _warn_bad_entry(path, f"unreadable ({exc})")
            return None
        if not isinstance(entry, dict) or entry.get("key") != json.loads(json.dumps(parts, sort_keys=True)):
            _warn_bad_entry(path, "stored under other key parts")
            return None
        if entry.get("sha256") != digest(entry.get("value")):
            _warn_bad_entry(path, "its value does not match its checksum (edited or corrupted)")
            return None
        touch(path)  # last use, for prune()
        return entry.get("value")

    def put(self, stage: str, parts: Mapping[str, Any], value: Any) -> None:
        """Store ``value`` (JSON-able) under ``stage`` and ``parts``, with its checksum, atomically."""
        path = self._path(stage, parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"key": parts, "sha256": digest(value), "value": value}
        atomic_write_text(path, json.dumps(entry, sort_keys=True, ensure_ascii=False))

    def sweep(self, stage: str) -> int:
        """Remove temp files of writes that never finished (their writer is gone); returns how many."""
        return sweep_temp_files((self.root / stage).glob("*/.*.tmp"))

    def prune(self, max_bytes: int) -> PruneSummary:
        """Delete the least recently used entries until the cache holds at most ``max_bytes``."""
        return prune_least_recent(self.root.glob("*/*/*.json"), max_bytes)


def _warn_bad_entry(path: Path, problem: str) -> None:
    warnings.warn(f"cache entry {path} is {problem}; recomputing it", CacheEntryWarning, stacklevel=3)
