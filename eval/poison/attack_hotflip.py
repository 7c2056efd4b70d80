"""A gradient-guided token-substitution attack on the embedding model (HotFlip, in the spirit of GASLITE).

The objective is the mean cosine between the passage's embedding and the topic's attack
questions (= the passage vector · their mean vector). Each step takes the gradient of the
objective with respect to the input token embeddings, scores every allowed substitution by its
first-order gain, samples ``candidates`` single-token flips from the ``top`` best per position,
evaluates them exactly and keeps the best one if it improves the objective, so the objective
never decreases. The budget is ``steps`` × (1 backward + ``candidates`` forwards) per topic.
The run starts from the query-stuffing text, so the attack begins where query stuffing ends; its
``n`` passages are the ``n`` last accepted states (each one flip apart, best first), and the run
goes on past ``steps`` (at most ``steps`` more) until ``n`` flips were accepted.
torch is imported inside the functions only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eval.poison.base import Attack, Topic
from eval.poison.text import whole_words
from retrieval.base import Encoder


@dataclass(frozen=True)
class HotFlipResult:
    """The accepted token ids (start first, best last) and the objective before the first step and
    after every step."""

    states: tuple[tuple[int, ...], ...]
    objective: tuple[float, ...]

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The best state."""
        return self.states[-1]


def pooled(model: Any, inputs_embeds: Any, cls_id: int, sep_id: int) -> Any:
    """L2-normalised mean-pooled embeddings of ``[CLS] tokens [SEP]`` given the token embeddings."""
    import torch

    words = model.get_input_embeddings()
    batch = inputs_embeds.shape[0]
    ends = words(torch.tensor([[cls_id, sep_id]] * batch))
    full = torch.cat([ends[:, :1], inputs_embeds, ends[:, 1:]], dim=1)
    hidden = model(inputs_embeds=full, attention_mask=torch.ones(full.shape[:2], dtype=torch.long)).last_hidden_state
    return torch.nn.functional.normalize(hidden.mean(dim=1), dim=-1)


def objective_of(model: Any, token_ids: Sequence[Sequence[int]], centre: Any, cls_id: int, sep_id: int) -> Any:
    """The objective (vector · ``centre``) of each row of token ids, without gradients."""
    import torch

    with torch.no_grad():
        embeds = model.get_input_embeddings()(torch.tensor([list(row) for row in token_ids]))
        return pooled(model, embeds, cls_id, sep_id) @ centre


def hotflip(model: Any, start_ids: Sequence[int], targets: np.ndarray, allowed: Sequence[int], *, steps: int,
            candidates: int, top: int, cls_id: int, sep_id: int, seed: int, accepted: int = 1) -> HotFlipResult:
    """Raise the mean cosine of ``start_ids`` to ``targets`` (rows L2-normalised) by single-token
    flips: ``steps`` steps, then more (up to ``steps`` more) until ``accepted`` flips were kept."""
    import torch

    if not start_ids:
        raise ValueError("the starting passage has no tokens; give a non-empty text")
    model.eval()  # no dropout: the objective must be a function of the tokens
    generator = torch.Generator().manual_seed(seed)
    centre = torch.tensor(np.asarray(targets, dtype=np.float32).mean(axis=0))
    allowed_ids = torch.tensor(sorted(set(allowed)))
    weights = model.get_input_embeddings().weight.detach()
    ids = torch.tensor(list(start_ids))
    trace = [float(objective_of(model, [ids.tolist()], centre, cls_id, sep_id)[0])]
    states = [tuple(ids.tolist())]
    for step in range(2 * steps):
        if step >= steps and len(states) > accepted:
            break
        embeds = weights[ids].clone().unsqueeze(0).requires_grad_(True)
        (pooled(model, embeds, cls_id, sep_id)[0] @ centre).backward()
        gain = embeds.grad[0] @ weights[allowed_ids].T  # first-order gain of each allowed token, per position
        best = gain.topk(min(top, len(allowed_ids)), dim=1).indices
        positions = torch.randint(len(ids), (candidates,), generator=generator)
        picks = best[positions, torch.randint(best.shape[1], (candidates,), generator=generator)]
        trials = ids.repeat(candidates, 1)
        trials[torch.arange(candidates), positions] = allowed_ids[picks]
        scores = objective_of(model, trials.tolist(), centre, cls_id, sep_id)
        winner = int(scores.argmax())
        if float(scores[winner]) > trace[-1]:
            ids = trials[winner]
            states.append(tuple(ids.tolist()))
        trace.append(max(trace[-1], float(scores[winner])))
    return HotFlipResult(tuple(states), tuple(trace))


class HotFlipAttack:
    """HotFlip passages for a topic: one run from the first passage of ``start`` (query stuffing)."""

    name = "hotflip"

    def __init__(self, encoder: Encoder, start: Attack, *, steps: int, candidates: int, top: int, seed: int) -> None:
        self.encoder, self.start = encoder, start
        self.steps, self.candidates, self.top, self.seed = steps, candidates, top, seed
        self.traces: list[tuple[float, ...]] = []

    def passages(self, topic: Topic, n: int) -> tuple[str, ...]:
        """The ``n`` best distinct states of one run (fewer if fewer flips were accepted); the
        run's objective trace is appended to ``traces``."""
        model, tokenizer = self.encoder.transformer()  # type: ignore[attr-defined]
        allowed = list(whole_words(tokenizer.get_vocab()).values())
        targets = self.encoder.encode([question.text for question in topic.attack])
        start = tokenizer(self.start.passages(topic, 1)[0], add_special_tokens=False)["input_ids"]
        result = hotflip(model, start, targets, allowed, steps=self.steps, candidates=self.candidates, top=self.top,
                         cls_id=tokenizer.cls_token_id, sep_id=tokenizer.sep_token_id,
                         seed=self.seed * 1000 + topic.topic_id, accepted=n)
        self.traces.append(result.objective)
        texts = dict.fromkeys(tokenizer.decode(list(state)) for state in reversed(result.states))
        return tuple(texts)[:n]
