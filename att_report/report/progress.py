"""Tell the user where a long render stands: one line on stderr per step of layers, with the time left.

The render side does without tqdm (it needs no more than numpy, jinja2 and orjson), and a render is a plain
sequence of layers of about equal cost, so the estimate is the mean time per layer so far times the layers left.
On a terminal the line rewrites itself; elsewhere (a log, a notebook's captured stderr) a line is written at most
every REPORT_EVERY_S seconds, and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

REPORT_EVERY_S = 10.0


class LayerProgress:
    """Count layers done out of `total` and say so, with elapsed time and an estimate of the time left."""

    def __init__(self, total: int, what: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.what = what
        self.enabled = enabled and total > 0
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()
        self.last_written = self.started
        self.interactive = self.stream.isatty()

    def advance(self) -> None:
        """One more layer is done."""
        self.done += 1
        now = time.perf_counter()
        if not self.enabled:
            return
        finished = self.done == self.total
        if self.interactive:
            self.stream.write(f"\r{self.line(now - self.started)}" + ("\n" if finished else ""))
        elif finished or now - self.last_written >= REPORT_EVERY_S:
            self.stream.write(f"{self.line(now - self.started)}\n")
        else:
            return
        self.last_written = now
        self.stream.flush()

    def line(self, elapsed: float) -> str:
        """The status: layers done, time spent, time left."""
        status = f"{self.what}: layer {self.done} of {self.total}, {clock(elapsed)} elapsed"
        if self.done < self.total:
            status += f", about {clock(elapsed / self.done * (self.total - self.done))} left"
        return status


def clock(seconds: float) -> str:
    """Seconds as m:ss (or h:mm:ss)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
