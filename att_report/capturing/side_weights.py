"""Record attention beside the model's fast SDPA attention instead of switching the model to eager.

The model's output comes from its own `sdpa` function, untouched, so the hidden states are those of its normal fast
path. Beside each call, per key/value head and block of query rows, the weights softmax(Q·Kᵀ·scaling + mask) are
computed the way the model's eager attention computes them (product in the model's dtype, softmax in float32) and
handed to a sink, so no layer's whole (heads, T, T) square is ever held. A call this cannot reproduce exactly (soft
capping, attention sinks, position bias, dropout, a key/value cache, any keyword outside a known set) runs the
`fallback` (the model's own eager attention) instead, whose output and weights are then the recording's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SIDE_WEIGHTS = "sdpa-side-weights"
FAST_IMPLEMENTATION = "sdpa"
ROWS_PER_BLOCK = 256  # a block of (3 heads, 256 rows, 8k keys) in float32 is 25 MB
# Keywords that do not change what SDPA computes from query, key, value and mask (a sliding window reaches SDPA as
# the mask, which the weights take too); any other keyword, unless None, makes the call fall back.
REPRODUCIBLE_KWARGS = frozenset({"dropout", "scaling", "sliding_window", "position_ids", "cache_position",
                                 "use_cache", "is_causal", "output_attentions"})

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
BlockSink = Callable[[int, list[int], int, torch.Tensor], None]  # (layer, query heads, first row, (heads, rows, T))


def side_weights_attention(fast: AttentionFunction, fallback: AttentionFunction, layers: dict[int, int],
                           sink: BlockSink, heads: Sequence[int] | None, recorded: dict[int, str]) -> AttentionFunction:
    """An attention function that returns `fast`'s output and streams the weights of the query `heads` (None: all)
    of the modules in `layers` (module id -> layer) to `sink`, entering each such layer in `recorded`; other modules
    run `fast` alone, and calls it cannot reproduce run `fallback`."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        layer = layers.get(id(module))
        if layer is None:
            return fast(module, query, key, value, attention_mask, **kwargs)
        if not reproducible(module, query, key, value, attention_mask, kwargs):
            return fallback(module, query, key, value, attention_mask, **kwargs)
        output = fast(module, query, key, value, attention_mask, **kwargs)
        for block_heads, first_row, weights in weight_blocks(module, query, key, attention_mask, kwargs, heads):
            sink(layer, block_heads, first_row, weights)
        recorded[layer] = SIDE_WEIGHTS
        return output

    return attention


def reproducible(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Whether weight_blocks gives exactly the weights SDPA used for this call."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or query.shape[0] != 1:
        return False
    heads, kv_heads, rows = query.shape[1], key.shape[1], query.shape[2]
    mask_fits = attention_mask is None or (
        attention_mask.dim() == 4 and attention_mask.shape[1] in (1, heads) and attention_mask.shape[2] in (1, rows)
        and attention_mask.shape[3] == key.shape[2])
    return (mask_fits and key.shape[2] == rows and value.shape[1] == kv_heads and heads % kv_heads == 0
            and not module.training and not kwargs.get("dropout")
            and REPRODUCIBLE_KWARGS.issuperset(name for name, given in kwargs.items() if given is not None))


def weight_blocks(module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                  kwargs: dict[str, Any], wanted: Sequence[int] | None,
                  rows: int | None = None) -> Iterator[tuple[list[int], int, torch.Tensor]]:
    """Yield (query heads, first row, float32 weights (heads, rows, T)) per key/value head and block of `rows` rows
    (default ROWS_PER_BLOCK)."""
    rows = rows or ROWS_PER_BLOCK
    heads, kv_heads, length = query.shape[1], key.shape[1], query.shape[2]
    group = heads // kv_heads
    scaling = kwargs.get("scaling")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = attention_mask is None and length > 1 and bool(is_causal)  # as sdpa_attention_forward decides
    chosen = set(range(heads) if wanted is None else wanted)
    for kv_head in range(kv_heads):
        block_heads = [head for head in range(kv_head * group, (kv_head + 1) * group) if head in chosen]
        if not block_heads:
            continue
        queries, keys = query[0, block_heads], key[0, kv_head]
        for first in range(0, length, rows):
            end = min(length, first + rows)
            width = end if causal else length  # keys after the last row are masked for a causal block
            scores = torch.matmul(queries[:, first:end], keys[:width].transpose(0, 1)) * scaling
            if causal:
                positions = torch.arange(width, device=query.device)
                scores = scores.masked_fill(positions > positions[first:end, None], float("-inf"))
            elif attention_mask is not None:
                scores = _masked(scores, _mask_block(attention_mask, block_heads, first, end))
            weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype).float()
            yield block_heads, first, nn.functional.pad(weights, (0, length - width))


def _mask_block(mask: torch.Tensor, heads: list[int], first: int, end: int) -> torch.Tensor:
    """The part of a (1, 1 or heads, 1 or rows, T) mask over `heads` and rows first..end."""
    mask = mask[0, heads] if mask.shape[1] > 1 else mask[0]
    return mask if mask.shape[1] == 1 else mask[:, first:end]


def _masked(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Apply a mask as SDPA does: a boolean one keeps True, a float one is added."""
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


@contextmanager
def attention_function_replaced(name: str, function: AttentionFunction) -> Iterator[None]:
    """Route the models' `name` attention calls to `function` for a while (transformers looks the name up per call),
    then put back exactly what was there, even after an error."""
    local = ALL_ATTENTION_FUNCTIONS._local_mapping  # the instance's overrides, over the class-wide mapping
    missing = object()
    previous = local.get(name, missing)
    local[name] = function
    try:
        yield
    finally:
        if previous is missing:
            del local[name]
        else:
            local[name] = previous
