"""Open a store: the reader API of DESIGN.md over versions 1 and 2, after `checks` has validated everything."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from att_report.errors import StoreError
from att_report.store.format import (
    ENCODINGS,
    FORMAT_NAME,
    MANIFEST_NAME,
    Encoding,
    encoding_of_v1,
    index_spans,
)
from att_report.store.layers import ChunkedLayer, DenseLayer, read_rows


@dataclass(frozen=True)
class CaptureStore:
    """An opened store. Attention is read a row block at a time, by the model's layer and head indices."""

    path: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    @property
    def num_layers(self) -> int:
        """The model's layers (the store may hold fewer: see layer_indices)."""
        return int(self.manifest["model"]["num_layers"])

    @property
    def num_heads(self) -> int:
        """The model's query heads per layer (the store may hold fewer: see head_indices)."""
        return int(self.manifest["model"]["num_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.manifest["model"].get("num_kv_heads") or self.num_heads)

    @property
    def causal(self) -> bool:
        return bool(self.manifest["model"]["causal"])

    @property
    def tokens(self) -> list[str]:
        return list(self.manifest["tokens"]["text"])

    @property
    def token_ids(self) -> list[int]:
        return list(self.manifest["tokens"]["ids"])

    @property
    def special(self) -> list[bool]:
        return list(self.manifest["tokens"]["special"])

    @property
    def prompt_length(self) -> int:
        return int(self.manifest["tokens"]["prompt_length"])

    @property
    def num_tokens(self) -> int:
        return len(self.manifest["tokens"]["ids"])

    @property
    def encoding(self) -> Encoding:
        """How the weights are stored (`name`, `exact`) and how far from the model's they may be (`bound`)."""
        section = self.manifest["attention"]
        return encoding_of_v1(section["dtype"]) if self.version == 1 else ENCODINGS[section["encoding"]]

    @property
    def attention_dtype(self) -> str:
        """The numpy dtype of the stored values: float16, float32, or uint8 (uint8-diffused)."""
        return self.encoding.dtype

    def __repr__(self) -> str:
        """One line to recognise a store by (the dataclass's own would print the whole manifest)."""
        model = str(self.manifest["model"].get("name") or "unnamed model").rstrip("/").rsplit("/", 1)[-1]
        stored = (len(self.layer_indices), len(self.head_indices))
        scope = f"{stored[0]} layers x {stored[1]} heads"
        if stored != (self.num_layers, self.num_heads):
            scope += f" of {self.num_layers} x {self.num_heads}"
        return f"<CaptureStore {str(self.path)!r} {model}, {scope}, {self.num_tokens:,} tokens, {self.encoding.name}>"

    def _repr_html_(self) -> str:
        """Show the report inline when a store is the last expression of a Jupyter cell."""
        from att_report.report.notebook import store_html  # the report package builds on the store, not the reverse

        return store_html(self)

    @property
    def layer_indices(self) -> list[int]:
        """The model's layers this store holds, ascending."""
        if self.version == 1:
            return list(range(self.num_layers))
        return list(self.manifest["attention"]["layer_indices"])

    @property
    def head_indices(self) -> list[int]:
        """The model's query heads this store holds for every stored layer, ascending."""
        if self.version == 1:
            return list(range(self.num_heads))
        return list(self.manifest["attention"]["head_indices"])

    def attention(self, layer: int, heads: Sequence[int] | None = None, rows: slice | Sequence[int] | None = None
                  ) -> np.ndarray:
        """Return float32 (heads, rows, T) for the model's `layer`: the given heads (model head indices, default
        every stored head, in head_indices order) and query rows (a slice or indices, default all), reading only
        the row blocks those rows lie in."""
        source = self._layer_source(layer)
        positions = list(range(len(self.head_indices))) if heads is None else [self._head_position(h) for h in heads]
        try:
            row_list = np.arange(self.num_tokens)[rows if rows is not None else slice(None)]
        except IndexError:
            raise StoreError(f"rows {rows} are out of range; {self.path} has rows 0 to {self.num_tokens - 1}.")
        return read_rows(source, positions, np.atleast_1d(row_list), self.num_tokens)

    def layers(self) -> Iterator[np.ndarray]:
        """Yield every stored layer's attention in order, one in memory at a time."""
        for layer in self.layer_indices:
            yield self.attention(layer)

    def file_entry(self, layer: int) -> dict[str, Any]:
        """The manifest's file entry of the model's `layer`, or a StoreError naming the stored layers."""
        if layer not in self.layer_indices:
            raise StoreError(f"layer {layer} is not stored in {self.path}; it holds layers "
                             f"{index_spans(self.layer_indices)}.")
        return dict(self.manifest["attention"]["files"][self.layer_indices.index(layer)])

    def _layer_source(self, layer: int) -> DenseLayer | ChunkedLayer:
        entry = self.file_entry(layer)
        if not self.encoding.chunked:
            return DenseLayer(self.path / entry["path"], self.num_tokens, self.causal)
        index = np.load(self.path / entry["index"]["path"], allow_pickle=False)
        return ChunkedLayer(self.path / entry["path"], index, self.num_tokens, self.causal)

    def _head_position(self, head: int) -> int:
        if head not in self.head_indices:
            raise StoreError(f"head {head} is not stored in {self.path}; it holds heads "
                             f"{index_spans(self.head_indices)}.")
        return self.head_indices.index(head)

    def extra_array(self, section: str, key: str) -> np.ndarray | None:
        """Open an optional array (neurons, saliency) memory-mapped, or None when the capture has none."""
        entry = (self.manifest.get(section) or {}).get(key)
        if entry is None:
            return None
        return np.load(self.path / entry["path"], mmap_mode="r", allow_pickle=False)

    def saliency(self, kind: str = "grad_norm") -> np.ndarray | None:
        """Return the (T, T) saliency matrix `grad_norm` or `grad_x_input` (see att_report.saliency), if captured."""
        array = self.extra_array("saliency", kind)
        return None if array is None else np.asarray(array, dtype=np.float32)

    def neurons(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return (units (layers, K), values (layers, T, K)) of the most varying hidden units, if captured."""
        units, values = self.extra_array("neurons", "units"), self.extra_array("neurons", "values")
        return None if units is None or values is None else (np.asarray(units), np.asarray(values, dtype=np.float32))


def is_store(path: Path) -> bool:
    """Tell whether `path` looks like a store of ours (used before replacing it)."""
    try:
        return orjson.loads((path / MANIFEST_NAME).read_bytes()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False
