"""One hit per distinct text: by hand, against a brute-force ranking, and in the metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers_kill import FakeEncoder, small_chunker
from support import ANIMALS, PLANETS, BagOfWordsEncoder

from eval.base import EvalConfig, EvalDataset, Question, Reference
from eval.embedding_cache import EmbeddingCache
from eval.pipeline import corpus_spans
from eval.runner import Evaluator, chunk_corpora, default_chunker_factory
from retrieval.base import Hit
from retrieval.index_store import IndexStore
from retrieval.indexing import index_paths, search_texts
from retrieval.postprocess import distinct_hits, first_distinct


def test_first_distinct_by_hand():
    ranked = ["a", "b", "a", "c", "b", "d"]
    assert first_distinct(ranked, 3) == [(0, (2,)), (1, ()), (3, ())]  # "b" at 4 comes after the 3rd distinct text
    assert first_distinct(ranked, 4) == [(0, (2,)), (1, (4,)), (3, ()), (5, ())]
    assert first_distinct(ranked, 9) == first_distinct(ranked, 4)  # fewer distinct texts than asked
    assert first_distinct(ranked, 0) == [] and first_distinct([], 3) == []


def test_first_distinct_reads_only_as_far_as_it_needs():
    def ranked():
        yield from ["x", "x", "y"]
        raise AssertionError("read past the k-th distinct text")

    assert first_distinct(ranked(), 2) == [(0, (1,)), (2, ())]


def test_distinct_hits_carry_the_copies_spans():
    hits = [Hit("d1", "a.txt", 0, 0, 5, 0.9, "same"), Hit("d2", "b.txt", 7, 10, 15, 0.9, "same"),
            Hit("d1", "a.txt", 1, 5, 9, 0.5, "other")]
    kept = distinct_hits(hits, 2)
    assert [(h.source, h.chunk_id, h.copies) for h in kept] == [("a.txt", 0, (("b.txt", 10, 15),)), ("a.txt", 1, ())]


@pytest.fixture
def index_with_copies(tmp_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shared = " ".join(f"shared sentence number {i} about rivers and lamps." for i in range(12))
    (corpus / "a.txt").write_text(shared, encoding="utf-8")
    (corpus / "b.txt").write_text(shared + " An extra closing line only b has.", encoding="utf-8")
    (corpus / "c.txt").write_text(" ".join(f"other words {i} on engines and clouds." for i in range(12)), encoding="utf-8")
    index_paths([corpus], tmp_path / "index", small_chunker(), FakeEncoder())
    return tmp_path / "index"


@pytest.mark.parametrize("hybrid_weight", [None, 0.8])
def test_search_distinct_equals_the_first_distinct_texts_of_the_full_ranking(index_with_copies, hybrid_weight):
    store, encoder, k = IndexStore.open(index_with_copies), FakeEncoder(), 6
    queries = ["rivers and lamps", "engines", "number 3"]
    everything = search_texts(store, encoder, queries, store.ntotal, hybrid_weight, distinct=False)
    plain = search_texts(store, encoder, queries, k, hybrid_weight, distinct=False)
    assert any(len({h.text for h in row}) < k for row in plain), "no duplicate in a plain top k: the test shows nothing"
    got = search_texts(store, encoder, queries, k, hybrid_weight)
    for row, full in zip(got, everything):
        expected, seen = [], {}
        for hit in full:  # brute force over the whole ranking
            if hit.text in seen:
                seen[hit.text].append((hit.source, hit.start, hit.end))
                continue
            seen[hit.text] = []
            expected.append(hit)
            if len(expected) == k:
                break  # copies below the k-th distinct text were never retrieved
        assert [(h.source, h.start, h.end, h.copies) for h in row] == [
            (h.source, h.start, h.end, tuple(seen[h.text])) for h in expected]
        assert len(row) == k and len({h.text for h in row}) == k


def copied_dataset() -> EvalDataset:
    """The animals text twice; the question's reference is in the second copy, ranked below the first."""
    corpora = {"animals": ANIMALS, "copy": ANIMALS, "planets": PLANETS}
    phrase = "The cat sleeps on the warm mat all afternoon."
    reference = Reference(ANIMALS.index(phrase), ANIMALS.index(phrase) + len(phrase), phrase)
    return EvalDataset("copied", corpora, (Question("0", "Which animal sleeps on the mat?", "copy", (reference,)),))


def positions(corpus_id, ranges):
    return {(corpus_id, p) for start, end in ranges for p in range(start, end)}


@pytest.mark.parametrize("distinct", [True, False])
def test_metrics_score_every_place_the_text_was_found(tmp_path, distinct):
    dataset, k = copied_dataset(), 2
    config = EvalConfig(chunker="sentence", chunk_size=16, overlap=0, k=k, distinct=distinct)
    score = Evaluator(dataset, BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path)).evaluate(config).questions[0]
    # Brute force: rank every chunk, walk down until k distinct texts, score all places walked over.
    chunks = chunk_corpora(dataset.corpora, default_chunker_factory(config))
    encoder = BagOfWordsEncoder()
    order = np.argsort(-(encoder.encode([c.text for c in chunks]) @ encoder.encode([dataset.questions[0].text])[0]), kind="stable")
    found, texts = [], []
    for i in order:
        found.append(chunks[i])
        if not (distinct and chunks[i].text in texts):
            texts.append(chunks[i].text)
            if len(texts) == k:
                break
    retrieved = set().union(*(positions(c.corpus_id, [(c.start, c.end)]) for c in found))
    refs = positions("copy", [(r.start, r.end) for r in dataset.questions[0].references])
    assert score.recall == pytest.approx(len(refs & retrieved) / len(refs))
    assert score.precision == pytest.approx(len(refs & retrieved) / len(retrieved))
    assert score.recall == 1.0  # the cat sentence: in the plain top 2 as two copies, or collapsed with its copy
    assert len(texts) == k and (len(set(texts)) == k) == distinct  # plain top 2: the cat sentence twice
    assert (len(found) > k) == distinct  # distinct: its copy is scored but not handed on twice
    assert score.retrieved_chars == sum(len(t) for t in texts)


def test_evaluate_and_retrieve_equals_the_two_calls(tmp_path):
    """The pipeline's one-ranking call gives what evaluate and retrieve_with_copies give apart."""
    dataset = copied_dataset()
    config = EvalConfig(chunker="sentence", chunk_size=16, overlap=0, k=2)
    evaluator = Evaluator(dataset, BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path))
    result, tops = evaluator.evaluate_and_retrieve(config)
    assert result.questions == evaluator.evaluate(config).questions
    assert tops == evaluator.retrieve_with_copies(config)
    (first, copies), _ = tops[0]
    assert [c.corpus_id for c in copies] == ["copy"] and copies[0].text == first.text  # the collapsed copy
    with pytest.raises(ValueError, match="fixed k"):
        evaluator.evaluate_and_retrieve(config.replace(k="min"))


def test_kept_spans_are_mirrored_onto_copies():
    from compression.base import KeptSpan
    from eval.base import Span

    chunks = [Span("a", 100, 120), Span("b", 0, 30)]
    copies = [(Span("c", 50, 70), Span("d", 5, 25)), ()]
    kept = corpus_spans(chunks, [KeptSpan(0, 2, 6), KeptSpan(1, 0, 4)], copies)
    assert kept == (Span("a", 102, 106), Span("c", 52, 56), Span("d", 7, 11), Span("b", 0, 4))


class FirstWords:
    """A stand-in compressor keeping each context's first 8 characters; counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def compress(self, contexts, budget, question=None):
        from compression.base import CompressionResult, KeptSpan

        self.calls += 1
        kept = tuple(KeptSpan(i, 0, min(8, len(c))) for i, c in enumerate(contexts))
        return CompressionResult("", kept, 10, 5, "first-words")


def test_compression_cache_hit_maps_spans_to_this_questions_places(tmp_path):
    """The compression cache is keyed by text; equal text elsewhere must still score where it is."""
    from eval.base import Span
    from eval.pipeline import PipelineEvaluation, Retrieved
    from eval.stage_cache import StageCache
    from pipeline.config import PipelineConfig

    EXTRACTIVE = PipelineConfig(compression="extractive", rate=0.33)  # noqa: N806
    dataset, compressor = copied_dataset(), FirstWords()
    def evaluator(data):
        return Evaluator(data, BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path / "emb"))

    pipeline = PipelineEvaluation(dataset, StageCache(tmp_path), evaluator_factory=evaluator, compressor_factory=lambda method: compressor)
    question, cat = dataset.questions[0], dataset.questions[0].references[0]
    at = lambda corpus: Span(corpus, cat.start, cat.end)  # noqa: E731
    in_animals = Retrieved("0", (at("animals"),), 0.0, 0.0, 0.0, 0.0, 0.0)
    in_copy = Retrieved("0", (at("copy"),), 1.0, 1.0, 1.0, 1.0, 0.0)
    with_copy = Retrieved("0", (at("animals"),), 1.0, 1.0, 1.0, 1.0, 0.0, copies=((at("copy"),),))
    first = pipeline.compress(question, in_animals, EXTRACTIVE)
    assert first.kept == (Span("animals", cat.start, cat.start + 8),)
    assert pipeline.compress(question, in_copy, EXTRACTIVE).kept == (Span("copy", cat.start, cat.start + 8),)
    assert pipeline.compress(question, with_copy, EXTRACTIVE).kept == (
        Span("animals", cat.start, cat.start + 8), Span("copy", cat.start, cat.start + 8))
    assert compressor.calls == 1  # the same text thrice: compressed once, placed three ways
