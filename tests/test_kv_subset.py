"""Chunk-cache reuse for compressed context (``compression.kv.subset``) against full-prefill references."""

from __future__ import annotations

import pytest
import torch

from compression.kv.assemble import assemble, chunk_cache
from compression.kv.generate import full_prefill
from compression.kv.recovery import make_recovery
from compression.kv.rope import inv_freq, rerotate
from compression.kv.subset import OPENING, kept_positions, kept_tokens, positions_for


@pytest.fixture
def engine(tiny_kv_engine):
    return tiny_kv_engine(5)


def test_kept_positions_by_hand():
    # block "Document:\nab cd\n\n": framing 0..9, text 10..14, trailing 15..16
    offsets = [(i, i + 1) for i in range(17)]
    assert kept_positions(offsets, 5, [(3, 5)]) == [*range(OPENING), 13, 14, 15, 16]
    assert kept_positions(offsets, 5, []) == []
    # a token straddling the span's edge is kept (never half a word)
    assert kept_positions([(0, 10), (10, 12), (12, 15), (15, 17)], 5, [(1, 2)]) == [0, 1, 3]


def test_per_token_deltas_that_are_all_equal_equal_one_delta(tiny_llama):
    frequencies = inv_freq(tiny_llama())
    keys = torch.randn(2, 2, 5, 16)
    torch.testing.assert_close(rerotate(keys, torch.full((5,), 7), frequencies), rerotate(keys, 7, frequencies))


def test_kept_prefix_of_one_chunk_is_exactly_the_compressed_prompts_cache(engine):
    """Kept tokens that are a prefix of the only chunk do not move: their reused KV equals the
    KV of a full prefill of the compressed prompt (the block's closing newlines, computed after
    the dropped text, are the only entries that differ)."""
    text = "alpha beta gamma delta epsilon zeta"
    prompt = engine.prompt([text], "which letter?")
    positions = positions_for(engine.lm.tokenizer, prompt, [text], [[(0, 10)]])
    small = prompt.keep(positions)
    prefix = engine.prefix(prompt)
    chunk, _ = chunk_cache(engine.lm, prefix, prompt.chunk_ids[0], engine.store, "bytes")
    reused = assemble(engine.lm.model, prefix, [chunk], positions)
    full, _ = full_prefill(engine.lm.model, small)
    exact = len(small.prefix_ids) + len(positions[0]) - len("\n\n")
    for mine, reference in zip(reused.layers, full.layers):
        torch.testing.assert_close(mine.keys[:, :, :exact], reference.keys[:, :, :exact], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values[:, :, :exact], reference.values[:, :, :exact], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reused.layers[-1].values[:, :, exact:], full.layers[-1].values[:, :, exact:len(small.prefix_ids) + len(positions[0])])


def test_full_recompute_of_a_compressed_context_equals_its_full_prefill(engine):
    texts = ["the cat sat on the mat. it was warm.", "dogs bark at night. owls hoot."]
    kept = [[(0, 23)], [(20, 30)]]
    prompt = engine.prompt(texts, "who hoots?")
    keep = kept_tokens(engine.lm.tokenizer, prompt, texts, [(i, start, end) for i, spans in enumerate(kept) for start, end in spans])
    blended = engine.generate(prompt, make_recovery("blend", r=1.0), 6, keep=keep)
    full = engine.generate(prompt, None, 6, keep=keep)
    torch.testing.assert_close(blended.first_logits, full.first_logits, atol=1e-4, rtol=1e-4)
    assert blended.token_ids == full.token_ids
    naive = engine.generate(prompt, make_recovery("none"), 6, keep=keep)
    assert naive.reused_tokens == full.prefilled_tokens - len(prompt.suffix_ids)
