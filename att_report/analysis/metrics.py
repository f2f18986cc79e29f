"""Numbers the report shows beside the matrices: per-head metrics, per-layer statistics, head means, rollout.

Pure numpy, no torch. Head metrics are sums over cells, so they stream: `HeadAccumulator` takes a layer block by
block (any heads, any rows), which lets the store's writer compute them during capture from the model's float32
weights, and lets a store without them (version 1) be measured from its stored weights one row block at a time.
For a causal model only the cells that can hold weight (key j <= query i) count.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from att_report.errors import UsageError

if TYPE_CHECKING:  # the store imports this module to measure what it writes
    from att_report.store import CaptureStore

SPARSE_BELOW = 0.01  # a weight under this counts as "no attention" for the sparsity metric
ROWS_PER_READ = 64  # query rows read from a store at a time
MEDIAN_BITS = 16  # a float32's sign, exponent and top 7 mantissa bits: histogram bins 2^-7 wide, relative
MEDIAN_BINS = (0x3F800000 >> MEDIAN_BITS) + 1  # up to the bin of 1.0
MEDIAN_BOUND = 2.0**-8  # the median estimate is within this of the median, relative
_TINY = np.finfo(np.float32).tiny
CHUNK_CELLS = 1 << 20  # a head's cells measured at a time, at most: bounds the temporaries


@dataclass(frozen=True)
class Metric:
    """One per-head metric: its field name in HeadMetrics, a short column label, a one-line description."""

    name: str
    label: str
    description: str
    spec: str  # format spec for tables


METRICS: tuple[Metric, ...] = (
    Metric("max_weight", "max", "largest single weight among rows with at least two keys (a causal row 0 has one "
           "key, weight 1, in every head)", ".4f"),
    Metric("mean_row_max", "row max", "mean over query tokens of the largest weight each gives (how focused)", ".4f"),
    Metric("entropy", "entropy", "mean row entropy / log(keys the token sees): 0 all on one key, 1 spread evenly; "
           "rows with one key left out", ".3f"),
    Metric("sparsity", "sparse", f"share of weights below {SPARSE_BELOW} among the cells that can hold weight "
           "(the lower triangle if causal)", ".3f"),
    Metric("median", "median", "median weight over the same cells (from a histogram: within 0.4%, relative)", ".3g"),
    Metric("std", "std", "standard deviation of the weights over the same cells", ".4f"),
    Metric("sink", "sink", "mean over query tokens of the weight on the first token (attention sink)", ".3f"),
    Metric("distance", "distance", "mean over query tokens of sum_j w_ij * |i - j|, in tokens", ".1f"),
)
METRIC_NAMES = tuple(metric.name for metric in METRICS)


def metric(name: str) -> Metric:
    """Look a metric up by name, or say which names exist."""
    for candidate in METRICS:
        if candidate.name == name:
            return candidate
    raise UsageError(f"there is no metric {name!r}; use one of {', '.join(METRIC_NAMES)}.")


def above_diagonal_zeroed(weights: np.ndarray, row_start: int) -> np.ndarray:
    """Causal (heads, rows, keys) weights of query rows row_start.. with every key after its query at 0: the array
    itself where that holds already (a causal softmax gives exact zeros there), else a copy made so."""
    rows, width = weights.shape[1], weights.shape[2]
    later = ~np.tri(rows, max(width - row_start, 0), dtype=bool)  # only a block's last rows - 1 keys can be later
    corner = weights[:, :, row_start:]
    if not corner[:, later].any():
        return weights
    cells = np.array(weights, dtype=np.float32)
    cells[:, :, row_start:][:, later] = 0.0
    return cells


class HeadAccumulator:
    """Running sums of every metric for the heads of one layer, fed float32 blocks (heads, rows, T) in any order
    that covers each (head, row) once; `values` then gives every metric of every head."""

    def __init__(self, num_heads: int, num_tokens: int, causal: bool) -> None:
        self.num_tokens, self.causal = num_tokens, causal
        self.keys = np.arange(1, num_tokens + 1) if causal else np.full(num_tokens, num_tokens)
        (self.peak, self.peak_any, self.row_max, self.entropy, self.sparse, self.total, self.squares, self.sink,
         self.distance) = np.zeros((9, num_heads))  # per head: running maxima and sums
        self.histogram = np.zeros((num_heads, MEDIAN_BINS), dtype=np.int64)

    def add(self, head_start: int, row_start: int, weights: np.ndarray) -> None:
        """Take heads head_start.. and query rows row_start.. as float32 (heads, rows, T); a causal row's cells
        above the diagonal are ignored."""
        heads = slice(head_start, head_start + weights.shape[0])
        rows = weights.shape[1]
        width = min(row_start + rows, self.num_tokens) if self.causal else self.num_tokens
        cells = np.asarray(weights[:, :, :width], dtype=np.float32)
        if self.causal:
            cells = above_diagonal_zeroed(cells, row_start)
        keys = self.keys[row_start: row_start + rows]
        ignored = rows * width - int(keys.sum())  # zeros above the diagonal: not cells, so not counted
        row_max, plogp, row_sums, squares = self._row_terms(head_start, cells, ignored)
        self.peak_any[heads] = np.maximum(self.peak_any[heads], row_max.max(axis=1))
        choosing = keys > 1
        if choosing.any():
            self.peak[heads] = np.maximum(self.peak[heads], row_max[:, choosing].max(axis=1))
            row_entropy = -plogp[:, choosing] / np.log(keys[choosing])
            self.entropy[heads] += row_entropy.sum(axis=1)
        self.row_max[heads] += row_max.sum(axis=1)
        # Each row is summed in float32 on its own, then rows in float64: the same sums however rows are blocked.
        self.total[heads] += row_sums.sum(axis=1, dtype=np.float64)
        self.squares[heads] += squares.sum(axis=1, dtype=np.float64)
        self.sink[heads] += cells[:, :, 0].sum(axis=1, dtype=np.float64)
        self.distance[heads] += self._distances(cells, row_start, row_sums).sum(axis=1, dtype=np.float64)

    def _row_terms(self, head_start: int, cells: np.ndarray, ignored: int) -> np.ndarray:
        """(4, heads, rows) float32: each row's max, sum of w log w, sum and sum of squares of float32 cells
        (heads, rows, keys); each head's weights below SPARSE_BELOW and median bins are counted on the way, less
        `ignored` zeros. A head is taken CHUNK_CELLS cells (whole rows) at a time, at most, so that the temporaries
        stay small whatever the block, even a whole (1, T, T) head."""
        count, rows, width = cells.shape
        terms = np.empty((4, count, rows), dtype=np.float32)
        row_max, plogp, row_sums, squares = terms
        step = max(1, CHUNK_CELLS // width)
        floor = np.full(width, _TINY)  # np.maximum is several times faster with a row than with a scalar
        logs = np.empty((min(step, rows), width), dtype=np.float32)
        below = np.empty(logs.shape, dtype=bool)
        bins = np.empty(logs.shape, dtype=np.intp)  # bincount's own type: it takes them without a copy
        for head in range(count):
            sparse = -ignored
            for start in range(0, rows, step):
                part = slice(start, start + step)
                chunk = cells[head, part]
                log, flags, top = logs[: len(chunk)], below[: len(chunk)], bins[: len(chunk)]
                chunk.max(axis=1, out=row_max[head, part])
                np.maximum(chunk, floor, out=log)
                np.log(log, out=log)
                np.einsum("rk,rk->r", chunk, log, out=plogp[head, part])  # 0 * log(tiny) = 0: a zero adds nothing
                sparse += np.count_nonzero(np.less(chunk, SPARSE_BELOW, out=flags))
                chunk.sum(axis=1, out=row_sums[head, part])
                np.einsum("rk,rk->r", chunk, chunk, out=squares[head, part])
                np.right_shift(chunk.view(np.uint32), MEDIAN_BITS, out=top)
                self._count_bins(head_start + head, top)
            self.sparse[head_start + head] += sparse
            self.histogram[head_start + head, 0] -= ignored
        return terms

    def _distances(self, cells: np.ndarray, row_start: int, row_sums: np.ndarray) -> np.ndarray:
        """(heads, rows) sum_j w_ij * |i - j| of float32 cells (heads, rows, keys) of query rows row_start...

        Causal rows have no key after them, so the sum is a product with each key's distance from the block's last
        row, less each row's own distance from it times its weight: one matrix-vector product, with terms no larger
        than the distances themselves. An einsum, not BLAS: OpenBLAS splits the product over threads, and beside a
        busy core (the model, during a capture) its second thread stalled the writer, doubling the metrics' cost."""
        rows, width = cells.shape[1], cells.shape[2]
        queries = np.arange(row_start, row_start + rows, dtype=np.float32)  # exact: positions stay below 2^24
        if not self.causal:
            return np.einsum("hrk,rk->hr", cells, np.abs(queries[:, None] - np.arange(width, dtype=np.float32)))
        last = np.float32(row_start + rows - 1)
        return np.einsum("hrk,k->hr", cells, last - np.arange(width, dtype=np.float32)) - (last - queries) * row_sums

    def _count_bins(self, head: int, bins: np.ndarray) -> None:
        """Add cells of one head, given as the top MEDIAN_BITS bits of their float32 bits, to its median histogram:
        non-negative float32 values order as their bit patterns, so the top bits name a bin; a negative value (sign
        bit set) or zero lands in bin 0, anything above 1 in the last."""
        half = 1 << (31 - MEDIAN_BITS)  # the first top-bits value with the sign bit set
        counts = np.bincount(bins.ravel(), minlength=MEDIAN_BINS)
        histogram = self.histogram[head]
        histogram += counts[:MEDIAN_BINS]
        if len(counts) > MEDIAN_BINS:  # only for weights outside [0, 1]
            histogram[0] += counts[half:].sum()
            histogram[-1] += counts[MEDIAN_BINS: half].sum()

    def cut(self, num_tokens: int) -> None:
        """Measure a causal layer that ended at `num_tokens` rows, fewer than it was opened for (a row's keys are
        its own position's, so only the row count changes)."""
        self.num_tokens, self.keys = num_tokens, self.keys[:num_tokens]

    def finite(self) -> bool:
        """Whether every weight taken so far was a number (a NaN or infinity spoils every sum)."""
        return bool(np.isfinite(self.total).all() and np.isfinite(self.squares).all())

    def values(self) -> np.ndarray:
        """Every metric of every head, as float64 (heads, metrics) in METRICS order."""
        rows, cells = self.num_tokens, float(self.keys.sum())
        choosing = int(np.count_nonzero(self.keys > 1))
        mean = self.total / cells
        columns = {
            "max_weight": self.peak if choosing else self.peak_any,
            "mean_row_max": self.row_max / rows,
            "entropy": self.entropy / choosing if choosing else np.zeros_like(self.entropy),
            "sparsity": self.sparse / cells,
            "median": np.array([_histogram_median(counts) for counts in self.histogram]),
            "std": np.sqrt(np.maximum(self.squares / cells - mean * mean, 0.0)),
            "sink": self.sink / rows,
            "distance": self.distance / rows,
        }
        return np.stack([columns[name] for name in METRIC_NAMES], axis=1)


def _histogram_median(counts: np.ndarray) -> float:
    """The mean of the two middle cells' bins' midpoints (bin 0, zeros and subnormals, counts as 0)."""
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    middle = np.searchsorted(cumulative, [(total - 1) // 2 + 1, total // 2 + 1])
    return float(np.mean([_bin_midpoint(int(index)) for index in middle]))


def _bin_midpoint(index: int) -> float:
    if index == 0:
        return 0.0
    edges = (np.array([index, index + 1], dtype=np.int64) << MEDIAN_BITS).astype(np.int32).view(np.float32)
    return float(np.minimum(edges, 1.0).astype(np.float64).mean())  # no weight exceeds 1


@dataclass(frozen=True)
class HeadMetrics:
    """Every metric of METRICS as a read-only (layers, heads) float64 array, one field per metric, for the stored
    layers and heads (`layer_indices`, `head_indices`: the model's indices), and where the values came from."""

    max_weight: np.ndarray
    mean_row_max: np.ndarray
    entropy: np.ndarray
    sparsity: np.ndarray
    median: np.ndarray
    std: np.ndarray
    sink: np.ndarray
    distance: np.ndarray
    source: str
    layer_indices: tuple[int, ...]
    head_indices: tuple[int, ...]

    def values(self, name: str) -> np.ndarray:
        """The (layers, heads) array of one metric, by name."""
        return getattr(self, metric(name).name)

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads)."""
        return self.max_weight.shape

    def ranked(self, name: str, descending: bool = True) -> list[tuple[int, int, float]]:
        """List (layer, head, value) sorted by one metric, largest first unless not `descending`; ties by layer
        then head. Layer and head are positions in the arrays (the model's indices when nothing was left out)."""
        values = self.values(name)
        order = np.argsort(-values if descending else values, axis=None, kind="stable")
        layers, heads = np.unravel_index(order, values.shape)
        return [(int(layer), int(head), float(values[layer, head])) for layer, head in zip(layers, heads)]


def head_metrics_from_table(table: np.ndarray, source: str, layer_indices: Iterable[int],
                            head_indices: Iterable[int]) -> HeadMetrics:
    """Wrap a (layers, heads, metrics) table in METRICS order as read-only HeadMetrics."""
    table = np.array(table, dtype=np.float64)
    table.setflags(write=False)
    return HeadMetrics(**{name: table[..., index] for index, name in enumerate(METRIC_NAMES)}, source=source,
                       layer_indices=tuple(layer_indices), head_indices=tuple(head_indices))


def stored_metrics_section(table: np.ndarray, source: str) -> dict[str, Any]:
    """Describe a (layers, heads, metrics) table for a store's manifest (`attention.metrics`)."""
    return {"source": source, "names": list(METRIC_NAMES), "values": np.asarray(table).tolist()}


def head_metrics(store: CaptureStore) -> HeadMetrics:
    """Every metric of every stored head: as the capture computed them from the model's float32 weights when the
    store holds them, else measured from the stored weights, one block of rows at a time; `source` says which."""
    stored = _stored_metrics(store)
    if stored is not None:
        return head_metrics_from_table(stored["values"], stored["source"], store.layer_indices, store.head_indices)
    table = [_measure_layer(store, layer) for layer in store.layer_indices]
    return head_metrics_from_table(np.array(table), metrics_source(store), store.layer_indices, store.head_indices)


def metrics_source(store: CaptureStore) -> str:
    """Say where `head_metrics(store)` takes its values from, without computing them."""
    stored = _stored_metrics(store)
    return stored["source"] if stored is not None else f"measured from the stored weights ({store.encoding.bound})"


def has_stored_metrics(store: CaptureStore) -> bool:
    """Whether the capture stored the head metrics it computed from the model's float32 weights."""
    return _stored_metrics(store) is not None


def _stored_metrics(store: CaptureStore) -> dict[str, Any] | None:
    """The capture's metrics section, when it has one with exactly today's metrics."""
    stored = store.manifest["attention"].get("metrics")
    return stored if stored and stored.get("names") == list(METRIC_NAMES) else None


def _measure_layer(store: CaptureStore, layer: int) -> np.ndarray:
    accumulator = HeadAccumulator(len(store.head_indices), store.num_tokens, store.causal)
    for start in range(0, store.num_tokens, ROWS_PER_READ):
        accumulator.add(0, start, store.attention(layer, rows=slice(start, start + ROWS_PER_READ)))
    return accumulator.values()


def metrics_of_layers(layers: Iterable[np.ndarray], causal: bool) -> HeadMetrics:
    """Compute every metric of layers given as (heads, T, T) arrays (attention that is not in a store)."""
    table = []
    for layer in layers:
        accumulator = HeadAccumulator(layer.shape[0], layer.shape[-1], causal)
        accumulator.add(0, 0, layer)
        table.append(accumulator.values())
    shape = np.shape(table)
    return head_metrics_from_table(np.array(table), "computed from the given weights", range(shape[0]),
                                   range(shape[1]))


@dataclass(frozen=True)
class LayerStatistics:
    """Per layer, the mean over its heads of the normalized entropy and of the sink share."""

    entropy: np.ndarray  # (layers,)
    sink: np.ndarray  # (layers,)


def layer_statistics(metrics: HeadMetrics) -> LayerStatistics:
    """Average the head metrics over heads; every head has the same rows, so this is the mean over the layer's rows."""
    return LayerStatistics(entropy=metrics.entropy.mean(axis=1), sink=metrics.sink.mean(axis=1))


def layer_mean(store: CaptureStore, layer: int) -> np.ndarray:
    """Average one stored layer's heads into a float32 (T, T) matrix, reading a block of rows at a time (never the
    heads' squares)."""
    mean = np.empty((store.num_tokens, store.num_tokens), dtype=np.float32)
    for start in range(0, store.num_tokens, ROWS_PER_READ):
        rows = slice(start, start + ROWS_PER_READ)
        mean[rows] = store.attention(layer, rows=rows).mean(axis=0)
    return mean


def layer_means(store: CaptureStore) -> Iterator[np.ndarray]:
    """Yield each stored layer's head mean in order, one in memory at a time."""
    for layer in store.layer_indices:
        yield layer_mean(store, layer)


def overall_mean(store: CaptureStore) -> np.ndarray:
    """Average every stored head of every stored layer into one float32 (T, T) matrix, accumulating in float64."""
    total = np.zeros((store.num_tokens, store.num_tokens))
    for mean in layer_means(store):
        total += mean
    return (total / len(store.layer_indices)).astype(np.float32)


def residual_step(mean: np.ndarray) -> np.ndarray:
    """Abnar & Zuidema's A_hat = 0.5 * mean_heads(A) + 0.5 * I, rows renormalized to sum to 1."""
    step = 0.5 * mean
    step[np.diag_indices_from(step)] += 0.5
    return step / step.sum(axis=-1, keepdims=True)


def rollout_rows(store: CaptureStore, rows: range) -> np.ndarray:
    """Rows `rows` of the rollout through every stored layer, float32 (len(rows), T): the one-hot rows times
    A_hat_L, then A_hat_(L-1), ..., down to A_hat_0 (one layer's head mean in memory at a time).

    Equal to those rows of the last matrix `rollout` yields, at 2·k·T² flops a layer instead of 2·T³: at 8,192 tokens
    and 30 layers, about 0.5 TFLOP for 128 rows against 33 for the whole rollout.
    """
    product = np.zeros((len(rows), store.num_tokens), dtype=np.float32)
    product[np.arange(len(rows)), np.asarray(rows)] = 1.0
    for layer in reversed(store.layer_indices):
        product = product @ residual_step(layer_mean(store, layer))
    return product


def rollout(store: CaptureStore) -> Iterator[np.ndarray]:
    """Yield the (T, T) attention rollout after each stored layer: A_hat_l @ ... @ A_hat_0 (Abnar & Zuidema 2020).

    float32: the stored weights are float16 (2^-11 relative) or bytes (1/255) and the page shows bytes (1/255),
    while a float32 product of row-stochastic matrices drifts by about 1e-6 over 30 layers; float32 halves memory
    (a few (T, T) matrices) and doubles the matrix product's speed. Each row sums to 1; a causal rollout stays
    exactly lower-triangular, since every term above the diagonal has a zero factor.
    """
    result: np.ndarray | None = None
    for mean in layer_means(store):
        step = residual_step(mean)
        result = step if result is None else step @ result
        yield result
