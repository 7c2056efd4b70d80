"""Which reused entries are exact after compression (``Prompt.keep``, ``Prompt.exact_tokens``),
checked against a full prefill of the compressed prompt, and recovery spending its budget there."""

from __future__ import annotations

import pytest
import torch

from compression.kv.assemble import assemble, chunk_cache
from compression.kv.base import Prompt
from compression.kv.generate import full_prefill
from compression.kv.recovery import BlendRecovery
from compression.kv.subset import positions_for

TEXTS = ["the cat sat on the mat. it was warm.", "dogs bark at night. owls hoot."]


@pytest.fixture
def engine(tiny_kv_engine):
    return tiny_kv_engine(7)


def test_keep_records_which_chunks_were_cut():
    prompt = Prompt((0,), ((1, 2, 3), (4, 5), (6, 7, 8)), (9,))
    assert prompt.exact_tokens == 3 and prompt.cut == frozenset()
    whole_first = prompt.keep([[0, 1, 2], [0], []])
    assert whole_first.chunk_ids == ((1, 2, 3), (4,)) and whole_first.cut == {1} and whole_first.exact_tokens == 3
    cut_first = prompt.keep([[0], [0, 1], []])
    assert cut_first.cut == {0} and cut_first.exact_tokens == 0
    # the first chunk dropped: the next one, kept whole, now sits where its cache was computed
    dropped_first = prompt.keep([[], [0, 1], [1]])
    assert dropped_first.chunk_ids == ((4, 5), (7,)) and dropped_first.exact_tokens == 2
    # a chunk cut by an earlier keep stays cut even if the next keep takes all that is left of it
    assert whole_first.keep([[], [0]]).exact_tokens == 0
    assert Prompt((0,), (), (9,)).exact_tokens == 0


def _reused_and_full(engine, kept_spans):
    prompt = engine.prompt(TEXTS, "who hoots?")
    positions = positions_for(engine.lm.tokenizer, prompt, TEXTS, kept_spans)
    read = prompt.keep(positions)
    prefix = engine.prefix(prompt)
    chunks = [chunk_cache(engine.lm, prefix, prompt.chunk_ids[i], engine.store, "bytes")[0]
              for i, keep in enumerate(positions) if keep]
    reused = assemble(engine.lm.model, prefix, chunks, [keep for keep in positions if keep])
    full, _ = full_prefill(engine.lm.model, read)
    return read, reused, full


@pytest.mark.parametrize("kept_spans", [
    [[(0, len(TEXTS[0]))], [(20, 30)]],  # first chunk whole, second cut
    [[], [(0, len(TEXTS[1]))]],  # first chunk dropped, second whole: it becomes the exact first
])
def test_exact_tokens_equal_a_full_prefill_of_the_compressed_prompt(engine, kept_spans):
    read, reused, full = _reused_and_full(engine, kept_spans)
    start, end = len(read.prefix_ids), len(read.prefix_ids) + read.exact_tokens
    assert read.exact_tokens == len(read.chunk_ids[0]) > 0
    for mine, reference in zip(reused.layers, full.layers):
        torch.testing.assert_close(mine.keys[:, :, start:end], reference.keys[:, :, start:end], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values[:, :, start:end], reference.values[:, :, start:end], atol=1e-5, rtol=1e-5)


def test_a_cut_first_chunk_is_not_exact_and_recovery_may_recompute_it(engine):
    read, reused, full = _reused_and_full(engine, [[(0, 7), (24, 36)], [(0, len(TEXTS[1]))]])
    start, end = len(read.prefix_ids), len(read.prefix_ids) + len(read.chunk_ids[0])
    assert read.exact_tokens == 0
    assert not torch.allclose(reused.layers[-1].values[:, :, start:end], full.layers[-1].values[:, :, start:end], atol=1e-3)
    blend = BlendRecovery(r=0.9, score="deviation")
    assert blend.n_picked(read) == round(0.9 * len(read.context_ids))
    picked = blend.select(engine.lm.model, reused, read)
    assert any(start <= p < end for p in picked)
