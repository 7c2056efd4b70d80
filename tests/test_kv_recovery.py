"""Recovery selection and the early-layer refresh on a tiny random Llama, against a full prefill
of the same prompt."""

from __future__ import annotations

import pytest
import torch
from support import ATOL, three_chunk_setup

from compression.kv.assemble import assemble, cache_tensors
from compression.kv.generate import full_prefill, recompute
from compression.kv.recovery import make_recovery


@pytest.fixture
def setup(tiny_llama):
    """``three_chunk_setup`` plus the full prefill of its prompt (cache and last logits)."""
    model, prompt, prefix, chunks = three_chunk_setup(tiny_llama)
    reference_cache, reference = full_prefill(model, prompt)
    return model, prompt, prefix, chunks, reference_cache, reference


def recovered(model, prompt, prefix, chunks, recovery):
    cache = assemble(model, prefix, chunks)
    selected = recovery.select(model, cache, prompt)
    return cache, selected, recompute(model, cache, prompt, selected)


def test_the_first_chunk_is_exact_without_recompute(setup):
    """It sits where it was computed, right after the prefix: recomputing it would change nothing."""
    model, prompt, prefix, chunks, reference_cache, _ = setup
    cache = assemble(model, prefix, chunks)
    end = len(prompt.prefix_ids) + len(prompt.chunk_ids[0])
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine[:, :, :end], theirs[:, :, :end], atol=ATOL, rtol=0)
        stale = mine[-1, :, end:] - theirs[-1, :, end : mine.shape[2]]
        assert stale.abs().max() > 1e-3  # later chunks really are stale


@pytest.mark.parametrize("score", ["deviation", "attention"])
def test_blend_never_spends_its_budget_on_the_first_chunk(setup, score):
    model, prompt, prefix, chunks, _, _ = setup
    selected = make_recovery("blend", r=0.5, score=score).select(model, assemble(model, prefix, chunks), prompt)
    assert len(selected) == round(0.5 * 27) and min(selected) >= 6 + 9


@pytest.mark.parametrize("n_layers", [1, 2, 3])
def test_in_place_early_layer_refresh_equals_the_dense_one(setup, monkeypatch, n_layers):
    """refresh_early_layers (causal blocks, in place) against fresh_early_layers (dense mask, copy)."""
    from compression.kv import recovery

    model, prompt, prefix, chunks, _, _ = setup
    fast, dense = assemble(model, prefix, chunks), assemble(model, prefix, chunks)
    hidden, deviation = recovery.refresh_early_layers(model, fast, prompt, n_layers)
    monkeypatch.setattr(recovery, "supported", lambda model: False)
    reference_hidden, reference_deviation = recovery.refresh_early_layers(model, dense, prompt, n_layers)
    torch.testing.assert_close(hidden, reference_hidden, atol=ATOL, rtol=0)
    torch.testing.assert_close(deviation, reference_deviation, atol=ATOL, rtol=1e-4)
    assert deviation[9:].max() > 1e-6 if n_layers > 1 else deviation.max() < 1e-8  # layer 0 never deviates
    for mine, theirs in zip(cache_tensors(fast), cache_tensors(dense)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


@pytest.mark.parametrize("score", ["deviation", "deviation*attention", "deviation*early_attention"])
def test_blend_resuming_after_the_check_layer_equals_recomputing_from_layer_0(setup, score):
    model, prompt, prefix, chunks, _, reference = setup
    plain = make_recovery("blend", r=0.4, check_layer=1, score=score)
    resumed = make_recovery("blend", r=0.4, check_layer=1, score=score, resume=True)
    cache, selected, logits = recovered(model, prompt, prefix, chunks, plain)
    resumed_cache, nothing, resumed_logits = recovered(model, prompt, prefix, chunks, resumed)
    assert nothing == [] and resumed.recomputed_tokens(prompt, 4) == len(selected) == round(0.4 * 27)
    torch.testing.assert_close(resumed_logits, logits, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(resumed_cache), cache_tensors(cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    naive = recovered(model, prompt, prefix, chunks, make_recovery("none"))[2]
    assert (resumed_logits - reference).abs().max() < (naive - reference).abs().max()


def test_resume_needs_an_early_layer_pass():
    with pytest.raises(ValueError, match="resume needs"):
        make_recovery("blend", score="attention", resume=True)


def test_question_attention_over_every_layer_equals_the_full_model_pass(setup):
    """The layer-limited pass (decoder layers called one by one) against the model's own forward."""
    from compression.kv.recovery import question_attention

    model, prompt, prefix, chunks, _, _ = setup
    cache = assemble(model, prefix, chunks)
    everything = question_attention(model, cache, prompt)
    torch.testing.assert_close(question_attention(model, cache, prompt, 4), everything, atol=1e-6, rtol=0)
    assert cache.get_seq_length() == len(prompt.prefix_ids) + len(prompt.context_ids)  # the question's KV is dropped
    torch.testing.assert_close(everything.sum(), torch.tensor(4.0))  # one distribution per layer
    assert not torch.allclose(question_attention(model, cache, prompt, 1), everything / 4)
