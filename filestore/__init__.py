"""File writes and file caches shared by every package: atomic replacement and a size-bounded LRU.

Atomic writes go to a temp file in the same directory, then ``os.replace``: a reader sees the old
file or the new one, never half of one, and a killed writer leaves at most a stray
``.<name>.<pid>-*.tmp`` file behind; ``sweep_temp_files`` removes those whose writer process is gone
(the pid in the name says which), so the next run cleans up.

Size-bounded caches evict the least recently used files until the rest fit a byte budget.
"Recently used" is the file's modification time; cache readers refresh it on every hit
(``touch``), so a file written long ago but read a moment ago survives. Used by the stage cache
(``eval.stage_cache``) and the chunk KV cache on disk (``compression.kv.store``).

This module imports nothing of ragpress, so ``retrieval``, ``compression`` and ``eval`` may all use it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ABANDONED_SECONDS = 24 * 3600  # a temp file without a readable writer pid is stale after this


def temp_prefix(name: str) -> str:
    """The prefix of a temp file for ``name``: hidden, and naming this process as its writer."""
    return f".{name}.{os.getpid()}-"


def _writer_alive(path: Path) -> bool:
    """Whether the process named in ``path``'s temp name still runs (unknown writers: by age)."""
    try:
        pid = int(path.name.rsplit(".", 2)[-2].split("-", 1)[0])
    except (IndexError, ValueError):
        try:
            return time.time() - path.stat().st_mtime < ABANDONED_SECONDS
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_temp_files(paths: Iterable[Path]) -> int:
    """Delete the temp files among ``paths`` whose writer process is gone; returns how many."""
    removed = 0
    for path in paths:
        if path.is_file() and not _writer_alive(path):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a directory's entry to disk (a rename is durable only once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str, *, durable: bool = False) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically; ``durable`` also fsyncs file and directory
    so the new content survives a power cut, not only a killed process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; these are meant to be read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)



@dataclass(frozen=True)
class PruneSummary:
    """What a prune removed and kept: file counts and bytes."""

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
