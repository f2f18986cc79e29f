"""Catch each layer's attention weights as the forward pass computes them, one layer at a time.

transformers (>= 5) declares, per model, which module class returns attention weights and at which output index
(`_can_record_outputs["attentions"]`); that is the same declaration `output_attentions=True` relies on. We hook
those modules directly instead, so each layer's weights go to disk and are freed before the next layer runs,
rather than all layers being collected in memory.

Eager attention holds a whole layer's scores and softmax at once. Where a probe shows it changes nothing, the
recording pass instead runs the model's own eager attention function on a few heads at a time (head-chunked), so
the peak is one chunk of heads, not a layer.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from att_report.errors import ModelError

LayerSink = Callable[[int, int, torch.Tensor], None]  # (layer, first head, weights of heads first.. as (heads, q, k))
EagerFunction = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
HEAD_CHUNKED = "head-chunked eager"
PROBE_TOKENS = 16
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


def probe_attention(model: PreTrainedModel, sites: list[AttentionSite], ids: list[int], num_heads: int) -> bool:
    """Run a short forward pass to prove every layer returns (heads, T, T) weights, before any real work; say whether
    head-chunked recording gives the same weights and output as eager, bit for bit (else recording stays eager)."""
    input_ids = torch.tensor([ids[:PROBE_TOKENS]], device=model.device)
    eager = _probe_pass(model, sites, input_ids, chunked=False)
    expected = (num_heads, input_ids.shape[1], input_ids.shape[1])
    shapes = [tuple(weights.shape) for weights in eager.layers]
    if len(shapes) != len(sites) or any(shape != expected for shape in shapes):
        raise ModelError(
            f"{type(model).__name__} returned attention of shapes {sorted(set(shapes))}, expected {expected} from each "
            f"of {len(sites)} layers; att-report cannot record this model's attention."
        )
    try:
        chunked = _probe_pass(model, sites, input_ids, chunked=True)
    except Exception:  # noqa: BLE001 (any failure of the chunked path only means this model records plain eager)
        return False
    return chunked.matches(eager) and len(chunked.log.chunked) == len(sites)


@dataclass
class _ProbeResult:
    """Each layer's weights (heads, T, T) and the model's output of one probe pass."""

    layers: list[torch.Tensor]
    output: torch.Tensor
    log: RecordingLog

    def matches(self, other: _ProbeResult) -> bool:
        if len(self.layers) != len(other.layers):
            return False
        pairs = [(self.output, other.output), *zip(self.layers, other.layers)]
        return all(torch.equal(mine, theirs) for mine, theirs in pairs)


def _probe_pass(model: PreTrainedModel, sites: list[AttentionSite], input_ids: torch.Tensor,
                chunked: bool) -> _ProbeResult:
    chunks: dict[int, list[torch.Tensor]] = {}

    def keep(layer: int, _first: int, weights: torch.Tensor) -> None:
        chunks.setdefault(layer, []).append(weights.clone())

    with eager_attention(model), torch.inference_mode(), recording(sites, keep, chunked) as log:
        output = model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)[0]
    layers = [torch.cat(chunks[layer]) for layer in sorted(chunks)]
    return _ProbeResult(layers=layers, output=output, log=log)


@dataclass
class RecordingLog:
    """Which layers a recording pass recorded head-chunked; the others came whole from eager attention."""

    chunked: set[int] = field(default_factory=set)

    def implementation(self, num_layers: int) -> str:
        """Name what recorded the attention, for the manifest."""
        if not self.chunked:
            return "eager"
        if len(self.chunked) == num_layers:
            return HEAD_CHUNKED
        return f"eager ({HEAD_CHUNKED} in {len(self.chunked)} of {num_layers} layers)"


@contextmanager
def recording(sites: list[AttentionSite], sink: LayerSink, chunked: bool) -> Iterator[RecordingLog]:
    """Hand each layer's weights to `sink(layer, first_head, weights)` as the forward pass produces them: in chunks
    of heads where `chunked` (under eager attention), else whole from each attention module's output."""
    log = RecordingLog()
    handles = [site.module.register_forward_hook(_hook(layer, site.index, sink, log))
               for layer, site in enumerate(sites)]
    layers = {id(site.module): layer for layer, site in enumerate(sites)}
    try:
        with _eager_replaced(_chunked_attention(layers, sink, log)) if chunked else nullcontext():
            yield log
    finally:
        for handle in handles:
            handle.remove()


def _hook(layer: int, index: int, sink: LayerSink, log: RecordingLog) -> Callable[..., None]:
    def capture_output(_module: nn.Module, _args: Any, output: Any) -> None:
        if layer in log.chunked:
            return
        weights = output[index] if isinstance(output, (tuple, list)) else None
        if weights is None:
            raise ModelError(
                f"layer {layer}'s attention module returned no weights; this model's attention implementation "
                "does not expose them."
            )
        sink(layer, 0, weights[0])

    return capture_output


@contextmanager
def _eager_replaced(attention: EagerFunction) -> Iterator[None]:
    """Route the models' eager attention calls to `attention` for a while (transformers looks the name up per call)."""
    ALL_ATTENTION_FUNCTIONS["eager"] = attention
    try:
        yield
    finally:
        del ALL_ATTENTION_FUNCTIONS["eager"]


def _chunked_attention(layers: dict[int, int], sink: LayerSink, log: RecordingLog) -> EagerFunction:
    """An eager attention function that runs the model's own one on chunks of heads and hands each chunk's weights
    to `sink`, returning no weights; calls it cannot split exactly run whole and return their weights as usual."""

    def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        own = _own_eager(module)
        layer = layers.get(id(module))
        chunks = _head_chunks(module, query, key, value, attention_mask, kwargs)
        if layer is None or not chunks:
            return own(module, query, key, value, attention_mask, **kwargs)
        heads, kv_heads = query.shape[1], key.shape[1]
        outputs = []
        for first_kv, end_kv in chunks:
            first, end = first_kv * heads // kv_heads, end_kv * heads // kv_heads
            mask = attention_mask
            if mask is not None and mask.shape[1] == heads > 1:
                mask = mask[:, first:end]
            output, weights = own(module, query[:, first:end], key[:, first_kv:end_kv], value[:, first_kv:end_kv],
                                  mask, **kwargs)
            sink(layer, first, weights[0])
            del weights
            outputs.append(output)
        log.chunked.add(layer)
        return torch.cat(outputs, dim=2), None

    return attention


def _own_eager(module: nn.Module) -> EagerFunction:
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
