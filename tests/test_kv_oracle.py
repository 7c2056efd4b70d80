"""The oracle recovery (ceiling diagnostic) on a tiny random Llama, against a full prefill."""

from __future__ import annotations

import torch

from compression.kv.assemble import assemble, cache_tensors
from compression.kv.generate import full_prefill, recompute
from compression.kv.oracle import OracleRecovery, true_deviation
from tests.test_kv_mechanics import ATOL, three_chunk_setup


def oracle_logits(model, prompt, prefix, chunks, oracle):
    cache = assemble(model, prefix, chunks)
    assert oracle.select(model, cache, prompt) == []
    return cache, recompute(model, cache, prompt, [])


def test_oracle_with_every_token_equals_full_prefill(tiny_llama):
    model, prompt, prefix, chunks = three_chunk_setup(tiny_llama)
    reference_cache, reference = full_prefill(model, prompt)
    cache, logits = oracle_logits(model, prompt, prefix, chunks, OracleRecovery(cache_tensors(reference_cache), r=1.0))
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_oracle_with_nothing_equals_naive_reuse(tiny_llama):
    model, prompt, prefix, chunks = three_chunk_setup(tiny_llama)
    reference_cache, _ = full_prefill(model, prompt)
    _, logits = oracle_logits(model, prompt, prefix, chunks, OracleRecovery(cache_tensors(reference_cache), r=0.0))
    naive = recompute(model, assemble(model, prefix, chunks), prompt, [])
    torch.testing.assert_close(logits, naive, atol=0, rtol=0)


def test_oracle_picks_the_most_deviating_tokens_and_patches_only_them(tiny_llama):
    model, prompt, prefix, chunks = three_chunk_setup(tiny_llama)
    reference_cache, reference = full_prefill(model, prompt)
    truth = cache_tensors(reference_cache)
    naive_cache = assemble(model, prefix, chunks)
    deviation = true_deviation(naive_cache, truth, prompt, range(4))
    assert deviation[:9].abs().max() < 1e-6  # the first chunk sits where it was computed
    oracle = OracleRecovery(truth, r=0.3)
    picked = oracle.chosen(naive_cache, prompt)
    brute = sorted(range(27), key=lambda i: -float(deviation[i]))[: round(0.3 * 27)]
    assert picked == sorted(i + 6 for i in brute)
    cache, logits = oracle_logits(model, prompt, prefix, chunks, oracle)
    keys, _ = cache_tensors(cache)
    stale, _ = cache_tensors(naive_cache)
    others = [p for p in range(6, 33) if p not in picked]
    torch.testing.assert_close(keys[:, :, picked], truth[0][:, :, picked], atol=ATOL, rtol=0)
    torch.testing.assert_close(keys[:, :, others], stale[:, :, others], atol=0, rtol=0)
    naive = recompute(model, naive_cache, prompt, [])
    assert (logits - reference).abs().max() < (naive - reference).abs().max()
