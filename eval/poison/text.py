"""Text helpers shared by the attacks: token-length cuts and the word vocabulary of a tokenizer."""

from __future__ import annotations

from collections.abc import Mapping

from retrieval.base import TokenCounter


def cut_to_tokens(text: str, counter: TokenCounter, length: int) -> str:
    """The longest prefix of ``text`` of at most ``length`` tokens (cut at a token end)."""
    _, offsets = counter.encode_offsets(text)
    if len(offsets) <= length:
        return text
    return text[:offsets[length - 1][1]]


def whole_words(vocab: Mapping[str, int]) -> dict[str, int]:
    """The vocabulary entries that are lower-case alphabetic whole words of 2+ letters: text made
    of them re-tokenises into the same tokens, which keeps token-level attacks honest."""
    return {token: index for token, index in vocab.items() if len(token) > 1 and token.isascii() and token.isalpha()
            and token.islower()}
