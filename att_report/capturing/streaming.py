"""Stream recorded attention blocks to the store writer on a background thread, so compressing and writing one block
overlaps computing the next.

At most IN_FLIGHT blocks wait for the writer, so memory stays bounded whatever the model's speed. An error in the
writer reaches the capture as itself, at the next block handed over or at the end, and the writer thread has
stopped before the capture's staged directory is removed.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from att_report.capturing.heap import return_freed_memory
from att_report.store import LayerWriter
from att_report.store.writer import PARALLEL_PARTS

IN_FLIGHT = 2


class BlockStream:
    """A recording sink (recorder.BlockSink) that hands each block of the stored heads to `writer` on one thread,
    closes each layer once all its blocks are written, and advances `bar` by one per layer."""

    def __init__(self, writer: LayerWriter, heads: list[int], bar: Any) -> None:
        self.writer, self.bar = writer, bar
        self.position = {head: position for position, head in enumerate(heads)}  # model head -> stored position
        self.filled: dict[int, int] = {}
        self.layer_cells = len(heads) * writer.num_tokens
        self.pending: deque[Future[None]] = deque()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="att-report-writer")

    def __call__(self, layer: int, heads: list[int], first_row: int, weights: torch.Tensor) -> None:
        block = weights.float().cpu().numpy()
        self.filled[layer] = self.filled.get(layer, 0) + block.shape[0] * block.shape[1]
        ends_layer = self.filled[layer] == self.layer_cells
        while len(self.pending) >= IN_FLIGHT:
            self.pending.popleft().result()  # raises the writer's error, if it had one
        self.pending.append(self.thread.submit(self._write, layer, self.position[heads[0]], first_row, block,
                                               ends_layer))
        if ends_layer:
            self.bar.update(1)

    def _write(self, layer: int, position: int, first_row: int, block: np.ndarray, ends_layer: bool) -> None:
        self.writer.write_block(layer, position, first_row, block)
        if ends_layer:
            self.writer.finish_layer(layer)
            return_freed_memory()

    def finish(self) -> None:
        """Wait for every block handed over to be written, raising the writer's error if it had one."""
        while self.pending:
            self.pending.popleft().result()


@contextmanager
def encoding_threads() -> Iterator[ThreadPoolExecutor | None]:
    """Threads for the writer to encode a block's heads on, where the machine has cores to spare beyond the model's
    (a quarter of them, up to PARALLEL_PARTS); None on a small machine, where they would only slow the model."""
    count = min(PARALLEL_PARTS, (os.cpu_count() or 1) // 4)
    if count < 2:
        yield None
        return
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="att-report-encoder") as threads:
        yield threads


@contextmanager
def block_stream(writer: LayerWriter, heads: list[int], bar: Any) -> Iterator[BlockStream]:
    """A BlockStream whose writes have all completed on a normal exit; on an error, its thread has stopped (blocks
    not yet started are dropped) before the error goes on."""
    stream = BlockStream(writer, heads, bar)
    try:
        yield stream
        stream.finish()
    finally:
        stream.thread.shutdown(wait=True, cancel_futures=True)
