"""Neuron activations of two captures compared: per layer, the units both captures stored, over the aligned tokens.

Each capture kept its own K most varying units per layer (`capture --neurons K`), so only the units in both lists
can be compared; the others are listed per side. A unit's values are compared at the aligned tokens (see
`alignment`, prompt and completion): A's activation at a token and B's at its partner. Reads only the stores'
neuron arrays; never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from att_report.analysis.alignment import TokenAlignment, check_comparable
from att_report.store import CaptureStore


@dataclass(frozen=True)
class LayerComparison:
    """One layer: the shared units, largest mean |B - A| first (ties by unit), and the units only one side has."""

    units: np.ndarray  # (n,) unit indices stored by both captures
    a: np.ndarray  # (n, P) float32: A's activation of each shared unit at each aligned token
    b: np.ndarray  # (n, P) float32: B's, at the partner tokens
    only_a: tuple[int, ...]  # A's units that B did not store, in A's order (most varying first)
    only_b: tuple[int, ...]

    @property
    def difference(self) -> np.ndarray:
        """B - A in float64, (n, P)."""
        return self.b.astype(np.float64) - self.a.astype(np.float64)

    @property
    def mean_abs_difference(self) -> np.ndarray:
        """Per unit, the mean |B - A| over the aligned tokens, (n,)."""
        return _mean_abs_difference(self.a, self.b)


@dataclass(frozen=True)
class NeuronComparison:
    """Every layer's comparison over the same aligned tokens."""

    pairs: np.ndarray  # (P, 2) aligned token indices (in A, in B), in sequence order
    prompt_pairs: int  # the first this many pairs lie inside both prompts
    layers: tuple[LayerComparison, ...]


def neuron_differences(store_a: CaptureStore, store_b: CaptureStore,
                       alignment: TokenAlignment) -> NeuronComparison | None:
    """Compare the shared units of each layer at the aligned tokens; None unless both captures stored neurons."""
    check_comparable(store_a, store_b)
    neurons_a, neurons_b = store_a.neurons(), store_b.neurons()
    if neurons_a is None or neurons_b is None:
        return None
    pairs = np.array(alignment.pairs, dtype=np.int64).reshape(-1, 2)
    inside = (pairs[:, 0] < store_a.prompt_length) & (pairs[:, 1] < store_b.prompt_length)
    layers = tuple(_layer(units_a, values_a[pairs[:, 0]], units_b, values_b[pairs[:, 1]])
                   for units_a, values_a, units_b, values_b in zip(*neurons_a, *neurons_b))
    return NeuronComparison(pairs=pairs, prompt_pairs=int(inside.sum()), layers=layers)


def _layer(units_a: np.ndarray, values_a: np.ndarray, units_b: np.ndarray, values_b: np.ndarray) -> LayerComparison:
    """Match one layer's units by index; `values_*` are (P, K) at the aligned tokens."""
    shared, slots_a, slots_b = np.intersect1d(units_a, units_b, assume_unique=True, return_indices=True)
    a, b = values_a[:, slots_a].T, values_b[:, slots_b].T
    order = np.lexsort((shared, -_mean_abs_difference(a, b)))
    kept = set(shared.tolist())
    return LayerComparison(
        units=shared[order].astype(np.int64),
        a=np.ascontiguousarray(a[order], dtype=np.float32),
        b=np.ascontiguousarray(b[order], dtype=np.float32),
        only_a=tuple(int(unit) for unit in units_a if int(unit) not in kept),
        only_b=tuple(int(unit) for unit in units_b if int(unit) not in kept),
    )


def _mean_abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the mean |b - a| in float64; 0 where there are no columns (no aligned tokens)."""
    if a.shape[-1] == 0:
        return np.zeros(a.shape[:-1])
    return np.abs(b.astype(np.float64) - a.astype(np.float64)).mean(axis=-1)
