"""Catch each layer's attention weights as the forward pass computes them, one block at a time.

transformers (>= 5) declares, per model, which module class returns attention weights and at which output index
(`_can_record_outputs["attentions"]`); that is the same declaration `output_attentions=True` relies on. We hook
those modules directly instead, so each layer's weights go to disk and are freed before the next layer runs,
rather than all layers being collected in memory.

Three ways to record, best first; a probe on a short prefix picks, per model, the best one that reproduces eager
attention's weights and gives the model's output as its fast path does (within float rounding for side weights):
- sdpa-side-weights (side_weights.py): each SDPA attention call is replaced by its weights, computed a block of
  rows at a time, and their product with V;
- head-chunked eager: eager attention, run on a few heads at a time, so the peak is a chunk of heads, not a layer;
- eager: the model's eager attention, whole, each layer's weights taken from its attention module's output.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from att_report.capturing.generation import generate_every_step
from att_report.capturing.side_weights import (
    FAST_IMPLEMENTATION,
    SIDE_WEIGHTS,
    AttentionFunction,
    BlockSink,
    SideWeightsAttention,
    attention_function_replaced,
)
from att_report.errors import ModelError

EAGER = "eager"
HEAD_CHUNKED = "head-chunked eager"
PROBE_TOKENS = 16
PROBE_STEPS = 3  # tokens the generation probe generates after half the probe's tokens (each a call over the cache)
# How far a float32 model's recorded weights may be from its eager attention's: side weights come from a differently
# blocked product, whose float32 rounding (a few units in the last place of a logit, amplified by exp) shows.
FLOAT32_TOLERANCE = 1e-5
OUTPUT_TOLERANCE = 1e-3  # how far the side-weights pass's logits may be from the fast path's (float rounding only)
# Keyword arguments of an attention call that are the same for every head, so a chunk of heads may take them as
# they are; any other (softcap, attention sinks, position bias, ...) makes that call run whole, as plain eager.
HEAD_INDEPENDENT_KWARGS = frozenset({"dropout", "scaling", "sliding_window", "position_ids", "cache_position",
                                     "use_cache", "encoder_hidden_states", "is_causal", "output_attentions"})


@dataclass(frozen=True)
class AttentionSite:
    """One module whose output at `index` is a layer's attention weights (batch, heads, query, key)."""

    name: str
    module: nn.Module
    index: int


def find_attention_sites(model: PreTrainedModel, num_layers: int) -> list[AttentionSite]:
    """List the modules that return attention weights, in layer order, or say why there are none."""
    sites: list[AttentionSite] = []
    for owner_name, owner in model.named_modules():
        if not isinstance(owner, PreTrainedModel):
            continue
        for spec in _attention_specs(owner):
            sites.extend(_matching_sites(owner, owner_name, spec))
    unique = list({id(site.module): site for site in sites}.values())
    if len(unique) != num_layers:
        raise ModelError(
            f"{type(model).__name__} does not declare one attention-weight output per layer "
            f"(found {len(unique)} for {num_layers} layers), so att-report cannot record its attention; "
            "use a model supported by transformers' output_attentions."
        )
    return unique


def _attention_specs(owner: PreTrainedModel) -> list[Any]:
    declared = (getattr(type(owner), "_can_record_outputs", None) or {}).get("attentions")
    if declared is None:
        return []
    return declared if isinstance(declared, list) else [declared]


def _matching_sites(owner: PreTrainedModel, owner_name: str, spec: Any) -> Iterator[AttentionSite]:
    """Resolve one declaration (a class, a class-name suffix, or an OutputRecorder) to modules."""
    target_class = spec if isinstance(spec, type) else getattr(spec, "target_class", None)
    class_name = spec if isinstance(spec, str) else getattr(spec, "class_name", None)
    layer_name = getattr(spec, "layer_name", None)
    index = getattr(spec, "index", 1) if not isinstance(spec, (type, str)) else 1
    for name, module in owner.named_modules(prefix=owner_name):
        matches_class = target_class is not None and isinstance(module, target_class)
        matches_name = class_name is not None and name.endswith(class_name)
        if not (matches_class or matches_name):
            continue
        if layer_name is not None and f".{layer_name.strip('.')}." not in f"{name}.":
            continue
        yield AttentionSite(name=name, module=module, index=index)


@contextmanager
def eager_attention(model: PreTrainedModel) -> Iterator[None]:
    """Run with eager attention, the implementation that returns weights, then restore the fast one."""
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError, AttributeError) as error:
        raise ModelError(f"{type(model).__name__} cannot run eager attention, so its weights are unavailable ({error}).")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def probe_attention(model: PreTrainedModel, sites: list[AttentionSite], ids: list[int], num_heads: int) -> str:
    """Run a short forward pass to prove every layer returns (heads, T, T) weights, before any real work; return the
    best method (SIDE_WEIGHTS, HEAD_CHUNKED, EAGER) whose weights equal eager's (within the model dtype's tolerance
    for side weights, bit for bit for chunks of eager) and whose output is the model's plain pass's (within
    OUTPUT_TOLERANCE for side weights, which compute it from their own weights; bit for bit for chunks of eager)."""
    input_ids = torch.tensor([ids[:PROBE_TOKENS]], device=model.device)
    eager = _probe_pass(model, sites, input_ids, EAGER)
    expected = (num_heads, input_ids.shape[1], input_ids.shape[1])
    shapes = [tuple(weights.shape) for weights in eager.layers]
    if len(shapes) != len(sites) or any(shape != expected for shape in shapes):
        raise ModelError(
            f"{type(model).__name__} returned attention of shapes {sorted(set(shapes))}, expected {expected} from each "
            f"of {len(sites)} layers; att-report cannot record this model's attention."
        )
    if model.config._attn_implementation == FAST_IMPLEMENTATION:
        with torch.inference_mode():
            plain = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)[0]
        side = _try_probe_pass(model, sites, input_ids, SIDE_WEIGHTS)
        if side is not None and side.matches(eager, _tolerance(plain.dtype)) and torch.allclose(
                side.output.float(), plain.float(), rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE):
            return SIDE_WEIGHTS
    chunked = _try_probe_pass(model, sites, input_ids, HEAD_CHUNKED)
    return HEAD_CHUNKED if chunked is not None and chunked.matches(eager, 0.0) else EAGER


def records_while_generating(model: PreTrainedModel, sites: list[AttentionSite], ids: list[int]) -> bool:
    """Whether side weights recorded inside `generate` (the prompt's rows in its first call, then one row per
    token over its key/value cache) give eager attention's weights for every row of the sequence, proved on a short
    generation from the prompt's first tokens; any error or difference means no."""
    prompt = ids[:PROBE_TOKENS // 2]
    blocks, keep = _kept_blocks()
    try:
        with recording(model, sites, keep, SIDE_WEIGHTS, sdpa_output=True) as log:
            completion, _, _ = generate_every_step(model, prompt, PROBE_STEPS, {"do_sample": False},
                                                   at_least=PROBE_STEPS)
        recorded = [_assembled(blocks[layer]) for layer in sorted(blocks)]
    except Exception:  # noqa: BLE001 (a model that cannot record this way records in a pass after generating)
        return False
    eager = _probe_pass(model, sites, torch.tensor([prompt + completion], device=model.device), EAGER)
    return set(log.methods.values()) == {SIDE_WEIGHTS} and _same_weights(recorded, eager.layers,
                                                                         _tolerance(eager.output.dtype))


def _tolerance(dtype: torch.dtype) -> float:
    """How far side weights may be from eager's: FLOAT32_TOLERANCE, or one rounding step of a half-precision model's
    weights."""
    return FLOAT32_TOLERANCE if dtype == torch.float32 else float(torch.finfo(dtype).eps)


@dataclass
class _ProbeResult:
    """Each layer's weights (heads, T, T) and the model's output of one probe pass, and how each layer recorded."""

    layers: list[torch.Tensor]
    output: torch.Tensor
    log: RecordingLog

    def matches(self, other: _ProbeResult, tolerance: float) -> bool:
        """Whether every layer was recorded by this pass's method, with weights within `tolerance` of `other`'s
        (eager's); a tolerance of 0 asks for the weights and the output bit for bit."""
        if set(self.log.methods.values()) != {self.log.method}:
            return False
        if tolerance == 0:
            return torch.equal(self.output, other.output) and _same_weights(self.layers, other.layers, 0.0)
        return _same_weights(self.layers, other.layers, tolerance)


def _same_weights(mine: list[torch.Tensor], theirs: list[torch.Tensor], tolerance: float) -> bool:
    """Whether two passes' layers have the same shapes and weights within `tolerance` (0: bit for bit)."""
    return len(mine) == len(theirs) and all(
        one.shape == other.shape and (torch.equal(one, other) if tolerance == 0
                                      else float((one.float() - other.float()).abs().max()) <= tolerance)
        for one, other in zip(mine, theirs))


def _try_probe_pass(model: PreTrainedModel, sites: list[AttentionSite], input_ids: torch.Tensor,
                    method: str) -> _ProbeResult | None:
    try:
        return _probe_pass(model, sites, input_ids, method)
    except Exception:  # noqa: BLE001 (any failure of a faster method only means this model records another way)
        return None


def _probe_pass(model: PreTrainedModel, sites: list[AttentionSite], input_ids: torch.Tensor,
                method: str) -> _ProbeResult:
    blocks, keep = _kept_blocks()
    with torch.inference_mode(), recording(model, sites, keep, method) as log:
        output = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)[0]
    return _ProbeResult(layers=[_assembled(blocks[layer]) for layer in sorted(blocks)], output=output, log=log)


def _kept_blocks() -> tuple[dict[int, list[tuple[list[int], int, torch.Tensor]]], BlockSink]:
    """A sink that keeps every block, and the per-layer lists it keeps them in."""
    blocks: dict[int, list[tuple[list[int], int, torch.Tensor]]] = {}

    def keep(layer: int, heads: list[int], first_row: int, weights: torch.Tensor) -> None:
        blocks.setdefault(layer, []).append((heads, first_row, weights.clone()))

    return blocks, keep


def _assembled(blocks: list[tuple[list[int], int, torch.Tensor]]) -> torch.Tensor:
    """One layer's weights from its blocks (a whole layer's weights as given, whatever their shape)."""
    if len(blocks) == 1:
        return blocks[0][2]
    length = max(first_row + weights.shape[1] for _, first_row, weights in blocks)
    square = blocks[0][2].new_zeros((1 + max(max(heads) for heads, _, _ in blocks), length, length))
    for heads, first_row, weights in blocks:
        square[heads, first_row:first_row + weights.shape[1], :weights.shape[2]] = weights
    return square


@dataclass
class RecordingLog:
    """How each recorded layer was recorded (SIDE_WEIGHTS, HEAD_CHUNKED or EAGER): where a call could not take the
    pass's method, it fell back."""

    method: str
    methods: dict[int, str] = field(default_factory=dict)

    def implementation(self) -> str:
        """Name what recorded the attention, for the manifest: the method, and any layers recorded otherwise."""
        counts = Counter(self.methods.values())
        others = [f"{name} in {count} of {len(self.methods)} layers" for name, count in sorted(counts.items())
                  if name != self.method]
        return f"{self.method} ({'; '.join(others)})" if others else self.method


@contextmanager
def recording(model: PreTrainedModel, sites: list[AttentionSite], sink: BlockSink, method: str,
              layers: Sequence[int] | None = None, heads: Sequence[int] | None = None, *,
              sdpa_output: bool = False) -> Iterator[RecordingLog]:
    """Run the model's forward passes inside with `method` (SIDE_WEIGHTS, HEAD_CHUNKED or EAGER), handing the
    weights of the query `heads` (None: all) of `layers` (None: all) to `sink` (side_weights.BlockSink); restore the
    model's attention implementation and transformers' attention functions afterwards, whatever happens. With
    `sdpa_output`, side weights leave every call's output to SDPA, so the model computes exactly what it does
    unrecorded."""
    log = RecordingLog(method)
    chosen = range(len(sites)) if layers is None else layers
    modules = {id(sites[layer].module): layer for layer in chosen}
    with ExitStack() as stack:
        for layer in chosen:
            handle = sites[layer].module.register_forward_hook(_hook(layer, sites[layer].index, sink, log, heads))
            stack.callback(handle.remove)
        eager = _chunked_attention(modules, sink, log.methods, heads)
        side = None
        if method == SIDE_WEIGHTS:
            side = SideWeightsAttention(_fast_function(model), eager, modules, sink, heads, log.methods,
                                        own_output=model.dtype == torch.float32 and not sdpa_output)
            stack.enter_context(attention_function_replaced(FAST_IMPLEMENTATION, side))
        else:
            stack.enter_context(eager_attention(model))
            if method == HEAD_CHUNKED:
                stack.enter_context(attention_function_replaced(EAGER, eager))
        yield log
        if side is not None:
            side.flush()  # generation steps' queries still waiting for their weights


def _fast_function(model: PreTrainedModel) -> AttentionFunction:
    if model.config._attn_implementation != FAST_IMPLEMENTATION:
        raise ModelError(f"{SIDE_WEIGHTS} needs the model on {FAST_IMPLEMENTATION} attention, not "
                         f"{model.config._attn_implementation}.")
    return ALL_ATTENTION_FUNCTIONS[FAST_IMPLEMENTATION]


def _hook(layer: int, index: int, sink: BlockSink, log: RecordingLog,
          heads: Sequence[int] | None) -> Callable[..., None]:
    def capture_output(_module: nn.Module, _args: Any, output: Any) -> None:
        weights = output[index] if isinstance(output, (tuple, list)) else None
        if weights is None:
            if layer in log.methods:
                return  # recorded block by block, while the module ran
            raise ModelError(
                f"layer {layer}'s attention module returned no weights; this model's attention implementation "
                "does not expose them."
            )
        log.methods[layer] = EAGER
        _emit(sink, layer, 0, 0, weights[0], heads)

    return capture_output


def _emit(sink: BlockSink, layer: int, first_head: int, first_row: int, weights: torch.Tensor,
          heads: Sequence[int] | None) -> None:
    """Hand the chosen heads among heads first_head.. of `weights` to the sink, if any."""
    present = range(first_head, first_head + weights.shape[0])
    chosen = list(present) if heads is None else [head for head in heads if head in present]
    if chosen:
        sink(layer, chosen, first_row, weights if heads is None else weights[[head - first_head for head in chosen]])


def _chunked_attention(layers: dict[int, int], sink: BlockSink, recorded: dict[int, str],
                       heads: Sequence[int] | None) -> AttentionFunction:
    """An eager attention function that runs the model's own one on chunks of heads and hands each chunk's weights
    to `sink` (entering the layer in `recorded`), returning no weights; calls it cannot split exactly run whole and
    return their weights as usual."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        own = _own_eager(module)
        layer = layers.get(id(module))
        chunks = _head_chunks(module, query, key, value, attention_mask, kwargs)
        if layer is None or not chunks:
            return own(module, query, key, value, attention_mask, **kwargs)
        query_heads, kv_heads = query.shape[1], key.shape[1]
        outputs = []
        for first_kv, end_kv in chunks:
            first, end = first_kv * query_heads // kv_heads, end_kv * query_heads // kv_heads
            mask = attention_mask
            if mask is not None and mask.shape[1] == query_heads > 1:
                mask = mask[:, first:end]
            output, weights = own(module, query[:, first:end], key[:, first_kv:end_kv], value[:, first_kv:end_kv],
                                  mask, **kwargs)
            _emit(sink, layer, first, 0, weights[0], heads)
            del weights
            outputs.append(output)
        recorded[layer] = HEAD_CHUNKED
        return torch.cat(outputs, dim=2), None

    return attention


def _own_eager(module: nn.Module) -> AttentionFunction:
    """The eager attention function of the module's own modeling file, the one transformers calls for it."""
    function = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if function is None:
        raise ModelError(f"{type(module).__name__} has no eager_attention_forward to record head-chunked.")
    return function


def _head_chunks(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> list[tuple[int, int]]:
    """Split the key/value heads into chunks whose eager attention equals the whole call's, or give none.

    A chunk holds one key/value head with its group of query heads, or two key/value heads where each has one query
    head: on CPU a matrix product over a single head can take a different kernel than over a batch of heads and
    round differently, so no chunk has a single head (a lone last head joins the chunk before it).
    """
    heads, kv_heads = query.shape[1], key.shape[1]
    splittable = (
        query.dim() == key.dim() == value.dim() == 4 and value.shape[1] == kv_heads and heads % kv_heads == 0
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] in (1, heads)))
        and not module.training and not kwargs.get("dropout") and HEAD_INDEPENDENT_KWARGS.issuperset(kwargs)
    )
    per_chunk = 1 if heads > kv_heads else 2
    if not splittable or kv_heads < 2 * per_chunk:
        return []
    starts = list(range(0, kv_heads - per_chunk + 1, per_chunk))
    return list(zip(starts, [*starts[1:], kv_heads]))
