"""`att-report info`: what a capture holds, as aligned lines for a person or one JSON document for a program.

Both forms come from one dictionary of facts (`capture_facts`), so they always say the same. No torch here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from att_report.analysis.metrics import METRICS, HeadMetrics, head_metrics, metrics_source
from att_report.store import CaptureStore, human_bytes, index_spans, load
from att_report.report.page_types import token_label

TEXT_LIMIT = 100  # characters of prompt, system and completion text shown on a terminal line
MODEL_KEYS = ("name", "revision", "architecture", "model_type", "dtype", "context_length")
# Generation entries shown on lines of their own rather than among the settings.
_GENERATION_OWN_LINES = ("mode", "stop_reason", "device", "record_attention", "recorded")


def info(path: Path, with_metrics: bool = False, as_json: bool = False) -> str:
    """Open a capture (checking it whole) and describe it; with_metrics adds every head's metrics."""
    store = load(path)
    metrics = head_metrics(store) if with_metrics else None
    if as_json:
        return info_json(store, metrics).decode("utf-8")
    return info_text(store, metrics)


def capture_facts(store: CaptureStore) -> dict[str, Any]:
    """Gather what `info` reports as JSON-ready values; full texts, never shortened."""
    manifest = store.manifest
    text_input = manifest.get("input") or {}
    return {
        "path": str(store.path),
        "format": {"name": manifest["format"], "version": manifest["version"]},
        "model": {
            **{key: manifest["model"].get(key) for key in MODEL_KEYS},
            "num_layers": store.num_layers, "num_heads": store.num_heads, "num_kv_heads": store.num_kv_heads,
            "causal": store.causal,
        },
        "tokens": {
            "total": store.num_tokens, "prompt": store.prompt_length,
            "completion": store.num_tokens - store.prompt_length,
        },
        "input": {key: text_input.get(key) for key in ("mode", "system", "prompt")},
        "completion": "".join(store.tokens[store.prompt_length:]),
        "generation": dict(manifest["generation"]),
        "attention": attention_facts(store),
        "size_bytes": directory_size(store.path),
        "optional": optional_arrays(manifest),
        "software": dict(manifest["software"]),
        "timings": dict(manifest["timings"]),
    }


def attention_facts(store: CaptureStore) -> dict[str, Any]:
    """How the attention is stored, how faithful it is, what it covers, and where the head metrics come from."""
    encoding = store.encoding
    return {
        "encoding": encoding.name, "dtype": encoding.dtype, "layout": store.manifest["attention"]["layout"],
        "bound": encoding.bound, "weight_bound": encoding.weight_bound, "sum_bound": encoding.sum_bound,
        "layer_indices": store.layer_indices, "head_indices": store.head_indices,
        "metrics_source": metrics_source(store),
    }


def directory_size(path: Path) -> int:
    """Bytes of every file under the store: what copying it to another machine costs."""
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def optional_arrays(manifest: dict[str, Any]) -> dict[str, dict[str, int] | None]:
    """Say which optional analyses the capture holds, with their size; None for each one it lacks."""
    saliency, neurons, predictions = (manifest.get(key) for key in ("saliency", "neurons", "predictions"))
    return {
        "saliency": {"rows": len(saliency.get("rows") or [])} if saliency else None,
        "neurons": {"k": int(neurons.get("k") or 0)} if neurons else None,
        "predictions": {"positions": len(predictions.get("positions") or [])} if predictions else None,
    }


def info_text(store: CaptureStore, metrics: HeadMetrics | None = None) -> str:
    """Format the facts as `label  value` lines, then the metrics table when given."""
    lines = aligned_pairs(fact_lines(capture_facts(store)))
    if metrics is not None:
        lines += ["", *metrics_table(metrics), "", *metric_legend()]
    return "\n".join(lines) + "\n"


def info_json(store: CaptureStore, metrics: HeadMetrics | None = None) -> bytes:
    """Serialize the facts, and the metrics when given, as one JSON document with sorted keys."""
    document = capture_facts(store)
    if metrics is not None:
        document["metrics"] = metrics_document(metrics)
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def metrics_document(metrics: HeadMetrics) -> dict[str, Any]:
    """The metrics as JSON: each metric's definition, and its values as a layers x heads nested list."""
    return {
        "definitions": [{"name": m.name, "label": m.label, "description": m.description} for m in METRICS],
        "values": {m.name: metrics.values(m.name).tolist() for m in METRICS},
        "source": metrics.source,
        "layer_indices": list(metrics.layer_indices),
        "head_indices": list(metrics.head_indices),
    }


def fact_lines(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """Turn the facts into (label, value) lines for a person; facts the capture lacks get no line."""
    model, tokens, generation = facts["model"], facts["tokens"], facts["generation"]
    revision = f" @ {model['revision']}" if model["revision"] else ""
    pairs: list[tuple[str, Any]] = [
        ("capture", facts["path"]),
        ("format", f"{facts['format']['name']} version {facts['format']['version']}"),
        ("model", f"{model['name']}{revision}"),
        ("architecture", f"{model['architecture']} ({model['model_type']})"),
        ("layers", model["num_layers"]),
        ("heads", f"{model['num_heads']} per layer, {model['num_kv_heads']} key/value heads"),
        ("model dtype", model["dtype"]),
        ("causal", "yes (decoder: token t sees tokens 0..t)" if model["causal"] else "no (bidirectional encoder)"),
        ("context length", model["context_length"]),
        ("tokens", f"{tokens['total']} ({tokens['prompt']} prompt + {tokens['completion']} completion)"),
        ("input", facts["input"]["mode"]),
        ("system", _shown(facts["input"]["system"])),
        ("prompt", _shown(facts["input"]["prompt"])),
        ("completion", _shown(facts["completion"]) if tokens["completion"] else "(none)"),
        ("generation", _generation_summary(generation)),
        ("stop reason", generation.get("stop_reason")),
        ("device", generation.get("device")),
        ("attention", _attention_summary(facts["attention"], recorded_with(generation))),
        ("bound", facts["attention"]["bound"]),
        ("stored layers", _scope(facts["attention"]["layer_indices"], model["num_layers"])),
        ("stored heads", _scope(facts["attention"]["head_indices"], model["num_heads"])),
        ("head metrics", facts["attention"]["metrics_source"]),
        ("size on disk", _size(facts["size_bytes"])),
        ("optional arrays", _optional_summary(facts["optional"])),
        ("software", _listing(facts["software"], "{key} {value}")),
        ("timings", _listing({key.removesuffix("_s"): seconds for key, seconds in facts["timings"].items()},
                             "{key} {value} s")),
    ]
    return [(label, str(value)) for label, value in pairs if value is not None]


def aligned_pairs(pairs: list[tuple[str, str]]) -> list[str]:
    """Pad the labels to one width so the values line up."""
    width = max(len(label) for label, _ in pairs)
    return [f"{label.ljust(width)}  {value}" for label, value in pairs]


def terminal_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """Put text on one terminal line: newlines, tabs and control characters spelled out (an escape sequence in a
    prompt from a bug report must not drive the terminal), cut after `limit` characters with its length said."""
    shown = "".join(token_label(char) for char in text[:limit])
    return shown if len(text) <= limit else f"{shown}… ({len(text)} characters)"


def metrics_table(metrics: HeadMetrics) -> list[str]:
    """One right-aligned row per layer x head, one column per metric, headed by the metric labels."""
    header = ["layer", "head", *(m.label for m in METRICS)]
    columns = [metrics.values(m.name) for m in METRICS]
    rows = [
        [str(metrics.layer_indices[layer]), str(metrics.head_indices[head]),
         *(format(float(values[layer, head]), m.spec) for m, values in zip(METRICS, columns))]
        for layer, head in np.ndindex(*metrics.shape)
    ]
    widths = [max(len(row[index]) for row in (header, *rows)) for index in range(len(header))]
    return ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in (header, *rows)]


def metric_legend() -> list[str]:
    """What each column of the metrics table means."""
    return aligned_pairs([(m.label, m.description) for m in METRICS])


def _shown(text: str | None) -> str | None:
    return None if text is None else f'"{terminal_text(text)}"'


def _generation_summary(generation: dict[str, Any]) -> str:
    settings = [f"{key}={value}" for key, value in generation.items() if key not in _GENERATION_OWN_LINES]
    return ", ".join([str(generation.get("mode")), *settings])


def _attention_summary(attention: dict[str, Any], recorded: str | None) -> str:
    summary = f"{attention['encoding']}, {attention['layout']}"
    return summary if recorded is None else f"{summary}, {recorded}"


def recorded_with(generation: dict[str, Any]) -> str | None:
    """How the weights were recorded, as words: `recorded with sdpa-side-weights attention while generating`; None
    where the manifest does not say (stores written before it did)."""
    method = generation.get("record_attention")
    if method is None:
        return None
    return f"recorded with {method} attention" + (" while generating" if generation.get("recorded") ==
                                                   "while generating" else "")


def _scope(indices: list[int], count: int) -> str:
    return f"all {count}" if indices == list(range(count)) else f"{index_spans(indices)} (of {count})"


def _size(size: int) -> str:
    shown = human_bytes(size)
    return shown if shown.endswith(" bytes") else f"{shown} ({size:,} bytes)"


def _optional_summary(optional: dict[str, dict[str, int] | None]) -> str:
    described = {
        "saliency": lambda entry: f"saliency ({entry['rows']} rows)",
        "neurons": lambda entry: f"neurons (k={entry['k']})",
        "predictions": lambda entry: f"predictions ({entry['positions']} positions)",
    }
    present = [described[name](entry) for name, entry in optional.items() if entry is not None]
    return ", ".join(present) or "none"


def _listing(entries: dict[str, Any], template: str) -> str | None:
    return ", ".join(template.format(key=key, value=value) for key, value in entries.items()) or None
