"""Optional LM-judged relevance: ask the small causal LM "does this sentence help answer the question?".

The score of a sentence is P(yes) / (P(yes) + P(no)) for the next token after the prompt, read
from one forward pass per batch of sentences (left-padded, explicit position ids, only the last
position's logits computed). The model and tokenizer come from ``compression.lm.load_causal_lm``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PROMPT = (
    "Question: {question}\n"
    "Sentence: {sentence}\n"
    "Does the sentence help answer the question? Answer yes or no."
)


ANSWERS_YES = ("yes", "Yes", " yes", " Yes")
ANSWERS_NO = ("no", "No", " no", " No")


def build_prompt(tokenizer: Any, question: str, sentence: str) -> str:
    """The judging prompt, wrapped in the chat template when the tokenizer has one."""
    content = PROMPT.format(question=question, sentence=sentence)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return content + "\nAnswer:"


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """First token ids of the ways an answer starts ("yes", "Yes", " yes", ...), for yes and for no."""
    yes = {ids[0] for word in ANSWERS_YES if (ids := _ids(tokenizer, word))}
    no = {ids[0] for word in ANSWERS_NO if (ids := _ids(tokenizer, word))}
    shared = yes & no  # e.g. a byte-level tokenizer starts " yes" and " no" with the same space
    if not yes - shared or not no - shared:
        raise ValueError("the tokenizer cannot tell 'yes' from 'no' by their first token; use another LM")
    return sorted(yes - shared), sorted(no - shared)


def lm_relevance(
    model: Any, tokenizer: Any, question: str, sentences: Sequence[str], *, batch_size: int = 16
) -> np.ndarray:
    """P(yes | yes or no) per sentence, in the order given (each answer summed over its spellings)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not sentences:
        return np.zeros(0, dtype=np.float32)
    yes, no = answer_token_ids(tokenizer)
    prompts = [_ids(tokenizer, build_prompt(tokenizer, question, s)) for s in sentences]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
    scores = np.zeros(len(prompts), dtype=np.float32)
    for first in range(0, len(order), batch_size):
        batch = order[first : first + batch_size]
        logits = last_logits(model, [prompts[i] for i in batch], _pad_id(tokenizer))
        logits = logits.float()
        margin = logits[:, yes].logsumexp(dim=1) - logits[:, no].logsumexp(dim=1)
        scores[batch] = (1.0 / (1.0 + np.exp(-margin.numpy()))).astype(np.float32)
    return scores


def last_logits(model: Any, sequences: Sequence[Sequence[int]], pad_id: int):
    """Next-token logits after each sequence, batched with left padding."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence) :] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, width - len(sequence) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.inference_mode():
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, logits_to_keep=1)
    return output.logits[:, -1, :]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _pad_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    return int(pad) if pad is not None else 0
