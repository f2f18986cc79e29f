"""Write a store's attention as the capture produces it: blocks of heads and query rows, streamed to disk.

The writer holds at most one row block (64 rows) per head of a layer in memory, never a layer. It measures every
block's float32 weights for the head metrics on the way (analysis.metrics.HeadAccumulator), so the summaries come
from the model's own values whatever the encoding.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from att_report.analysis.metrics import HeadAccumulator, above_diagonal_zeroed, stored_metrics_section
from att_report.errors import StoreError
from att_report.store.codec import diffused_steps, encode_chunk, to_float16
from att_report.store.format import (
    AUTO,
    FORMAT_NAME,
    FORMAT_VERSION,
    LAYER_DIR,
    LAYOUT_LOWER_TRIANGLE,
    LAYOUT_SQUARE,
    MANIFEST_NAME,
    ROW_BLOCK,
    index_file_name,
    layer_file_name,
    resolve_encoding,
    row_blocks,
    sha256_of,
    stored_shape,
)

METRICS_SOURCE = "computed at capture from the model's float32 weights"
PARALLEL_PARTS = 4  # a block's heads split into at most this many parts when a writer has threads


def write_array(directory: Path, relative: str, array: np.ndarray) -> dict[str, Any]:
    """Save one .npy file inside a store and describe it (path, checksum, size) for the manifest."""
    path = directory / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        hashing = _HashingFile(handle)
        np.save(hashing, np.ascontiguousarray(array), allow_pickle=False)
    return {"path": relative, "sha256": hashing.digest.hexdigest(), "bytes": path.stat().st_size}


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest with sorted keys, so the same capture always gives the same bytes."""
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **manifest}
    (directory / MANIFEST_NAME).write_bytes(orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2))


class _HashingFile:
    """A write-only file that hashes what passes through, so a file is never read back just to checksum it."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        return int(self.handle.write(data))


class _DenseLayer:
    """A float16/float32 layer as one .npy file (the version-1 layout), each block written in place."""

    def __init__(self, directory: Path, relative: str, shape: tuple[int, ...], dtype: str) -> None:
        self.path, self.relative = directory / relative, relative
        self.shape = shape
        created = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.dtype(dtype), shape=shape)
        self.offset, self.dtype = created.offset, created.dtype
        self.head_cells = int(np.prod(shape[1:]))
        del created  # only its header and size were needed
        self.handle = open(self.path, "r+b")

    def encoded(self, weights: np.ndarray) -> np.ndarray:
        """Float32 weights in this layer's dtype (a whole block at once: one call, not one per head)."""
        return to_float16(weights) if self.dtype == np.float16 else np.asarray(weights, dtype=self.dtype)

    def write(self, head: int, first_cell: int, cells: np.ndarray) -> None:
        """Write consecutive cells of one head (encoded), from its cell `first_cell` on."""
        self.handle.seek(self.offset + (head * self.head_cells + first_cell) * self.dtype.itemsize)
        self.handle.write(memoryview(np.ascontiguousarray(cells, dtype=self.dtype)))

    def cut(self, num_tokens: int) -> None:
        """Shrink a causal layer's file to its first `num_tokens` rows (a head's cells run row by row, so its first
        rows are its first cells); the heads move back to back."""
        shape = stored_shape(self.shape[0], num_tokens, causal=True)
        self.handle.close()
        longer = np.load(self.path, mmap_mode="r")
        shorter_path = self.path.with_name(f"{self.path.stem}.cut.npy")
        shorter = np.lib.format.open_memmap(shorter_path, mode="w+", dtype=self.dtype, shape=shape)
        shorter[:] = longer[(slice(None), *(slice(0, size) for size in shape[1:]))]
        shorter.flush()
        del longer, shorter
        os.replace(shorter_path, self.path)
        self.handle = open(self.path, "r+b")

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"path": self.relative, "sha256": sha256_of(self.path), "bytes": self.path.stat().st_size}


class _ChunkedLayer:
    """A uint8-diffused layer: one compressed chunk per (head, row block), appended as it completes, and an index."""

    def __init__(self, directory: Path, layer: int, relative: str, num_heads: int, num_tokens: int) -> None:
        self.directory, self.layer, self.relative = directory, layer, relative
        self.handle = open(directory / relative, "wb")
        self.hashing = _HashingFile(self.handle)
        self.size = 0
        self.index = np.full((num_heads, row_blocks(num_tokens), 2), -1, dtype=np.int64)
        self.pending: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(num_heads)]  # steps so far
        self.pending_cells = [0] * num_heads

    def chunks(self, head_start: int, weights: np.ndarray, row_start: int, causal: bool,
               ends_block: bool) -> list[bytes | None]:
        """Take the next rows of a row block for heads head_start.. as float32 weights (heads, rows, keys; a causal
        row's keys after it at 0); give each head's compressed chunk once the block ends, else None. All heads are
        diffused in one call: at a thousand tokens a head's rows are too few to pay for a call's fixed cost. Heads
        are each their own, so different heads may be taken on different threads."""
        heads, rows, keys = weights.shape
        row, key, steps = diffused_steps(weights.reshape(heads * rows, keys))
        # Cells are each causal row's keys up to its diagonal (or every key), back to back, from the block's start.
        row_cells = row_start + 1 + np.arange(rows) if causal else np.full(rows, keys)
        first_cells, head_cells = np.cumsum(row_cells) - row_cells, int(row_cells.sum())
        head_of_step, row = np.divmod(row, rows)
        bounds = np.searchsorted(head_of_step, np.arange(heads + 1))
        chunks: list[bytes | None] = []
        for offset, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            head = head_start + offset
            self.pending[head].append((first_cells[row[start:end]] + key[start:end] + self.pending_cells[head],
                                       steps[start:end]))
            self.pending_cells[head] += head_cells
            chunks.append(self._finished(head) if ends_block else None)
        return chunks

    def _finished(self, head: int) -> bytes:
        """The compressed chunk of a head's row block from its pending steps, which it clears."""
        positions, values = (np.concatenate(parts) for parts in zip(*self.pending[head]))
        self.pending[head], self.pending_cells[head] = [], 0
        return encode_chunk(positions, values)

    def cut(self, num_tokens: int) -> None:
        """End the layer at `num_tokens` rows, fewer than it was opened for: write each head's chunk of the last,
        partial row block (complete blocks were written as they ended) and drop the index's later blocks."""
        last_block = (num_tokens - 1) // ROW_BLOCK
        for head, pending in enumerate(self.pending):
            if pending:
                self.append(head, last_block, self._finished(head))
        self.index = self.index[:, :row_blocks(num_tokens)]

    def append(self, head: int, block: int, chunk: bytes) -> None:
        """Append one head's chunk of row block `block` (one thread, in a fixed order: the same bytes every time)."""
        self.index[head, block] = (self.size, len(chunk))
        self.hashing.write(chunk)
        self.size += len(chunk)

    def close(self) -> dict[str, Any]:
        self.handle.close()
        return {"path": self.relative, "sha256": self.hashing.digest.hexdigest(), "bytes": self.size,
                "index": write_array(self.directory, index_file_name(self.layer), self.index)}


def _cells(rows: np.ndarray, row_start: int, causal: bool) -> np.ndarray:
    """One head's rows row_start.. (r, keys) as its stored cells: each causal row's keys up to its diagonal, back
    to back (a slice per row: 5x faster than a boolean mask)."""
    if not causal:
        return rows.ravel()
    return np.concatenate([row[: row_start + offset + 1] for offset, row in enumerate(rows)])


@dataclass
class _OpenLayer:
    """A layer being written: its file, the next row each head expects, and its metrics so far."""

    file: _DenseLayer | _ChunkedLayer
    metrics: HeadAccumulator
    next_row: np.ndarray


class LayerWriter:
    """Write the attention of one store into its staging directory, block by block, layer by layer.

    `num_tokens` is the sequence's length, or where a generation may stop early, the most it can reach (end_at
    then gives the length it reached). `num_heads` is the model's query heads per layer; `head_indices` (default
    all) the ones stored, in stored order; `layer_indices` (default: whatever layers are written) the model's layers
    to store. `dtype` is the user's choice of ATTENTION_DTYPE_CHOICES (`auto`: float16 below COMPACT_FROM_TOKENS
    tokens, uint8-diffused from there, judged on `num_tokens`).
    With `parallel`, the heads of each block are measured and encoded in parts on its threads (numpy and zlib
    release the GIL there), and written in head order by the calling thread, so the files are the same bytes (a head
    metric, summed over fewer heads at a time, may differ in its last float64 bit).
    """

    def __init__(self, directory: Path, num_heads: int, num_tokens: int, causal: bool, dtype: str = AUTO, *,
                 layer_indices: Sequence[int] | None = None, head_indices: Sequence[int] | None = None,
                 parallel: Executor | None = None) -> None:
        self.directory, self.num_tokens, self.causal = directory, num_tokens, causal
        self.parallel = parallel  # measures and encodes a block's heads in parts on these threads, if given
        self.encoding = resolve_encoding(dtype, num_tokens)
        self.head_indices = list(range(num_heads)) if head_indices is None else list(head_indices)
        if not self.head_indices or sorted(set(self.head_indices)) != self.head_indices or not (
                0 <= self.head_indices[0] and self.head_indices[-1] < num_heads):
            raise StoreError(f"heads {self.head_indices} are not ascending distinct heads of 0-{num_heads - 1}.")
        self.layer_indices = None if layer_indices is None else list(layer_indices)
        self.num_heads = len(self.head_indices)  # stored heads: write_block's head positions run over these
        self.files: list[dict[str, Any]] = []
        self.metrics: dict[int, np.ndarray] = {}
        self._open: dict[int, _OpenLayer] = {}
        (directory / LAYER_DIR).mkdir(parents=True, exist_ok=True)

    def write(self, attention: np.ndarray) -> None:
        """Store the next layer whole, given as float32 (stored heads, T, T)."""
        layer = len(self.files) if self.layer_indices is None else self.layer_indices[len(self.files)]
        self.write_block(layer, 0, 0, attention)
        self.finish_layer(layer)

    def write_block(self, layer: int, head_start: int, row_start: int, weights: np.ndarray) -> None:
        """Store float32 weights (h, r, T) of stored heads head_start.. and query rows row_start.. of the model's
        `layer`. A layer's blocks cover each (head, row) once, rows ascending within a head; a causal row's
        columns above the diagonal are ignored, and may be left out: a causal block may stop at key row_start + r."""
        opened = self._layer(layer)
        heads = range(head_start, head_start + weights.shape[0])
        self._check_block(layer, opened, heads, row_start, weights)
        end = row_start + weights.shape[1]
        start = row_start
        while start < end:
            stop = min(end, (start // ROW_BLOCK + 1) * ROW_BLOCK)  # split at row-block boundaries
            self._write_rows(opened, head_start, start, weights[:, start - row_start: stop - row_start])
            start = stop
        opened.next_row[head_start: heads.stop] = end

    def _write_rows(self, opened: _OpenLayer, head_start: int, row_start: int, weights: np.ndarray) -> None:
        """Write rows inside one row block: (h, r, T) float32."""
        rows = weights.shape[1]
        width = row_start + rows if self.causal else self.num_tokens  # keys past the last row hold no weight
        weights = weights[:, :, :width]
        block = row_start // ROW_BLOCK
        ends_block = row_start + rows == min((block + 1) * ROW_BLOCK, self.num_tokens)
        file = opened.file

        def encode(first: int, end: int) -> list[Any]:
            """Measure and encode heads first..end of the block: each head's cells (dense) or chunk (or None)."""
            part = weights[first:end]
            if self.causal:
                part = above_diagonal_zeroed(part, row_start)
            opened.metrics.add(head_start + first, row_start, part)
            if isinstance(file, _DenseLayer):
                return [_cells(values, row_start, self.causal) for values in file.encoded(part)]
            return file.chunks(head_start + first, part, row_start, self.causal, ends_block)

        count = weights.shape[0]
        step = count if self.parallel is None else -(-count // PARALLEL_PARTS)
        bounds = [(first, min(first + step, count)) for first in range(0, count, step)]
        if self.parallel is None or len(bounds) == 1:
            encoded = [encode(first, end) for first, end in bounds]
        else:
            encoded = list(self.parallel.map(lambda part: encode(*part), bounds))
        first_cell = row_start * (row_start + 1) // 2 if self.causal else row_start * self.num_tokens
        for offset, item in enumerate(item for part in encoded for item in part):
            if isinstance(file, _DenseLayer):
                file.write(head_start + offset, first_cell, item)
            elif item is not None:
                file.append(head_start + offset, block, item)

    def end_at(self, num_tokens: int) -> None:
        """Finish every open layer at `num_tokens` tokens, where a causal sequence ended before the length the writer
        was opened for (a generation that stopped before its token limit: it was opened for the limit). Each open
        layer must hold exactly rows 0..num_tokens-1 by then."""
        if num_tokens < self.num_tokens:
            if not self.causal or self.files:
                raise StoreError(f"this store cannot end at {num_tokens} of its {self.num_tokens} tokens: only a "
                                 "causal store whose layers are all still open can end early.")
            for layer, opened in self._open.items():
                if (opened.next_row > num_tokens).any():
                    raise StoreError(f"layer {layer} holds rows past token {num_tokens}, where the store ends.")
                opened.file.cut(num_tokens)
                opened.metrics.cut(num_tokens)
            self.num_tokens = num_tokens
        for layer in sorted(self._open):
            self.finish_layer(layer)

    def finish_layer(self, layer: int) -> None:
        """Close a layer whose blocks are all written, and record its file and metrics."""
        opened = self._open.get(layer)
        if opened is None or (opened.next_row < self.num_tokens).any():
            raise StoreError(f"layer {layer} is not complete: every stored head needs rows 0-{self.num_tokens - 1}.")
        if not opened.metrics.finite():
            raise StoreError(f"layer {layer}'s attention weights include NaN or infinity; the model's attention "
                             "overflowed at this precision, so capture again with --dtype float32.")
        del self._open[layer]
        self.files.append({"layer": layer, **opened.file.close()})
        self.metrics[layer] = opened.metrics.values()

    def attention_section(self) -> dict[str, Any]:
        """Describe the written layers for the manifest's `attention` section."""
        if self._open:
            raise StoreError(f"layers {sorted(self._open)} were started but never finished.")
        files = sorted(self.files, key=lambda entry: entry["layer"])
        layers = [entry["layer"] for entry in files]
        if self.layer_indices is not None and layers != sorted(self.layer_indices):
            raise StoreError(f"layers {layers} were written, but the store was to hold layers {self.layer_indices}.")
        section = {
            "encoding": self.encoding.name, "dtype": self.encoding.dtype, "bound": self.encoding.bound,
            "layout": LAYOUT_LOWER_TRIANGLE if self.causal else LAYOUT_SQUARE, "num_tokens": self.num_tokens,
            "layer_indices": layers, "head_indices": self.head_indices, "files": files,
            "metrics": stored_metrics_section(np.array([self.metrics[layer] for layer in layers]), METRICS_SOURCE),
        }
        return section | ({"row_block": ROW_BLOCK} if self.encoding.chunked else {})

    def _layer(self, layer: int) -> _OpenLayer:
        """The open layer `layer`, opening it on its first block."""
        if layer in self._open:
            return self._open[layer]
        if any(entry["layer"] == layer for entry in self.files):
            raise StoreError(f"layer {layer} was already finished; each layer is written once.")
        if self.layer_indices is not None and layer not in self.layer_indices:
            raise StoreError(f"layer {layer} is not among the layers to store, {self.layer_indices}.")
        relative = layer_file_name(layer, self.encoding)
        if self.encoding.chunked:
            file: _DenseLayer | _ChunkedLayer = _ChunkedLayer(self.directory, layer, relative, self.num_heads,
                                                              self.num_tokens)
        else:
            shape = stored_shape(self.num_heads, self.num_tokens, self.causal)
            file = _DenseLayer(self.directory, relative, shape, self.encoding.dtype)
        opened = _OpenLayer(file, HeadAccumulator(self.num_heads, self.num_tokens, self.causal),
                            np.zeros(self.num_heads, dtype=np.int64))
        self._open[layer] = opened
        return opened

    def _check_block(self, layer: int, opened: _OpenLayer, heads: range, row_start: int, weights: np.ndarray) -> None:
        end = row_start + (weights.shape[1] if weights.ndim == 3 else 0)
        keys_fit = weights.ndim == 3 and (weights.shape[2] == self.num_tokens
                                          or (self.causal and end <= weights.shape[2] <= self.num_tokens))
        if not keys_fit or end > self.num_tokens:
            raise StoreError(f"layer {layer}: a block of shape {weights.shape} at row {row_start} does not fit "
                             f"(heads, rows, {self.num_tokens}) rows 0-{self.num_tokens - 1}.")
        if heads.start < 0 or heads.stop > self.num_heads:
            raise StoreError(f"layer {layer}: heads {heads.start}-{heads.stop - 1} are not among the "
                             f"{self.num_heads} stored heads.")
        expected = opened.next_row[heads.start: heads.stop]
        if (expected != row_start).any():
            raise StoreError(f"layer {layer}: heads {heads.start}-{heads.stop - 1} expected row {int(expected.min())} "
                             f"next, got row {row_start}; write each head's rows once, in order.")
