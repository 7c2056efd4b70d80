"""Extractive compressor mechanics: budget, order, provenance, edge cases, scoring, chaining.

A bag-of-words hashing encoder and a whitespace token counter stand in for the real models, so
every expectation can be computed by hand or by brute force; one slow test uses the real ones.
"""

from __future__ import annotations

import importlib.util
import zlib
from pathlib import Path

import numpy as np
import pytest

from compression.base import Budget, CompressionResult, KeptSpan
from compression.chain import ChainCompressor, map_back, rejoin
from compression.extractive.compressor import ExtractiveCompressor
from compression.extractive.lm_judge import last_logits, lm_relevance
from compression.extractive.scoring import ScoreWeights, embedding_scores, window_texts
from compression.extractive.select import adaptive_threshold, select
from compression.extractive.units import segment_contexts
from compression.registry import make_compressor


class WordCounter:
    """One token per whitespace-separated word: joined-text counts equal the sum of the parts."""

    name = "words"

    def encode_offsets(self, text):
        import re

        matches = list(re.finditer(r"\S+", text))
        return list(range(len(matches))), [(m.start(), m.end()) for m in matches]

    def count(self, text):
        return len(text.split())


class BagOfWordsEncoder:
    """Hashed, L2-normalised bag of lower-cased words (punctuation stripped)."""

    model_id = "bow"
    dim = 128

    def encode(self, texts, *, show_progress=False):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                word = word.strip(".,!?;:")
                if word:
                    out[row, zlib.crc32(word.encode()) % self.dim] += 1.0
            norm = np.linalg.norm(out[row])
            if norm:
                out[row] /= norm
        return out


CONTEXTS = [
    "The tower was built in 1889 for the fair. It is made of iron. Tourists climb it every day.",
    "Paris is the capital of France. The river Seine runs through the city.\n\nThe tower is in Paris.",
    "Bananas are yellow. Apples can be red or green. Fruit is healthy.",
]


def make(**options) -> ExtractiveCompressor:
    return ExtractiveCompressor(encoder=BagOfWordsEncoder(), counter=WordCounter(), **options)


def expected_text(contexts, kept):
    """The reference rendering of kept spans: a space within a context, a blank line between."""
    out, previous = [], None
    for span in kept:
        if previous is not None:
            out.append(" " if span.context == previous else "\n\n")
        out.append(contexts[span.context][span.start : span.end])
        previous = span.context
    return "".join(out)


@pytest.mark.parametrize("budget", [Budget(rate=0.2), Budget(rate=0.33), Budget(rate=0.5), Budget(rate=1.0), Budget(target_tokens=7), Budget(target_tokens=13)])
def test_budget_is_respected_and_filled(budget):
    counter = WordCounter()
    result = make().compress(CONTEXTS, budget, question="When was the iron tower built?")
    original = sum(counter.count(c) for c in CONTEXTS)
    limit = budget.tokens_for(original)
    assert result.original_tokens == original
    assert result.compressed_tokens == counter.count(result.text) <= limit
    # greedy fill is complete: no dropped sentence would still have fitted
    units, _ = segment_contexts(CONTEXTS, counter)
    kept = {(s.context, s.start) for s in result.kept}
    for unit in units:
        if (unit.context, unit.start) not in kept:
            assert unit.n_tokens > limit - result.compressed_tokens


def test_order_and_provenance_are_exact():
    result = make().compress(CONTEXTS, Budget(rate=0.5), question="Where is the tower?")
    keys = [(s.context, s.start) for s in result.kept]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert result.text == expected_text(CONTEXTS, result.kept)
    assert all(CONTEXTS[s.context][s.start : s.end].strip() == CONTEXTS[s.context][s.start : s.end] for s in result.kept)


def test_the_question_decides_what_is_kept():
    tower = make().compress(CONTEXTS, Budget(target_tokens=9), question="When was the tower built for the fair?")
    fruit = make().compress(CONTEXTS, Budget(target_tokens=9), question="What colour are bananas?")
    assert "The tower was built in 1889 for the fair." in tower.text
    assert "Bananas are yellow." in fruit.text and "1889" not in fruit.text


@pytest.mark.parametrize("contexts", [[], [""], ["", "  \n\n "]])
def test_empty_input_gives_empty_output(contexts):
    result = make().compress(contexts, Budget(rate=0.5), question="anything?")
    assert result == CompressionResult(text="", kept=(), original_tokens=0, compressed_tokens=0, method="extractive")
    assert result.rate == 1.0


def test_single_sentence_is_kept_whole_even_over_budget():
    context = "  One long sentence with many words that exceeds the budget  "
    result = make().compress([context], Budget(target_tokens=2), question="words?")
    assert result.kept == (KeptSpan(0, 2, 59),) and result.text == context.strip()
    zero = make().compress(CONTEXTS, Budget(target_tokens=0), question="Is fruit healthy?")
    assert zero.text == "Fruit is healthy."  # the minimum: the best sentence, never nothing


def test_min_sentences_zero_allows_empty():
    result = make(min_sentences=0).compress(CONTEXTS, Budget(target_tokens=0), question="fruit")
    assert result.text == "" and result.kept == ()


def test_without_question_scores_against_the_centroid():
    result = make().compress(CONTEXTS, Budget(rate=0.3))
    assert result.kept and result.compressed_tokens <= round(0.3 * result.original_tokens)


def test_select_by_hand():
    scores = [0.9, 0.1, 0.8, 0.5, 0.7]
    costs = [5, 1, 4, 2, 3]
    assert select(scores, costs, 9) == [0, 2]  # 5 + 4; nothing else fits
    assert select(scores, costs, 10) == [0, 1, 2]  # then only the 1-token sentence fits
    assert select(scores, costs, 8) == [0, 4]  # 0.8 skipped (4 > 3 left), 0.7 fits exactly
    assert select(scores, costs, 7) == [0, 3]
    assert select(scores, costs, 0) == [0]
    assert select(scores, costs, 0, min_keep=2) == [0, 2]
    threshold = adaptive_threshold(scores, 0.5)
    assert threshold == pytest.approx(np.mean(scores) + 0.5 * np.std(scores))
    assert select(scores, costs, 100, mode="adaptive", z=0.5) == [i for i, s in enumerate(scores) if s >= threshold]
    assert select([], [], 5) == []


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="valid: budget, adaptive"):
        make(mode="best")
    with pytest.raises(ValueError, match="wrap it"):
        make().compress("a text", Budget(rate=0.5))
    with pytest.raises(ValueError, match="not a str"):
        make().compress(["ok", 3], Budget(rate=0.5))
    with pytest.raises(ValueError, match="weights"):
        ScoreWeights(0, 0, 0)
    with pytest.raises(ValueError, match="2 scores but 1 costs"):
        select([1, 2], [1], 5)


def test_adaptive_mode_keeps_what_clears_the_threshold():
    compressor = make(mode="adaptive", z=0.5)
    question = "When was the tower built?"
    units, passages = segment_contexts(CONTEXTS, WordCounter())
    scores = compressor.score(units, passages, question)
    threshold = scores.mean() + 0.5 * scores.std()
    result = compressor.compress(CONTEXTS, Budget(rate=1.0), question=question)
    assert [(s.context, s.start) for s in result.kept] == [(u.context, u.start) for u, s in zip(units, scores) if s >= threshold]


def test_window_texts_stay_inside_the_passage():
    units, passages = segment_contexts(CONTEXTS, WordCounter())
    windows = window_texts(units, 1)
    assert windows[0] == "The tower was built in 1889 for the fair. It is made of iron."
    assert windows[1] == "The tower was built in 1889 for the fair. It is made of iron. Tourists climb it every day."
    assert windows[4] == "Paris is the capital of France. The river Seine runs through the city."  # blank line ends it
    assert windows[5] == "The tower is in Paris."
    assert len(passages) == 4 and passages[2] == "The tower is in Paris."


def _unit(vector):
    return vector / np.linalg.norm(vector)


@pytest.mark.parametrize("context", ["encode", "mean"])
def test_embedding_scores_match_the_formula(context):
    encoder = BagOfWordsEncoder()
    units, passages = segment_contexts(CONTEXTS, WordCounter())
    question = "Where is the iron tower?"
    got = embedding_scores(units, passages, question, encoder, ScoreWeights(1.0, 0.5, 0.25), radius=1, context=context)
    q = encoder.encode([question])[0]
    vec = {u.text: encoder.encode([u.text])[0] for u in units}
    for index, unit in enumerate(units):
        neighbours = [u for u in units[max(0, index - 1) : index + 2] if u.passage == unit.passage]
        same_passage = [u for u in units if u.passage == unit.passage]
        if context == "encode":
            window = encoder.encode([" ".join(u.text for u in neighbours)])[0]
            passage = encoder.encode([passages[unit.passage]])[0]
        else:
            window = _unit(sum(vec[u.text] for u in neighbours))
            passage = _unit(sum(vec[u.text] for u in same_passage))
        reference = vec[unit.text] @ q + 0.5 * window @ q + 0.25 * passage @ q
        assert got[index] == pytest.approx(reference, abs=1e-5)
    with pytest.raises(ValueError, match="valid: mean, encode"):
        embedding_scores(units, passages, question, encoder, context="whole")


def _sentence_baselines():
    """The question-blind baselines of the extractive compression benchmark (benchmarks/sentence_baselines.py)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sentence_baselines.py"
    spec = importlib.util.spec_from_file_location("sentence_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lead_and_random_baselines():
    baselines = _sentence_baselines()
    LeadSentenceCompressor, RandomSentenceCompressor = baselines.LeadSentenceCompressor, baselines.RandomSentenceCompressor
    counter = WordCounter()
    lead = LeadSentenceCompressor(counter=counter).compress(CONTEXTS, Budget(target_tokens=15))
    assert lead.text == "The tower was built in 1889 for the fair. It is made of iron."
    rr = LeadSentenceCompressor(counter=counter, per_context=True).compress(CONTEXTS, Budget(target_tokens=18))
    assert rr.text == "The tower was built in 1889 for the fair.\n\nParis is the capital of France.\n\nBananas are yellow."
    first = RandomSentenceCompressor(counter=counter, seed=3).compress(CONTEXTS, Budget(rate=0.4))
    again = RandomSentenceCompressor(counter=counter, seed=3).compress(CONTEXTS, Budget(rate=0.4))
    assert first == again and first.compressed_tokens <= round(0.4 * first.original_tokens)
    assert first.text == expected_text(CONTEXTS, first.kept)


def test_registry_builds_the_extractive_compressor():
    compressor = make_compressor("extractive", encoder=BagOfWordsEncoder(), counter=WordCounter(), mode="adaptive")
    assert isinstance(compressor, ExtractiveCompressor) and compressor.mode == "adaptive"


class HalfWords:
    """A stand-in second stage: keeps the first half of the words of each context, with spans."""

    name = "half"

    def compress(self, contexts, budget, question=None):
        import re

        kept, parts = [], []
        for index, context in enumerate(contexts):
            words = list(re.finditer(r"\S+", context))
            chosen = words[: max(1, len(words) // 2)]
            kept += [KeptSpan(index, m.start(), m.end()) for m in chosen]
            parts.append(" ".join(m.group() for m in chosen))
        text = "\n\n".join(parts)
        return CompressionResult(text, tuple(kept), 0, len(text.split()), self.name)


def test_chain_maps_second_stage_spans_into_the_original():
    counter = WordCounter()
    chain = ChainCompressor(make(), HalfWords(), counter, first_stage_factor=2.0)
    question = "Where is the tower in Paris?"
    original = sum(counter.count(c) for c in CONTEXTS)
    first = make().compress(CONTEXTS, Budget(target_tokens=2 * round(0.25 * original)), question=question)
    result = chain.compress(CONTEXTS, Budget(rate=0.25), question=question)
    assert result.method == "extractive+half" and result.original_tokens == original
    assert result.compressed_tokens == counter.count(result.text) < first.compressed_tokens
    # every final span is a word of the original that stage 1 kept, in the order of the final text
    words = [CONTEXTS[s.context][s.start : s.end] for s in result.kept]
    assert words == result.text.split()
    for span in result.kept:
        assert any(k.context == span.context and k.start <= span.start and span.end <= k.end for k in first.kept)


def test_map_back_splits_at_joiners():
    contexts = ["aaa bbb. ccc ddd. eee fff."]
    kept = [KeptSpan(0, 0, 8), KeptSpan(0, 18, 26)]  # "aaa bbb." and "eee fff."
    texts, owners, pieces = rejoin(contexts, kept)
    assert texts == ["aaa bbb. eee fff."] and owners == [0]
    # "bbb. eee" of the re-joined text: the joiner at 8 is dropped, "eee" is original 18..21
    assert map_back(KeptSpan(0, 4, 12), owners, pieces) == [KeptSpan(0, 4, 8), KeptSpan(0, 18, 21)]
    assert map_back(KeptSpan(0, 8, 9), owners, pieces) == []


class ByteTokenizer:
    """Bytes as token ids (vocab 256) for the tiny random Llama."""

    chat_template = None
    pad_token_id = 0
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": list(text.encode("utf-8"))}


def test_lm_relevance_batched_equals_one_by_one(tiny_llama):
    import torch

    model = tiny_llama(seed=1)
    tokenizer = ByteTokenizer()
    sentences = ["Short.", "A much longer sentence about towers and iron.", "Mid length one here."]
    batched = lm_relevance(model, tokenizer, "What about towers?", sentences, batch_size=3)
    single = lm_relevance(model, tokenizer, "What about towers?", sentences, batch_size=1)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    # reference: an unpadded forward pass over the full prompt, last position
    from compression.extractive.lm_judge import answer_token_ids, build_prompt

    yes, no = answer_token_ids(tokenizer)
    ids = torch.tensor([tokenizer(build_prompt(tokenizer, "What about towers?", sentences[1]))["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1]
    reference = torch.sigmoid(logits[yes].logsumexp(0) - logits[no].logsumexp(0)).item()
    assert batched[1] == pytest.approx(reference, abs=1e-5)
    assert last_logits(model, [[1, 2, 3]], 0).shape == (1, 256)


def test_lm_weight_adds_the_lm_score(monkeypatch, tiny_llama):
    import compression.lm as lm_module
    from compression.lm import LoadedLM

    loaded = LoadedLM(tiny_llama(seed=2), ByteTokenizer(), "tiny", "0", "float32")
    monkeypatch.setattr(lm_module, "load_causal_lm", lambda name="smollm2": loaded)
    units, passages = segment_contexts(CONTEXTS, WordCounter())
    question = "Where is the tower?"
    plain = make().score(units, passages, question)
    judged = make(lm_weight=2.0).score(units, passages, question)
    lm = lm_relevance(loaded.model, loaded.tokenizer, question, [u.text for u in units])
    np.testing.assert_allclose(judged, plain + 2.0 * lm, atol=1e-5)


@pytest.mark.slow
def test_real_models_keep_the_answer_sentence():
    compressor = ExtractiveCompressor()
    result = compressor.compress(CONTEXTS, Budget(rate=0.3), question="In which year was the tower built?")
    assert "1889" in result.text
    assert result.compressed_tokens <= round(0.3 * result.original_tokens)
    assert result.text == expected_text(CONTEXTS, result.kept)


def test_registered_chain_wires_extractive_then_llmlingua(monkeypatch):
    import compression.registry as registry

    built = {}

    def fake_make(name, **options):
        built[name] = options
        return HalfWords()

    monkeypatch.setattr(registry, "make_compressor", fake_make)
    from compression.chain import extractive_then_llmlingua

    chain = extractive_then_llmlingua(
        extractive=dict(encoder=BagOfWordsEncoder(), counter=WordCounter()), llmlingua=dict(window=64)
    )
    assert built == {"llmlingua": {"window": 64}} and chain.name == "extractive+llmlingua"
    result = chain.compress(CONTEXTS, Budget(rate=0.25), question="Where is the tower?")
    assert result.method == "extractive+llmlingua"
    assert [CONTEXTS[s.context][s.start : s.end] for s in result.kept] == result.text.split()
