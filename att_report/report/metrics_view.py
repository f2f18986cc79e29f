"""The index's view of the head metrics: a sortable table, a layers x heads heatmap per metric, a layer chart.

Numbers come from `analysis`; this module only turns them into display strings, colours and chart coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from att_report.analysis.metrics import METRICS, HeadMetrics, layer_statistics

CHART_WIDTH, CHART_HEIGHT, CHART_PAD = 640, 160, 28
_LOW, _HIGH = (255, 255, 255), (96, 165, 250)


@dataclass(frozen=True)
class MetricColumn:
    name: str
    label: str
    description: str


@dataclass(frozen=True)
class MetricRow:
    """One head in the table: where it opens, and each metric as (sort key, text)."""

    layer: int
    head: int
    label: str
    href: str
    cells: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class HeatCell:
    href: str
    title: str
    style: str


@dataclass(frozen=True)
class Heatmap:
    """One metric over layers x heads: rows of coloured cells, with the range the colours span."""

    name: str
    label: str
    description: str
    low: str
    high: str
    rows: tuple[tuple[HeatCell, ...], ...]


@dataclass(frozen=True)
class LayerChart:
    """Per-layer mean entropy and sink share as two polylines in a CHART_WIDTH x CHART_HEIGHT box (values 0..1)."""

    width: int
    height: int
    entropy_points: str
    sink_points: str
    ticks: tuple[tuple[float, str], ...]  # (x, layer label)
    baseline: float
    top: float


@dataclass(frozen=True)
class MetricsView:
    columns: tuple[MetricColumn, ...]
    rows: tuple[MetricRow, ...]
    heatmaps: tuple[Heatmap, ...]
    chart: LayerChart


def metrics_view(metrics: HeadMetrics, head_label: list[str], hrefs: dict[tuple[int, int], str]) -> MetricsView:
    """Format every metric of every stored head for the index (`head_label` by the model's head index)."""
    rows = tuple(
        MetricRow(layer, head, head_label[head], hrefs[(layer, head)],
                  tuple((repr(float(metrics.values(m.name)[row, column])),
                         format(float(metrics.values(m.name)[row, column]), m.spec)) for m in METRICS))
        for row, layer in enumerate(metrics.layer_indices) for column, head in enumerate(metrics.head_indices)
    )
    return MetricsView(
        columns=tuple(MetricColumn(m.name, m.label, m.description) for m in METRICS),
        rows=rows,
        heatmaps=tuple(_heatmap(metrics, m.name, m.label, m.description, m.spec, head_label, hrefs) for m in METRICS),
        chart=_layer_chart(metrics),
    )


def _heatmap(metrics: HeadMetrics, name: str, label: str, description: str, spec: str, head_label: list[str],
             hrefs: dict[tuple[int, int], str]) -> Heatmap:
    values = metrics.values(name)
    low, high = float(values.min()), float(values.max())
    span = high - low or 1.0
    rows = tuple(
        tuple(HeatCell(hrefs[(layer, head)],
                       f"layer {layer} · {head_label[head]} · {label} {values[row, column]:{spec}}",
                       _colour((values[row, column] - low) / span))
              for column, head in enumerate(metrics.head_indices))
        for row, layer in enumerate(metrics.layer_indices)
    )
    return Heatmap(name, label, description, format(low, spec), format(high, spec), rows)


def _colour(share: float) -> str:
    rgb = [round(a + (b - a) * share) for a, b in zip(_LOW, _HIGH)]
    return f"background-color: rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def _layer_chart(metrics: HeadMetrics) -> LayerChart:
    statistics = layer_statistics(metrics)
    count = len(statistics.entropy)
    inner_width, inner_height = CHART_WIDTH - 2 * CHART_PAD, CHART_HEIGHT - 2 * CHART_PAD
    xs = CHART_PAD + (np.arange(count) * inner_width / max(count - 1, 1))

    def points(values: np.ndarray) -> str:
        ys = CHART_PAD + (1 - np.clip(values, 0, 1)) * inner_height
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))

    step = max(1, count // 10)
    return LayerChart(CHART_WIDTH, CHART_HEIGHT, points(statistics.entropy), points(statistics.sink),
                      tuple((float(xs[row]), str(metrics.layer_indices[row])) for row in range(0, count, step)),
                      float(CHART_PAD + inner_height), float(CHART_PAD))
