"""Answering with reused chunk caches: assemble, recover, prefill only what is needed, decode greedily."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from compression.hf_cache import cache_arg, returned_cache
from compression.kv.assemble import assemble, encode_prefix
from compression.kv.base import ChunkKV, Generation, KVStore, PrefixKV, Prompt
from compression.kv.blockwise import DEFAULT_BLOCK, grow_cache, run_in_place, supported
from compression.kv.keys import tokenizer_signature
from compression.kv.packing import DEFAULT_ROW_TOKENS, chunk_caches
from compression.kv.prompt import DEFAULT_SYSTEM, build_prompt
from compression.kv.recovery import Recovery, additive


@torch.inference_mode()
def recompute(model: Any, cache: Any, prompt: Prompt, selected: Sequence[int], block: int = DEFAULT_BLOCK) -> torch.Tensor:
    """Recompute ``selected`` context positions and prefill the question in one pass.

    The selected tokens attend to the reused KV of unselected tokens and to each other's fresh
    KV; their fresh KV replaces the stale one in place, layer by layer, so the cache ends up
    covering positions 0..T-1. Runs in causal blocks (``compression.kv.blockwise``); equal to
    ``recompute_dense``. Returns the last position's logits.
    """
    if not supported(model):
        return recompute_dense(model, cache, prompt, selected)
    all_ids = prompt.all_ids
    context_end = len(prompt.prefix_ids) + len(prompt.context_ids)
    positions = [*sorted(set(selected)), *range(context_end, len(all_ids))]
    grow_cache(cache, len(all_ids))
    hidden = run_in_place(model, cache, [all_ids[p] for p in positions], positions, block=block)
    return model.lm_head(model.model.norm(hidden[:, -1:]))[0, -1].float()


@torch.inference_mode()
def recompute_dense(model: Any, cache: Any, prompt: Prompt, selected: Sequence[int]) -> torch.Tensor:
    """The reference recompute: one model call, fresh KV appended after the context and stale
    entries hidden by a dense mask, then moved into place. Slower (every query attends over the
    whole context through the mask); kept as the trusted reference for ``recompute``."""
    all_ids = prompt.all_ids
    context_end = len(prompt.prefix_ids) + len(prompt.context_ids)
    positions = torch.tensor([*selected, *range(context_end, len(all_ids))])
    is_stale = torch.zeros(context_end, dtype=torch.bool)
    is_stale[list(selected)] = True
    old_allowed = (torch.arange(context_end)[None, :] <= positions[:, None]) & ~is_stale[None, :]
    new_allowed = positions[None, :] <= positions[:, None]
    mask = additive(torch.cat([old_allowed, new_allowed], dim=1), model.dtype)
    out = model(
        input_ids=torch.tensor([all_ids])[:, positions],
        position_ids=positions[None],
        attention_mask=mask,
        use_cache=True,
        logits_to_keep=1,
        **cache_arg(model, cache),
    )
    n_selected = len(selected)
    for layer in cache.layers:
        for name in ("keys", "values"):
            tensor = getattr(layer, name)
            fresh = tensor[:, :, context_end:]
            tensor[:, :, list(selected)] = fresh[:, :, :n_selected]
            setattr(layer, name, torch.cat([tensor[:, :, :context_end], fresh[:, :, n_selected:]], dim=2))
    return out.logits[0, -1].float()


@torch.inference_mode()
def full_prefill(model: Any, prompt: Prompt) -> tuple[Any, torch.Tensor]:
    """The baseline: prefill the whole prompt; returns the cache and the last position's logits."""
    out = model(input_ids=torch.tensor([prompt.all_ids]), use_cache=True, logits_to_keep=1)
    return returned_cache(out), out.logits[0, -1].float()


@torch.inference_mode()
def greedy_continue(model: Any, cache: Any, first_logits: torch.Tensor, max_new_tokens: int, eos_ids: set[int]) -> list[int]:
    """Greedy tokens starting from the first-token distribution, until EOS or ``max_new_tokens``."""
    tokens: list[int] = []
    logits = first_logits
    for _ in range(max_new_tokens):
        token = int(logits.argmax())
        if token in eos_ids:
            break
        tokens.append(token)
        if len(tokens) == max_new_tokens:
            break
        out = model(input_ids=torch.tensor([[token]]), use_cache=True, **cache_arg(model, cache))
        logits = out.logits[0, -1]
    return tokens


@torch.inference_mode()
def reuse_prefill(model: Any, cache: Any, prompt: Prompt, recovery: Recovery) -> tuple[torch.Tensor, list[int]]:
    """Recover the assembled ``cache`` and prefill the question: first-token logits and the
    selected positions."""
    selected = recovery.select(model, cache, prompt)
    return recompute(model, cache, prompt, selected), selected


class KVReuseEngine:
    """Answers questions over chunks whose caches are computed once and kept in ``store``.

    ``row_tokens``: missing chunk caches are prefilled packed into rows of this many tokens
    (``compression.kv.packing``); None: one chunk per forward pass.
    """

    def __init__(self, lm: Any, store: KVStore, system: str = DEFAULT_SYSTEM, row_tokens: int | None = DEFAULT_ROW_TOKENS) -> None:
        self.lm, self.store, self.system, self.row_tokens = lm, store, system, row_tokens
        self._prefixes: dict[tuple[int, ...], PrefixKV] = {}
        self._tokenizer_sig = tokenizer_signature(lm.tokenizer)
        eos = lm.tokenizer.eos_token_id
        self.eos_ids = {eos} if isinstance(eos, int) else set(eos or [])

    def prompt(self, contexts: Sequence[str], question: str) -> Prompt:
        """The prompt of ``contexts`` and ``question`` in this engine's chat template and system text."""
        return build_prompt(self.lm.tokenizer, contexts, question, self.system)

    def prefix(self, prompt: Prompt) -> PrefixKV:
        """The shared prefix's KV, computed once per distinct prefix."""
        if prompt.prefix_ids not in self._prefixes:
            self._prefixes[prompt.prefix_ids] = encode_prefix(self.lm.model, prompt.prefix_ids, self.lm.model_id)
        return self._prefixes[prompt.prefix_ids]

    def chunk_caches(self, prompt: Prompt, indices: Sequence[int] | None = None) -> Iterator[tuple[int, ChunkKV, bool]]:
        """``(index, cache, reused)`` for chunks ``indices`` of ``prompt`` (all by default), missing
        ones computed packed and stored (``compression.kv.packing.chunk_caches``); index into ``indices``."""
        chunks = prompt.chunk_ids if indices is None else [prompt.chunk_ids[i] for i in indices]
        return chunk_caches(self.lm, self.prefix(prompt), chunks, self.store, self._tokenizer_sig, self.row_tokens)

    def warm(self, prompt: Prompt) -> int:
        """Make sure every chunk of ``prompt`` is cached; returns how many had to be computed."""
        return sum(not reused for _, _, reused in self.chunk_caches(prompt))

    @torch.inference_mode()
    def prefill(self, prompt: Prompt, recovery: Recovery,
                keep: Sequence[Sequence[int]] | None = None) -> tuple[Any, torch.Tensor, int, int]:
        """Cache ready for decoding, first-token logits, tokens prefilled and tokens reused.

        ``keep[i]``: the tokens of chunk i the LM reads (compressed context: their entries are
        taken from the chunk's cache, see ``compression.kv.subset``); all when None.
        """
        prefix = self.prefix(prompt)
        used = [i for i in range(len(prompt.chunk_ids)) if keep is None or keep[i]]
        found = {index: kv for index, kv, _ in self.chunk_caches(prompt, used)}
        chunks = [found[index] for index in range(len(used))]
        cache = assemble(self.lm.model, prefix, chunks, None if keep is None else [keep[i] for i in used])
        read = prompt if keep is None else prompt.keep(keep)
        logits, selected = reuse_prefill(self.lm.model, cache, read, recovery)
        # A recovery that recomputes tokens inside select (blend with resume) says how many.
        counted = getattr(recovery, "recomputed_tokens", None)
        extra = counted(read, len(self.lm.model.model.layers)) if counted else 0
        prefilled = len(selected) + extra + len(read.suffix_ids)
        return cache, logits, prefilled, len(read.all_ids) - prefilled

    @torch.inference_mode()
    def generate(self, prompt: Prompt, recovery: Recovery | None, max_new_tokens: int = 64,
                 keep: Sequence[Sequence[int]] | None = None) -> Generation:
        """Answer ``prompt`` (only its ``keep`` tokens when given); ``recovery=None`` means a plain
        full prefill of what is read (no reuse)."""
        start = time.perf_counter()
        if recovery is None:
            read = prompt if keep is None else prompt.keep(keep)
            cache, logits = full_prefill(self.lm.model, read)
            prefilled, reused, mode = len(read.all_ids), 0, "full"
        else:
            cache, logits, prefilled, reused = self.prefill(prompt, recovery, keep)
            mode = recovery.name
        ttft = time.perf_counter() - start
        tokens = greedy_continue(self.lm.model, cache, logits, max_new_tokens, self.eos_ids)
        text = self.lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
        return Generation(text, tuple(tokens), logits, ttft, prefilled, reused, mode)
