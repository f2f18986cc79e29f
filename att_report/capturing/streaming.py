"""Stream recorded attention blocks to the store writer on a background thread, so compressing and writing one block
overlaps computing the next.

Blocks of at most PENDING_BYTES in all wait for the writer, so memory stays bounded whatever the model's speed,
and the writer has work banked while the model runs the rest of each layer (its projections and MLP), which hands
over no blocks: with a queue of two blocks the writer sat idle then, and the pass took the sum of both, not the
larger. An error in the writer reaches the capture as itself, at the next block handed over or at the end, and the
writer thread has stopped before the capture's staged directory is removed.
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

PENDING_BYTES = 512 << 20


class BlockStream:
    """A recording sink (recorder.BlockSink) that hands each block of the stored heads to `writer` on one thread,
    closes each layer once all its blocks are written, and advances `bar` (if any) by one per layer."""

    def __init__(self, writer: LayerWriter, heads: list[int], cores: CoreSharing, bar: Any = None) -> None:
        self.writer, self.cores, self.bar = writer, cores, bar
        self.position = {head: position for position, head in enumerate(heads)}  # model head -> stored position
        self.filled: dict[int, int] = {}
        self.layer_cells = len(heads) * writer.num_tokens
        self.pending: deque[tuple[Future[None], int]] = deque()  # each block handed over, with its size
        self.pending_bytes = 0
        self.trimmed = True  # whether the heap was trimmed since the writer last had blocks
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="att-report-writer")

    def __call__(self, layer: int, heads: list[int], first_row: int, weights: torch.Tensor) -> None:
        busy = self._writer_busy()
        self.cores.share(busy)
        if not busy and not self.trimmed:
            # The written blocks' pages go back to the system now, not only as each layer ends: while generating,
            # every layer ends at the end, and the heap kept each row block's pages (1.14 GB peak against 1.04 at
            # 470 tokens).
            return_freed_memory()
            self.trimmed = True
        block = weights.float().cpu().numpy()
        self.filled[layer] = self.filled.get(layer, 0) + block.shape[0] * block.shape[1]
        ends_layer = self.filled[layer] == self.layer_cells
        while self.pending and self.pending_bytes + block.nbytes > PENDING_BYTES:
            self._retire()
        self._queue(self.thread.submit(self._write, layer, self.position[heads[0]], first_row, block, ends_layer),
                    block.nbytes)
        self.cores.share(writer_busy=True)
        self.trimmed = False
        if ends_layer and self.bar is not None:
            self.bar.update(1)

    def _writer_busy(self) -> bool:
        """Whether the writer has blocks left; the written ones leave the queue (raising the writer's error, if it had
        one)."""
        while self.pending and self.pending[0][0].done():
            self._retire()
        return bool(self.pending)

    def _queue(self, future: Future[None], size: int) -> None:
        self.pending.append((future, size))
        self.pending_bytes += size

    def _retire(self) -> None:
        """Wait for the oldest block handed over to be written, raising the writer's error if it had one."""
        future, size = self.pending.popleft()
        self.pending_bytes -= size
        future.result()

    def _write(self, layer: int, position: int, first_row: int, block: np.ndarray, ends_layer: bool) -> None:
        self.writer.write_block(layer, position, first_row, block)
        if ends_layer:
            self.writer.finish_layer(layer)
            return_freed_memory()

    def end_at(self, num_tokens: int) -> None:
        """The sequence ended at `num_tokens` tokens (a generation, which may stop before the writer's length): have
        the writer finish every layer still open at that length."""
        self._queue(self.thread.submit(self.writer.end_at, num_tokens), 0)

    def finish(self) -> None:
        """Wait for every block handed over to be written, raising the writer's error if it had one."""
        while self.pending:
            self._retire()


def encoder_count() -> int:
    """How many threads the writer encodes a block's heads on: a quarter of the cores, up to PARALLEL_PARTS, where
    that is at least 2; else none (0), and the writer thread encodes alone."""
    count = min(PARALLEL_PARTS, (os.cpu_count() or 1) // 4)
    return count if count >= 2 else 0


@contextmanager
def encoding_threads() -> Iterator[ThreadPoolExecutor | None]:
    """The writer's encoder threads (encoder_count), or None on a small machine, where they would only slow the
    model."""
    count = encoder_count()
    if not count:
        yield None
        return
    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="att-report-encoder") as threads:
        yield threads


class CoreSharing:
    """Torch's thread count while recording, set on the thread that runs the model: every thread torch had while the
    writer has nothing queued, and the cores the writer thread and its encoder threads leave while it works.

    A torch operation splits its work among its threads and waits for the slowest, so a thread sharing its core with
    the writer made every operation wait: the model ran at half speed beside the writer. Measured on 2 cores, with
    1 torch thread instead of 2 the recording pass took 0.8x the time at 1,000 tokens and 0.7x at 4,000. While
    generating, the writer is idle between bursts (a row block every 64 tokens), and generation keeps both cores
    then. The thread count does not change torch's results here (SmolLM2's logits are the same bits on 1 thread
    and 2), so the tokens stay plain `generate`'s."""

    def __init__(self) -> None:
        self.full = self.current = torch.get_num_threads()
        self.shared = max(1, min(self.full, (os.cpu_count() or 1) - 1 - encoder_count()))

    def share(self, writer_busy: bool) -> None:
        wanted = self.shared if writer_busy else self.full
        if wanted != self.current:
            torch.set_num_threads(wanted)
            self.current = wanted

    def restore(self) -> None:
        self.share(writer_busy=False)


@contextmanager
def block_stream(writer: LayerWriter, heads: list[int], bar: Any = None) -> Iterator[BlockStream]:
    """A BlockStream whose writes have all completed on a normal exit; on an error, its thread has stopped (blocks
    not yet started are dropped) before the error goes on. Torch shares the cores with the writer meanwhile
    (CoreSharing), and has its threads back afterwards."""
    cores = CoreSharing()
    stream = BlockStream(writer, heads, cores, bar)
    try:
        yield stream
        stream.finish()
    finally:
        cores.restore()
        stream.thread.shutdown(wait=True, cancel_futures=True)
