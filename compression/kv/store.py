"""Chunk-cache stores: an in-memory LRU under a byte budget, and safetensors files on disk.

Disk files are ``<sha256 of the key>.safetensors`` holding ``keys`` and ``values`` plus a JSON
header (the full key and a checksum of the tensor bytes). Never pickle. Writes are atomic. A disk
hit refreshes the file's modification time, so ``DiskStore.prune`` can evict the least recently used.
Temp files of writers killed mid-write are swept when a store is opened on the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from compression.kv.base import CacheCorrupted, CacheKey, ChunkKV
from compression.kv.keys import key_digest, key_from_json, require_match
from filestore import PruneSummary, prune_least_recent, sweep_temp_files, temp_prefix, touch

FORMAT = "ragpress-kv/1"


class MemoryStore:
    """LRU of chunk caches; the least recently used are evicted once ``budget_bytes`` is exceeded."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be > 0, got {budget_bytes}; e.g. 2 * 2**30 for 2 GiB")
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, ChunkKV] = OrderedDict()
        self.nbytes = 0

    def get(self, key: CacheKey) -> ChunkKV | None:
        """The cache under ``key`` (refreshed as most recently used), or None."""
        digest = key_digest(key)
        kv = self._items.get(digest)
        if kv is None or kv.key != key:
            return None
        self._items.move_to_end(digest)
        return kv

    def put(self, kv: ChunkKV) -> None:
        """Store ``kv``, evicting the least recently used caches beyond the byte budget."""
        digest = key_digest(kv.key)
        if digest in self._items:
            self.nbytes -= self._items.pop(digest).nbytes
        self._items[digest] = kv
        self.nbytes += kv.nbytes
        while self.nbytes > self.budget_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self.nbytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._items)


def _checksum(keys: torch.Tensor, values: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in (keys, values):
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class DiskStore:
    """Chunk caches as safetensors files under ``root``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.sweep()

    def sweep(self) -> int:
        """Remove temp files of writes killed before their rename (their writer is gone); returns how many."""
        return sweep_temp_files(self.root.glob("*.tmp")) if self.root.is_dir() else 0

    def path_for(self, key: CacheKey) -> Path:
        """The file that holds the cache of ``key``."""
        return self.root / f"{key_digest(key)}.safetensors"

    def put(self, kv: ChunkKV) -> None:
        """Write ``kv`` atomically, with its key and a checksum in the header."""
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        keys, values = kv.keys.contiguous(), kv.values.contiguous()
        header = {"format": FORMAT, "key": json.dumps(kv.key.as_dict(), sort_keys=True), "sha256": _checksum(keys, values)}
        target = self.path_for(kv.key)
        handle, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=self.root)
        os.close(handle)
        try:
            save_file({"keys": keys, "values": values}, tmp, metadata=header)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: CacheKey) -> ChunkKV | None:
        """The stored cache for ``key``; None when absent; CacheCorrupted / CacheMismatch when unusable."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        keys, values, header = _read(path)
        require_match(key, _header_key(header, path), str(path))
        expected_tokens = len(key.token_ids)
        if keys.shape != values.shape or keys.dim() != 4 or keys.shape[2] != expected_tokens:
            raise CacheCorrupted(f"{path}: tensor shapes {tuple(keys.shape)}/{tuple(values.shape)} do not fit {expected_tokens} tokens; delete it")
        if _checksum(keys, values) != header.get("sha256"):
            raise CacheCorrupted(f"{path}: tensor bytes do not match the header checksum (corrupted file); delete it")
        touch(path)  # last use, for prune()
        return ChunkKV(key=key, keys=keys, values=values)

    def prune(self, max_bytes: int) -> PruneSummary:
        """Delete the least recently used chunk caches until the rest hold at most ``max_bytes``.

        A cache deleted while another process is about to read it is simply recomputed there
        (a vanished file reads as absent or corrupted, and both lead to a recompute).
        """
        return prune_least_recent(self.root.glob("*.safetensors"), max_bytes)


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            return handle.get_tensor("keys"), handle.get_tensor("values"), header
    except Exception as exc:  # safetensors raises several types for truncated or garbled files
        raise CacheCorrupted(f"{path} is not a readable safetensors KV cache ({exc}); delete it") from exc


def _header_key(header: dict[str, str], path: Path) -> CacheKey:
    if header.get("format") != FORMAT:
        raise CacheCorrupted(f"{path}: header format is {header.get('format')!r}, expected {FORMAT!r}; delete it")
    try:
        return key_from_json(header["key"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheCorrupted(f"{path}: header has no valid cache key ({exc}); delete it") from exc


class TieredStore:
    """Memory in front of disk: a disk hit is kept in memory; puts go to both."""

    def __init__(self, memory: MemoryStore, disk: DiskStore) -> None:
        self.memory, self.disk = memory, disk

    def get(self, key: CacheKey) -> ChunkKV | None:
        """From memory, else from disk (then kept in memory too), else None."""
        found = self.memory.get(key)
        if found is None:
            found = self.disk.get(key)  # CacheCorrupted / CacheMismatch propagate: the caller recomputes
            if found is not None:
                self.memory.put(found)
        return found

    def put(self, kv: ChunkKV) -> None:
        """Store ``kv`` in memory and on disk."""
        self.memory.put(kv)
        self.disk.put(kv)
