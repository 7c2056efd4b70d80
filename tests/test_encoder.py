"""The packaged MiniLM behind the Encoder protocol: same vectors as sentence-transformers, normalised."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pytest
from tokenizers import Tokenizer

from retrieval.encoder import SentenceEncoder, TruncationWarning, load_encoder
from retrieval.errors import InputError

pytestmark = pytest.mark.real_model
TEXTS = ["The cat sat on the mat.", "Quantum chromodynamics describes the strong force.", "東京は日本の首都です 🍣", "a"]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return load_encoder()


def test_identity_and_memoisation(encoder: SentenceEncoder) -> None:
    assert load_encoder() is encoder
    assert load_encoder("all-MiniLM-L6-v2", device="cpu") is encoder
    weights = (encoder.model_dir / "model.safetensors").read_bytes()
    assert encoder.model_id == "all-MiniLM-L6-v2@" + hashlib.sha256(weights).hexdigest()[:16]
    assert (encoder.dim, encoder.max_seq_length) == (384, 256)


def test_vectors_equal_normalised_sentence_transformers(encoder: SentenceEncoder) -> None:
    reference = encoder._model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
    reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    vectors = encoder.encode(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 384) and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, reference, atol=1e-5)
    np.testing.assert_allclose(encoder.encode(TEXTS, batch_size=1), vectors, atol=1e-5)  # batching changes nothing
    assert encoder.encode([]).shape == (0, 384)


def test_truncation_is_reported_with_a_count(encoder: SentenceEncoder) -> None:
    long_texts = [" ".join(f"word{i}" for i in range(n)) for n in (100, 300, 400)]
    backend = Tokenizer.from_file(str(encoder.model_dir / "tokenizer.json"))
    backend.no_truncation()
    expected = sum(len(backend.encode(t).ids) > 256 for t in long_texts + TEXTS)  # with [CLS] and [SEP]
    assert expected >= 2
    with pytest.warns(TruncationWarning, match=rf"^{expected} of 7 texts exceed the model's max_seq_length \(256 tokens\)"):
        encoder.encode(long_texts + TEXTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        encoder.encode(TEXTS)  # short texts: no warning


def test_one_string_instead_of_a_list_is_an_error(encoder: SentenceEncoder) -> None:
    with pytest.raises(InputError, match=r"wrap it: encode\(\[text\]\)"):
        encoder.encode("just one text")
