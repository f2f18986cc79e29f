"""Record attention in place of the model's SDPA attention calls, a block of query rows at a time, instead of
switching the model to eager.

Per block of query rows, the weights softmax(Q·Kᵀ·scaling + mask) are computed the way the model's eager attention
computes them (product in the model's dtype, softmax in float32) and handed to a sink, so no layer's whole
(heads, T, T) square is ever held at length. Where every head is recorded, the call's output is those weights times
V, block by block, as eager attention computes it: running SDPA as well would compute every product twice (at 8k
tokens SDPA is 60% of the forward pass). The output then differs from SDPA's by float rounding only (the probe checks
it). Where only some heads are recorded, the model is not float32 (where that rounding is coarser and has not been
measured), or the caller needs SDPA's output bit for bit (recording while generating, so the tokens are plain
`generate`'s), the output is SDPA's own. All stored heads share a block: each block costs a few operations, and on a
CPU shared with the writer thread their count, not their size, dominates. Calls during generation, whose queries
follow the cached keys, give their rows at their positions. A call this cannot reproduce exactly (soft capping,
attention sinks, position bias, dropout, several queries after cached keys with no mask, any keyword outside a known
set) runs the `fallback` (the model's own eager attention) instead, whose output and weights are then the
recording's."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SIDE_WEIGHTS = "sdpa-side-weights"
FAST_IMPLEMENTATION = "sdpa"
# The most float32 weights in a block: at 8k tokens, 9 heads x 64 rows. Below glibc's largest heap block
# (heap.HEAP_BLOCK_BYTES), so each block reuses the last one's pages instead of faulting fresh ones in.
BLOCK_BYTES = 24 << 20
ROW_MULTIPLE = 64
BLOCKS_AT_LEAST = 4
# Keywords that do not change what SDPA computes from query, key, value and mask (a sliding window reaches SDPA as
# the mask, which the weights take too); any other keyword, unless None, makes the call fall back.
REPRODUCIBLE_KWARGS = frozenset({"dropout", "scaling", "sliding_window", "position_ids", "cache_position",
                                 "use_cache", "is_causal", "output_attentions"})

AttentionFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
# (layer, query heads, first row, weights (heads, rows, keys)); keys is T, or for a causal block at least last row + 1
BlockSink = Callable[[int, list[int], int, torch.Tensor], None]


class SideWeightsAttention:
    """An attention function that streams the weights of the query `heads` (None: all) of the modules in `layers`
    (module id -> layer) to `sink`, entering each such layer in `recorded`, and returns their output where
    `own_output` and every head is recorded, else `fast`'s; other modules run `fast` alone, and calls it cannot
    reproduce run `fallback`.

    A generation step's single query, whose output is SDPA's, waits: its weights are computed with the layer's next
    ones, up to a store row block (ROW_MULTIPLE rows) at a time, over the keys of the last step, which hold every
    earlier key. One product for 64 rows costs what one for a single row does, and while generating a torch call's
    fixed cost, not its size, dominates; the store's writer also takes a row block at once. `flush` hands over what
    is still waiting (recorder.recording does, when the model's calls are done)."""

    def __init__(self, fast: AttentionFunction, fallback: AttentionFunction, layers: dict[int, int], sink: BlockSink,
                 heads: Sequence[int] | None, recorded: dict[int, str], own_output: bool = True) -> None:
        self.fast, self.fallback, self.layers, self.sink = fast, fallback, layers, sink
        self.heads, self.recorded, self.own_output = heads, recorded, own_output
        self.waiting: dict[int, _WaitingQueries] = {}

    def __call__(self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        layer = self.layers.get(id(module))
        if layer is None:
            return self.fast(module, query, key, value, attention_mask, **kwargs)
        if not reproducible(module, query, key, value, attention_mask, kwargs):
            return self.fallback(module, query, key, value, attention_mask, **kwargs)
        self.recorded[layer] = SIDE_WEIGHTS
        earlier = key.shape[2] - query.shape[2]  # positions before the first query: a key/value cache's
        if not self.own_output or (self.heads is not None and len(self.heads) < query.shape[1]):
            output = self.fast(module, query, key, value, attention_mask, **kwargs)
            if earlier and attention_mask is None:  # a generation step: one query, which sees every key
                self._wait(layer, module, query, key, kwargs)
            else:
                self._flush(layer)
                self._hand_over(layer, module, query, key, attention_mask, kwargs)
            return output
        self._flush(layer)
        values = _per_query_head(value, range(query.shape[1]), query.shape[1])
        output = query.new_empty(query.shape[1:])
        for block_heads, first_row, weights in weight_blocks(module, query, key, attention_mask, kwargs, None):
            self.sink(layer, block_heads, earlier + first_row, weights)
            torch.matmul(weights, values[:, :weights.shape[2]], out=output[:, first_row:first_row + weights.shape[1]])
        return output.transpose(0, 1).unsqueeze(0).contiguous(), None

    def flush(self) -> None:
        """Hand over the weights of every query still waiting."""
        for layer in sorted(self.waiting):
            self._flush(layer)

    def _wait(self, layer: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
              kwargs: dict[str, Any]) -> None:
        waiting = self.waiting.setdefault(layer, _WaitingQueries(module, kwargs))
        waiting.queries.append(query.clone())
        waiting.keys = key  # a cache only adds keys: the earlier positions' keys never change
        if key.shape[2] % ROW_MULTIPLE == 0:
            self._flush(layer)

    def _flush(self, layer: int) -> None:
        waiting = self.waiting.pop(layer, None)
        if waiting is not None:
            self._hand_over(layer, waiting.module, torch.cat(waiting.queries, dim=2), waiting.keys, None,
                            waiting.kwargs)

    def _hand_over(self, layer: int, module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                   attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> None:
        earlier = key.shape[2] - query.shape[2]
        for block_heads, first_row, weights in weight_blocks(module, query, key, attention_mask, kwargs, self.heads):
            self.sink(layer, block_heads, earlier + first_row, weights)


@dataclass
class _WaitingQueries:
    """A layer's generation-step queries whose weights are not computed yet, with the keys of the last one."""

    module: nn.Module
    kwargs: dict[str, Any]
    queries: list[torch.Tensor] = field(default_factory=list)
    keys: torch.Tensor | None = None


def reproducible(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Whether weight_blocks gives exactly the weights SDPA used for this call. Queries fewer than the keys are the
    last positions (a key/value cache holds the keys before them): with a mask, or a single query, which sees every
    key; without a mask SDPA would align several such queries causally to the first keys instead."""
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4 or query.shape[0] != 1:
        return False
    heads, kv_heads, rows = query.shape[1], key.shape[1], query.shape[2]
    mask_fits = attention_mask is None or (
        attention_mask.dim() == 4 and attention_mask.shape[0] == 1 and attention_mask.shape[1] in (1, heads)
        and attention_mask.shape[2] in (1, rows) and attention_mask.shape[3] == key.shape[2])
    rows_fit = key.shape[2] == rows or (key.shape[2] > rows and (attention_mask is not None or rows == 1))
    return (mask_fits and rows_fit and value.shape[1] == kv_heads and heads % kv_heads == 0
            and not module.training and not kwargs.get("dropout")
            and REPRODUCIBLE_KWARGS.issuperset(name for name, given in kwargs.items() if given is not None))


def weight_blocks(module: nn.Module, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None,
                  kwargs: dict[str, Any], wanted: Sequence[int] | None,
                  rows: int | None = None) -> Iterator[tuple[list[int], int, torch.Tensor]]:
    """Yield (query heads, first query row, weights in the query's dtype (heads, rows, keys)) for the `wanted` heads
    (None: all) per block of `rows` query rows (default: what fits BLOCK_BYTES). keys is every key, or where SDPA
    runs causal, the block's last row + 1: the keys after it have no weight, so they are neither computed nor held."""
    heads, length, key_count = query.shape[1], query.shape[2], key.shape[2]
    chosen = list(range(heads)) if wanted is None else sorted(wanted)
    rows = rows or block_rows(len(chosen), length, key_count)
    scaling = kwargs.get("scaling")
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    is_causal = kwargs.get("is_causal")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = attention_mask is None and length > 1 and bool(is_causal)  # as sdpa_attention_forward decides
    earlier = key_count - length  # cached keys before the first query (SideWeightsAttention's waiting queries)
    if causal:
        later = torch.ones(rows, rows, dtype=torch.bool, device=query.device).triu(1)  # key after query, in a block
    # Scaled before the product, not after as eager does: the queries, not every score (for the usual power-of-2
    # scaling, the same numbers).
    queries, keys = _query_groups(query[0] * scaling, key[0], chosen)
    dim = queries.shape[-1]
    for first in range(0, length, rows):
        end = min(length, first + rows)
        width = earlier + end if causal else key_count
        block = queries[:, :, first:end].reshape(queries.shape[0], -1, dim)
        scores = torch.matmul(block, keys[:, :, :width]).view(len(chosen), end - first, width)
        if causal:  # only the block's diagonal square holds later keys
            scores[:, :, earlier + first:].masked_fill_(later[:end - first, :end - first], float("-inf"))
        elif attention_mask is not None:
            scores = _masked(scores, _mask_block(attention_mask, chosen, first, end))
        yield chosen, first, nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)


def _query_groups(queries: torch.Tensor, keys: torch.Tensor,
                  chosen: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The `chosen` of the (heads, T, dim) queries as (groups, heads per group, T, dim), beside the (groups, dim,
    keys) keys each group meets. With every head chosen, a group is a key/value head's query heads, and the keys are
    the call's own, not a copy per query head: while generating, that copy of the whole cache in every call would
    cost more than the weights themselves."""
    heads, kv_heads = queries.shape[0], keys.shape[0]
    if len(chosen) == heads:
        return queries.view(kv_heads, heads // kv_heads, *queries.shape[1:]), keys.transpose(1, 2)
    return queries[chosen].unsqueeze(1), _per_query_head(keys[None], chosen, heads).transpose(1, 2)


def _per_query_head(states: torch.Tensor, heads: Sequence[int], query_heads: int) -> torch.Tensor:
    """The (heads, T, dim) keys or values each of the query `heads` meets: its key/value head's, with grouped-query
    attention shared by a group of query_heads // key/value heads query heads."""
    return states[0, [head * states.shape[1] // query_heads for head in heads]]


def block_rows(heads: int, length: int, keys: int | None = None) -> int:
    """Rows per block of `length` query rows over `keys` keys (default as many): a multiple of 64 (the store's row
    block), at least 64, whose float32 weights fit BLOCK_BYTES, and at most a quarter of the rows, so a causal block
    skips most of the keys after it (about 3/8 of the work)."""
    fitting = BLOCK_BYTES // (4 * heads * (keys or length))
    quarter = -(-length // (BLOCKS_AT_LEAST * ROW_MULTIPLE)) * ROW_MULTIPLE
    return max(ROW_MULTIPLE, min(fitting // ROW_MULTIPLE * ROW_MULTIPLE, quarter))


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
