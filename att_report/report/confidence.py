"""How sure the model was: each completion token's probability and its likeliest alternatives, and for encoders
with a masked-LM head the predictions at each [MASK], as hover details and a confidence strip for the index."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from att_report.store import CaptureStore
from att_report.report.page_types import token_label


@dataclass(frozen=True)
class StripCell:
    """One completion token in the confidence strip: its position, probability and how strongly to mark it."""

    index: int
    probability: float
    label: str
    style: str


def token_details(store: CaptureStore) -> dict[str, dict[str, Any]]:
    """Hover details keyed by token index: a heading and the alternatives as (label, probability text) pairs."""
    details: dict[str, dict[str, Any]] = {}
    completion = store.manifest.get("completion") or {}
    for offset, (logprob, top) in enumerate(zip(completion.get("logprobs") or [], completion.get("top") or [])):
        index = store.prompt_length + offset
        details[str(index)] = {
            "heading": f"p = {_percent(math.exp(logprob))} (log p = {logprob:.3f}); likeliest at this position:",
            "alternatives": [[token_label(choice["text"]), _percent(math.exp(choice["logprob"]))] for choice in top],
        }
    predictions = store.manifest.get("predictions") or {}
    for index, top in zip(predictions.get("positions") or [], predictions.get("top") or []):
        details[str(index)] = {
            "heading": "the masked-LM head's likeliest tokens here:",
            "alternatives": [[token_label(choice["text"]), _percent(choice["probability"])] for choice in top],
        }
    return details


def confidence_strip(store: CaptureStore) -> tuple[StripCell, ...]:
    """One cell per completion token; the less likely the token was, the stronger its mark."""
    logprobs = (store.manifest.get("completion") or {}).get("logprobs") or []
    tokens = store.tokens
    cells = []
    for offset, logprob in enumerate(logprobs):
        probability = math.exp(logprob)
        index = store.prompt_length + offset
        cells.append(StripCell(index, probability, token_label(tokens[index]),
                               f"background-color: rgba(217, 72, 15, {1 - probability:.3f})"))
    return tuple(cells)


def _percent(probability: float) -> str:
    return f"{probability * 100:.1f}%" if probability >= 0.001 else f"{probability:.1e}"
