"""Token surprisal from a causal LM, scored window by window with the KV cache reused.

``IncrementalScorer`` keeps one KV cache per sequence. Each window is scored conditioned on
everything still in the cache, then ``prune`` drops the cache entries of the window's
discarded tokens, so the next window is conditioned on the *compressed* prefix (LLMLingua's
iterative compression) without recomputing anything. Tokens keep their original position ids,
so with nothing pruned the windowed scores equal one full pass.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

# Inputs longer than the LM window restart the cache from the prefix plus this many kept tokens.
REPRIME_TOKENS = 32


def _surprisal(logits: Any, targets: Any) -> Any:
    """-log p(target) per row, in nats, without materialising a full log-softmax."""
    logits = logits.float()
    return logits.logsumexp(-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def max_positions(model: Any) -> int:
    """The LM's context window (position limit)."""
    return int(getattr(model.config, "max_position_embeddings", 2048))


def full_pass_surprisal(model: Any, prefix: Sequence[int], ids: Sequence[int], position_ids: Sequence[int] | None = None) -> np.ndarray:
    """Reference scorer: surprisal of ``ids`` after ``prefix`` in one forward pass (no cache)."""
    import torch

    seq = list(prefix) + list(ids)
    if not prefix:
        raise ValueError("full_pass_surprisal needs a non-empty prefix to score the first token")
    kwargs = {}
    if position_ids is not None:
        kwargs["position_ids"] = torch.tensor([list(position_ids)])
    with torch.inference_mode():
        logits = model(torch.tensor([seq]), use_cache=False, **kwargs).logits[0]
    start = len(prefix)
    return _surprisal(logits[start - 1 : -1], torch.tensor(seq[start:])).numpy()


class IncrementalScorer:
    """Scores one token sequence window by window, conditioned on the kept prefix in the KV cache."""

    def __init__(self, model: Any, prefix: Sequence[int]) -> None:
        if not prefix:
            raise ValueError("IncrementalScorer needs a non-empty prefix (e.g. the BOS / <|im_start|> token)")
        self.model = model
        self.prefix = list(prefix)
        self.limit = max_positions(model)
        self._start(self.prefix)

    def _start(self, ids: list[int]) -> None:
        """(Re)build the cache from ``ids`` at positions 0..len-1."""
        import torch
        from transformers import DynamicCache

        self.cache = DynamicCache()
        self.next_pos = 0
        self.kept_ids: list[int] = []
        self._last_window: list[int] = []
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]), past_key_values=self.cache, use_cache=True)
        self.next_pos = len(ids)
        self.kept_ids = list(ids)
        self._last_logits = out.logits[0, -1]
        self._window_logits = None

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Surprisal (nats) of each token of ``ids``, appended to the cached prefix."""
        import torch

        ids = list(ids)
        if not ids:
            return np.zeros(0, dtype=np.float32)
        if len(ids) + len(self.prefix) + REPRIME_TOKENS >= self.limit:
            raise ValueError(f"window of {len(ids)} tokens does not fit the LM's {self.limit}-token window; use a smaller window")
        if self.next_pos + len(ids) > self.limit:
            # Past the LM's window: restart from the prefix and the most recent kept tokens.
            tail = self.kept_ids[len(self.prefix) :][-REPRIME_TOKENS:]
            self._start(self.prefix + tail)
        positions = torch.arange(self.next_pos, self.next_pos + len(ids)).unsqueeze(0)
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]), past_key_values=self.cache, position_ids=positions, use_cache=True)
            logits = out.logits[0]
            # Token 0 is predicted by the last kept token's logits; the rest by this window.
            preds = torch.cat([self._last_logits.unsqueeze(0), logits[:-1]], dim=0)
            result = _surprisal(preds, torch.tensor(ids)).numpy()
        self.next_pos += len(ids)
        self._last_window = ids
        self._window_logits = logits
        self._last_logits = logits[-1]
        self.kept_ids.extend(ids)
        return result

    def prune(self, keep: Sequence[bool]) -> None:
        """Drop the cache entries of the last window's tokens where ``keep`` is False."""
        import torch

        window = self._last_window
        if len(keep) != len(window):
            raise ValueError(f"keep mask has {len(keep)} entries for a window of {len(window)} tokens")
        if all(keep):
            return
        total = self.cache.get_seq_length()
        base = total - len(window)
        index = torch.tensor(list(range(base)) + [base + i for i, k in enumerate(keep) if k], dtype=torch.long)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(-2, index)
            layer.values = layer.values.index_select(-2, index)
        kept_window = [t for t, k in zip(window, keep) if k]
        del self.kept_ids[len(self.kept_ids) - len(window) :]
        self.kept_ids.extend(kept_window)
        kept_rows = [i for i, k in enumerate(keep) if k]
        # The next token is predicted from the last kept token (its logits saw the whole window);
        # if nothing was kept, the window's last logits are the closest estimate available.
        self._last_logits = self._window_logits[kept_rows[-1] if kept_rows else -1]

    def continuation_nll(self, ids: Sequence[int]) -> float:
        """Mean surprisal of ``ids`` appended after the cache, leaving the cache unchanged."""
        import torch

        ids = list(ids)
        if not ids:
            return 0.0
        length = self.cache.get_seq_length()
        if self.next_pos + len(ids) > self.limit:
            ids = ids[: max(1, self.limit - self.next_pos)]
            if self.next_pos + len(ids) > self.limit:
                return float("nan")
        positions = torch.arange(self.next_pos, self.next_pos + len(ids)).unsqueeze(0)
        with torch.inference_mode():
            out = self.model(torch.tensor([ids]), past_key_values=self.cache, position_ids=positions, use_cache=True)
            preds = torch.cat([self._last_logits.unsqueeze(0), out.logits[0, :-1]], dim=0)
            nll = float(_surprisal(preds, torch.tensor(ids)).mean())
        self._truncate(length)
        return nll

    def _truncate(self, length: int) -> None:
        """Drop cache entries past ``length`` (``DynamicCache.crop`` changed meaning across versions)."""
        for layer in self.cache.layers:
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
