"""Question evidence (compression/llmlingua/relevance.py) and the shared primed prefix (scoring.prime).

References: hand-made sentences and spans, rank_bm25 called directly, and an unprimed scorer.
"""

from __future__ import annotations

import numpy as np
import pytest
from support import check_provenance, sample_text, token_ids, word_units

from compression.base import Budget
from compression.llmlingua.coarse import allocate
from compression.llmlingua.compressor import LLMLinguaCompressor
from compression.llmlingua.relevance import choose_evidence, sentence_of_units, sentences
from compression.llmlingua.scoring import IncrementalScorer, full_pass_surprisal, prime

# The tiny models run much faster on one torch thread on a small shared machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_units_grouped_into_sentences():
    text = "The fox ran. Oil was measured in 2011.\nNew line here"
    units = word_units(text)
    groups = sentence_of_units(text, units)
    words = [text[u.start : u.end].strip() for u in units]
    expected = {"The": 0, "fox": 0, "ran.": 0, "Oil": 1, "was": 1, "measured": 1, "in": 1, "2011.": 1, "New": 2, "line": 2, "here": 2}
    assert dict(zip(words, groups.tolist())) == expected
    assert [(s.first, s.last, s.n_tokens) for s in sentences(0, text, units)] == [(0, 2, 3), (3, 7, 5), (8, 10, 3)]


def test_evidence_is_bm25_times_rank_prior_within_budget():
    from rank_bm25 import BM25Okapi

    texts = ["Cats sleep a lot. Engine oil dilution was measured.", "Oil dilution in engines rises. Dogs bark."]
    units = [word_units(t) for t in texts]
    question = "engine oil dilution measured"
    order = [1, 0]  # context 1 ranked first
    chosen = choose_evidence(question, texts, units, order, budget=100)
    # Reference: BM25 over the four sentences in rank order, plus half the better neighbour's in the
    # same context, times 1 / (1 + rank); positive ones only.
    pool = [("Oil dilution in engines rises.", 1, 0), ("Dogs bark.", 1, 1), ("Cats sleep a lot.", 0, 0), ("Engine oil dilution was measured.", 0, 1)]
    bm25 = BM25Okapi([p[0].lower().replace(".", "").split() for p in pool]).get_scores(question.split())
    neighbour = np.array([bm25[1], bm25[0], bm25[3], bm25[2]])
    scores = (bm25 + 0.5 * neighbour) * np.array([1.0, 1.0, 0.5, 0.5])
    expected = [(pool[k][1], pool[k][2]) for k in np.argsort(-scores, kind="stable") if scores[k] > 0]
    got = [(s.context, sentences(s.context, texts[s.context], units[s.context]).index(s)) for s in chosen]
    assert got == expected and got[:2] == [(0, 1), (0, 0)]
    # A budget too small for the best sentence takes the next one that fits.
    small = choose_evidence("dogs bark", texts, units, order, budget=4)
    assert [(s.context, s.first, s.last) for s in small] == [(1, 5, 6)]  # "Dogs bark." (2 tokens)
    assert choose_evidence(question, texts, units, order, budget=0) == []


def test_min_weight_never_drops_a_context():
    sizes = [100, 100, 100, 100, 100]
    dropped = allocate(list(range(5)), sizes, 150, dynamic=1.0)
    assert dropped[4] == 0 and sum(dropped.values()) == 150
    floor = allocate(list(range(5)), sizes, 150, dynamic=1.0, min_weight=0.25)
    assert min(floor.values()) > 0 and sum(floor.values()) == 150
    assert [floor[i] for i in range(5)] == sorted(floor.values(), reverse=True)


def test_primed_prefix_scores_equal_one_pass(tiny_model, tiny_tokenizer):
    ids = token_ids(tiny_tokenizer, sample_text(5, 40))
    prefix = [0] + ids[:3]
    reference = full_pass_surprisal(tiny_model, prefix, ids[3:])
    primed = prime(tiny_model, prefix)
    for _ in range(2):  # the shared cache must come out of a first scorer untouched
        scorer = IncrementalScorer(tiny_model, prefix, primed)
        scores = np.concatenate([scorer.score(ids[3:20]), scorer.score(ids[20:])])
        scorer.prune([True] * (len(ids) - 20))
        np.testing.assert_allclose(scores, reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="another prefix"):
        IncrementalScorer(tiny_model, [0], primed)


def test_question_keeps_evidence_sentence_whole(tiny_model, tiny_tokenizer):
    filler = [sample_text(20 + i, 60) for i in range(4)]
    evidence = " The engine oil Fuel Dilution was measured by Sega in Japan."
    contexts = [filler[0], filler[1] + evidence + " " + filler[2], filler[3]]
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, protect=())
    result = comp.compress(contexts, Budget(rate=0.3), question="Who measured the engine oil Fuel Dilution in Japan?")
    assert abs(result.rate - 0.3) <= 0.02
    check_provenance(contexts, result)
    start = contexts[1].index(evidence.strip())
    assert any(s.context == 1 and s.start <= start and start + len(evidence.strip()) <= s.end for s in result.kept)
    assert {s.context for s in result.kept} == {0, 1, 2}
    # Without evidence the same sentence is token-pruned (the reference: it does not survive whole).
    bare = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, protect=(), evidence=0.0)
    pruned = bare.compress(contexts, Budget(rate=0.3), question="Who measured the engine oil Fuel Dilution in Japan?")
    assert not any(s.context == 1 and s.start <= start and start + len(evidence.strip()) <= s.end for s in pruned.kept)


def test_question_options_validated():
    with pytest.raises(ValueError, match=r"evidence must be in \[0, 1\]"):
        LLMLinguaCompressor(evidence=1.5)
    with pytest.raises(ValueError, match="valid: given, question"):
        LLMLinguaCompressor(rank="retriever")


@pytest.mark.parametrize("options", [dict(rank="question"), dict(contrastive=True), dict(rank="question", contrastive=True, evidence=0.5)])
def test_question_variants_meet_the_budget(tiny_model, tiny_tokenizer, options):
    contexts = [sample_text(40 + i, 70) for i in range(4)]
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, **options)
    result = comp.compress(contexts, Budget(rate=0.33), question="when was the fox measured in Japan?")
    assert abs(result.rate - 0.33) <= 0.02
    check_provenance(contexts, result)


def test_need_mask_scores_equal_one_pass(tiny_model, tiny_tokenizer):
    """Unneeded tokens come back NaN (no output-layer work) and change nothing else, pruning included."""
    ids = token_ids(tiny_tokenizer, sample_text(6, 50))
    reference = full_pass_surprisal(tiny_model, [0], ids)
    need = np.array([k % 4 != 1 for k in range(len(ids))])
    need[29] = False  # the last kept token of the first window is an unneeded one
    scorer = IncrementalScorer(tiny_model, [0])
    first = scorer.score(ids[:30], need=need[:30])
    keep = [True] * 30
    keep[-1] = False
    scorer.prune(keep)
    second = scorer.score(ids[30:], need=need[30:])
    np.testing.assert_allclose(first[need[:30]], reference[:30][need[:30]], atol=1e-4, rtol=1e-4)
    assert np.isnan(first[~need[:30]]).all() and np.isnan(second[~need[30:]]).all()
    # Reference for the second window: the same scorer without a need mask.
    plain = IncrementalScorer(tiny_model, [0])
    plain.score(ids[:30])
    plain.prune(keep)
    np.testing.assert_allclose(second[need[30:]], plain.score(ids[30:])[need[30:]], atol=1e-5)
    with pytest.raises(ValueError, match="need mask has"):
        scorer.score(ids[:3], need=[True])


def test_plain_ranking_probes_then_scores_only_kept_contexts(tiny_model, tiny_tokenizer):
    """Without a question, contexts are ranked by the perplexity of their first rank_tokens tokens
    (reference: one full pass per context) and only the kept ones are scored further."""
    import math

    from compression.llmlingua.coarse import select_contexts

    contexts = [sample_text(60 + i, 50) for i in range(4)]
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=32, protect=(), rank_tokens=8)
    calls = []
    original = LLMLinguaCompressor._score_windows

    def spy(self, run, ctx, upto, keep_rate):
        calls.append((ctx.text, ctx.scored_upto, upto))
        return original(self, run, ctx, upto, keep_rate)

    LLMLinguaCompressor._score_windows = spy
    try:
        result = comp.compress(contexts, Budget(rate=0.25))
    finally:
        LLMLinguaCompressor._score_windows = original
    ids = [token_ids(tiny_tokenizer, c) for c in contexts]
    ppl = [float(full_pass_surprisal(tiny_model, [0], i[:8]).mean()) for i in ids]
    order = sorted(range(4), key=lambda k: -ppl[k])
    target = round(0.25 * len(token_ids(tiny_tokenizer, "\n\n".join(contexts))))
    kept = select_contexts(order, [len(i) for i in ids], math.ceil(target * comp.coarse_keep))
    assert len(kept) < 4 and calls[:4] == [(c, 0, 8) for c in contexts]
    assert calls[4:] == [(contexts[k], 8, len(ids[k])) for k in kept]
    assert {s.context for s in result.kept} <= set(kept) and abs(result.rate - 0.25) <= 0.02


def test_batched_blocks_equal_one_scorer_per_block(tiny_model, tiny_tokenizer, monkeypatch):
    """One forward over several contexts (block-diagonal mask) gives each the scores it gets alone."""
    import compression.llmlingua.scoring as lm_scoring
    from compression.llmlingua.scoring import score_blocks

    blocks = [token_ids(tiny_tokenizer, sample_text(70 + i, 12 + 9 * i)) for i in range(4)]
    needs = [np.array([k % 3 != 2 for k in range(len(b))]) for b in blocks]
    monkeypatch.setattr(lm_scoring, "BLOCK_BATCH_TOKENS", len(blocks[0]) + len(blocks[1]) + 1)  # forces two groups
    got = score_blocks(tiny_model, [0], blocks, needs)
    for ids, need, scores in zip(blocks, needs, got):
        reference = full_pass_surprisal(tiny_model, [0], ids)
        np.testing.assert_allclose(scores[need], reference[need], atol=1e-4, rtol=1e-4)
        assert np.isnan(scores[~need]).all()


def test_batched_and_one_by_one_compress_alike(tiny_model, tiny_tokenizer, monkeypatch):
    """The compressor's batched pass gives the same result as scoring each context with its own scorer."""
    import compression.llmlingua.compressor as llmlingua

    def one_by_one(model, prefix, blocks, needs):
        out = []
        for ids, need in zip(blocks, needs):
            scores = IncrementalScorer(model, prefix).score(ids, need=need)
            out.append(scores)
        return out

    contexts = [sample_text(80 + i, 25) for i in range(3)]
    comp = LLMLinguaCompressor(model=tiny_model, tokenizer=tiny_tokenizer, window=256)
    runs = []
    for scorer in (llmlingua.score_blocks, one_by_one):
        monkeypatch.setattr(llmlingua, "score_blocks", scorer)
        runs.append([comp.compress(contexts, Budget(rate=r), question=q) for r in (0.3, 0.6) for q in (None, "when was the fox measured in Japan?")])
    assert runs[0] == runs[1]
    for result in runs[0]:
        check_provenance(contexts, result)
