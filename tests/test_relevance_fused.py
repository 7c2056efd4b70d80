"""Fused question relevance (MiniLM cosine + BM25 + neighbour + rank prior) and block-by-block attention.

References: z-scores, neighbours and priors computed by hand on hand-made sentences with a fake
encoder whose vectors are chosen by hand; rank_bm25 called directly; the masked packed pass and
one full pass per block for the attention.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import check_provenance, sample_text, token_ids, word_units

from compression.base import Budget
from compression.llmlingua.compressor import LLMLinguaCompressor
from compression.llmlingua.relevance import (
    LEXICAL,
    NEIGHBOUR,
    PRIOR,
    Sentence,
    best_neighbour,
    choose_evidence,
    fused_scores,
    zscore,
)

# The tiny models run much faster on one torch thread on a small shared machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class KeywordEncoder:
    """A fake sentence encoder: a text's vector counts three hand-picked keywords (plus a constant axis)."""

    model_id, dim = "keywords", 4
    KEYWORDS = ("oil", "dilut", "engine")  # stems: "oily" and "diluted" match, unlike in BM25

    def encode(self, texts, **_):
        rows = [[1.0] + [float(text.lower().count(k)) for k in self.KEYWORDS] for text in texts]
        vectors = np.array(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_zscore_and_neighbour_by_hand():
    np.testing.assert_allclose(zscore(np.array([1.0, 2.0, 3.0])), [-1.224744871, 0.0, 1.224744871], rtol=1e-6)
    assert zscore(np.array([5.0, 5.0])).tolist() == [0.0, 0.0]  # constant scores rank nothing
    pool = [Sentence(0, 0, 0, 1), Sentence(0, 1, 1, 1), Sentence(1, 2, 2, 1), Sentence(1, 3, 3, 1), Sentence(2, 4, 4, 1)]
    # Negative neighbours count as they are (no clamp at 0); a sentence alone in its context gets 0.
    assert best_neighbour(pool, np.array([-1.0, -3.0, 2.0, -0.5, 7.0])).tolist() == [-3.0, -1.0, -0.5, 2.0, 0.0]


def test_fused_scores_by_hand():
    pool = [Sentence(0, 0, 0, 1), Sentence(0, 1, 1, 1), Sentence(1, 2, 2, 1)]
    lexical, semantic, ranks = np.array([0.0, 3.0, 0.0]), np.array([0.2, 0.4, 0.9]), np.array([0.0, 0.0, 1.0])
    z_lex = (lexical - 1.0) / np.sqrt(2.0)  # mean 1, std sqrt(2)
    z_sem = (semantic - 0.5) / np.std([0.2, 0.4, 0.9])
    own = z_sem + LEXICAL * z_lex
    expected = own + NEIGHBOUR * np.array([own[1], own[0], 0.0]) + PRIOR * np.array([1.0, 1.0, 0.5])
    np.testing.assert_allclose(fused_scores(lexical, semantic, pool, ranks), expected, rtol=1e-9)


def test_fused_evidence_by_hand():
    from rank_bm25 import BM25Okapi

    texts = ["Cats sleep a lot. The engine oil thinned out.", "Dilution was measured. Dogs bark loudly today."]
    units = [word_units(t) for t in texts]
    question = "How much fuel dilution was measured in the engine oil?"
    order = [1, 0]  # context 1 ranked first
    pool = [("Dilution was measured.", 1, 3), ("Dogs bark loudly today.", 1, 4), ("Cats sleep a lot.", 0, 4), ("The engine oil thinned out.", 0, 5)]
    encoder = KeywordEncoder()
    cosine = encoder.encode([p[0] for p in pool]) @ encoder.encode([question])[0]
    bm25 = BM25Okapi([p[0].lower().replace(".", "").split() for p in pool]).get_scores(question.lower().replace("?", "").split())
    own = zscore(cosine) + LEXICAL * zscore(bm25)
    neighbour = np.array([own[1], own[0], own[3], own[2]])
    scores = own + NEIGHBOUR * neighbour + PRIOR * np.array([1.0, 1.0, 0.5, 0.5])
    expected = [(pool[k][1], pool[k][0]) for k in np.argsort(-scores, kind="stable")]
    chosen = choose_evidence(question, texts, units, order, budget=100, encoder=encoder)
    got = [(s.context, texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end].strip()) for s in chosen]
    assert got == expected  # every sentence is a candidate: the whole budget can be spent
    # A 9-token budget takes the best sentences that still fit, in score order.
    fits, total = [], 0
    for k in np.argsort(-scores, kind="stable"):
        if total + pool[k][2] <= 9:
            fits.append((pool[k][1], pool[k][0]))
            total += pool[k][2]
    small = choose_evidence(question, texts, units, order, budget=9, encoder=encoder)
    assert [(s.context, texts[s.context][units[s.context][s.first].start : units[s.context][s.last].end].strip()) for s in small] == fits


def test_compressor_uses_the_given_encoder(tiny_model, tiny_tokenizer):
    """The fused scorer finds a sentence with no question word (BM25 cannot) and keeps it whole."""
    topic = {"engine", "oil", "fuel", "dilution"}  # filler without the question's topic words
    filler = [" ".join(w for w in sample_text(90 + i, 60).split(" ") if w.lower() not in topic) for i in range(3)]
    evidence = "Engines ran oily and diluted."  # no word of the question, as BM25 tokenises
    contexts = [filler[0] + " " + evidence + " " + filler[1], filler[2]]
    question = "how much oil dilution in the engine?"
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, protect=(), encoder=KeywordEncoder())
    result = comp.compress(contexts, Budget(rate=0.3), question=question)
    assert abs(result.rate - 0.3) <= 0.02
    check_provenance(contexts, result)
    start = contexts[0].index(evidence)
    assert any(s.context == 0 and s.start <= start and start + len(evidence) <= s.end for s in result.kept)
    # Reference: BM25 alone does not keep it whole.
    lexical = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, protect=(), relevance="bm25")
    pruned = lexical.compress(contexts, Budget(rate=0.3), question=question)
    assert not any(s.context == 0 and s.start <= start and start + len(evidence) <= s.end for s in pruned.kept)
    with pytest.raises(ValueError, match="valid: fused, bm25"):
        LLMLinguaCompressor(relevance="cosine")


def test_block_attention_equals_mask_and_one_pass(tiny_model, tiny_tokenizer, monkeypatch):
    """Block-by-block attention gives each block the scores of its own full pass, and of the masked packed pass."""
    import compression.llmlingua.scoring as lm_scoring
    from compression.llmlingua.scoring import full_pass_surprisal, score_blocks

    assert lm_scoring.supported(tiny_model)  # the tiny Llama runs on SDPA: the block path is the one tested
    blocks = [token_ids(tiny_tokenizer, sample_text(100 + i, 8 + 11 * i)) for i in range(4)]
    needs = [np.array([k % 4 != 3 for k in range(len(b))]) for b in blocks]
    prefix = [0, 5, 9]  # a prefix of several tokens: block rows must see all of it
    by_blocks = score_blocks(tiny_model, prefix, blocks, needs)
    monkeypatch.setattr(lm_scoring, "supported", lambda model: False)
    masked = score_blocks(tiny_model, prefix, blocks, needs)
    for ids, need, got, reference_mask in zip(blocks, needs, by_blocks, masked):
        reference = full_pass_surprisal(tiny_model, prefix, ids)
        np.testing.assert_allclose(got[need], reference[need], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(got[need], reference_mask[need], atol=1e-4, rtol=1e-4)
        assert np.isnan(got[~need]).all()
    assert tiny_model.config._attn_implementation == "sdpa"


def test_block_attention_switch_is_undone_and_other_calls_are_sdpa(tiny_model):
    """Inside the switch a call without block bounds is plain SDPA; the switch is undone even on error."""
    import torch

    from compression.block_attention import blocks_attention

    ids = torch.tensor([[0, 7, 11, 13, 17, 19]])
    with torch.inference_mode():
        reference = tiny_model(ids).logits
        with blocks_attention(tiny_model):
            assert tiny_model.config._attn_implementation != "sdpa"
            inside = tiny_model(ids).logits
    torch.testing.assert_close(inside, reference)
    with pytest.raises(RuntimeError, match="boom"):
        with blocks_attention(tiny_model):
            raise RuntimeError("boom")
    assert tiny_model.config._attn_implementation == "sdpa"


def test_block_attention_nested_callers_keep_the_switch(tiny_model):
    """A caller leaving while another is still inside (threads sharing one model) does not undo the switch."""
    from compression.block_attention import NAME, blocks_attention

    with blocks_attention(tiny_model):
        with blocks_attention(tiny_model):
            assert tiny_model.config._attn_implementation == NAME
        assert tiny_model.config._attn_implementation == NAME
    assert tiny_model.config._attn_implementation == "sdpa"


def test_record_boundaries_start_sentences():
    """Chat-log records ("...'}, {'content': ...") are separate sentences even without sentence punctuation."""
    from compression.llmlingua.relevance import sentences

    text = "[{'content': 'Which theme am I using', 'role': 'user'}, {'content': 'Parallax 3.0 it is', 'role': 'assistant'}]"
    units = word_units(text)
    got = [text[units[s.first].start : units[s.last].end].strip() for s in sentences(0, text, units)]
    assert got == ["[{'content': 'Which theme am I using', 'role': 'user'},", "{'content': 'Parallax 3.0 it is', 'role': 'assistant'}]"]
