"""Exact mechanics of chunk-cache KV reuse on a tiny random Llama, against full prefill."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from support import ATOL, three_chunk_setup

from compression.hf_cache import returned_cache
from compression.kv.assemble import assemble, cache_tensors
from compression.kv.base import Prompt
from compression.kv.blockwise import run_in_place
from compression.kv.generate import full_prefill, greedy_continue, recompute, recompute_dense
from compression.kv.recovery import RECOVERIES, make_recovery
from compression.kv.rope import check_rope, inv_freq, rerotate


@pytest.fixture
def setup(tiny_llama):
    return three_chunk_setup(tiny_llama)


def test_one_chunk_at_its_own_position_equals_full_prefill(setup):
    model, prompt, prefix, chunks = setup
    single = Prompt(prompt.prefix_ids, prompt.chunk_ids[:1], prompt.suffix_ids)
    reference_cache, reference = full_prefill(model, single)
    cache = assemble(model, prefix, chunks[:1])
    logits = recompute(model, cache, single, [])
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)


def test_rerotation_to_another_offset_equals_computing_there(tiny_llama):
    """Without a prefix, attention is relative: keys at offset b are keys at a rotated by b - a."""
    model = tiny_llama(num_hidden_layers=3)
    ids = torch.randint(3, 256, (1, 13), generator=torch.Generator().manual_seed(3))

    def keys_at(offset: int) -> torch.Tensor:
        out = model(input_ids=ids, position_ids=torch.arange(offset, offset + 13)[None], use_cache=True)
        return cache_tensors(returned_cache(out))[0]

    at_5, at_300 = keys_at(5), keys_at(300)
    moved = rerotate(at_5, 295, inv_freq(model))
    torch.testing.assert_close(moved, at_300, atol=ATOL, rtol=0)
    assert (at_5 - at_300).abs().max() > 0.1  # the check is not vacuous: positions do change keys
    torch.testing.assert_close(rerotate(moved, -295, inv_freq(model)), at_5, atol=ATOL, rtol=0)


def test_assembled_chunks_sit_at_their_new_positions(setup):
    """Chunk 2 computed after the prefix, moved behind chunk 1: its layer-0 KV equals a full prefill's."""
    model, prompt, prefix, chunks = setup
    cache = assemble(model, prefix, chunks)
    reference_cache, _ = full_prefill(model, prompt)
    start, end = len(prompt.prefix_ids) + 9, len(prompt.prefix_ids) + 20
    torch.testing.assert_close(cache.layers[0].keys[:, :, start:end], reference_cache.layers[0].keys[:, :, start:end], atol=ATOL, rtol=0)
    assert cache.get_seq_length() == len(prompt.prefix_ids) + len(prompt.context_ids)


@pytest.mark.parametrize("name,options", [("blend", {"r": 1.0}), ("edge", {"n_tokens": 64})])
def test_recomputing_every_token_equals_full_prefill(setup, name, options):
    model, prompt, prefix, chunks = setup
    reference_cache, reference = full_prefill(model, prompt)
    cache = assemble(model, prefix, chunks)
    selected = make_recovery(name, **options).select(model, cache, prompt)
    assert len(selected) == len(prompt.context_ids)
    logits = recompute(model, cache, prompt, selected)
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(cache), cache_tensors(reference_cache)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    assert greedy_continue(model, cache, logits, 6, set()) == greedy_continue(model, reference_cache, reference, 6, set())


def test_naive_reuse_differs_and_partial_recovery_moves_towards_full(setup):
    model, prompt, prefix, chunks = setup
    _, reference = full_prefill(model, prompt)
    errors = {}
    for name, options in [("none", {}), ("blend", {"r": 0.5}), ("blend", {"r": 0.5, "score": "attention"})]:
        cache = assemble(model, prefix, chunks)
        recovery = make_recovery(name, **options)
        selected = recovery.select(model, cache, prompt)
        assert len(selected) == round(options.get("r", 0) * len(prompt.context_ids))
        assert cache.get_seq_length() == len(prompt.prefix_ids) + len(prompt.context_ids)
        errors[f"{name}{options}"] = (recompute(model, cache, prompt, selected) - reference).abs().max().item()
    naive = errors.pop("none{}")
    assert naive > 1e-3  # cross-chunk attention is really missing without recovery
    assert all(error < naive for error in errors.values()), errors


@pytest.mark.parametrize("selected", [[], [15, 16, 20, 30], [7, 9, 31], list(range(6, 33))])
@pytest.mark.parametrize("block", [1, 3, 64])
def test_blockwise_recompute_equals_the_dense_masked_one(setup, selected, block):
    """The in-place, causal-block recompute against the reference (one call, dense mask)."""
    model, prompt, prefix, chunks = setup
    fast, dense = assemble(model, prefix, chunks), assemble(model, prefix, chunks)
    logits = recompute(model, fast, prompt, selected, block=block)
    reference = recompute_dense(model, dense, prompt, selected)
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(fast), cache_tensors(dense)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    if selected:  # the comparison is not vacuous: recomputing changes the reused cache
        naive = cache_tensors(assemble(model, prefix, chunks))[1]
        assert (cache_tensors(fast)[1][:, :, selected[-1]] - naive[:, :, selected[-1]]).abs().max() > 1e-3


def test_run_in_place_refuses_unsorted_positions(setup):
    model, prompt, prefix, chunks = setup
    with pytest.raises(ValueError, match="ascending"):
        run_in_place(model, assemble(model, prefix, chunks), [5, 6], [20, 10])


def test_edge_selects_the_first_tokens_of_every_chunk(setup):
    model, prompt, prefix, chunks = setup
    selected = make_recovery("edge", n_tokens=2).select(model, assemble(model, prefix, chunks), prompt)
    assert selected == [6, 7, 15, 16, 26, 27]


def test_unknown_recovery_and_bad_options_are_refused():
    with pytest.raises(ValueError, match="valid: blend, edge, none"):
        make_recovery("magic")
    with pytest.raises(ValueError, match="r=0.15"):
        make_recovery("blend", r=1.5)
    with pytest.raises(ValueError, match="valid: deviation, attention"):
        make_recovery("blend", score="loudest")
    assert set(RECOVERIES) == {"none", "edge", "blend"}


def test_rope_scaling_that_depends_on_length_is_refused():
    config = SimpleNamespace(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e4})
    with pytest.raises(ValueError, match="'dynamic' is not supported"):
        check_rope(config)
    assert check_rope(SimpleNamespace(rope_parameters={"rope_type": "default", "rope_theta": 1e4}))["rope_theta"] == 1e4
