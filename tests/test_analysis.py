"""Head metrics, layer statistics, head means and rollout, against values written out from their definitions."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import att_report
from att_report.analysis import metrics as metrics_module
from att_report.analysis.metrics import (
    MEDIAN_BOUND,
    METRIC_NAMES,
    METRICS,
    HeadAccumulator,
    HeadMetrics,
    head_metrics,
    layer_mean,
    layer_means,
    layer_statistics,
    metric,
    metrics_of_layers,
    overall_mean,
    rollout,
)
from att_report.errors import UsageError
from att_report.store import CaptureStore
from synthetic import write_synthetic_store

# One causal layer of two heads over three tokens, weights chosen by hand; row i holds keys 0..i.
CAUSAL_ROWS = [
    [[1.0], [0.25, 0.75], [0.5, 0.3, 0.2]],
    [[1.0], [0.995, 0.005], [0.2, 0.2, 0.6]],
]
# One encoder (square) layer of one head over three tokens.
SQUARE_ROWS = [[[0.5, 0.5, 0.0], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]


def _square(rows_per_head: list[list[list[float]]]) -> np.ndarray:
    """Lay hand rows out as a (heads, T, T) float32 layer, zero where a row has no key."""
    size = len(rows_per_head[0])
    layer = np.zeros((len(rows_per_head), size, size), dtype=np.float32)
    for head, rows in enumerate(rows_per_head):
        for i, row in enumerate(rows):
            layer[head, i, : len(row)] = row
    return layer


def _row_entropy(row: list[float]) -> float:
    return -sum(w * math.log(w) for w in row if w > 0)


def _hand_metrics(rows: list[list[float]]) -> dict[str, float]:
    """Every metric of one head straight from its definition, over the rows of keys each token can see."""
    cells = [w for row in rows for w in row]
    spread = [row for row in rows if len(row) > 1]
    return {
        "max_weight": max(w for row in spread for w in row) if spread else max(cells),
        "mean_row_max": statistics.fmean(max(row) for row in rows),
        "entropy": statistics.fmean(_row_entropy(row) / math.log(len(row)) for row in spread) if spread else 0.0,
        "sparsity": sum(w < 0.01 for w in cells) / len(cells),
        "median": statistics.median(cells),
        "std": statistics.pstdev(cells),
        "sink": statistics.fmean(row[0] for row in rows),
        "distance": statistics.fmean(sum(w * abs(i - j) for j, w in enumerate(row)) for i, row in enumerate(rows)),
    }


def _tolerance(name: str, relative: float = 0.0) -> dict[str, float]:
    """The median comes from a histogram, within MEDIAN_BOUND relative; the others are sums, exact to rounding."""
    return {"rel": MEDIAN_BOUND} if name == "median" else {"rel": relative, "abs": 1e-6}


def test_causal_metrics_match_the_hand_computation() -> None:
    metrics = metrics_of_layers([_square(CAUSAL_ROWS)], causal=True)
    assert metrics.shape == (1, 2)
    # The first head written out number by number, as a check on _hand_metrics itself.
    first = {
        "max_weight": 0.75,  # row 0's weight 1 on its only key is left out
        "mean_row_max": (1 + 0.75 + 0.5) / 3,
        "entropy": ((-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2))
                    + (-(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)) / math.log(3))) / 2,
        "sparsity": 0.0,
        "median": (0.3 + 0.5) / 2,
        "std": math.sqrt(sum((w - 3 / 6) ** 2 for w in (1, 0.25, 0.75, 0.5, 0.3, 0.2)) / 6),
        "sink": (1 + 0.25 + 0.5) / 3,
        "distance": (0 + 0.25 * 1 + (0.5 * 2 + 0.3 * 1)) / 3,
    }
    assert _hand_metrics(CAUSAL_ROWS[0]) == pytest.approx(first)
    for head, rows in enumerate(CAUSAL_ROWS):
        for name, expected in _hand_metrics(rows).items():
            assert metrics.values(name)[0, head] == pytest.approx(expected, **_tolerance(name)), (name, head)
    assert metrics.sparsity[0, 1] == pytest.approx(1 / 6)  # 0.005 is the one weight below 0.01


def test_square_metrics_use_every_cell_and_log_of_all_keys() -> None:
    metrics = metrics_of_layers([_square(SQUARE_ROWS)], causal=False)
    for name, expected in _hand_metrics(SQUARE_ROWS[0]).items():
        assert metrics.values(name)[0, 0] == pytest.approx(expected, **_tolerance(name)), name
    assert metrics.entropy[0, 0] == pytest.approx((math.log(2) / math.log(3) + _row_entropy(SQUARE_ROWS[0][1])
                                                   / math.log(3) + 1) / 3, abs=1e-6)
    assert metrics.sparsity[0, 0] == pytest.approx(1 / 9)  # the one zero


def test_a_single_token_has_no_spread(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "one", ["only"], 1, num_layers=1, num_heads=2, dtype="float32")
    metrics = head_metrics(att_report.load(tmp_path / "one"))
    np.testing.assert_array_equal(metrics.entropy, 0.0)
    np.testing.assert_array_equal(metrics.sink, 1.0)
    np.testing.assert_array_equal(metrics.distance, 0.0)


@pytest.mark.parametrize("causal", [True, False])
def test_store_metrics_match_definitions_row_by_row(tmp_path: Path, causal: bool) -> None:
    tokens = [f"t{i}" for i in range(7)]
    layers = write_synthetic_store(tmp_path / "s", tokens, 5, num_layers=2, num_heads=3, causal=causal, seed=3,
                                   dtype="float32")
    metrics = head_metrics(att_report.load(tmp_path / "s"))
    assert metrics.shape == (2, 3)
    for layer, attention in enumerate(layers):
        for head in range(3):
            rows = [list(map(float, attention[head, i, : (i + 1 if causal else len(tokens))])) for i in range(7)]
            for name, expected in _hand_metrics(rows).items():
                assert metrics.values(name)[layer, head] == pytest.approx(expected, **_tolerance(name, 1e-5)), name


def test_max_tells_causal_heads_apart(tmp_path: Path) -> None:
    """Issue 12: over every row, a causal head's largest weight is row 0's 1.0, the same for all heads."""
    layers = write_synthetic_store(tmp_path / "s", [f"t{i}" for i in range(8)], 6, num_layers=2, num_heads=3,
                                   dtype="float32")
    metrics = head_metrics(att_report.load(tmp_path / "s"))
    for layer, attention in enumerate(layers):
        np.testing.assert_allclose(metrics.max_weight[layer], attention[:, 1:].max(axis=(1, 2)), rtol=1e-6)
    assert len(set(metrics.max_weight.ravel().tolist())) == 6 and metrics.max_weight.max() < 1.0


def test_stored_metrics_come_from_the_written_float32_weights(tmp_path: Path) -> None:
    """A compact store holds bytes, most of them 0 at length; its metrics are the ones the writer measured on the
    float32 weights, equal to those of the weights themselves, and say so."""
    tokens = [f"t{i}" for i in range(70)]
    layers = write_synthetic_store(tmp_path / "s", tokens, 60, num_layers=2, num_heads=3, dtype="uint8")
    store = att_report.load(tmp_path / "s")
    metrics = head_metrics(store)
    assert metrics.source == "computed at capture from the model's float32 weights"
    exact = metrics_of_layers(layers, causal=True)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(metrics.values(name), exact.values(name), rtol=1e-6, atol=1e-7)
    stored_bytes = metrics_of_layers([store.attention(layer) for layer in store.layer_indices], causal=True)
    assert not np.allclose(stored_bytes.median, exact.median, rtol=MEDIAN_BOUND)  # what the bytes would have said


def test_metrics_of_a_store_without_them_are_measured_block_by_block(tmp_path: Path) -> None:
    tokens = [f"t{i}" for i in range(150)]  # three row blocks
    layers = write_synthetic_store(tmp_path / "s", tokens, 100, num_layers=2, num_heads=2, dtype="float32")
    manifest_path = tmp_path / "s" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["attention"]["metrics"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    metrics = head_metrics(att_report.load(tmp_path / "s"))
    assert metrics.source.startswith("measured from the stored weights (exact")
    exact = metrics_of_layers(layers, causal=True)
    for name in METRIC_NAMES:
        np.testing.assert_allclose(metrics.values(name), exact.values(name), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("causal", [True, False])
def test_metrics_do_not_depend_on_how_a_heads_rows_are_chunked(monkeypatch: pytest.MonkeyPatch, causal: bool) -> None:
    """The accumulator measures a head CHUNK_CELLS cells at a time: chunks of a row or two give the same sums, bit
    for bit, and the same median histogram (causal: with weight above the diagonal, which is ignored)."""
    layer = np.random.default_rng(5).dirichlet(np.full(90, 0.1), size=(3, 90)).astype(np.float32)

    def measured() -> tuple[np.ndarray, np.ndarray]:
        accumulator = HeadAccumulator(3, 90, causal)
        for start in range(0, 90, 40):
            accumulator.add(0, start, layer[:, start: start + 40])
        return accumulator.values(), accumulator.histogram

    values, histogram = measured()
    monkeypatch.setattr(metrics_module, "CHUNK_CELLS", 100)
    chunked_values, chunked_histogram = measured()
    np.testing.assert_array_equal(chunked_values, values)
    np.testing.assert_array_equal(chunked_histogram, histogram)


def test_median_histogram_keeps_its_bound_on_tiny_weights() -> None:
    rng = np.random.default_rng(4)
    layer = rng.dirichlet(np.full(400, 0.05), size=(2, 400)).astype(np.float32)  # heavy tail of tiny weights
    metrics = metrics_of_layers([layer], causal=False)
    for head in range(2):
        assert metrics.median[0, head] == pytest.approx(float(np.median(layer[head])), rel=MEDIAN_BOUND)


@pytest.mark.parametrize(("outside", "median"), [(-0.5, 0.0), (2.0, 1.0)])
def test_median_counts_weights_outside_0_1_in_the_end_bins(outside: float, median: float) -> None:
    """Not softmax weights, but never lost: a negative one counts as 0, one above 1 as 1."""
    layer = np.full((1, 4, 4), 0.25, dtype=np.float32)
    layer.reshape(-1)[:9] = outside
    assert metrics_of_layers([layer], causal=False).median[0, 0] == median


def test_registry_names_every_field_once_with_label_and_description() -> None:
    assert METRIC_NAMES == tuple(field.name for field in fields(HeadMetrics))[: len(METRICS)]
    assert len({m.label for m in METRICS}) == len(METRICS)
    assert all(m.label and m.description for m in METRICS)
    assert metric("sink").label == "sink"
    with pytest.raises(UsageError, match="no metric 'focus'"):
        metric("focus")


def test_metric_arrays_are_read_only() -> None:
    metrics = metrics_of_layers([_square(CAUSAL_ROWS)], causal=True)
    with pytest.raises(ValueError):
        metrics.entropy[0, 0] = 0.5


def test_ranked_orders_by_value_then_layer_and_head() -> None:
    # Layer 0 is the hand layer; layer 1 repeats its first head twice, so sinks tie across layers and heads.
    layers = [_square(CAUSAL_ROWS), _square([CAUSAL_ROWS[0], CAUSAL_ROWS[0]])]
    metrics = metrics_of_layers(layers, causal=True)
    sink_first, sink_second = (1 + 0.25 + 0.5) / 3, (1 + 0.995 + 0.2) / 3
    ranked = metrics.ranked("sink")
    assert [(layer, head) for layer, head, _ in ranked] == [(0, 1), (0, 0), (1, 0), (1, 1)]
    assert ranked[0][2] == pytest.approx(sink_second) and ranked[-1][2] == pytest.approx(sink_first)
    ascending = metrics.ranked("sink", descending=False)
    assert [(layer, head) for layer, head, _ in ascending] == [(0, 0), (1, 0), (1, 1), (0, 1)]


def test_layer_statistics_average_every_row_of_the_layer(tmp_path: Path) -> None:
    tokens = [f"t{i}" for i in range(6)]
    layers = write_synthetic_store(tmp_path / "s", tokens, 4, num_layers=3, num_heads=2, seed=5, dtype="float32")
    stats = layer_statistics(head_metrics(att_report.load(tmp_path / "s")))
    for layer, attention in enumerate(layers):
        rows = [list(map(float, attention[head, i, : i + 1])) for head in range(2) for i in range(6)]
        entropies = [_row_entropy(row) / math.log(len(row)) for row in rows if len(row) > 1]
        assert stats.entropy[layer] == pytest.approx(statistics.fmean(entropies), abs=1e-6)
        assert stats.sink[layer] == pytest.approx(statistics.fmean(row[0] for row in rows), abs=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_head_means(tmp_path: Path, causal: bool) -> None:
    write_synthetic_store(tmp_path / "s", ["a", "b", "c", "d", "e"], 3, num_layers=3, num_heads=4, causal=causal)
    store = att_report.load(tmp_path / "s")
    squares = [store.attention(layer).astype(np.float64) for layer in range(3)]
    means = list(layer_means(store))
    assert len(means) == 3
    for layer, square in enumerate(squares):
        expected = sum(square[head] for head in range(4)) / 4
        np.testing.assert_allclose(layer_mean(store, layer), expected, atol=1e-6)
        np.testing.assert_allclose(means[layer], expected, atol=1e-6)
        assert means[layer].dtype == np.float32 and means[layer].shape == (5, 5)
    everything = sum(square[head] for square in squares for head in range(4)) / 12
    np.testing.assert_allclose(overall_mean(store), everything, atol=1e-6)


def _direct_rollout(store: CaptureStore) -> list[np.ndarray]:
    """Abnar & Zuidema written out: A_hat = 0.5 mean + 0.5 I per layer, rows renormalized, chained by products."""
    size = store.num_tokens
    result = np.eye(size)
    rollouts = []
    for layer in range(store.num_layers):
        attention = store.attention(layer).astype(np.float64)
        mean = np.zeros((size, size))
        for head in range(store.num_heads):
            mean += attention[head] / store.num_heads
        step = 0.5 * mean + 0.5 * np.eye(size)
        for row in range(size):
            step[row] /= step[row].sum()
        result = step @ result
        rollouts.append(result)
    return rollouts


@pytest.mark.parametrize("causal", [True, False])
def test_rollout_matches_direct_products(tmp_path: Path, causal: bool) -> None:
    tokens = [f"t{i}" for i in range(9)]
    write_synthetic_store(tmp_path / "s", tokens, 6, num_layers=4, num_heads=3, causal=causal, seed=7)
    store = att_report.load(tmp_path / "s")
    produced = list(rollout(store))
    expected = _direct_rollout(store)
    assert len(produced) == 4
    for ours, theirs in zip(produced, expected):
        assert ours.shape == (9, 9)
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        np.testing.assert_allclose(ours.sum(axis=1), 1.0, atol=1e-5)
        if causal:
            assert not np.triu(ours, k=1).any()


def test_rollout_of_one_uniform_layer_by_hand(tmp_path: Path) -> None:
    """Two tokens, causal: mean row 1 = [w, 1 - w]; A_hat row 1 = [w/2, (1 - w)/2 + 1/2] = [w/2, 1 - w/2]."""
    write_synthetic_store(tmp_path / "s", ["a", "b"], 2, num_layers=1, num_heads=2, dtype="float32")
    store = att_report.load(tmp_path / "s")
    w = float(store.attention(0)[:, 1, 0].mean())
    (only,) = list(rollout(store))
    np.testing.assert_allclose(only, [[1.0, 0.0], [w / 2, 1 - w / 2]], atol=1e-6)
