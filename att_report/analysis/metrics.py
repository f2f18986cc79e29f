"""Numbers the report shows beside the matrices: per-head metrics, per-layer statistics, head means, rollout.

Pure numpy, no torch: this is the render side. Everything reads the store one layer at a time. Head metrics work
on a layer's cells as stored (each head's rows concatenated; for a causal model only the lower triangle, the cells
that can hold weight), so they never unpack a layer into its (heads, T, T) square.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from att_report.errors import UsageError
from att_report.store import CaptureStore, pack_layer, unpack_layer

SPARSE_BELOW = 0.01  # a weight under this counts as "no attention" for the sparsity metric
_TINY = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class RowLayout:
    """Where each query row lies in a layer's flattened cells, how many keys it sees, and each cell's |i - j|."""

    starts: np.ndarray  # (T,) offset of row i's first cell (its key 0)
    keys: np.ndarray  # (T,) number of keys row i can attend to
    distance: np.ndarray  # (cells,) |i - j| of each cell, float32


@lru_cache(maxsize=2)
def row_layout(num_tokens: int, causal: bool) -> RowLayout:
    """Describe the cell order of `store.pack_layer`: row by row, keys 0..i (causal) or 0..T-1 (square)."""
    rows = np.arange(num_tokens)
    if causal:
        keys = rows + 1
        starts = rows * (rows + 1) // 2
        row_of_cell = np.repeat(rows, keys)
        column_of_cell = np.arange(starts[-1] + keys[-1]) - np.repeat(starts, keys)
    else:
        keys = np.full(num_tokens, num_tokens)
        starts = rows * num_tokens
        row_of_cell, column_of_cell = np.divmod(np.arange(num_tokens * num_tokens), num_tokens)
    distance = np.abs(row_of_cell - column_of_cell).astype(np.float32)
    return RowLayout(starts=starts, keys=keys, distance=distance)


def _row_sums(values: np.ndarray, layout: RowLayout) -> np.ndarray:
    """Sum one head's cells row by row: (cells,) -> (T,). In float32 (8x faster than float64 here): a row of T
    terms rounds by at most about T * 2^-24, far below the float16 store's 2^-11."""
    return np.add.reduceat(values, layout.starts)


def _max_weight(cells: np.ndarray, layout: RowLayout) -> float:
    return float(cells.max())


def _mean_row_max(cells: np.ndarray, layout: RowLayout) -> float:
    return float(np.maximum.reduceat(cells, layout.starts).mean(dtype=np.float64))


def _entropy(cells: np.ndarray, layout: RowLayout) -> float:
    """Mean over rows with at least two keys of H(row) / log(keys). A row with one key (causal row 0) has no
    choice to spread over, so it is left out rather than counted as 0 or 1; a sequence of one token gives 0."""
    choosing = layout.keys > 1
    if not choosing.any():
        return 0.0
    plogp = np.maximum(cells, _TINY)
    np.log(plogp, out=plogp)
    plogp *= cells  # 0 * log(tiny) = 0: a zero weight adds nothing
    row_entropy = -_row_sums(plogp, layout)[choosing]
    return float((row_entropy / np.log(layout.keys[choosing])).mean())


def _sparsity(cells: np.ndarray, layout: RowLayout) -> float:
    return np.count_nonzero(cells < SPARSE_BELOW) / cells.size


def _median(cells: np.ndarray, layout: RowLayout) -> float:
    """Select the middle cells with a partition, never a full sort. Weights are non-negative, and non-negative
    float32 values order exactly as their bit patterns read as int32, which numpy selects about 30% faster."""
    middle = ((cells.size - 1) // 2, cells.size // 2)
    selected = np.partition(cells.view(np.int32), middle)[list(middle)].view(np.float32)
    return float(selected.mean(dtype=np.float64))


def _std(cells: np.ndarray, layout: RowLayout) -> float:
    return float(cells.std())  # numpy sums float32 pairwise: about 1e-9 from a float64 computation here


def _sink(cells: np.ndarray, layout: RowLayout) -> float:
    return float(cells[layout.starts].mean(dtype=np.float64))


def _distance(cells: np.ndarray, layout: RowLayout) -> float:
    return float(_row_sums(cells * layout.distance, layout).mean(dtype=np.float64))


@dataclass(frozen=True)
class Metric:
    """One per-head metric: its field name in HeadMetrics, a short column label, a one-line description."""

    name: str
    label: str
    description: str
    spec: str  # format spec for tables
    compute: Callable[[np.ndarray, RowLayout], float]  # one head's cells, row after row -> the value


METRICS: tuple[Metric, ...] = (
    Metric("max_weight", "max", "largest single weight in the head", ".4f", _max_weight),
    Metric("mean_row_max", "row max", "mean over query tokens of the largest weight each gives (how focused)",
           ".4f", _mean_row_max),
    Metric("entropy", "entropy", "mean row entropy / log(keys the token sees): 0 all on one key, 1 spread evenly; "
           "rows with one key left out", ".3f", _entropy),
    Metric("sparsity", "sparse", f"share of weights below {SPARSE_BELOW} among the cells that can hold weight "
           "(the lower triangle if causal)", ".3f", _sparsity),
    Metric("median", "median", "median weight over the same cells", ".3g", _median),
    Metric("std", "std", "standard deviation of the weights over the same cells", ".4f", _std),
    Metric("sink", "sink", "mean over query tokens of the weight on the first token (attention sink)", ".3f", _sink),
    Metric("distance", "distance", "mean over query tokens of sum_j w_ij * |i - j|, in tokens", ".1f", _distance),
)
METRIC_NAMES = tuple(metric.name for metric in METRICS)


def metric(name: str) -> Metric:
    """Look a metric up by name, or say which names exist."""
    for candidate in METRICS:
        if candidate.name == name:
            return candidate
    raise UsageError(f"there is no metric {name!r}; use one of {', '.join(METRIC_NAMES)}.")


@dataclass(frozen=True)
class HeadMetrics:
    """Every metric of METRICS as a read-only (layers, heads) float64 array, one field per metric."""

    max_weight: np.ndarray
    mean_row_max: np.ndarray
    entropy: np.ndarray
    sparsity: np.ndarray
    median: np.ndarray
    std: np.ndarray
    sink: np.ndarray
    distance: np.ndarray

    def values(self, name: str) -> np.ndarray:
        """The (layers, heads) array of one metric, by name."""
        return getattr(self, metric(name).name)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads)."""
        return self.max_weight.shape

    def ranked(self, name: str, descending: bool = True) -> list[tuple[int, int, float]]:
        """List (layer, head, value) sorted by one metric, largest first unless not `descending`; ties by layer
        then head."""
        values = self.values(name)
        order = np.argsort(-values if descending else values, axis=None, kind="stable")
        layers, heads = np.unravel_index(order, values.shape)
        return [(int(layer), int(head), float(values[layer, head])) for layer, head in zip(layers, heads)]


def _collect(layers: Iterable[Iterable[np.ndarray]], layout: RowLayout) -> HeadMetrics:
    """Compute every metric of every head, given each layer as its heads' float32 cells, one head at a time."""
    table = np.array(
        [[[metric.compute(cells, layout) for metric in METRICS] for cells in heads] for heads in layers],
        dtype=np.float64,
    )  # (layers, heads, metrics)
    table.setflags(write=False)
    return HeadMetrics(**{metric.name: table[..., index] for index, metric in enumerate(METRICS)})


def _float32_heads(layer: np.ndarray) -> Iterator[np.ndarray]:
    """Yield each head of a stored-form layer as flat float32 cells, converting one head at a time."""
    for head in layer:
        yield np.ascontiguousarray(head, dtype=np.float32).ravel()


def head_metrics(store: CaptureStore) -> HeadMetrics:
    """Compute every metric for every layer x head of a store from the stored cells: memory is one head's cells
    and a few temporaries of that size, whatever the number of layers."""
    layers = (_float32_heads(store.stored_layer(layer)) for layer in range(store.num_layers))
    return _collect(layers, row_layout(store.num_tokens, store.causal))


def metrics_of_layers(layers: Sequence[np.ndarray], causal: bool) -> HeadMetrics:
    """Compute every metric of layers given as (heads, T, T) arrays (attention that is not in a store)."""
    stored = (pack_layer(layer, causal, "float32") for layer in layers)
    return _collect((_float32_heads(layer) for layer in stored), row_layout(layers[0].shape[-1], causal))


@dataclass(frozen=True)
class LayerStatistics:
    """Per layer, the mean over its heads of the normalized entropy and of the sink share."""

    entropy: np.ndarray  # (layers,)
    sink: np.ndarray  # (layers,)


def layer_statistics(metrics: HeadMetrics) -> LayerStatistics:
    """Average the head metrics over heads; every head has the same rows, so this is the mean over the layer's rows."""
    return LayerStatistics(entropy=metrics.entropy.mean(axis=1), sink=metrics.sink.mean(axis=1))


def layer_mean(store: CaptureStore, layer: int) -> np.ndarray:
    """Average one layer's heads into a float32 (T, T) matrix, from the stored cells (never the heads' squares)."""
    mean = store.stored_layer(layer).mean(axis=0, dtype=np.float32, keepdims=True)
    return unpack_layer(mean, store.causal, store.num_tokens)[0]


def layer_means(store: CaptureStore) -> Iterator[np.ndarray]:
    """Yield each layer's head mean in order, one in memory at a time."""
    for layer in range(store.num_layers):
        yield layer_mean(store, layer)


def overall_mean(store: CaptureStore) -> np.ndarray:
    """Average every head of every layer into one float32 (T, T) matrix, accumulating in float64."""
    total = np.zeros((store.num_tokens, store.num_tokens))
    for mean in layer_means(store):
        total += mean
    return (total / store.num_layers).astype(np.float32)


def residual_step(mean: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's A_hat = 0.5 * mean_heads(A) + 0.5 * I, rows renormalized to sum to 1."""
    step = 0.5 * mean
    step[np.diag_indices_from(step)] += 0.5
    return step / step.sum(axis=-1, keepdims=True)


def rollout(store: CaptureStore) -> Iterator[np.ndarray]:
    """Yield the (T, T) attention rollout after each layer: A_hat_l @ ... @ A_hat_0 (Abnar & Zuidema 2020).

    float32: the stored weights are float16 (2^-11 relative) and the page quantizes to 1/510, while a float32
    product of row-stochastic matrices drifts by about 1e-6 over 30 layers; float32 halves memory (a few (T, T)
    matrices) and doubles the matrix product's speed. Each row sums to 1; a causal rollout stays exactly
    lower-triangular, since every term above the diagonal has a zero factor.
    """
    result: np.ndarray | None = None
    for mean in layer_means(store):
        step = residual_step(mean)
        result = step if result is None else step @ result
        yield result
