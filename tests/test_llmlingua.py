"""Mechanics of the LLMLingua-style compressor on a tiny random Llama with an in-memory tokenizer.

References: one full forward pass (for windowed KV reuse), hand-computed spans, and the
original text itself (every kept span must be an exact slice of it).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import build_tiny_llama, check_provenance, sample_text, token_ids

from compression.base import Budget, KeptSpan
from compression.llmlingua.compressor import LLMLinguaCompressor
from compression.llmlingua.scoring import IncrementalScorer, full_pass_surprisal
from compression.lm import ModelUnavailable
from compression.registry import make_compressor

# The tiny models run much faster on one torch thread on a small shared machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def compressor(tiny_model, tiny_tokenizer):
    return LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32)


# -- windowed KV reuse ------------------------------------------------------------------------


def test_windowed_scores_equal_one_pass(tiny_model, tiny_tokenizer):
    ids = token_ids(tiny_tokenizer, sample_text(1, 60))
    reference = full_pass_surprisal(tiny_model, [0], ids)
    scorer = IncrementalScorer(tiny_model, [0])
    parts, start = [], 0
    for size in (7, 13, 1, 40, 1000):
        parts.append(scorer.score(ids[start : start + size]))
        start += size
    np.testing.assert_allclose(np.concatenate(parts), reference, atol=1e-4, rtol=1e-4)


def _masked_full_pass(model, seq, visible):
    """One forward pass where token i sees token j < = i only if visible[i][j]: the trusted reference."""
    import torch

    allowed = torch.tensor(visible, dtype=torch.bool)
    mask = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
    with torch.inference_mode():
        logits = model(torch.tensor([seq]), attention_mask=mask, use_cache=False).logits[0]
    targets = torch.tensor(seq[1:])
    return (logits[:-1].logsumexp(-1) - logits[:-1].gather(-1, targets[:, None])[:, 0]).numpy()


def test_pruned_prefix_matches_one_masked_pass(tiny_model, tiny_tokenizer):
    """After pruning, the next window sees exactly the prefix and the kept tokens, at their original positions."""
    ids = token_ids(tiny_tokenizer, sample_text(2, 40))
    first, second = ids[:30], ids[30:50]
    keep = [i % 3 != 2 for i in range(len(first))]
    scorer = IncrementalScorer(tiny_model, [0])
    scorer.score(first)
    scorer.prune(keep)
    windowed = scorer.score(second)
    seq = [0] + first + second
    n0 = 1 + len(first)
    visible = [[j <= i for j in range(len(seq))] for i in range(len(seq))]
    for i in range(n0, len(seq)):
        for j, k in enumerate(keep):
            visible[i][1 + j] = k
    reference = _masked_full_pass(tiny_model, seq, visible)[n0 - 1 :]
    # Token 0 of the window is predicted by the last kept token of the first window (index 28).
    assert not keep[-1] and keep[-2]
    assert windowed[0] == pytest.approx(float(_masked_full_pass(tiny_model, seq[: n0 - 1] + [second[0]], [[j <= i for j in range(n0)] for i in range(n0)])[-1]), abs=1e-4)
    np.testing.assert_allclose(windowed[1:], reference[1:], atol=1e-4, rtol=1e-4)


def test_question_continuation_leaves_cache_unchanged(tiny_model, tiny_tokenizer):
    ids = token_ids(tiny_tokenizer, sample_text(3, 30))
    question = token_ids(tiny_tokenizer, " fox engine oil")
    plain = IncrementalScorer(tiny_model, [0])
    plain.score(ids[:20])
    probed = IncrementalScorer(tiny_model, [0])
    probed.score(ids[:20])
    nll = probed.continuation_nll(question)
    expected = full_pass_surprisal(tiny_model, [0] + ids[:20], question).mean()
    assert nll == pytest.approx(float(expected), abs=1e-4)
    np.testing.assert_allclose(probed.score(ids[20:]), plain.score(ids[20:]), atol=1e-5)


def test_inputs_longer_than_the_lm_window(tiny_tokenizer):
    model = build_tiny_llama(seed=1, vocab_size=320, max_position_embeddings=96)
    text = sample_text(4, 200)
    assert len(token_ids(tiny_tokenizer, text)) > 3 * 96
    scorer = IncrementalScorer(model, [0])
    ids = token_ids(tiny_tokenizer, text)
    scores = np.concatenate([scorer.score(ids[i : i + 24]) for i in range(0, len(ids), 24)])
    assert scores.shape == (len(ids),) and np.isfinite(scores).all()
    result = LLMLinguaCompressor(model=model, tokenizer=tiny_tokenizer, window=24).compress([text], Budget(rate=0.4))
    assert abs(result.rate - 0.4) <= 0.02
    check_provenance([text], result)


# -- budget ----------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), n_words=st.integers(60, 240), rate=st.floats(0.1, 0.95), n_contexts=st.integers(1, 4))
def test_budget_is_met_within_002(compressor, tiny_tokenizer, seed, n_words, rate, n_contexts):
    contexts = [sample_text(seed + i, n_words // n_contexts + 10) for i in range(n_contexts)]
    result = compressor.compress(contexts, Budget(rate=rate))
    joined = "\n\n".join(contexts)
    assert result.original_tokens == len(token_ids(tiny_tokenizer, joined))
    assert result.compressed_tokens == len(token_ids(tiny_tokenizer, result.text))
    assert abs(result.rate - rate) <= 0.02, (result.rate, rate)
    check_provenance(contexts, result)


def test_target_token_budget_and_question(compressor, tiny_tokenizer):
    contexts = [sample_text(10 + i, 80) for i in range(5)]
    n = len(token_ids(tiny_tokenizer, "\n\n".join(contexts)))
    result = compressor.compress(contexts, Budget(target_tokens=n // 5), question="when was the fox measured in Japan?")
    assert abs(result.compressed_tokens - n // 5) <= 0.02 * n
    check_provenance(contexts, result)
    # With a question no retrieved context is dropped whole (each gets a minimum share) ...
    assert len({s.context for s in result.kept}) == len(contexts)
    # ... without one, the coarse stage keeps whole contexts under the budget: at 20% some vanish.
    plain = compressor.compress(contexts, Budget(target_tokens=n // 5))
    assert len({s.context for s in plain.kept}) < len(contexts)


def test_full_rate_and_empty_inputs(compressor):
    assert compressor.compress([], Budget(rate=0.5)).text == ""
    empty = compressor.compress(["", "   "], Budget(rate=0.5))
    assert (empty.text, empty.kept, empty.original_tokens, empty.rate) == ("", (), 0, 1.0)
    whole = compressor.compress(["a b c", "d e"], Budget(rate=1.0))
    assert whole.text == "a b c\n\nd e" and whole.kept == (KeptSpan(0, 0, 5), KeptSpan(1, 0, 3))


# -- what must survive -----------------------------------------------------------------------


def test_forced_tokens_and_marked_spans_survive(tiny_model, tiny_tokenizer):
    text = sample_text(20, 150)
    start = text.index("fox")
    marked = KeptSpan(0, start, start + 30)
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, force_tokens=["Sega"], protect=())
    result = comp.compress([text], Budget(rate=0.3), protected=[marked])
    covered = np.zeros(len(text), dtype=bool)
    for s in result.kept:
        covered[s.start : s.end] = True
    assert covered[marked.start : marked.end].all()
    for m in re.finditer("Sega", text):
        assert covered[m.start() : m.end()].all()


def test_numbers_protected_and_words_never_cut(compressor):
    text = sample_text(30, 200) + " Fuel Dilution rose to 2011 units"
    result = compressor.compress([text], Budget(rate=0.5))
    kept_text = result.text
    for number in re.findall(r"\d+", text):
        assert number in kept_text
    for span in result.kept:
        # Spans start at a word's leading space (or a line start) and end at a word end.
        assert span.start == 0 or text[span.start].isspace() or text[span.start - 1] == "\n"
        assert span.end == len(text) or text[span.end].isspace()
    assert "uel" not in re.sub(r"\bFuel\b", "", kept_text)


def test_structure_newlines_and_list_markers_kept(compressor):
    lines = [f"- {sample_text(40 + i, 12)}" for i in range(12)]
    text = "\n".join(lines)
    result = compressor.compress([text], Budget(rate=0.5))
    assert result.text.count("\n") == text.count("\n")
    assert result.text.startswith("-") and result.text.count("\n- ") == len(lines) - 1


# -- errors and wiring -----------------------------------------------------------------------


def test_unloadable_model_fails_with_the_reason(tmp_path):
    comp = make_compressor("llmlingua", lm=str(tmp_path / "missing"))  # construction is lazy
    with pytest.raises(ModelUnavailable, match="nothing is downloaded"):
        comp.compress(["some text to compress"], Budget(rate=0.5))


def test_bad_options_and_inputs(compressor):
    with pytest.raises(ValueError, match="valid: entities, numbers, structure"):
        LLMLinguaCompressor(protect=["dates"])
    with pytest.raises(ValueError, match="valid: original, sort"):
        LLMLinguaCompressor(reorder="random")
    with pytest.raises(ValueError, match=r"pass \[text\]"):
        compressor.compress("one string", Budget(rate=0.5))


def test_one_compressor_shared_by_two_threads(tiny_model, tiny_tokenizer):
    """Scoring state is per call: two threads compressing through one instance get the serial results."""
    from concurrent.futures import ThreadPoolExecutor

    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, relevance="bm25")
    jobs = [
        ([sample_text(300 + k, 90), sample_text(310 + k, 70)], Budget(rate=0.3 + 0.1 * (k % 2)), "when was the fox measured in Japan?" if k % 2 else None)
        for k in range(3)
    ]
    serial = [comp.compress(*job) for job in jobs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(lambda job: comp.compress(*job), jobs * 2))  # windowed scoring interleaves
    assert threaded == serial * 2
