"""``ask``, ``pipeline``, ``eval`` and ``Pipeline.run`` are one chain: the same config retrieves the same spans and
gives the same answer, whichever command runs it (real MiniLM, a tiny random LM as the generator)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from support import ByteTokenizer, NoDiskCache, tiny_dataset

from eval.base import EvalConfig, Span
from eval.pipeline import PipelineEvaluation
from eval.runner import Evaluator, default_chunker_factory
from eval.stage_cache import StageCache
from pipeline.config import PipelineConfig
from retrieval.config import RetrievalConfig

SETTINGS = (
    RetrievalConfig(chunker="sentence", chunk_size=30, k=2, retrieval="dense"),
    RetrievalConfig(chunker="token", chunk_size=12, overlap=2, k=3, retrieval="hybrid", hybrid_weight=0.8, context_chunks=1),
)


def tiny_engine(tiny_llama, store_dir: Path):
    """A factory of chunk-cache engines over one tiny random Llama (the same weights for every command)."""
    from compression.kv.generate import KVReuseEngine
    from compression.kv.store import DiskStore, MemoryStore, TieredStore

    model = tiny_llama(seed=3, max_position_embeddings=2048)

    def build():
        lm = SimpleNamespace(model=model, tokenizer=ByteTokenizer(), model_id="tiny@0", weights_hash="0" * 64, dtype="float32")
        return KVReuseEngine(lm, TieredStore(MemoryStore(2**26), DiskStore(store_dir)))

    return build


@pytest.mark.prefect
@pytest.mark.real_model
@pytest.mark.parametrize("settings", SETTINGS, ids=["sentence-dense", "token-hybrid-context"])
def test_ask_pipeline_and_eval_agree_on_spans_and_answers(settings, prefect_harness, tiny_llama, tmp_path, one_torch_thread):
    from flows.answer import answer_flow
    from pipeline.pipeline import Pipeline
    from retrieval.encoder import load_encoder
    from retrieval.index_store import IndexStore
    from retrieval.indexing import index_paths

    dataset = tiny_dataset()
    encoder = load_encoder()
    docs = tmp_path / "docs"
    docs.mkdir()
    for corpus_id, text in dataset.corpora.items():
        (docs / f"{corpus_id}.txt").write_text(text, encoding="utf-8")
    index_paths([docs], tmp_path / "index", default_chunker_factory(EvalConfig.of(settings)), encoder,
                context_chunks=settings.context_chunks)
    config = PipelineConfig(retrieval=settings, kv_mode="naive", max_new_tokens=6)

    evaluated = Evaluator(dataset, encoder, cache=NoDiskCache()).evaluate(EvalConfig.of(settings))
    evaluation = PipelineEvaluation(dataset, StageCache(tmp_path / "stages"),
                                    evaluator_factory=lambda data: Evaluator(data, encoder, cache=NoDiskCache()),
                                    engine_factory=tiny_engine(tiny_llama, tmp_path / "kv-pipeline"), lm_id="tiny@0")
    piped = evaluation.run(config)
    llm = {"backend": "local", "model": "smollm2", "engine_factory": tiny_engine(tiny_llama, tmp_path / "kv-ask")}
    # The Python API without Prefect: the same stages in one call, with its own chunk caches.
    plain = Pipeline(config, llm={**llm, "engine_factory": tiny_engine(tiny_llama, tmp_path / "kv-plain")})
    store = IndexStore.open(tmp_path / "index")
    for question, scored, run in zip(dataset.questions, evaluated.questions, piped.questions):
        asked = answer_flow(question.text, str(tmp_path / "index"), config.to_dict(), llm=llm)
        direct = plain.run(store, encoder, question.text)
        assert [asdict(hit) for hit in direct.hits] == asked["contexts"] and direct.compressed is None
        assert direct.answer.text == asked["answer"]
        asked_spans = [Span(Path(hit["source"]).stem, hit["start"], hit["end"]) for hit in asked["contexts"]]
        assert len(asked_spans) == settings.k
        assert sorted(asked_spans, key=repr) == sorted(run.retrieved_spans, key=repr) == sorted(scored.retrieved_spans, key=repr)
        for span in asked_spans:  # the spans are the corpus' own text
            assert any(dataset.corpora[span.corpus_id][span.start:span.end] == hit["text"] for hit in asked["contexts"])
        assert asked["answer"] == run.answer


@pytest.mark.parametrize("settings", (*SETTINGS, RetrievalConfig(chunker="token", chunk_size=16, k=2, retrieval="bm25")),
                         ids=["sentence-dense", "token-hybrid-context", "token-bm25"])
def test_evaluation_retrieves_through_the_pipelines_retrieve_stage(settings, monkeypatch, tmp_path):
    """``Evaluator`` and ``PipelineEvaluation.retrieve`` get their top k from ``Pipeline.retrieve_many``, and
    its hits are what the pipeline's per-question ``retrieve`` (what ``ask`` runs) returns over the same index."""
    from support import BagOfWordsEncoder

    from pipeline.pipeline import Pipeline
    from retrieval.index_store import IndexStore

    calls: list[tuple[str, ...]] = []
    batch = Pipeline.retrieve_many

    def spy(self, store, questions, vectors, **options):
        calls.append(tuple(questions))
        return batch(self, store, questions, vectors, **options)

    monkeypatch.setattr(Pipeline, "retrieve_many", spy)
    dataset, encoder = tiny_dataset(), BagOfWordsEncoder()
    evaluator = Evaluator(dataset, encoder, cache=NoDiskCache(), index_root=tmp_path / "indexes")
    evaluated = evaluator.evaluate(EvalConfig.of(settings))
    assert sorted(q for call in calls for q in call) == sorted(q.text for q in dataset.questions)

    calls.clear()
    evaluation = PipelineEvaluation(dataset, StageCache(tmp_path / "stages"), evaluator_factory=lambda data: evaluator)
    retrieved = evaluation.retrieve(settings)
    assert sorted(q for call in calls for q in call) == sorted(q.text for q in dataset.questions)
    for got, scored in zip(retrieved, evaluated.questions):
        assert sorted((*got.chunks, *(c for copies in got.copies for c in copies)), key=repr) == sorted(scored.retrieved_spans, key=repr)

    _, _, store = evaluator.index_store(EvalConfig.of(settings))
    served = Pipeline(PipelineConfig(retrieval=settings))
    for question, scored in zip(dataset.questions, evaluated.questions):
        hits = served.retrieve(IndexStore.open(store.directory), encoder, question.text)
        found = [Span(h.doc_id, h.start, h.end) for h in hits] + [Span(*c) for h in hits for c in h.copies]
        assert sorted(found, key=repr) == sorted(scored.retrieved_spans, key=repr)
