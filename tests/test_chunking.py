"""Token counter and chunkers: exact spans, budgets, hand-computed windows, LangChain parity."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_text_splitters import RecursiveCharacterTextSplitter
from tokenizers import Tokenizer

from retrieval.base import Chunker
from retrieval.chunk_recursive import DEFAULT_SEPARATORS, RecursiveChunker
from retrieval.chunk_sentence import SentenceChunker, sentence_spans
from retrieval.chunk_token import TokenChunker
from retrieval.chunkers import CHUNKERS, chunks_to_json, make_chunker
from retrieval.tokenizer import HFTokenCounter, load_tokenizer

WORDS = "one two three four five six seven eight nine ten".split()


@pytest.fixture(scope="module")
def tok() -> HFTokenCounter:
    return load_tokenizer()


def tokens_of(tok: HFTokenCounter, text: str) -> list[str]:
    return tok.backend.encode(text, add_special_tokens=False).tokens


def check_chunks(tok: HFTokenCounter, text: str, chunks, chunk_size: int) -> None:
    """The invariants every chunker promises, against an independent full encode of the text."""
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert c.text.strip(), "empty or whitespace-only chunk"
        assert c.n_tokens == tok.count(c.text)
        assert c.n_tokens <= chunk_size, (c, chunk_size)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    # Nothing silently dropped: every character the tokenizer sees lies inside some chunk.
    covered = {p for c in chunks for p in range(c.start, c.end)}
    _, offsets = tok.encode_offsets(text)
    for s, e in offsets:
        for p in range(s, e):
            assert p in covered or text[p].isspace() or tok.count(text[p]) == 0, (p, text[s:e])


# ---------------------------------------------------------------- tokenizer


def test_long_text_is_counted_without_truncation(tok):
    text = " ".join(WORDS[i % 10] for i in range(1000))
    assert tok.count(text) == 1000  # tokenizer.json ships truncation at 128: it must be off
    ids, offsets = tok.encode_offsets(text)
    assert len(ids) == len(offsets) == 1000
    assert text[offsets[2][0] : offsets[2][1]] == "three"


def test_block_encoding_matches_one_encode(tok):
    text = ("Ünïcode, 日本語 text 👍🏽 and words like tokenization.\n" * 300) + "tail"
    blocked = HFTokenCounter(Tokenizer.from_file(tok_path()), "small-blocks", block_chars=1000)
    ref = tok.backend.encode(text, add_special_tokens=False)
    ids, offsets = blocked.encode_offsets(text)
    assert ids == ref.ids and offsets == ref.offsets
    assert blocked.count(text) == len(ref.ids)
    japanese = "日本語のテキストです、句読点で区切ります。" * 200  # no whitespace: cut at punctuation
    assert blocked.encode_offsets(japanese) == tok.encode_offsets(japanese)


def tok_path() -> str:
    from pathlib import Path

    from retrieval.models import resolve_embedding_model

    return str(Path(resolve_embedding_model()) / "tokenizer.json")


def test_offsets_are_character_offsets_and_surrogates_are_tolerated(tok):
    text = "😀 naïve e\u0301 x\ud800y"  # a lone surrogate cannot reach Rust as is
    ids, offsets = tok.encode_offsets(text)
    pieces = [text[s:e] for s, e in offsets]
    assert pieces[0] == "😀" and pieces[1] == "naïve"
    assert tok.count(text) == len(ids)


def test_load_tokenizer_is_memoised_and_rejects_bad_paths(tmp_path):
    assert load_tokenizer() is load_tokenizer(None)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))


# ---------------------------------------------------------------- token chunker


def test_token_windows_by_hand(tok):
    text = "one two three four five six seven"
    chunks = TokenChunker(3, 1, tok).chunk(text)
    # tokens: one(0,3) two(4,7) three(8,13) four(14,18) five(19,23) six(24,27) seven(28,33);
    # stride 2: windows [0,3) [2,5) [4,7)
    assert [(c.text, c.start, c.end, c.n_tokens) for c in chunks] == [
        ("one two three", 0, 13, 3),
        ("three four five", 8, 23, 3),
        ("five six seven", 19, 33, 3),
    ]


def test_token_window_snaps_back_to_word_start(tok):
    text = "a b tokenization c"
    assert tokens_of(tok, text) == ["a", "b", "token", "##ization", "c"]
    chunks = TokenChunker(3, 0, tok).chunk(text)
    # the window [0,3) would end between "token" and "##ization": it ends before the word
    assert [(c.text, c.n_tokens) for c in chunks] == [("a b", 2), ("tokenization c", 3)]


def test_word_longer_than_window_is_cut_and_recounted(tok):
    text = "antidisestablishmentarianism"
    assert len(tokens_of(tok, text)) > 3
    chunks = TokenChunker(3, 0, tok).chunk(text)
    assert "".join(c.text for c in chunks) == text
    check_chunks(tok, text, chunks, 3)


def test_combining_mark_stays_with_its_base(tok):
    text = "cafe\u0301 au lait"
    chunks = TokenChunker(1, 0, tok).chunk(text)
    assert chunks[0].text == "cafe\u0301"


def test_token_chunks_cover_a_long_text_exactly(tok):
    text = " ".join(WORDS[i % 10] for i in range(1000))
    chunks = TokenChunker(256, 0, tok).chunk(text)
    assert [c.n_tokens for c in chunks] == [256, 256, 256, 232]
    assert " ".join(c.text for c in chunks) == text


def test_token_chunker_with_a_generic_token_counter(tok):
    class Plain:
        name = "plain"
        encode_offsets = staticmethod(tok.encode_offsets)
        count = staticmethod(tok.count)

    text = "Some tokenization text, with words: unbelievable and antidisestablishmentarianism. " * 5
    ref = TokenChunker(7, 2, tok).chunk(text)
    got = TokenChunker(7, 2, Plain()).chunk(text)
    check_chunks(tok, text, got, 7)
    assert [c.text for c in got] == [c.text for c in ref]


def test_token_chunks_are_the_same_across_encoding_blocks(tok):
    text = "Block boundaries, tokenization and 日本語 text: antidisestablishmentarianism!\n" * 200
    blocked = HFTokenCounter(Tokenizer.from_file(tok_path()), "small-blocks", block_chars=1000)
    for size, overlap in [(7, 0), (16, 5)]:
        ref = TokenChunker(size, overlap, tok).chunk(text)
        assert TokenChunker(size, overlap, blocked).chunk(text) == ref
        check_chunks(tok, text, ref, size)


def test_token_chunker_recounts_for_other_pre_tokenizers():
    from tokenizers.pre_tokenizers import Whitespace

    backend = Tokenizer.from_file(tok_path())
    backend.pre_tokenizer = Whitespace()
    counter = HFTokenCounter(backend, "whitespace-pre-tokenizer")
    text = "Some tokenization text, with words: unbelievable and antidisestablishmentarianism. " * 5
    check_chunks(counter, text, TokenChunker(6, 2, counter).chunk(text), 6)


# ---------------------------------------------------------------- recursive chunker


def langchain_recursive(tok, text: str, size: int, overlap: int, special: bool) -> list[str]:
    splitter = RecursiveCharacterTextSplitter(
        separators=list(DEFAULT_SEPARATORS),
        keep_separator="start",
        chunk_size=size,
        chunk_overlap=overlap,
        length_function=lambda s: tok.count(s) + (2 if special else 0),
    )
    return splitter.split_text(text)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.lists(st.sampled_from(list("abc xyz.?!\n") + ["\n\n", "word ", "tokenization"]), min_size=10, max_size=150).map("".join),
    size=st.integers(4, 30),
    overlap_frac=st.floats(0, 0.9),
    special=st.booleans(),
)
def test_recursive_matches_langchain(tok, text, size, overlap_frac, special):
    overlap = int(size * overlap_frac)
    chunks = RecursiveChunker(size, overlap, tok, count_special_tokens=special).chunk(text)
    assert [c.text for c in chunks] == langchain_recursive(tok, text, size, overlap, special)
    check_chunks(tok, text, chunks, size)


def test_recursive_on_prose_matches_langchain(tok):
    import pydoc_data.topics

    text = pydoc_data.topics.topics["for"]
    chunks = RecursiveChunker(60, 20, tok, count_special_tokens=True).chunk(text)
    assert [c.text for c in chunks] == langchain_recursive(tok, text, 60, 20, True)
    check_chunks(tok, text, chunks, 60)


def test_recursive_by_hand(tok):
    text = "One two.\n\nThree four five six.  Seven!"
    chunks = RecursiveChunker(5, 0, tok).chunk(text)
    # "\n\n" splits: "One two." (3 tokens) | "\n\nThree four five six.  Seven!" (7) -> recurse
    # on ".": "\n\nThree four five six" (4) | ".  Seven!" (3) -> merged under 5 separately
    assert [(c.text, c.start) for c in chunks] == [
        ("One two.", 0),
        ("Three four five six", 10),
        (".  Seven!", 29),
    ]


# ---------------------------------------------------------------- sentence chunker


def test_sentence_packing_by_hand(tok):
    text = "One two. Three four five. Six!  Seven eight nine ten one two three."
    chunks = SentenceChunker(6, 0, tok, splitter="rules").chunk(text)
    # sentences: 3, 4, 2 and 8 tokens; the 8-token one goes to the token chunker (6 + 2)
    assert [c.text for c in chunks] == [
        "One two.",
        "Three four five. Six!",
        "Seven eight nine ten one two",
        "three.",
    ]


def test_sentence_overlap_carries_whole_sentences(tok):
    text = "A b. C d. E f. G h."  # each sentence 3 tokens
    chunks = SentenceChunker(6, 3, tok, splitter="rules").chunk(text)
    assert [c.text for c in chunks] == ["A b. C d.", "C d. E f.", "E f. G h."]


def test_pysbd_spans_are_exact(tok):
    text = "Dr. Smith arrived.  He said: \"hi.\" Then\n\nnew para e.g. here. 日本語。次の文。"
    spans = sentence_spans(text, "pysbd")
    assert [text[s:e] for s, e in spans] == [
        "Dr. Smith arrived.",
        'He said: "hi."',
        "Then",
        "new para e.g. here.",
        "日本語。",
        "次の文。",
    ]


# ---------------------------------------------------------------- all chunkers

UNICODE = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(["\u4e2d", "\uac01", "\U0001f44d\U0001f3fd", "e\u0301", "\x00", "\n", "\n\n", " ", ". ", "ing", "##"]),
    ),
    max_size=80,
).map("".join)


@pytest.mark.parametrize("name", sorted(CHUNKERS))
def test_every_chunker_keeps_exact_spans_and_budgets(tok, name):
    @settings(max_examples=40, deadline=None)
    @given(text=UNICODE, size=st.integers(4, 24), overlap_frac=st.floats(0, 0.9))
    def run(text, size, overlap_frac):
        options = {"splitter": "rules"} if name == "sentence" else {}
        chunker = make_chunker(name, size, int(size * overlap_frac), tok, **options)
        check_chunks(tok, text, chunker.chunk(text), size)

    run()


@pytest.mark.parametrize("name", sorted(CHUNKERS))
def test_empty_and_whitespace_give_no_chunks(tok, name):
    chunker = make_chunker(name, 16, 0, tok)
    assert isinstance(chunker, Chunker)
    for text in ["", "   ", "\n\n\t ", "\x00\x00"]:
        assert chunker.chunk(text) == []


def test_pysbd_sentence_chunker_on_unicode(tok):
    text = "Première phrase. 第二句。 Third one?! e\u0301 \x00 fourth\n\nfifth 👍🏽 sentence." * 3
    check_chunks(tok, text, SentenceChunker(8, 3, tok).chunk(text), 8)


# ---------------------------------------------------------------- registry and errors


@pytest.mark.parametrize(
    "args, match",
    [
        (("nope", 16), "valid chunkers: recursive, sentence, token"),
        (("token", 0), "chunk_size must be a positive"),
        (("token", 16, -1), "overlap must be >= 0"),
        (("token", 16, 16), "must be smaller than chunk_size"),
        (("recursive", 2, 0, None), "special tokens"),
    ],
)
def test_invalid_options(tok, args, match):
    options = {"count_special_tokens": True} if args[0] == "recursive" else {}
    args = args if len(args) < 4 else (*args[:3], tok)
    with pytest.raises(ValueError, match=match):
        make_chunker(*args, **options)


def test_unknown_option_and_splitter_are_value_errors(tok):
    with pytest.raises(ValueError, match="bad option for chunker 'token'"):
        make_chunker("token", 16, 0, tok, splitter="rules")
    with pytest.raises(ValueError, match="valid: pysbd, rules"):
        make_chunker("sentence", 16, 0, tok, splitter="nltk")


def test_chunks_to_json(tok):
    chunks = make_chunker("token", 3, 1, tok).chunk("one two three four five six seven")
    assert chunks_to_json(chunks) == [
        {"start": 0, "end": 13, "n_tokens": 3},
        {"start": 8, "end": 23, "n_tokens": 3},
        {"start": 19, "end": 33, "n_tokens": 3},
    ]


def test_recursive_on_chroma_corpus_matches_langchain(tok, shared_data_dir):
    text = (shared_data_dir / "chroma" / "corpora" / "chatlogs.md").read_text(encoding="utf-8")
    chunks = RecursiveChunker(250, 0, tok, count_special_tokens=True).chunk(text)
    assert [c.text for c in chunks] == langchain_recursive(tok, text, 250, 0, True)
    check_chunks(tok, text, chunks, 250)
