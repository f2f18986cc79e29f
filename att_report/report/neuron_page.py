"""The neurons page, for one capture or for a comparison of two: per layer a unit x token heatmap (diverging colours
for sign), a text view coloured by one unit, and a readout of the values under the pointer.

One mechanism serves both. A page holds, per layer, a list of units (rows; any number, none included) and one or
more series of values over the page's tokens (columns): a report's page has one series, the activations at every
token; a comparison's page has three over the aligned tokens, B - A (drawn), A and B (read out).

Values travel quantized per unit and series: v -> round(127 * v / s) with s the unit's largest |v| of that series in
that layer, so each value shown is within s / 254 of the exact one. All layers share one payload, in layer, series,
unit, token order.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np

from att_report.report.chunks import INDEX_NAME
from att_report.analysis.neuron_compare import LayerComparison, NeuronComparison
from att_report.store import CaptureStore
from att_report.report.page_types import TokenText, token_data

PAGE_NAME = "neurons.html"
LEVELS = 127


@dataclass(frozen=True)
class Series:
    """One value per unit and token of every layer, named as the pointer readout names it ("" for a lone series)."""

    name: str
    layers: tuple[np.ndarray, ...]  # per layer (units, tokens)


@dataclass(frozen=True)
class NeuronValues:
    """What the page's script draws: the tokens (columns), per layer the units (rows), the series, the colour scale."""

    text: TokenText
    units: tuple[np.ndarray, ...]  # per layer (units,)
    series: tuple[Series, ...]  # the first is drawn and carried as data-value; all are read out
    colour_scales: tuple[np.ndarray, ...]  # per layer (units,): the magnitude drawn at full colour
    places: tuple[str, ...] | None = None  # how the readout names each column; None: "token i"
    breaks: tuple[int, ...] = ()  # columns that follow tokens left out of the page


@dataclass(frozen=True)
class LayerChoice:
    """One option of the layer select, and what the page says about that layer ("" for nothing)."""

    value: int
    label: str
    note: str = ""


@dataclass(frozen=True)
class SummaryCell:
    text: str
    exact: str


@dataclass(frozen=True)
class UnitSummary:
    """A table per layer with one row per unit, in the heatmap's order."""

    headers: tuple[str, ...]
    layers: tuple[tuple[tuple[SummaryCell, ...], ...], ...]


@dataclass(frozen=True)
class NeuronPage:
    """Everything templates/neurons.html formats."""

    title: str
    index_href: str | None
    notes: tuple[str, ...]
    layers: tuple[LayerChoice, ...]
    legend: tuple[str, str]  # the ends of the diverging scale
    map_heading: str
    text_heading: str
    summary: UnitSummary | None
    payload: str
    data: dict[str, Any]


def neuron_page(store: CaptureStore, text: TokenText, index_href: str | None = INDEX_NAME,
                layers: Sequence[int] | None = None) -> NeuronPage | None:
    """Build a report's page from the capture's neuron arrays (of the stored `layers` positions, default all), or None
    when it has none; `index_href` None: the page sits inside a single-file report and links to no index."""
    neurons = store.neurons()
    if neurons is None:
        return None
    chosen = list(range(len(neurons[0]))) if layers is None else list(layers)
    units, values = neurons[0][chosen], neurons[1][chosen]  # (L, K), (L, T, K)
    by_unit = tuple(np.ascontiguousarray(layer.T) for layer in values)  # per layer (K, T)
    payload, data = encode_values(NeuronValues(
        text=text,
        units=tuple(units),
        series=(Series("", by_unit),),
        colour_scales=tuple(np.abs(layer).max(axis=-1) for layer in by_unit),
    ))
    return NeuronPage(
        title=f"Neurons · {store.manifest['model']['name']}",
        index_href=index_href,
        notes=((f"Per layer, the {units.shape[1]} hidden units of the layer's output (its residual stream) whose "
                "activation varies most across the tokens, most varying first. Red is positive, blue negative, each "
                "unit scaled to its own largest magnitude; the numbers are within 1/254 of that magnitude of the "
                "captured value."),),
        layers=tuple(LayerChoice(position, f"layer {layer}") for position, layer in enumerate(chosen)),
        legend=("−", "+"),
        map_heading="Units × tokens",
        text_heading="Text",
        summary=None,
        payload=payload,
        data=data,
    )


def comparison_neuron_page(comparison: NeuronComparison, stores: tuple[CaptureStore, CaptureStore],
                           title: str) -> NeuronPage:
    """Build a comparison's page: per layer the shared units' B - A over the aligned tokens, with A and B."""
    layers = comparison.layers
    payload, data = encode_values(NeuronValues(
        text=_aligned_text(comparison, stores[0]),
        units=tuple(layer.units for layer in layers),
        series=(Series("B − A", tuple(layer.difference for layer in layers)),
                Series("A", tuple(layer.a for layer in layers)), Series("B", tuple(layer.b for layer in layers))),
        colour_scales=tuple(_layer_colour_scale(layer) for layer in layers),
        places=tuple(f"A {i} · B {j}" for i, j in comparison.pairs.tolist()),
        breaks=_breaks(comparison.pairs),
    ))
    k_a, k_b = (int(store.manifest["neurons"]["k"]) for store in stores)
    return NeuronPage(
        title=title,
        index_href=INDEX_NAME,
        notes=(
            (f"Each capture stored, per layer, its own most varying hidden units of the layer's output (A {k_a}, B "
             f"{k_b}), so only the units both stored are compared: the shared units, at the {len(comparison.pairs)} "
             f"aligned tokens ({comparison.prompt_pairs} of them in both prompts). A token of A is compared with its "
             "aligned partner in B; a dotted bar before a token marks unaligned tokens left out there."),
            ("Cells and text show B − A: red where B is higher, blue where A is higher, on one colour scale per layer "
             "(its largest |B − A|). Units are sorted by mean |B − A| over the aligned tokens, largest first. Each "
             "number shown (B − A, A, B) is within 1/254 of that unit's largest magnitude of the same quantity in "
             "that layer."),
        ),
        layers=tuple(LayerChoice(layer, f"layer {layer} · {len(compared.units)} shared", _layer_note(layer, compared))
                     for layer, compared in enumerate(layers)),
        legend=("B < A", "B > A"),
        map_heading="Shared units × aligned tokens: B − A",
        text_heading="Aligned tokens coloured by B − A",
        summary=UnitSummary(("unit", "mean |B − A|", "mean A", "mean B"),
                            tuple(_summary_rows(layer) for layer in layers)),
        payload=payload,
        data=data,
    )


def encode_values(values: NeuronValues) -> tuple[str, dict[str, Any]]:
    """Quantize every series per unit into one compressed payload; return it and the page data describing it."""
    blocks, scales = [], []
    for layer in range(len(values.units)):
        block = np.stack([np.asarray(series.layers[layer], dtype=np.float64) for series in values.series])
        scale = np.abs(block).max(axis=-1) if block.size else np.zeros(block.shape[:-1])  # (series, units)
        safe = np.where(scale > 0, scale, 1.0)
        blocks.append((np.rint(block / safe[..., np.newaxis] * LEVELS) + LEVELS).astype(np.uint8).ravel())
        scales.append(scale)
    payload = base64.b64encode(zlib.compress(np.concatenate(blocks).tobytes(), 9)).decode("ascii")
    data = {
        **token_data(values.text),
        "units": [[int(unit) for unit in units] for units in values.units],
        "series": [series.name for series in values.series],
        "scales": [[[float(value) for value in row] for row in scale] for scale in scales],
        "colourScales": [[float(value) for value in layer] for layer in values.colour_scales],
        "levels": LEVELS,
    }
    if values.places is not None:
        data["places"] = list(values.places)
    if values.breaks:
        data["breaks"] = list(values.breaks)
    return payload, data


def _aligned_text(comparison: NeuronComparison, a: CaptureStore) -> TokenText:
    """The aligned tokens as a text (aligned tokens have the same text in both captures, so A's)."""
    columns = comparison.pairs[:, 0].tolist()
    tokens, special = a.tokens, a.special
    return TokenText(tuple(tokens[i] for i in columns), tuple(special[i] for i in columns), comparison.prompt_pairs,
                     a.causal)


def _breaks(pairs: np.ndarray) -> tuple[int, ...]:
    """The aligned tokens that follow unaligned tokens of A or B."""
    previous = np.vstack([[-1, -1], pairs[:-1]])
    return tuple(int(column) for column in np.flatnonzero((pairs - previous != 1).any(axis=1)))


def _layer_colour_scale(layer: LayerComparison) -> np.ndarray:
    """One scale for all of a layer's units, so colours compare across them: the layer's largest |B - A|."""
    difference = np.abs(layer.difference)
    return np.full(len(layer.units), difference.max() if difference.size else 0.0)


def _layer_note(index: int, layer: LayerComparison) -> str:
    """How many units the layer shares, and which units only one capture stored."""
    shared = len(layer.units)
    stored = f"A stored {shared + len(layer.only_a)} units and B {shared + len(layer.only_b)}"
    only = f"Only A: {_unit_list(layer.only_a)}. Only B: {_unit_list(layer.only_b)}."
    if shared == 0:
        return f"Layer {index}: no unit is shared ({stored}), so there is nothing to compare. {only}"
    return f"Layer {index}: {shared} units shared ({stored}). {only}"


def _unit_list(units: tuple[int, ...]) -> str:
    return ", ".join(str(unit) for unit in units) or "none"


def _summary_rows(layer: LayerComparison) -> tuple[tuple[SummaryCell, ...], ...]:
    """Per shared unit: its index, mean |B - A|, mean A and mean B over the aligned tokens."""
    rows = []
    means = zip(layer.mean_abs_difference, layer.a.astype(np.float64).mean(axis=-1),
                layer.b.astype(np.float64).mean(axis=-1))
    for unit, values in zip(layer.units.tolist(), means):
        rows.append((SummaryCell(str(unit), str(unit)),
                     *(SummaryCell(f"{value:.4f}", repr(float(value))) for value in values)))
    return tuple(rows)
