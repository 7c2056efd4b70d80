"""Incremental indexing equals a full rebuild; a SIGKILLed run resumes to the same index."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers_kill import FakeEncoder, small_chunker

from retrieval.chunkers import make_chunker
from retrieval.documents import load_document
from retrieval.index_store import IndexStore
from retrieval.indexing import chunk_documents, index_paths, plan_update, search_texts

REPO = Path(__file__).resolve().parents[1]
WORDS = ("river stone garden lamp violin harbor pepper engine cloud ladder copper meadow "
         "signal canvas thunder marble orbit velvet lantern glacier").split()
QUERIES = ["river stone lamp", "engine cloud copper", "violin meadow thunder", "orbit glacier velvet"]


def write_doc(path: Path, seed: int, sentences: int = 12) -> None:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "." for _ in range(sentences)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_corpus(root: Path, n: int) -> Path:
    for i in range(n):
        write_doc(root / f"part{i % 3}" / f"doc{i:03d}.txt", seed=i)
    return root


def chunk_set(index_dir: Path) -> list[tuple[str, int, int, str]]:
    chunks = [(c.doc_id, c.start, c.end, c.text) for c in IndexStore.open(index_dir).chunks()]
    assert len(chunks) == len(set(chunks)), "duplicated chunks"
    return sorted(chunks)


def results(index_dir: Path, encoder: FakeEncoder, k: int = 8) -> list[list[tuple]]:
    hits = search_texts(IndexStore.open(index_dir), encoder, QUERIES, k)
    return [[(h.doc_id, h.start, h.end, round(h.score, 6)) for h in row] for row in hits]


def assert_same_index(a: Path, b: Path, encoder: FakeEncoder) -> None:
    assert chunk_set(a) == chunk_set(b)
    assert results(a, encoder) == results(b, encoder)


def test_incremental_update_equals_full_rebuild(tmp_path: Path) -> None:
    corpus, encoder, chunker = make_corpus(tmp_path / "corpus", 12), FakeEncoder(), small_chunker()
    first = index_paths([corpus], tmp_path / "inc", chunker, encoder, commit_every=4)
    assert (first.added, first.commits, first.chunks_total) == (12, 3, first.chunks_added)
    write_doc(corpus / "part0" / "doc000.txt", seed=100)  # changed
    write_doc(corpus / "part1" / "doc004.txt", seed=101)  # changed
    (corpus / "part2" / "doc005.txt").unlink()
    (corpus / "part0" / "doc009.txt").unlink()
    for i in (20, 21, 22):
        write_doc(corpus / "new" / f"doc{i:03d}.txt", seed=i)
    encoder.calls = 0
    second = index_paths([corpus], tmp_path / "inc", chunker, encoder, commit_every=4)
    assert (second.added, second.updated, second.deleted, second.unchanged) == (3, 2, 2, 8)
    assert second.commits == encoder.calls == 2  # only the 5 new/changed documents were embedded
    full = index_paths([corpus], tmp_path / "full", chunker, FakeEncoder(), commit_every=100)
    assert full.added == 13 and full.chunks_total == second.chunks_total
    assert_same_index(tmp_path / "inc", tmp_path / "full", encoder)
    third = index_paths([corpus], tmp_path / "inc", chunker, encoder)
    assert (third.unchanged, third.commits) == (13, 0)


def test_new_chunker_config_rechunks_everything(tmp_path: Path) -> None:
    corpus, encoder = make_corpus(tmp_path / "corpus", 5), FakeEncoder()
    index_paths([corpus], tmp_path / "idx", small_chunker(), encoder)
    other = make_chunker("token", 32, 0)
    summary = index_paths([corpus], tmp_path / "idx", other, encoder, commit_every=2)
    assert (summary.updated, summary.unchanged, summary.commits) == (5, 0, 3)
    assert IndexStore.open(tmp_path / "idx").chunker_config["chunk_size"] == 32
    index_paths([corpus], tmp_path / "full", other, encoder)
    assert_same_index(tmp_path / "idx", tmp_path / "full", encoder)


def test_plan_update_classifies_documents(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "corpus", 3)
    index_paths([corpus], tmp_path / "idx", small_chunker(), FakeEncoder())
    store = IndexStore.open(tmp_path / "idx")
    write_doc(corpus / "part1" / "doc001.txt", seed=50)
    docs = [load_document(p, root=corpus) for p in sorted(corpus.rglob("*.txt")) if p.name != "doc002.txt"]
    plan = plan_update(store, docs, store.chunker_config)
    assert [d.doc_id for d in plan.changed] == ["part1/doc001.txt"]
    assert (plan.new, plan.deleted, plan.unchanged) == ((), ("part2/doc002.txt",), ("part0/doc000.txt",))
    assert [d.doc_id for d in plan_update(None, docs, {}).new] == ["part0/doc000.txt", "part1/doc001.txt"]
    chunked = chunk_documents(plan.changed, small_chunker())
    assert all(plan.changed[0].text[c.start:c.end] == c.text for c in chunked[0][1])


def test_moved_corpus_is_relocated_without_re_embedding(tmp_path: Path) -> None:
    corpus, encoder, chunker = make_corpus(tmp_path / "old" / "corpus", 6), FakeEncoder(), small_chunker()
    index_paths([corpus], tmp_path / "idx", chunker, encoder, commit_every=2)
    before = IndexStore.open(tmp_path / "idx")
    moved = tmp_path / "new" / "corpus"
    moved.parent.mkdir()
    corpus.rename(moved)
    write_doc(moved / "part0" / "doc000.txt", seed=77)  # one document also changed while moving
    encoder.calls = 0
    summary = index_paths([moved], tmp_path / "idx", chunker, encoder, commit_every=2)
    assert (summary.relocated, summary.updated, summary.added, summary.unchanged) == (5, 1, 0, 0)
    assert (encoder.calls, summary.commits) == (1, 1)  # only the changed document was embedded
    after = IndexStore.open(tmp_path / "idx")
    assert {c.source for c in after.chunks()} == {str(p.resolve()) for p in moved.rglob("*.txt")}
    kept = [c.id for c in before.chunks() if c.doc_id != "part0/doc000.txt"]
    assert np.array_equal(after.vectors_of(kept), before.vectors_of(kept))  # the very same vectors, not re-embedded
    index_paths([moved], tmp_path / "full", chunker, FakeEncoder())
    assert_same_index(tmp_path / "idx", tmp_path / "full", encoder)
    assert index_paths([moved], tmp_path / "idx", chunker, encoder).commits == 0


def test_sigkill_mid_run_then_resume_equals_clean_build(tmp_path: Path) -> None:
    corpus, index_dir = make_corpus(tmp_path / "corpus", 40), tmp_path / "idx"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    child = subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers_kill.py"), str(corpus), str(index_dir), "2", "0.3"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and child.poll() is None:
            current = index_dir / "CURRENT"
            if current.is_file() and int(current.read_text().strip()[1:]) >= 2:  # past the second checkpoint
                break
            time.sleep(0.01)
        assert child.poll() is None, f"the indexer ended before it could be killed: {child.communicate()[1][-2000:]!r}"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    killed = IndexStore.open(index_dir)  # readable: a complete committed version
    committed = len(killed.documents)
    assert 4 <= committed < 40
    assert {c.doc_id for c in killed.chunks()} == set(killed.documents)
    encoder = FakeEncoder()
    resumed = index_paths([corpus], index_dir, small_chunker(), encoder, commit_every=50)
    assert (resumed.unchanged, resumed.added) == (committed, 40 - committed)
    index_paths([corpus], tmp_path / "clean", small_chunker(), FakeEncoder(), commit_every=50)
    assert_same_index(index_dir, tmp_path / "clean", encoder)


@pytest.mark.real_model
def test_real_minilm_search_matches_brute_force(tmp_path: Path) -> None:
    from retrieval.encoder import load_encoder

    encoder = load_encoder()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cats.md").write_text("Cats are small domesticated felines. They purr and hunt mice at night.\n" * 3)
    (tmp_path / "c" / "rust.md").write_text("The Rust compiler checks ownership and borrowing at compile time.\n" * 3)
    index_paths([tmp_path / "c"], tmp_path / "idx", make_chunker("token", 32, 0), encoder)
    store = IndexStore.open(tmp_path / "idx")
    assert store.model_id == encoder.model_id and store.dim == 384
    hits = search_texts(store, encoder, ["which animal purrs?"], 100)[0]
    assert hits[0].doc_id == "cats.md"
    chunks = store.chunks()
    want = encoder.encode([c.text for c in chunks]) @ encoder.encode(["which animal purrs?"])[0]
    order = np.argsort(-want, kind="stable")
    assert [h.chunk_id for h in hits] == [chunks[i].id for i in order]
    np.testing.assert_allclose([h.score for h in hits], want[order], atol=1e-5)


def word_model(directory: Path) -> str:
    """A model directory whose tokenizer counts one token per word (a stand-in for another encoder)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS, "."])}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "config.json").write_text("{}", encoding="utf-8")
    return str(directory)


def test_index_chunk_budgets_count_with_the_models_tokenizer_and_a_mismatch_names_both(tmp_path) -> None:
    pytest.importorskip("prefect")
    from flows.indexing import ChunkerSpec
    from retrieval.errors import InputError
    from retrieval.indexing import check_tokenizer, index_config

    model = word_model(tmp_path / "word-model")
    text, rng = tmp_path / "doc.txt", random.Random(1)
    rare = ["xylophonist", "antidisestablishmentarianism", "quokkas", "zugzwang"]  # several MiniLM tokens each
    text.write_text(" ".join(rng.choice(WORDS + rare) for _ in range(300)) + "\n", encoding="utf-8")
    document = load_document(text)
    chunks = chunk_documents([document], ChunkerSpec("token", 16, 0, 0, model).build())[0][1]
    words = [len(c.text.split()) for c in chunks]  # the word model's count, by hand
    assert [c.n_tokens for c in chunks] == words and max(words) == 16 and len(chunks) > 5
    default = chunk_documents([document], ChunkerSpec("token", 16, 0, 0).build())[0][1]
    assert [c.n_tokens for c in default] != words  # MiniLM counts otherwise: the test tells them apart

    store = IndexStore(tmp_path / "idx", "word-model@x", 4)
    store.set_chunker_config(index_config(ChunkerSpec("token", 16, 0, 0).build()))  # counted with MiniLM
    store.add_document(document, default, np.ones((len(default), 4), dtype=np.float32))
    store.commit()
    with pytest.raises(InputError, match=r"all-MiniLM-L6-v2 tokenizer.*word-model tokenizer"):
        check_tokenizer(store, index_config(ChunkerSpec("token", 16, 0, 0, model).build()))
    check_tokenizer(store, index_config(ChunkerSpec("token", 16, 0, 0).build()))  # the same tokenizer: fine
