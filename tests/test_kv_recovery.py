"""Recovery selection and the cascade (gradual filtering) recompute, on a tiny random Llama,
against a full prefill of the same prompt."""

from __future__ import annotations

import pytest
import torch

from compression.kv.assemble import assemble, cache_tensors
from compression.kv.base import Prompt
from compression.kv.generate import full_prefill, greedy_continue, recompute
from compression.kv.recovery import CascadeRecovery, make_recovery
from tests.test_kv_mechanics import ATOL, three_chunk_setup


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


@pytest.mark.parametrize("score", ["deviation", "attention"])
def test_cascade_keeping_every_token_equals_full_prefill(setup, score):
    model, prompt, prefix, chunks, reference_cache, reference = setup
    options = {"score": score, "exact_layers": 2 if score == "deviation" else 0}
    cache, selected, logits = recovered(model, prompt, prefix, chunks, make_recovery("cascade", r=1.0, r_first=1.0, **options))
    assert selected == []  # the cache was refreshed in place
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    assert greedy_continue(model, cache, logits, 6, set()) == greedy_continue(model, reference_cache, reference, 6, set())


def test_cascade_with_every_layer_exact_equals_full_prefill(setup):
    """exact_layers = all layers: the exact pass covers the whole model, whatever r says."""
    model, prompt, prefix, chunks, _, reference = setup
    _, _, logits = recovered(model, prompt, prefix, chunks, make_recovery("cascade", r=0.0, r_first=0.0, exact_layers=4))
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)


def test_partial_cascade_moves_towards_full_prefill(setup):
    model, prompt, prefix, chunks, _, reference = setup
    _, _, naive = recovered(model, prompt, prefix, chunks, make_recovery("none"))
    naive_error = (naive - reference).abs().max()
    assert naive_error > 1e-3
    for options in ({"r": 0.3, "r_first": 0.6}, {"r": 0.3, "r_first": 0.6, "score": "deviation", "exact_layers": 2}):
        _, _, partial = recovered(model, prompt, prefix, chunks, make_recovery("cascade", **options))
        assert (partial - reference).abs().max() < naive_error, options


def test_cascade_fraction_shrinks_linearly_and_bad_options_are_refused():
    cascade = CascadeRecovery(r=0.1, r_first=0.5, exact_layers=2)
    assert [round(cascade.fraction(layer, 6), 3) for layer in range(2, 6)] == [0.5, 0.367, 0.233, 0.1]
    prompt = Prompt((0,), ((1,) * 10, (1,) * 20), (2,))  # 30 context tokens, 20 reusable
    # 2 exact layers x 30 + kept 15, 11, 7, 3 over layers 2..5 -> (60 + 36) / 6 = 16
    assert cascade.recomputed_tokens(prompt, 6) == 16
    with pytest.raises(ValueError, match="r <= r_first"):
        make_recovery("cascade", r=0.5, r_first=0.2)
    with pytest.raises(ValueError, match="valid: attention, deviation"):
        make_recovery("cascade", score="loudest")
    with pytest.raises(ValueError, match=">= 2 for score=deviation"):
        make_recovery("cascade", score="deviation")


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
