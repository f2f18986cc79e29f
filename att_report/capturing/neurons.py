"""Neuron activations: per layer, the hidden units of the layer's output that vary most across the tokens.

A layer's output is its residual-stream hidden state (what transformers returns as `output_hidden_states[l + 1]`;
for the last layer, the value before the model's final norm). Units are ranked by their variance over the
sequence; each layer keeps the top K with their value at every token, computed as the layer runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from att_report.errors import ModelError, UsageError


@dataclass
class NeuronRecorder:
    """Collect the top-K varying units of each layer's output during a forward pass."""

    k: int
    units: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, hidden: torch.Tensor) -> None:
        """Keep this layer's K most varying units (ties go to the lower unit index)."""
        states = hidden[0].detach().to("cpu", torch.float32).numpy()
        variance = states.var(axis=0)
        order = np.lexsort((np.arange(variance.size), -variance))[: self.k]
        self.units.append(order.astype(np.int32))
        self.values.append(states[:, order])

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Return units (layers, K) and values (layers, T, K)."""
        return np.stack(self.units), np.stack(self.values).astype(np.float32)


def check_neuron_count(k: int, hidden_size: int) -> None:
    if not 1 <= k <= hidden_size:
        raise UsageError(f"--neurons {k} is out of range; give a number from 1 to the hidden size, {hidden_size}.")


def layer_modules(model: PreTrainedModel, num_layers: int) -> list[torch.nn.Module]:
    """Find the decoder or encoder layers, from the class transformers records hidden states from."""
    layers: list[torch.nn.Module] = []
    for owner in model.modules():
        if not isinstance(owner, PreTrainedModel):
            continue
        declared = (getattr(type(owner), "_can_record_outputs", None) or {}).get("hidden_states")
        target = declared if isinstance(declared, type) else getattr(declared, "target_class", None)
        if target is not None:
            layers.extend(module for module in owner.modules() if isinstance(module, target))
    unique = list({id(module): module for module in layers}.values())
    if len(unique) != num_layers:
        raise ModelError(f"found {len(unique)} layer modules for {num_layers} layers, so --neurons cannot be recorded for this model.")
    return unique


@contextmanager
def recording_neurons(layers: list[torch.nn.Module], recorder: NeuronRecorder) -> Iterator[None]:
    """Hand each layer's output hidden state to `recorder` as the forward pass produces it."""
    def hook(_module: Any, _args: Any, output: Any) -> None:
        recorder.add(output[0] if isinstance(output, (tuple, list)) else output)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
