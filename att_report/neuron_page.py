"""The neurons page: per layer, the K hidden units that vary most across the tokens, as a unit x token heatmap
(diverging colours for sign) and a text view coloured by one unit's activation.

Values travel quantized per unit: v -> round(127 * v / s) with s the unit's largest |v| in that layer, so each
value shown is within s / 254 of the captured one. All layers share one payload, in layer, unit, token order.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from att_report.chunks import INDEX_NAME
from att_report.store import CaptureStore
from att_report.viewer import TokenText, token_data

PAGE_NAME = "neurons.html"
LEVELS = 127


@dataclass(frozen=True)
class NeuronPage:
    """Everything templates/neurons.html formats."""

    title: str
    index_href: str
    note: str
    layers: tuple[int, ...]
    payload: str
    data: dict[str, Any]


def neuron_page(store: CaptureStore, text: TokenText) -> NeuronPage | None:
    """Build the page from the capture's neuron arrays, or None when it has none."""
    neurons = store.neurons()
    if neurons is None:
        return None
    units, values = neurons  # (L, K), (L, T, K)
    by_unit = np.ascontiguousarray(values.transpose(0, 2, 1), dtype=np.float64)  # (L, K, T)
    scales = np.abs(by_unit).max(axis=-1)
    safe = np.where(scales > 0, scales, 1.0)
    quantized = np.rint(by_unit / safe[..., np.newaxis] * LEVELS).astype(np.int16) + LEVELS
    payload = base64.b64encode(zlib.compress(quantized.astype(np.uint8).tobytes(), 9)).decode("ascii")
    return NeuronPage(
        title=f"Neurons · {store.manifest['model']['name']}",
        index_href=INDEX_NAME,
        note=(f"Per layer, the {units.shape[1]} hidden units of the layer's output (its residual stream) whose "
              "activation varies most across the tokens, most varying first. Red is positive, blue negative, each unit "
              "scaled to its own largest magnitude; the numbers are within 1/254 of that magnitude of the captured value."),
        layers=tuple(range(units.shape[0])),
        payload=payload,
        data={
            **token_data(text),
            "units": units.tolist(),
            "scales": [[float(scale) for scale in layer] for layer in scales],
            "levels": LEVELS,
        },
    )
