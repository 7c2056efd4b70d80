"""Prepacking: bin packing, packed chunk caches equal to single ones, packed embeddings equal to the library's."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from compression.kv.assemble import encode_chunk, encode_prefix
from compression.kv.packing import encode_chunks, encode_row
from compression.kv.store import MemoryStore
from retrieval.packing import pack_rows

ATOL = 1e-5  # float32


def random_ids(generator: torch.Generator, n: int) -> tuple[int, ...]:
    return tuple(torch.randint(3, 256, (n,), generator=generator).tolist())


def test_pack_rows_first_fit_decreasing_by_hand() -> None:
    # Longest first: 7 opens row 0; 5 opens row 1; 4 joins row 1; 3 fills row 0; the two 2s open row 2.
    assert pack_rows([4, 7, 2, 5, 3, 2], 10) == [[1, 4], [3, 0], [2, 5]]
    assert pack_rows([12, 3], 10) == [[0], [1]]  # longer than the budget: a row of its own
    assert pack_rows([], 10) == []
    with pytest.raises(ValueError, match="budget"):
        pack_rows([1], 0)


def test_pack_rows_uses_as_few_rows_as_brute_force_on_small_cases() -> None:
    generator = np.random.default_rng(3)
    for _ in range(30):
        lengths = generator.integers(1, 9, size=5).tolist()
        rows = pack_rows(lengths, 10)
        assert sorted(i for row in rows for i in row) == list(range(5))
        assert all(sum(lengths[i] for i in row) <= 10 for row in rows)
        best = min(_rows_needed(lengths, assignment, 10) for assignment in itertools.product(range(5), repeat=5))
        assert len(rows) <= 11 / 9 * best + 6 / 9  # the first-fit-decreasing guarantee


def _rows_needed(lengths, assignment, budget):
    totals: dict[int, int] = {}
    for length, row in zip(lengths, assignment):
        totals[row] = totals.get(row, 0) + length
    return len(totals) if all(t <= budget for t in totals.values()) else 99


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # block attention, and the explicit 4-D mask
@pytest.mark.parametrize("lengths", [(13,), (9, 21), (5, 17, 1, 30, 8, 12, 3, 25)])
def test_packed_row_equals_each_chunk_alone(tiny_llama, attention, lengths) -> None:
    model = tiny_llama(attn_implementation=attention)
    assert model.config._attn_implementation == attention
    generator = torch.Generator().manual_seed(len(lengths))
    prefix = encode_prefix(model, random_ids(generator, 6))
    chunks = [random_ids(generator, n) for n in lengths]
    packed = encode_row(model, prefix, chunks)
    for ids, (keys, values) in zip(chunks, packed):
        alone_keys, alone_values = encode_chunk(model, prefix, ids)
        assert keys.shape == alone_keys.shape == (2, 2, len(ids), 16) and keys.is_contiguous()
        torch.testing.assert_close(keys, alone_keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(values, alone_values, atol=ATOL, rtol=0)


def test_encode_chunks_over_several_rows_in_input_order(tiny_llama) -> None:
    model = tiny_llama()
    generator = torch.Generator().manual_seed(11)
    prefix = encode_prefix(model, random_ids(generator, 4))
    chunks = [random_ids(generator, n) for n in (40, 3, 22, 17, 40, 9, 31)]
    packed = {index: (keys, values) for index, keys, values in encode_chunks(model, prefix, chunks, row_tokens=50)}
    alone = {index: (keys, values) for index, keys, values in encode_chunks(model, prefix, chunks, row_tokens=None)}
    assert sorted(packed) == sorted(alone) == list(range(len(chunks)))
    for index in alone:
        for mine, reference in zip(packed[index], alone[index]):
            torch.testing.assert_close(mine, reference, atol=ATOL, rtol=0)


def test_engine_warm_packs_stores_and_computes_repeats_once(tiny_kv_engine) -> None:
    engine = tiny_kv_engine(5)
    texts = ["alpha beta gamma", "a much longer chunk of plain text, " * 3, "alpha beta gamma", "x"]
    prompt = engine.prompt(texts, "why?")
    assert engine.warm(prompt) == 4 and len(engine.store) == 3  # the repeated chunk is computed and stored once
    assert engine.warm(prompt) == 0
    single = type(engine)(engine.lm, MemoryStore(2**26), row_tokens=None)
    assert single.warm(prompt) == 4
    for (_, packed, _), (_, alone, _) in zip(engine.chunk_caches(prompt), single.chunk_caches(prompt)):
        assert packed.key == alone.key
        torch.testing.assert_close(packed.keys, alone.keys, atol=ATOL, rtol=0)
        torch.testing.assert_close(packed.values, alone.values, atol=ATOL, rtol=0)


@pytest.mark.slow
@pytest.mark.real_model
def test_packed_minilm_embeddings_equal_the_library() -> None:
    import pydoc_data.topics

    from retrieval.encoder import SentenceEncoder, load_encoder
    from retrieval.packing import DEFAULT_ROW_TOKENS, encode_packed, packable

    loaded = load_encoder()
    model = loaded._model
    encoder = SentenceEncoder(model, loaded.name, loaded.model_dir, row_tokens=DEFAULT_ROW_TOKENS)
    assert packable(model) and encoder.row_tokens == DEFAULT_ROW_TOKENS
    words = " ".join(text for _, text in sorted(pydoc_data.topics.topics.items())).split()
    # Different lengths, from one word to past the 256-token window (truncated alike on both sides).
    texts = [" ".join(words[start:start + size]) for start, size in zip(range(0, 4000, 97), [1, 5, 40, 90, 150, 400, 12, 70] * 2)]
    reference = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    packed = encode_packed(model, texts, row_tokens=512)
    cosine = (packed * reference).sum(axis=1) / np.linalg.norm(packed, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999
    np.testing.assert_allclose(encoder.encode(texts[:6]), packed[:6], atol=1e-5)  # the encoder's packed path
    # The library's own padded path on the switched model is still plain SDPA.
    np.testing.assert_allclose(model.encode(texts[:3], normalize_embeddings=True), reference[:3], atol=1e-6)


@pytest.mark.real_model
def test_unpackable_encoder_falls_back_to_library_batching() -> None:
    from retrieval.encoder import SentenceEncoder, load_encoder
    from retrieval.packing import packable

    loaded = load_encoder()
    model = loaded._model
    hf_config = model[0].model.config
    saved = hf_config._attn_implementation
    hf_config._attn_implementation = "eager"
    try:
        assert not packable(model)
        assert SentenceEncoder(model, loaded.name, loaded.model_dir, row_tokens=2048).row_tokens is None
    finally:
        hf_config._attn_implementation = saved


@pytest.mark.real_model
@pytest.mark.parametrize(("threads", "packed"), [(1, True), (2, False)])
def test_encoder_packs_by_default_only_with_one_thread(monkeypatch, threads, packed) -> None:
    import retrieval.encoder
    from retrieval.encoder import SentenceEncoder, load_encoder

    loaded = load_encoder()
    calls: list[int] = []

    def spy(model, texts, row_tokens):
        calls.append(row_tokens)
        return model.encode(list(texts), normalize_embeddings=True)

    monkeypatch.setattr(retrieval.encoder, "encode_packed", spy)
    encoder = SentenceEncoder(loaded._model, loaded.name, loaded.model_dir)
    forced = SentenceEncoder(loaded._model, loaded.name, loaded.model_dir, pack_max_threads=None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert encoder.packs() is packed and forced.packs()
        encoder.encode(["one short text", "another"])
        assert calls == ([encoder.row_tokens] if packed else [])
        forced.encode(["one short text"])
        assert len(calls) == (2 if packed else 1)
    finally:
        torch.set_num_threads(before)
