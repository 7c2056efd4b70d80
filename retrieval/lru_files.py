"""Size-bounded file caches: evict the least recently used files until the rest fit a byte budget.

"Recently used" is the file's modification time; cache readers refresh it on every hit
(``touch``), so a file written long ago but read a moment ago survives. Shared by the stage cache
(``eval.stage_cache``) and the chunk KV cache on disk (``compression.kv.store``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PruneSummary:
    removed: int
    kept: int
    freed_bytes: int
    kept_bytes: int


def touch(path: Path) -> None:
    """Mark ``path`` as just used; a read-only cache still serves, so failures are ignored."""
    try:
        os.utime(path)
    except OSError:
        pass


def prune_least_recent(paths: Iterable[Path], max_bytes: int) -> PruneSummary:
    """Delete the least recently used of ``paths`` until the rest hold at most ``max_bytes``.

    Files are kept most recent first while they fit, so a large old file goes before small
    recent ones. ``max_bytes == 0`` empties the cache. A file removed meanwhile (a concurrent
    prune) is skipped.
    """
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    entries = []
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        entries.append((info.st_mtime, info.st_size, path))
    entries.sort(key=lambda entry: entry[0], reverse=True)  # most recently used first
    kept_bytes = freed = removed = 0
    for _, size, path in entries:
        if kept_bytes + size <= max_bytes:
            kept_bytes += size
            continue
        path.unlink(missing_ok=True)
        freed, removed = freed + size, removed + 1
    return PruneSummary(removed, len(entries) - removed, freed, kept_bytes)
