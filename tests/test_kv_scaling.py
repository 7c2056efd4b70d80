"""APE-style attention scaling of a reused cache (compression.kv.scaling), on tiny random Llamas:
identity scaling against the unscaled path, and the scaled attention against softmax over
(logit / T + log S) computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from compression.kv.assemble import assemble, cache_tensors
from compression.kv.generate import greedy_continue, recompute, reuse_prefill
from compression.kv.recovery import make_recovery
from compression.kv.scaling import AttentionScaling, apply_scaling, scaled_prefill, stale_positions
from tests.test_kv_mechanics import ATOL, three_chunk_setup


@pytest.fixture
def setup(tiny_llama):
    return three_chunk_setup(tiny_llama)


@pytest.mark.parametrize("base, options", [("none", {}), ("blend", {"r": 0.3}), ("blend", {"r": 0.3, "resume": True})])
def test_identity_scaling_equals_the_unscaled_path(setup, base, options):
    """T = 1, S = 1 through the scaled prefill (forced: reuse_prefill would skip it) and decoding
    with an all-zero bias give the unscaled recompute's logits and tokens."""
    model, prompt, prefix, chunks = setup
    plain = assemble(model, prefix, chunks)
    reference, selected, bias = reuse_prefill(model, plain, prompt, make_recovery(base, **options))
    assert bias is None
    scaled = assemble(model, prefix, chunks)
    recovery = make_recovery("scaled", temperature=1.0, scale=1.0, base=base, **options)
    assert recovery.select(model, scaled, prompt) == selected
    logits, bias = scaled_prefill(model, scaled, prompt, selected, recovery.scaling)
    assert bias is None
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)
    for mine, theirs in zip(cache_tensors(scaled), cache_tensors(plain)):
        torch.testing.assert_close(mine, theirs, atol=ATOL, rtol=0)
    zero = torch.zeros(len(model.model.layers), len(prompt.prefix_ids) + len(prompt.context_ids))
    assert greedy_continue(model, scaled, logits, 6, set(), zero) == greedy_continue(model, plain, reference, 6, set())


def test_identity_scaled_recovery_takes_the_plain_path_exactly(setup):
    model, prompt, prefix, chunks = setup
    reference, _, _ = reuse_prefill(model, assemble(model, prefix, chunks), prompt, make_recovery("blend", r=0.3))
    logits, _, bias = reuse_prefill(model, assemble(model, prefix, chunks), prompt, make_recovery("scaled", base="blend", r=0.3))
    assert bias is None
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)


def test_only_stale_keys_of_scaled_layers_are_divided(setup):
    """Hand-computed: prefix, first chunk, recomputed tokens and layers below from_layer keep their
    keys; the other chunk tokens' keys are k / T; values never change; bias is log S there."""
    model, prompt, prefix, chunks = setup
    selected = [16, 20, 30]
    plain, scaled = assemble(model, prefix, chunks), assemble(model, prefix, chunks)
    bias = apply_scaling(scaled, prompt, selected, AttentionScaling(temperature=0.5, scale=0.6, from_layer=2))
    (plain_keys, plain_values), (keys, values) = cache_tensors(plain), cache_tensors(scaled)
    stale = [p for p in range(6 + 9, 33) if p not in selected]
    assert stale_positions(prompt, selected).nonzero().flatten().tolist() == stale
    expected = plain_keys.clone()
    expected[2:, :, stale] *= 2.0
    torch.testing.assert_close(keys, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(values, plain_values, atol=0, rtol=0)
    expected_bias = torch.zeros(4, 33)
    expected_bias[2:, stale] = math.log(0.6)
    torch.testing.assert_close(bias, expected_bias, atol=1e-7, rtol=0)


def one_layer_setup(tiny_llama):
    model, prompt, prefix, chunks = three_chunk_setup(lambda **kw: tiny_llama(**{**kw, "num_hidden_layers": 1}))
    model.set_attn_implementation("eager")  # eager returns the attention probabilities
    return model, prompt, prefix, chunks


@torch.inference_mode()
def hand_probs(attention, hidden, cos, sin, keys, stale, temperature, scale, first_query):
    """softmax over q·k * scaling, with logit / T + log S at stale keys, causal from ``first_query``."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    query = attention.q_proj(hidden).view(*hidden.shape[:-1], -1, attention.head_dim).transpose(1, 2)
    query, _ = apply_rotary_pos_emb(query, query, cos, sin)
    keys = keys.repeat_interleave(attention.num_key_value_groups, dim=1)
    logits = (query @ keys.transpose(-1, -2)) * attention.scaling
    n_stale = len(stale)
    logits[..., :n_stale][..., stale] = logits[..., :n_stale][..., stale] / temperature + math.log(scale)
    rows = torch.arange(query.shape[2])[:, None] + first_query
    logits = logits.masked_fill(~(torch.arange(keys.shape[2])[None, :] <= rows), float("-inf"))
    return torch.softmax(logits, dim=-1)


@pytest.mark.parametrize("temperature, scale", [(0.7, 0.6), (1.3, 1.0), (1.0, 0.5)])
def test_scaled_attention_is_softmax_of_logit_over_t_plus_log_s(tiny_llama, temperature, scale):
    """1-layer toy: the question's and a generated token's attention probabilities against the hand
    computation from the UNSCALED assembled keys."""
    model, prompt, prefix, chunks = one_layer_setup(tiny_llama)
    attention = model.model.layers[0].self_attn
    cache = assemble(model, prefix, chunks)
    original_keys = cache.layers[0].keys.clone()
    seen = {}

    def capture_input(module, args, kwargs):
        seen["hidden"], seen["embeddings"] = kwargs["hidden_states"], kwargs["position_embeddings"]

    def capture_output(module, args, output):
        seen["probs"] = output[1]

    handles = [attention.register_forward_pre_hook(capture_input, with_kwargs=True), attention.register_forward_hook(capture_output)]
    try:
        selected = [16, 20]
        logits, bias = scaled_prefill(model, cache, prompt, selected, AttentionScaling(temperature, scale))
        end = len(prompt.prefix_ids) + len(prompt.context_ids)
        stale = stale_positions(prompt, selected)
        keys = torch.cat([original_keys, cache.layers[0].keys[:, :, end:]], dim=2)
        keys[:, :, selected] = cache.layers[0].keys[:, :, selected]  # recomputed: fresh keys, unscaled
        expected = hand_probs(attention, seen["hidden"], *seen["embeddings"], keys, stale, temperature, scale, end)
        torch.testing.assert_close(seen["probs"], expected, atol=1e-5, rtol=0)
        greedy_continue(model, cache, logits, 2, set(), bias)  # one decode step: the first generated token
        keys = torch.cat([keys, cache.layers[0].keys[:, :, keys.shape[2]:]], dim=2)
        expected = hand_probs(attention, seen["hidden"], *seen["embeddings"], keys, stale, temperature, scale, keys.shape[2] - 1)
        torch.testing.assert_close(seen["probs"], expected, atol=1e-5, rtol=0)
    finally:
        for handle in handles:
            handle.remove()


def test_bad_scaling_options_name_the_fix():
    with pytest.raises(ValueError, match="temperature > 0"):
        make_recovery("scaled", temperature=0.0)
    with pytest.raises(ValueError, match="scale > 0"):
        make_recovery("scaled", scale=-1.0)
    with pytest.raises(ValueError, match="from_layer >= 0"):
        make_recovery("scaled", from_layer=-2)
    with pytest.raises(ValueError, match="cannot wrap cascade"):
        make_recovery("scaled", base="cascade")
    with pytest.raises(ValueError, match="cannot wrap itself"):
        make_recovery("scaled", base="scaled")


def test_scaled_prefill_refuses_a_cache_that_is_not_the_assembled_context(setup):
    model, prompt, prefix, chunks = setup
    cache = assemble(model, prefix, chunks)
    recompute(model, cache, prompt, [])  # the question is already in
    with pytest.raises(ValueError, match="right after recovery.select"):
        scaled_prefill(model, cache, prompt, [], AttentionScaling(0.9))


def test_the_engine_keeps_the_scaling_while_decoding(tiny_kv_engine, monkeypatch):
    """KVReuseEngine.generate with a scaled recovery = assemble + scaled_prefill + greedy decoding
    with the returned bias, done by hand. (The random toy repeats one token whatever the bias, so
    the bias handed to decoding is checked directly.)"""
    from compression.kv import generate as generate_module
    from compression.kv.assemble import chunk_cache

    engine = tiny_kv_engine(5)
    lm = engine.lm
    prompt = engine.prompt(["the cat sat on the mat", "a dog ran in the park", "birds fly south"], "who sat?")
    recovery = make_recovery("scaled", temperature=0.8, scale=0.3, from_layer=1, base="none")
    handed = []

    def spy(model, cache, first_logits, max_new_tokens, eos_ids, bias=None):
        handed.append(bias)
        return greedy_continue(model, cache, first_logits, max_new_tokens, eos_ids, bias)

    monkeypatch.setattr(generate_module, "greedy_continue", spy)
    generation = engine.generate(prompt, recovery, max_new_tokens=8)
    prefix = engine.prefix(prompt)
    chunks = [chunk_cache(lm, prefix, ids, engine.store, engine._tokenizer_sig)[0] for ids in prompt.chunk_ids]
    cache = assemble(lm.model, prefix, chunks)
    logits, bias = scaled_prefill(lm.model, cache, prompt, [], recovery.scaling)
    assert bias is not None and not bool(bias[0].any()) and bool(bias[1].any())
    torch.testing.assert_close(generation.first_logits, logits, atol=ATOL, rtol=0)
    assert len(handed) == 1
    torch.testing.assert_close(handed[0], bias, atol=0, rtol=0)
    assert list(generation.token_ids) == greedy_continue(lm.model, cache, logits, 8, engine.eos_ids, bias)
    assert generation.prefilled_tokens == len(prompt.suffix_ids)


def test_scaling_options_on_none_and_blend_wrap_them(setup):
    """``none:scale=0.8,from_layer=2`` (the mode-string form) is the scaled recovery around none;
    cascade refuses them with the fix."""
    model, prompt, prefix, chunks = setup
    for base, options in (("none", {}), ("blend", {"r": 0.3, "resume": True})):
        direct = make_recovery(base, scale=0.8, from_layer=2, **options)
        wrapped = make_recovery("scaled", base=base, scale=0.8, from_layer=2, **options)
        assert direct == wrapped and direct.scaling == AttentionScaling(1.0, 0.8, 2)
        first = reuse_prefill(model, assemble(model, prefix, chunks), prompt, direct)
        second = reuse_prefill(model, assemble(model, prefix, chunks), prompt, wrapped)
        torch.testing.assert_close(first[0], second[0], atol=0, rtol=0)
        torch.testing.assert_close(first[2], second[2], atol=0, rtol=0)
    with pytest.raises(ValueError, match="cannot wrap cascade"):
        make_recovery("cascade", scale=0.8)
    with pytest.raises(ValueError, match="e.g. scale=0.8"):
        make_recovery("blend", scale=-0.5)
