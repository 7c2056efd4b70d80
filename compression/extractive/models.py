"""The token counter and sentence encoder the extractive compressor uses by default.

Both come from the retrieval package (its one memoised loader each), so budgets are counted in the
embedding model's tokens and sentences are embedded by the model retrieval already loaded.
"""

from __future__ import annotations

from retrieval.base import Encoder, TokenCounter


def default_counter() -> TokenCounter:
    """The embedding model's tokenizer (``retrieval.tokenizer.load_tokenizer``)."""
    from retrieval.tokenizer import load_tokenizer

    return load_tokenizer()


def default_encoder() -> Encoder:
    """The embedding model (``retrieval.encoder.load_encoder``), L2-normalised float32 vectors."""
    from retrieval.encoder import load_encoder

    return load_encoder()
