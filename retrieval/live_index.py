"""Search the newest committed version of an index while a writer keeps committing new ones."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from retrieval.base import Hit
from retrieval.errors import IndexCorruptedError, IndexStoreError
from retrieval.index_store import CURRENT, IndexStore, current_version


class LiveIndex:
    """Searches the newest committed version of ``directory``, re-opening it when a writer commits.

    Thread-safe: each search takes the current snapshot (an ``IndexStore`` opened read-only at
    one version, never mutated afterwards) and uses it throughout, so an answer always comes
    from exactly one version, which ``search`` returns alongside the hits.
    """

    def __init__(self, directory: str | Path, *, verify: bool = True, retries: int = 5) -> None:
        self.directory = Path(directory)
        self._verify = verify
        self._retries = retries
        self._store: IndexStore | None = None
        self._known: tuple[tuple[int, ...], IndexStore | None] | None = None  # (stat of CURRENT, its store)
        self._lock = threading.Lock()

    def snapshot(self) -> IndexStore | None:
        """The store at the committed version (None while nothing is committed).

        CURRENT is read again only when its stat changed: a commit replaces the file (a new inode
        and times), and one stat costs a fraction of opening and reading it on every search."""
        stamp = _stamp(self.directory / CURRENT)
        known = self._known
        if stamp is not None and known is not None and known[0] == stamp:
            return known[1]
        version = current_version(self.directory)  # read after the stat: never older than the stamp
        store = self._store
        if version is None or (store is not None and store.version == version):
            store = None if version is None else store
        else:
            with self._lock:  # one thread opens; the others wait and reuse it
                if self._store is None or self._store.version != current_version(self.directory):
                    self._store = self._open_current()
                store = self._store
        if stamp is not None:
            self._known = (stamp, store)
        return store

    def _open_current(self) -> IndexStore | None:
        """Open CURRENT; a writer may collect the version between reading CURRENT and opening it, so retry."""
        for _ in range(self._retries):
            version = current_version(self.directory)
            if version is None:
                return None
            try:
                return IndexStore.open(self.directory, version=version, verify=self._verify)
            except (IndexCorruptedError, FileNotFoundError):
                if current_version(self.directory) == version:
                    raise  # really broken, not a race with a commit
        raise IndexStoreError(f"{self.directory} changed {self._retries} times while being opened; retry when indexing settles")

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[int, list[list[Hit]]]:
        """``(version, hits)``: top-``k`` per query row from one committed version; an empty index gives ``(0, [[]...])``."""
        store = self.snapshot()
        rows = 1 if np.ndim(query_vectors) == 1 else len(query_vectors)
        if store is None or store.ntotal == 0:
            return (0 if store is None else store.version), [[] for _ in range(rows)]
        return store.version, store.search(query_vectors, k)


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What changes whenever ``path`` is replaced (None: it does not exist)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns
