"""Read one stored layer a row block at a time: dense .npy layers (float16/float32, versions 1 and 2) memory-mapped,
uint8-diffused layers chunk by chunk through their index. Neither ever materialises a layer's (heads, T, T) square."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from att_report.store.codec import SCALE, decode_chunk
from att_report.store.format import ROW_BLOCK


@dataclass(frozen=True)
class BlockShape:
    """Query rows start..stop of one row block and the keys they can reach (width): key j <= query i if causal."""

    start: int
    stop: int
    width: int
    causal: bool

    @classmethod
    def of(cls, block: int, num_tokens: int, causal: bool) -> BlockShape:
        start, stop = block * ROW_BLOCK, min((block + 1) * ROW_BLOCK, num_tokens)
        return cls(start, stop, stop if causal else num_tokens, causal)

    @property
    def cells(self) -> int:
        """How many cells the block's rows hold."""
        if not self.causal:
            return (self.stop - self.start) * self.width
        return self.stop * (self.stop + 1) // 2 - self.start * (self.start + 1) // 2

    @property
    def first_cell(self) -> int:
        """Where row `start` begins among a head's cells (rows concatenated, each its keys 0..i or 0..T-1)."""
        return self.start * (self.start + 1) // 2 if self.causal else self.start * self.width

    def fill(self, target: np.ndarray, cells: np.ndarray) -> None:
        """Lay the block's cells out as its rows in `target` (rows, T), one contiguous copy per row."""
        if not self.causal:
            target[:] = cells.reshape(target.shape)
            return
        begin = 0
        for offset, row in enumerate(range(self.start, self.stop)):
            target[offset, : row + 1] = cells[begin: begin + row + 1]
            begin += row + 1


class DenseLayer:
    """A (heads, cells) lower-triangle or (heads, T, T) square .npy layer, memory-mapped."""

    def __init__(self, path: Path, num_tokens: int, causal: bool) -> None:
        self.stored = np.load(path, mmap_mode="r", allow_pickle=False)
        self.num_tokens, self.causal = num_tokens, causal

    def block(self, positions: list[int], block: int) -> np.ndarray:
        """Return float32 (heads, rows, T) of one row block for the stored head positions given."""
        shape = BlockShape.of(block, self.num_tokens, self.causal)
        out = np.zeros((len(positions), shape.stop - shape.start, self.num_tokens), dtype=np.float32)
        if not self.causal:
            out[:] = self.stored[positions, shape.start: shape.stop]
            return out
        first = shape.first_cell
        cells = self.stored[positions, first: first + shape.cells]
        for offset, head_cells in enumerate(cells):
            shape.fill(out[offset], head_cells)
        return out


class ChunkedLayer:
    """A uint8-diffused layer: chunks of one head's row block, found through the (heads, blocks, 2) index of
    (offset, length) into the .bin file."""

    def __init__(self, path: Path, index: np.ndarray, num_tokens: int, causal: bool) -> None:
        self.path, self.index = path, index
        self.num_tokens, self.causal = num_tokens, causal

    def block(self, positions: list[int], block: int) -> np.ndarray:
        """Return float32 (heads, rows, T) of one row block for the stored head positions given."""
        shape = BlockShape.of(block, self.num_tokens, self.causal)
        out = np.zeros((len(positions), shape.stop - shape.start, self.num_tokens), dtype=np.float32)
        with open(self.path, "rb") as handle:
            for offset, position in enumerate(positions):
                start, length = (int(value) for value in self.index[position, block])
                handle.seek(start)
                where = f"{self.path} chunk of stored head {position}, rows {shape.start}-{shape.stop - 1}"
                cells = decode_chunk(handle.read(length), shape.cells, where)
                shape.fill(out[offset], cells)
        out /= np.float32(SCALE)
        return out


def read_rows(layer: DenseLayer | ChunkedLayer, positions: list[int], rows: np.ndarray, num_tokens: int
              ) -> np.ndarray:
    """Gather float32 (heads, len(rows), T) for the given query rows, reading each row block they touch once."""
    result = np.empty((len(positions), len(rows), num_tokens), dtype=np.float32)
    blocks = rows // ROW_BLOCK
    for block in np.unique(blocks).tolist():
        wanted = np.flatnonzero(blocks == block)
        inside = rows[wanted] - block * ROW_BLOCK
        data = layer.block(positions, block)
        if len(wanted) > 1 and (np.diff(wanted) == 1).all() and (np.diff(inside) == 1).all():
            result[:, wanted[0]: wanted[-1] + 1] = data[:, inside[0]: inside[-1] + 1]  # a run: no gather
        else:
            result[:, wanted] = data[:, inside]
    return result
