"""Code shared by the tests (fixtures live in conftest.py): stand-ins for the models (a bag-of-words
encoder, a byte tokenizer, tiny random Llamas), tiny datasets and hand-made pipeline results, and
checks used by several test modules."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings as _Embeddings

from compression.base import CompressionResult, KeptSpan
from eval.base import EvalConfig, EvalDataset, Question, Reference
from eval.embedding_cache import EmbeddingCache
from eval.metrics import union_ranges
from eval.pipeline import PipelineEvaluation
from eval.runner import Evaluator
from eval.stage_cache import StageCache
from pipeline.config import PipelineConfig

DIM = 64


class BagOfWordsEncoder:
    """Deterministic hashed bag-of-words vectors (L2-normalised); counts what it encodes."""

    model_id = "fake-bow@test"
    dim = DIM

    def __init__(self) -> None:
        self.encoded = 0

    def encode(self, texts, *, show_progress: bool = False) -> np.ndarray:
        self.encoded += len(texts)
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class ByteTokenizer:
    """UTF-8 bytes as token ids (vocab 256, EOS 0, no chat template), with character offsets for ASCII.

    Enough of the Hugging Face tokenizer interface for the KV-reuse engine and a tiny random Llama.
    """

    chat_template = None
    eos_token_id = 0
    name_or_path = "bytes"

    def __call__(self, text: str, add_special_tokens: bool = False, return_offsets_mapping: bool = False) -> dict:
        ids = list(text.encode("utf-8"))
        if not return_offsets_mapping:
            return {"input_ids": ids}
        if len(ids) != len(text):
            raise ValueError("ByteTokenizer offsets are defined for ASCII text only")
        return {"input_ids": ids, "offset_mapping": [(i, i + 1) for i in range(len(ids))]}

    def get_vocab(self) -> dict[str, int]:
        return {f"<{i}>": i for i in range(256)}

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return bytes(i for i in ids if i).decode("utf-8", errors="replace")


ANIMALS = (
    "The cat sleeps on the warm mat all afternoon. "
    "Dogs bark loudly at the postman every morning. "
    "A parrot can repeat words it hears often. "
    "Goldfish swim slowly around their small glass bowl. "
    "Horses gallop across the open green field at dawn. "
)
PLANETS = (
    "Mars is a cold red planet with thin air. "
    "Jupiter is the largest planet and has a great red spot. "
    "Saturn has bright rings made of ice and rock. "
    "Venus is the hottest planet because of its thick clouds. "
)


def _ref(corpus: str, phrase: str) -> Reference:
    start = corpus.index(phrase)
    return Reference(start, start + len(phrase), phrase)


def tiny_dataset() -> EvalDataset:
    corpora = {"animals": ANIMALS, "planets": PLANETS}
    questions = (
        Question("0", "Which animal sleeps on the mat?", "animals", (_ref(ANIMALS, "The cat sleeps on the warm mat all afternoon."),)),
        Question("1", "What do goldfish swim around?", "animals", (_ref(ANIMALS, "Goldfish swim slowly around their small glass bowl."),)),
        Question("2", "Which planet has rings of ice?", "planets", (_ref(PLANETS, "Saturn has bright rings made of ice and rock."),)),
        Question(
            "3",
            "Which planets are red?",
            "planets",
            (_ref(PLANETS, "Mars is a cold red planet"), _ref(PLANETS, "has a great red spot.")),
        ),
    )
    return EvalDataset("tiny", corpora, questions)


# (answer F1, compression recall, tokens sent, TTFT median s) per synthetic config, chosen so the
# 4-objective front is {0, 1, 2, 3, 5} (4 is dominated by 2) and ``recommend`` picks 2: F1 within 2 of
# 40 -> {0, 1, 2}; recall within 5 of 90 -> {0, 1, 2, 5}; fewest tokens of {0, 1, 2} -> 2.
# Compressed configs answer with a full prefill (PipelineConfig sets kv_mode "none" for them).
SYNTHETIC_PIPELINE = (
    (0, dict(compression="none", kv_mode="none"), (40.0, 90.0, 800, 2.0)),
    (1, dict(compression="none", kv_mode="naive", fidelity=True), (38.0, 90.0, 800, 0.8)),
    (0, dict(compression="extractive"), (39.0, 86.0, 300, 0.5)),
    (1, dict(compression="llmlingua"), (30.0, 70.0, 270, 0.45)),
    (2, dict(compression="none", kv_mode="edge"), (25.0, 60.0, 300, 0.6)),
    (1, dict(compression="llmlingua", rate=0.5), (36.0, 88.0, 400, 0.9)),
)
SYNTHETIC_RECOMMENDED = 2
SYNTHETIC_FRONT = (0, 1, 2, 3, 5)


def synthetic_pipeline_results(n_questions: int = 2) -> list:
    """Six ``PipelineResult`` with hand-chosen scores (``SYNTHETIC_PIPELINE``), no model needed.

    Every question of a config has the same scores, so summary means and medians equal them.
    """
    from dataclasses import replace

    from eval.pipeline import stage_summary
    from eval.pipeline_base import PipelineResult, PipelineSummary, QuestionRun, StageScores

    retrievals = (EvalConfig(chunker="recursive", chunk_size=150, k=5, retrieval="hybrid", hybrid_weight=0.8),
                  EvalConfig(chunker="token", chunk_size=200, k=4, retrieval="dense"),
                  EvalConfig(chunker="token", chunk_size=150, k=2, retrieval="bm25"))
    results = []
    for number, (retrieval, options, (f1, recall, sent, ttft)) in enumerate(SYNTHETIC_PIPELINE):
        config = PipelineConfig(retrieval=retrievals[retrieval], **options)
        retrieved = sent if config.compression.method == "none" else 800
        fidelity = 92.0 if config.fidelity else None
        retrieval_scores = StageScores(recall=0.9, precision=0.05, precision_omega=0.3, iou=0.05)
        compression_scores = StageScores(recall=recall / 100, precision=0.05 * retrieved / sent, precision_omega=0.35,
                                         iou=0.05 * retrieved / sent)
        run = dict(
            retrieved_tokens=retrieved, tokens_sent=sent,
            compress_cpu_s=0.0 if config.compression.method == "none" else 0.3 * number, ttft_s=ttft,
            prefilled_tokens=sent if config.generation.kv_mode == "none" else 40, reused_tokens=0 if config.generation.kv_mode == "none" else sent - 40,
            answer_f1=f1 / 100, fidelity_f1=None if fidelity is None else fidelity / 100, wall_s=ttft + 1.5,
        )
        questions = tuple(QuestionRun(qid=str(q), corpus_id="animals", answer=f"answer {q}", retrieval=retrieval_scores,
                                      compression=compression_scores, **run) for q in range(n_questions))
        # Stage summaries of the hand values (means of equal values), recall and F1 exactly as chosen.
        retrieval_summary = stage_summary([retrieval_scores] * n_questions, [retrieved] * n_questions)
        compression_summary = replace(stage_summary([compression_scores] * n_questions, [sent] * n_questions), recall=recall)
        summary = PipelineSummary(
            n_questions=n_questions, retrieval=retrieval_summary, compression=compression_summary, answer_f1=f1,
            achieved_rate=sent / retrieved, compress_cpu_s=run["compress_cpu_s"], ttft_median_s=ttft,
            prefilled_tokens=float(run["prefilled_tokens"]), reused_tokens=float(run["reused_tokens"]),
            fidelity_f1=fidelity, wall_median_s=run["wall_s"],
        )
        results.append(PipelineResult(config, "synthetic", summary, questions, {"retrieve": n_questions, "compress": 0, "answer": 0}, 1.0))
    return results


def write_chroma_files(dataset: EvalDataset, directory) -> tuple:
    """Write ``dataset`` in the Chroma format (``questions.csv`` + ``corpora/<id>.md``); returns both paths."""
    import csv
    import json
    from pathlib import Path

    corpora = Path(directory) / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    for name, text in dataset.corpora.items():
        (corpora / f"{name}.md").write_text(text, encoding="utf-8")
    questions = Path(directory) / "questions.csv"
    with open(questions, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["question", "references", "corpus_id"])
        for q in dataset.questions:
            refs = [{"content": r.content, "start_index": r.start, "end_index": r.end} for r in q.references]
            writer.writerow([q.text, json.dumps(refs), q.corpus_id])
    return questions, corpora


# -- tiny random Llamas and the KV-reuse setup ------------------------------------------------


def build_tiny_llama(seed: int = 0, **overrides):
    """A randomly initialised Llama small enough for exact mechanics tests on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**config))
    model.eval()
    return model


ATOL = 1e-4


def random_ids(generator, n: int) -> tuple[int, ...]:
    """``n`` token ids in 3..255 drawn from a seeded ``torch.Generator``."""
    import torch

    return tuple(torch.randint(3, 256, (n,), generator=generator).tolist())


def chunk_kv(model, prefix, ids):
    """A chunk's KV (``ChunkKV``) computed after ``prefix``, under a fixed test key."""
    from compression.kv.assemble import encode_chunk
    from compression.kv.base import CacheKey, ChunkKV

    keys, values = encode_chunk(model, prefix, ids)
    key = CacheKey("tiny", "w", "float32", "tok", tuple(ids), prefix.digest, len(prefix.token_ids), "default")
    return ChunkKV(key=key, keys=keys, values=values)


def three_chunk_setup(tiny_llama):
    """A 4-layer tiny Llama (so blend's early layers do not cover the whole model) and a 3-chunk prompt
    (chunk lengths 9, 11, 7 after a 6-token prefix): model, prompt, prefix KV, chunk KVs."""
    import torch

    from compression.kv.assemble import encode_prefix
    from compression.kv.base import Prompt

    model = tiny_llama(num_hidden_layers=4)
    generator = torch.Generator().manual_seed(7)
    prompt = Prompt(
        prefix_ids=random_ids(generator, 6),
        chunk_ids=(random_ids(generator, 9), random_ids(generator, 11), random_ids(generator, 7)),
        suffix_ids=random_ids(generator, 5),
    )
    prefix = encode_prefix(model, prompt.prefix_ids)
    chunks = [chunk_kv(model, prefix, ids) for ids in prompt.chunk_ids]
    return model, prompt, prefix, chunks


# -- LLMLingua-style compression: text, tokenizer corpus, provenance ---------------------------


WORDS = (
    "the quick brown fox jumps over lazy dog engine oil Fuel Dilution measured at 2011 by Sega in Japan "
    "report shows that a large share of samples was above the limit while others stayed below it"
).split()


def tokenizer_corpus() -> list[str]:
    """Lines of WORDS (plus markdown and non-Latin text) to train the in-memory tokenizer on."""
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40)]
    return lines + ["- item one\n- item two\n1. first\n```\nx = f(1)\n```", "戦場のヴァルキュリア3 , lit ."]


def sample_text(seed: int, n_words: int) -> str:
    """Seeded words of WORDS with sentence ends, newlines and list items among them."""
    rng = random.Random(seed)
    words = []
    for i in range(n_words):
        words.append(rng.choice(WORDS))
        if i % 17 == 16:
            words.append(rng.choice([".\n", ".\n\n- ", "."]))
    return " ".join(words)


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def check_provenance(contexts, result):
    """Every span is an exact slice, and the text is the kept pieces in order, contexts joined by a blank line."""
    pieces: dict[int, list[str]] = {}
    order = []
    for span in result.kept:
        assert 0 <= span.start < span.end <= len(contexts[span.context])
        if span.context not in pieces:
            order.append(span.context)
        pieces.setdefault(span.context, []).append(contexts[span.context][span.start : span.end])
    for spans in ({s.context for s in result.kept},):
        for c in spans:
            own = [s for s in result.kept if s.context == c]
            assert all(a.end < b.start for a, b in zip(own, own[1:])), "spans must be sorted, disjoint and merged"
    assert result.text == "\n\n".join("".join(pieces[c]) for c in order)


def word_units(text: str) -> list:
    """One unit per word (with its leading blanks), one token per unit: enough for sentence grouping."""
    from compression.llmlingua.units import Unit

    starts = [m.start() for m in re.finditer(r"\s*\S+", text)]
    ends = starts[1:] + [len(text)]
    return [Unit(a, b, k, k + 1, False) for k, (a, b) in enumerate(zip(starts, ends))]


# -- headless Chromium ------------------------------------------------------------------------


CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium() -> str:
    """Path of the headless Chromium binary; skips the test when there is none (fails under CI)."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("chromium is not installed but CI=true: the CI set-up must apt-get install chromium")
    pytest.skip("chromium is not installed (apt-get install -y chromium); skipped outside CI")


# A deterministic LangChain Embeddings for the search tests: a sum of per-word random vectors.
WORDS_DIM = 32


class WordsEmbedding(_Embeddings):
    """Each word adds its own Gaussian vector (seeded by the word's md5); rows are L2-normalised, so
    texts with different words almost never tie."""

    model_id = "test:words-embedding"

    def _one(self, text: str) -> list[float]:
        vector = np.zeros(WORDS_DIM)
        for word in re.findall(r"\w+", text.lower()):
            vector += np.random.default_rng(int(hashlib.md5(word.encode()).hexdigest()[:12], 16)).normal(size=WORDS_DIM)
        norm = np.linalg.norm(vector)
        return (vector / norm if norm else vector).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)


# -- a pipeline over stand-in models, and the runs it records -----------------------------------


RETRIEVAL = EvalConfig(chunker="sentence", chunk_size=30, overlap=0, k=2, retrieval="dense")


class FirstSentence:
    """A stand-in compressor: keeps each context's text up to its first '. ' (spans known by hand)."""

    name = "first-sentence"

    def __init__(self) -> None:
        self.calls = 0

    def compress(self, contexts, budget, question=None):
        self.calls += 1
        kept = tuple(KeptSpan(i, 0, c.find(". ") + 1 if ". " in c else len(c)) for i, c in enumerate(contexts))
        text = "\n\n".join(contexts[s.context][s.start:s.end] for s in kept)
        return CompressionResult(text, kept, 10, 5, self.name)


class Counting:
    """Counts how often the pipeline builds each collaborator (a cache hit builds none)."""

    def __init__(self, tiny_llama, store_dir: Path) -> None:
        self.tiny_llama, self.store_dir = tiny_llama, store_dir
        self.engines = self.evaluators = 0
        self.compressor = FirstSentence()

    def evaluator(self, dataset):
        self.evaluators += 1
        return Evaluator(dataset, BagOfWordsEncoder(), cache=NoDiskCache())

    def engine(self):
        from compression.kv.generate import KVReuseEngine
        from compression.kv.store import DiskStore, MemoryStore, TieredStore

        self.engines += 1
        lm = SimpleNamespace(model=self.tiny_llama(seed=3, max_position_embeddings=2048), tokenizer=ByteTokenizer(),
                             model_id="tiny@0", weights_hash="0" * 64, dtype="float32")
        return KVReuseEngine(lm, TieredStore(MemoryStore(2**26), DiskStore(self.store_dir)))

    def options(self) -> dict:
        return dict(evaluator_factory=self.evaluator, engine_factory=self.engine, compressor_factory=lambda method: self.compressor,
                    lm_id="tiny@0")


class NoDiskCache:
    """Embeds directly (the tests must not write to the user's embedding cache)."""

    def embed(self, encoder, texts):
        return encoder.encode(list(texts))


def make_pipeline(counting: Counting, cache_dir: Path) -> PipelineEvaluation:
    return PipelineEvaluation(tiny_dataset(), StageCache(cache_dir), **counting.options())


def config(**options) -> PipelineConfig:
    return PipelineConfig(retrieval=RETRIEVAL, max_new_tokens=6, **options)


DENSE = EvalConfig(chunker="token", chunk_size=8, k=2, retrieval="dense")
BM25 = EvalConfig(chunker="token", chunk_size=16, k=2, retrieval="bm25")


def eval_results(tmp_path):
    evaluator = Evaluator(tiny_dataset(), BagOfWordsEncoder(), cache=EmbeddingCache(tmp_path / "embeddings"))
    return [evaluator.evaluate(c) for c in (DENSE, BM25)]


def pipeline_results(tmp_path):
    """Two pipeline configurations: no compression, and a compressor keeping each chunk's first sentence."""
    counting = Counting(build_tiny_llama, tmp_path / "kv")
    pipeline = make_pipeline(counting, tmp_path / "stages")
    results = [pipeline.run(config()), pipeline.run(config(compression="extractive"))]
    assert isinstance(counting.compressor, FirstSentence)
    return results, pipeline.model_ids()


def union_length(spans) -> int:
    by_corpus: dict[str, list] = {}
    for corpus, start, end in spans:
        by_corpus.setdefault(corpus, []).append((start, end))
    return sum(e - s for ranges in by_corpus.values() for s, e in union_ranges(ranges))


_POISON_ANIMALS = [
    "The cat sleeps on the warm mat all afternoon.", "Dogs bark loudly at the postman every morning.",
    "A parrot can repeat words it hears often.", "Goldfish swim slowly around their small glass bowl.",
    "Horses gallop across the open green field at dawn.", "Rabbits dig deep burrows under the hedge.",
    "Owls hunt mice in the dark barn at night.", "Cows graze on clover in the lower meadow.",
]
_POISON_PLANETS = [
    "Mars is a cold red planet with thin air.", "Jupiter is the largest planet with a great storm.",
    "Saturn has bright rings made of ice and rock.", "Venus is the hottest planet under thick clouds.",
    "Mercury orbits closest to the sun in eighty eight days.", "Neptune has the fastest winds of any planet.",
    "Uranus spins on its side with faint rings.", "Pluto is a dwarf planet beyond Neptune's orbit.",
]
_POISON_QUESTIONS = {
    "animals": ["Which animal sleeps on the mat?", "Which animal barks at the postman?", "Which bird repeats words?",
                "Where do goldfish swim?", "When do horses gallop across the field?", "What do rabbits dig?",
                "What do owls hunt at night?", "What do cows graze on?"],
    "planets": ["Which planet is cold and red?", "Which planet is the largest?", "What are Saturn's rings made of?",
                "Which planet is the hottest?", "Which planet orbits closest to the sun?", "Which planet has the fastest winds?",
                "Which planet spins on its side?", "Where is the dwarf planet Pluto?"],
}
POISON_SMALL = dict(clusters=2, topics=2, min_cluster=4, length=14, n=(1, 3), k=(2, 3), depth=8, chunker="recursive",
             chunk_size=16, context_chunks=0, defence_top=2, copy_min_queries=1)  # the poisoning probe on poison_dataset: a planted passage fits one chunk


def poison_dataset() -> EvalDataset:
    """Two topics (animals, planets) of eight questions each, one sentence of evidence per question."""
    corpora = {"animals": " ".join(_POISON_ANIMALS), "planets": " ".join(_POISON_PLANETS)}
    questions = []
    for corpus, sentences in (("animals", _POISON_ANIMALS), ("planets", _POISON_PLANETS)):
        for question, sentence in zip(_POISON_QUESTIONS[corpus], sentences):
            start = corpora[corpus].index(sentence)
            questions.append(Question(str(len(questions)), question, corpus, (Reference(start, start + len(sentence), sentence),)))
    return EvalDataset("small", corpora, tuple(questions))
