"""Chunk-cache stores: memory LRU under a byte budget, safetensors on disk, refusal and recompute."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from types import SimpleNamespace

import pytest
import torch

from compression.kv.assemble import chunk_cache, encode_chunk, encode_prefix
from compression.kv.base import CacheCorrupted, CacheKey, CacheMismatch, ChunkKV
from compression.kv.keys import differing_fields, key_digest, make_key, require_match
from compression.kv.store import DiskStore, MemoryStore, TieredStore


def fake_kv(n_tokens: int, seed: int = 0, **key_changes) -> ChunkKV:
    generator = torch.Generator().manual_seed(seed)
    key = CacheKey("m@1", "w" * 8, "float32", "tok:1", tuple(range(seed, seed + n_tokens)), "p" * 8, 5, '{"rope_type": "default"}')
    key = dataclasses.replace(key, **key_changes)
    shape = (2, 2, n_tokens, 4)
    return ChunkKV(key=key, keys=torch.randn(shape, generator=generator), values=torch.randn(shape, generator=generator))


def test_memory_store_evicts_least_recently_used_over_budget():
    a, b, c = fake_kv(10, 0), fake_kv(10, 1), fake_kv(10, 2)
    store = MemoryStore(budget_bytes=2 * a.nbytes)
    store.put(a)
    store.put(b)
    assert store.get(a.key) is a  # a is now the most recently used
    store.put(c)
    assert store.get(b.key) is None and store.get(a.key) is a and store.get(c.key) is c
    assert store.nbytes == 2 * a.nbytes and len(store) == 2


def test_memory_store_rejects_a_bad_budget():
    with pytest.raises(ValueError, match="budget_bytes"):
        MemoryStore(0)


def test_disk_store_round_trips_exactly(tmp_path):
    kv = fake_kv(7)
    store = DiskStore(tmp_path)
    assert store.get(kv.key) is None
    store.put(kv)
    loaded = store.get(kv.key)
    assert loaded.key == kv.key
    assert torch.equal(loaded.keys, kv.keys) and torch.equal(loaded.values, kv.values)
    assert [p.name for p in tmp_path.iterdir()] == [f"{key_digest(kv.key)}.safetensors"]  # no temp files left


def test_disk_file_is_safetensors_with_a_json_header(tmp_path):
    from safetensors import safe_open

    kv = fake_kv(3)
    DiskStore(tmp_path).put(kv)
    with safe_open(str(DiskStore(tmp_path).path_for(kv.key)), framework="pt") as handle:
        header = handle.metadata()
        assert set(handle.keys()) == {"keys", "values"}
    assert '"dtype": "float32"' in header["key"] and header["format"] == "ragpress-kv/1"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_file_is_refused(tmp_path, damage):
    kv = fake_kv(7)
    store = DiskStore(tmp_path)
    store.put(kv)
    path = store.path_for(kv.key)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[-5] ^= 0xFF  # inside the tensor bytes: only the checksum notices
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorrupted, match="delete it"):
        store.get(kv.key)


def test_mismatched_file_is_refused_naming_the_field(tmp_path):
    stored, wanted = fake_kv(7), fake_kv(7, dtype="bfloat16")
    store = DiskStore(tmp_path)
    store.put(stored)
    shutil.copy(store.path_for(stored.key), store.path_for(wanted.key))
    with pytest.raises(CacheMismatch, match="dtype: expected 'bfloat16', found 'float32'"):
        store.get(wanted.key)


def test_key_comparison_names_every_differing_field():
    a = fake_kv(4).key
    b = dataclasses.replace(a, prefix_hash="other", token_ids=(9, 9, 9, 9))
    assert differing_fields(a, b) == ["token_ids", "prefix_hash"]
    with pytest.raises(CacheMismatch, match="token_ids: .*prefix_hash: "):
        require_match(a, b, "x")
    require_match(a, a, "x")


@pytest.fixture
def tiny_lm(tiny_llama):
    model = tiny_llama()
    return SimpleNamespace(model=model, model_id="tiny@0", weights_hash="0" * 64, dtype="float32")


def test_chunk_cache_computes_once_then_reuses_from_disk(tiny_lm, tmp_path):
    prefix = encode_prefix(tiny_lm.model, (1, 2, 3), tiny_lm.model_id)
    ids = (10, 11, 12, 13)
    first, reused = chunk_cache(tiny_lm, prefix, ids, DiskStore(tmp_path), "tok")
    assert not reused
    second, reused = chunk_cache(tiny_lm, prefix, ids, DiskStore(tmp_path), "tok")
    assert reused and torch.equal(second.keys, first.keys)
    expected_keys, _ = encode_chunk(tiny_lm.model, prefix, ids)
    torch.testing.assert_close(second.keys, expected_keys)
    assert second.key == make_key(tiny_lm, prefix, ids, "tok")


def test_bad_cache_file_is_logged_and_recomputed(tiny_lm, tmp_path, caplog):
    prefix = encode_prefix(tiny_lm.model, (1, 2, 3), tiny_lm.model_id)
    ids = (10, 11, 12, 13)
    store = DiskStore(tmp_path)
    good, _ = chunk_cache(tiny_lm, prefix, ids, store, "tok")
    path = store.path_for(good.key)
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        recomputed, reused = chunk_cache(tiny_lm, prefix, ids, store, "tok")
    assert not reused and "not a readable safetensors KV cache" in caplog.text
    torch.testing.assert_close(recomputed.keys, good.keys)
    assert store.get(good.key) is not None  # the file was rewritten and now loads


def test_tiered_store_keeps_disk_hits_in_memory(tmp_path):
    kv = fake_kv(5)
    DiskStore(tmp_path).put(kv)
    tiered = TieredStore(MemoryStore(2**20), DiskStore(tmp_path))
    assert tiered.memory.get(kv.key) is None
    loaded = tiered.get(kv.key)
    assert torch.equal(loaded.values, kv.values) and tiered.memory.get(kv.key) is loaded
    other = fake_kv(5, seed=9)
    tiered.put(other)
    assert DiskStore(tmp_path).get(other.key) is not None and tiered.memory.get(other.key) is other


def test_disk_prune_evicts_the_least_recently_read_caches(tmp_path):
    import os

    store = DiskStore(tmp_path)
    kvs = [fake_kv(6, seed) for seed in range(4)]
    for age, kv in enumerate(kvs):  # written oldest first: kvs[0] is the least recently used...
        store.put(kv)
        os.utime(store.path_for(kv.key), (1_000 + age, 1_000 + age))
    assert store.get(kvs[0].key) is not None  # ...until this read makes it the most recent
    size = store.path_for(kvs[0].key).stat().st_size
    summary = store.prune(2 * size)
    assert (summary.removed, summary.kept, summary.kept_bytes, summary.freed_bytes) == (2, 2, 2 * size, 2 * size)
    assert [store.get(kv.key) is not None for kv in kvs] == [True, False, False, True]
    assert not list(tmp_path.glob("*.tmp"))
    assert store.prune(0).removed == 2 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        store.prune(-1)
