"""Catch each layer's attention weights as its attention module returns them, one layer at a time.

transformers (>= 5) declares, per model, which module class returns attention weights and at which output index
(`_can_record_outputs["attentions"]`); that is the same declaration `output_attentions=True` relies on. We hook
those modules directly instead, so each layer's weights go to disk and are freed before the next layer runs,
rather than all layers being collected in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from att_report.errors import ModelError

LayerSink = Callable[[int, torch.Tensor], None]


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


def probe_attention(model: PreTrainedModel, sites: list[AttentionSite], ids: list[int], num_heads: int) -> None:
    """Run a two-token forward pass to prove every layer returns (heads, T, T) weights, before any real work."""
    probe = ids[:2]
    shapes: list[tuple[int, ...]] = []
    input_ids = torch.tensor([probe], device=model.device)
    with eager_attention(model), torch.inference_mode(), recording(sites, lambda _, w: shapes.append(tuple(w.shape))):
        model(input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False)
    expected = (1, num_heads, len(probe), len(probe))
    if len(shapes) != len(sites) or any(shape != expected for shape in shapes):
        raise ModelError(
            f"{type(model).__name__} returned attention of shapes {sorted(set(shapes))}, expected {expected} from each "
            f"of {len(sites)} layers; att-report cannot record this model's attention."
        )


@contextmanager
def recording(sites: list[AttentionSite], sink: LayerSink) -> Iterator[None]:
    """Hand each layer's weights to `sink(layer, weights)` as the forward pass produces them."""
    handles = [site.module.register_forward_hook(_hook(layer, site.index, sink)) for layer, site in enumerate(sites)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _hook(layer: int, index: int, sink: LayerSink) -> Callable[..., None]:
    def capture_output(_module: nn.Module, _args: Any, output: Any) -> None:
        weights = output[index] if isinstance(output, (tuple, list)) else None
        if weights is None:
            raise ModelError(
                f"layer {layer}'s attention module returned no weights; this model's attention implementation "
                "does not expose them."
            )
        sink(layer, weights)

    return capture_output
