"""The one pass over a store that feeds every product of a report: each head of each layer is read once, as a
(1, T, T) float32 square through the reader's `attention(layer, heads=[h])`, and handed to the thumbnails, the head
metrics and, where something needs it, the layer's head mean (aggregates, rollout). Memory: one head's square and a
few of its size (the mean, the rollout), never a layer's (heads, T, T) square.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from att_report.analysis.metrics import (
    HeadAccumulator,
    HeadMetrics,
    has_stored_metrics,
    head_metrics,
    head_metrics_from_table,
    metrics_source,
    residual_step,
)
from att_report.report.thumbnails import layer_thumbnails
from att_report.store import CaptureStore


@dataclass
class LayerPass:
    """Read heads once and keep what every product needs: thumbnails, metrics, head means, the rollout so far."""

    store: CaptureStore
    keep_means: bool  # the layer's head mean is needed (aggregates or rollout)
    rollout: bool  # compute the rollout through each layer
    thumbnails: list[np.ndarray] = field(default_factory=list)  # per head (1, S, S), in layer and head order
    _metrics: list[np.ndarray] = field(default_factory=list)  # per head read, every metric (when not stored)
    _sum: np.ndarray | None = None  # the current layer's sum over its heads
    _total: np.ndarray | None = None  # the sum of the layer means so far
    _rollout: np.ndarray | None = None

    def read(self, layer: int, head: int) -> np.ndarray:
        """Read one head's (1, T, T) square and feed it to every product."""
        square = self.store.attention(layer, heads=[head])
        self.thumbnails.append(layer_thumbnails(square))
        if not has_stored_metrics(self.store):  # a version-1 store: measure them from the weights read
            accumulator = HeadAccumulator(1, self.store.num_tokens, self.store.causal)
            accumulator.add(0, 0, square)
            self._metrics.append(accumulator.values()[0])
        if self.keep_means:
            if self._sum is None:
                self._sum = square[0].copy()
            else:
                self._sum += square[0]
        return square

    def read_heads(self, layer: int, heads: tuple[int, ...]) -> np.ndarray:
        """Read a group of heads (one at a time) into one (heads, T, T) array, never holding a head twice but while
        it is copied in."""
        first = self.read(layer, heads[0])
        if len(heads) == 1:
            return first
        group = np.empty((len(heads),) + first.shape[1:], dtype=np.float32)
        group[0] = first[0]
        del first
        for slot, head in enumerate(heads[1:], 1):
            group[slot] = self.read(layer, head)[0]
        return group

    def finish_layer(self) -> np.ndarray | None:
        """Close the layer: return its (T, T) head mean (when kept), add it to the total and the rollout."""
        if self._sum is None:
            return None
        mean, self._sum = self._sum / np.float32(len(self.store.head_indices)), None
        self._total = mean.copy() if self._total is None else self._total + mean
        if self.rollout:
            step = residual_step(mean)
            self._rollout = step if self._rollout is None else step @ self._rollout
        return mean

    @property
    def rollout_so_far(self) -> np.ndarray | None:
        """The (T, T) rollout through the layers finished so far."""
        return self._rollout

    def overall_mean(self) -> np.ndarray:
        """The mean over every layer's head mean (all heads of all layers, each layer weighted alike)."""
        if self._total is None:
            raise RuntimeError("overall_mean needs every layer finished with keep_means")
        return self._total / np.float32(len(self.store.layer_indices))

    def head_metrics(self) -> HeadMetrics:
        """The metrics of every head: those the capture stored from the float32 weights, else those measured from
        every head read, as (layers, heads) arrays."""
        if has_stored_metrics(self.store):
            return head_metrics(self.store)
        table = np.array(self._metrics, dtype=np.float64).reshape(
            len(self.store.layer_indices), len(self.store.head_indices), -1)
        return head_metrics_from_table(table, metrics_source(self.store), self.store.layer_indices,
                                       self.store.head_indices)
