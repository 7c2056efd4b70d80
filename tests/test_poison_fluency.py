"""The fluency defence and the probe's lazily judged filter: surprisals equal a one-text-at-a-time
computation, the threshold is the clean sample's quantile, a gradient-style passage scores above
fluent text under the packaged LM, and judging only what a top k reaches keeps the same top k."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from support import ByteTokenizer, build_tiny_llama

from eval.poison.defence_either import EitherDefence
from eval.poison.defence_fluency import FluencyDefence, lm_surprisals, top_mean
from eval.poison.measures import kept, unjudged
from retrieval.base import Hit


def test_batched_surprisals_equal_each_text_scored_alone():
    import torch

    lm = SimpleNamespace(model=build_tiny_llama(), tokenizer=ByteTokenizer())
    texts = ["a short one", "a much longer text than the first of them", "mid length text"]
    got = lm_surprisals(lm, texts, window=20, batch=3)
    for text, surprisals in zip(texts, got):
        ids = torch.tensor([[0, *list(text.encode())[:20]]])  # EOS stands in for the missing BOS
        with torch.no_grad():
            logp = torch.log_softmax(lm.model(ids).logits[0, :-1].float(), dim=-1)
        expected = [-float(logp[i, ids[0, i + 1]]) for i in range(ids.shape[1] - 1)]
        assert surprisals == pytest.approx(expected, abs=1e-4)
    assert [len(s) for s in got] == [11, 20, 15]


def test_top_mean_averages_the_most_surprising_tokens():
    assert top_mean(np.array([1.0, 9.0, 3.0, 7.0]), 0.5) == 8.0
    assert top_mean(np.array([1.0, 9.0, 3.0, 7.0]), 0.01) == 9.0
    assert top_mean(np.array([]), 0.5) == 0.0


def odd_words(texts):
    """A stand-in LM: every token is a word, surprisal 10 for a word outside a small vocabulary."""
    vocabulary = {"the", "cat", "sat", "on", "mat", "a", "dog", "ran"}
    odd_words.calls += len(texts)
    return [np.array([0.0 if word in vocabulary else 10.0 for word in text.split()]) for text in texts]


def test_the_threshold_is_the_clean_quantile_and_scores_are_memoised():
    odd_words.calls = 0
    clean = [f"the cat sat on {'the ' * i}mat" for i in range(40)]
    defence = FluencyDefence.calibrate(odd_words, clean, top_share=0.25, quantile=1.0, sample=10, seed=0)
    assert defence.threshold == 0.0 and odd_words.calls == 10
    assert len(set(defence.held_out.tolist())) == 10  # the rows whose false alarms the probe measures
    flipped = ["the cat zebra on the mat", "The CAT sat ON the mat"]
    assert defence.flagged([0, 1], flipped, np.zeros((2, 4))).tolist() == [True, False]  # case does not count
    calls = odd_words.calls
    defence.flagged([0, 1], flipped, np.zeros((2, 4)))
    assert odd_words.calls == calls


def test_the_combined_defence_flags_what_either_part_flags():
    class Flags:
        held_out = None

        def __init__(self, mask):
            self.mask = np.array(mask)

        def flagged(self, ids, texts, vectors):
            return self.mask

        def flagged_as_new(self, docs, ids, texts, vectors):
            return self.mask

    either = EitherDefence("both", (Flags([True, False, False]), Flags([False, False, True])))
    assert either.flagged([0, 1, 2], ["", "", ""], np.zeros((3, 2))).tolist() == [True, False, True]


def test_judging_only_what_the_top_k_reaches_keeps_the_same_top_k():
    rng = np.random.default_rng(0)
    flags = {i: bool(rng.random() < 0.4) for i in range(60)}
    rankings = [[Hit("d", "d", int(i), 0, 1, 0.0, "t") for i in rng.permutation(60)[:25]] for _ in range(8)]
    verdicts: dict[int, bool] = {}
    while todo := unjudged(rankings, verdicts, 5):
        verdicts.update((i, flags[i]) for i in todo)
    assert len(verdicts) < 60
    every = {i for i, flag in flags.items() if flag}
    judged = {i for i, flag in verdicts.items() if flag}
    assert all(kept(hits, judged, 5) == kept(hits, every, 5) for hits in rankings)


@pytest.mark.real_model
def test_smollm2_finds_gradient_style_word_substitutions_surprising():
    from compression.lm import load_causal_lm

    lm = load_causal_lm()
    fluent = "How do I add documents to a collection? What embedding function does a collection use by default?"
    flipped = "How do I add documents to a collection? What embedding cyclone does a collection use marathon default?"
    defence = FluencyDefence(lambda texts: lm_surprisals(lm, texts, window=64), top_share=0.25)
    low, high = defence.scores([fluent, flipped])
    assert high > low + 1.0
