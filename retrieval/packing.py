"""Prepacking: sequences of different lengths laid end to end in rows, so no compute goes to padding.

``pack_rows`` bin-packs sequence lengths into rows of at most a token budget (first-fit
decreasing). ``encode_packed`` embeds texts with a sentence-transformers model that way: each
row runs once through the underlying Hugging Face encoder with positions restarting at every
sequence, attention confined to each sequence (``SEGMENTS_ATTENTION``: one SDPA call over the
row's sequences gathered into a padded batch, so attention costs ``count * longest^2`` rather than ``row^2``), and the model's own pooling
and normalisation modules reduce each segment, through the flattened-input path the library uses
for its variable-length flash-attention mode. ``packable`` says when a model allows it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

# Tokens per packed row: enough for the matrix products to run at full speed on CPU, small
# enough that a row's activations stay in cache-friendly sizes.
DEFAULT_ROW_TOKENS = 2048
SEGMENTS_ATTENTION = "ragpress_segments"
# Texts tokenised per group (the tokenizer pads a group to its longest member before unpadding).
TOKENIZE_GROUP = 1024
_REGISTER_LOCK = threading.Lock()


def pack_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into rows of at most ``budget`` tokens, first-fit decreasing.

    Longest first, each into the first row with room; a sequence longer than ``budget`` gets a
    row of its own. Within a row the indices keep that (descending length) order.
    """
    if budget <= 0:
        raise ValueError(f"the row budget must be > 0 tokens, got {budget}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        size = lengths[index]
        row = next((r for r, free in enumerate(room) if free >= size), None)
        if row is None:
            rows.append([index])
            room.append(budget - size)
        else:
            rows[row].append(index)
            room[row] -= size
    return rows


def _segments_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, *,
                        cu_seq_lens_q: Any = None, **kwargs: Any) -> tuple[Any, None]:
    """Bidirectional SDPA within each segment ``cu_seq_lens_q[i]:cu_seq_lens_q[i+1]``; plain SDPA
    (the model's usual path, mask and all) for any call that gives no segments."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # One SDPA call over the segments gathered into a padded batch (the projections and MLP,
    # most of the work, stay unpadded; a call per segment costs more in thread hand-offs).
    starts, lengths = cu_seq_lens_q[:-1], cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]
    offsets = torch.arange(int(lengths.max()))
    valid = offsets[None, :] < lengths[:, None]  # [segments, longest]
    index = torch.where(valid, starts[:, None] + offsets[None, :], 0)
    q, k, v = (t[0][:, index].transpose(0, 1) for t in (query, key, value))  # [segments, heads, longest, dim]
    attended = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :], scale=kwargs.get("scaling"))
    return attended.transpose(1, 2)[valid][None], None  # [1, tokens, heads, dim]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(SEGMENTS_ATTENTION, _segments_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(SEGMENTS_ATTENTION, sdpa_mask)  # padded calls get SDPA's mask


def packable(model: Any) -> bool:
    """Whether ``model`` (a SentenceTransformer) can embed packed rows: a text feature-extraction
    encoder (not causal) on the torch backend whose attention goes through transformers' attention
    interface on SDPA, followed by modules that read only the token embeddings."""
    from sentence_transformers.base.modules.normalize import Normalize
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules.pooling import Pooling

    modules = list(model)
    if not modules or not isinstance(modules[0], Transformer):
        return False
    first = modules[0]
    hf_model = getattr(first, "model", None)
    config = getattr(hf_model, "config", None)
    return (
        first.transformer_task == "feature-extraction"
        and first.backend == "torch"
        and set(first.modality_config) == {"text"}
        and first.modality_config["text"]["method"] == "forward"
        and bool(getattr(hf_model, "is_backend_compatible", lambda: False)())
        and not getattr(config, "is_decoder", True)
        and getattr(config, "_attn_implementation", None) in ("sdpa", SEGMENTS_ATTENTION)
        and isinstance(modules[1] if len(modules) > 1 else None, Pooling)
        and all(isinstance(module, Normalize) for module in modules[2:])
    )


def _use_segments_attention(hf_model: Any) -> None:
    """Route the encoder's attention through ``SEGMENTS_ATTENTION`` for good: calls without
    segments (the library's own ``encode``) still get exactly SDPA, so no switch back is needed."""
    with _REGISTER_LOCK:
        if hf_model.config._attn_implementation != SEGMENTS_ATTENTION:
            _register()
            hf_model.config._attn_implementation = SEGMENTS_ATTENTION


def _unpadded(model: Any, texts: Sequence[str]) -> tuple[list[Any], list[Any]]:
    """Each text's token ids and token type ids, tokenised by the model itself (same special
    tokens and truncation as its ``encode``), padding removed."""
    features = model.preprocess(list(texts))
    mask = features["attention_mask"].bool()
    types = features.get("token_type_ids")
    ids = [row[keep] for row, keep in zip(features["input_ids"], mask)]
    type_ids = [row[keep] for row, keep in zip(types, mask)] if types is not None else [row * 0 for row in ids]
    return ids, type_ids


def _embed_row(model: Any, ids: list[Any], type_ids: list[Any], position_offset: int) -> Any:
    """Sentence embeddings ``[len(ids), dim]`` of one packed row."""
    import torch

    first = model[0]
    lengths = torch.tensor([len(t) for t in ids])
    bounds = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    positions = torch.cat([torch.arange(n) for n in lengths.tolist()]) + position_offset
    longest = int(lengths.max())
    out = first.model(input_ids=torch.cat(ids)[None], token_type_ids=torch.cat(type_ids)[None], position_ids=positions[None],
                      cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=longest, max_length_k=longest)
    # The same features the library's flattened path hands to pooling.
    features: dict[str, Any] = {"token_embeddings": out.last_hidden_state, "cu_seq_lens_q": bounds, "modality": "text"}
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]


def encode_packed(model: Any, texts: Sequence[str], row_tokens: int = DEFAULT_ROW_TOKENS, normalize: bool = True) -> np.ndarray:
    """Embeddings of ``texts`` (float32 ``[n, dim]``, in order) computed in packed rows.

    Equal to ``model.encode(texts, normalize_embeddings=normalize)``; the model must be ``packable``. Tokenised by the model's own ``preprocess``, so truncation at
    ``max_seq_length`` is the library's.
    """
    import torch

    if not packable(model):
        raise ValueError("this sentence-transformers model cannot embed packed rows (see packable); use its encode()")
    first = model[0]
    _use_segments_attention(first.model)
    offset = first._infer_flatten_position_offset()  # learned-position models that start after padding_idx
    vectors: list[Any] = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(texts), TOKENIZE_GROUP):
            ids, type_ids = _unpadded(model, texts[start:start + TOKENIZE_GROUP])
            for row in pack_rows([len(t) for t in ids], row_tokens):
                embedded = _embed_row(model, [ids[i] for i in row], [type_ids[i] for i in row], offset)
                for index, vector in zip(row, embedded):
                    vectors[start + index] = vector
    embeddings = torch.stack(vectors).float()
    return (torch.nn.functional.normalize(embeddings, p=2, dim=1) if normalize else embeddings).numpy()
