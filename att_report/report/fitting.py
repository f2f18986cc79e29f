"""The one size fitter: every page kind (chunk, rollout, saliency, compare) is cut the same way to fit --max-file-mb.

A page's payload budget is the file budget less what the page carries anyway (scripts, styles, tokens, links). What
a page holds is cut until each piece's encoded payload fits: first halve the heads, then halve the query rows by
their cells (causal rows grow by one cell each). Heads are also read in groups small enough to hold in memory: a
page never holds more heads than `memory_groups` allows, whatever the budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from att_report.errors import UsageError
from att_report.report.templating import write_html

MB = 1_000_000
# Room left in a page's budget for what the fixed-size estimate leaves out: navigation (its list of a split chunk's
# files is capped, see `plan.PARTS_LINK_BYTES`), notes, titles, head labels.
PAGE_SLACK = 8_192
# The float32 cells of the heads read and encoded together: 256 MB. At 8,192 tokens one head is this size already,
# so a page holds one head (or its row ranges), and render's memory stays about one head's square.
MEMORY_CELLS = 1 << 26

Rows = tuple[int, int] | None  # query rows start..end-1, or None: every row
Encode = Callable[[tuple[int, ...], Rows], tuple[str, ...]]


@dataclass(frozen=True)
class Piece:
    """What one page holds after fitting: matrix slots, query rows, and the encoded payloads (one per capture shown:
    one for a report, two for a comparison)."""

    slots: tuple[int, ...]
    rows: Rows
    payloads: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(len(payload) for payload in self.payloads)


def payload_budget(max_file_mb: float, fixed: int, what: str, flag: str = "--max-file-mb") -> int:
    """The payload bytes a page may hold: the file budget less `fixed` (a page without attention) and the slack."""
    budget = int(max_file_mb * MB)
    needed = fixed + PAGE_SLACK
    if needed >= budget:
        raise UsageError(f"{flag} {max_file_mb:g} is below what every page needs before any attention "
                         f"({needed / MB:.2f} MB for the scripts and {what}); raise it.")
    return budget - needed


def fit(count: int, encode: Encode, budget: int, title: Callable[[int], str],
        row_split: tuple[int, bool] | None = None, rows: Rows = None) -> list[Piece]:
    """Cut `count` matrices (or other things a page shows, such as layers) into pieces whose payloads fit `budget`
    bytes: halve the slots, then, given `row_split` (the token count and whether the matrices are causal), the query
    rows (all of them, or the range `rows` the matrices hold). `title(slot)` names a matrix for the refusal when it
    cannot be cut enough.

    Iterative, not a recursive closure: a closure that calls itself is a reference cycle, which would keep the
    caller's matrices alive until the garbage collector happens to run."""
    pieces: list[Piece] = []
    pending: list[tuple[tuple[int, ...], Rows]] = [(tuple(range(count)), rows)]
    while pending:
        slots, piece_rows = pending.pop()
        piece = Piece(slots, piece_rows, encode(slots, piece_rows))
        span = None if row_split is None else piece_rows or (0, row_split[0])
        if piece.size <= budget:
            pieces.append(piece)
        elif len(slots) > 1:
            half = len(slots) // 2
            pending += [(slots[half:], piece_rows), (slots[:half], piece_rows)]
        elif row_split is not None and span is not None and span[1] - span[0] > 1:
            middle = balanced_row_split(span[0], span[1], row_split[1])
            pending += [(slots, (middle, span[1])), (slots, (span[0], middle))]
        else:
            unit = "one query row of" if row_split else "all of"
            raise UsageError(f"{unit} {title(slots[0])} does not fit --max-file-mb; raise it.")
    return pieces


def balanced_row_split(start: int, end: int, causal: bool) -> int:
    """The row that halves the cells of rows start..end-1 (causal rows grow by one cell each)."""
    if not causal:
        return (start + end) // 2
    cells = np.cumsum(np.arange(start, end) + 1)
    halfway = start + 1 + int(np.searchsorted(cells, cells[-1] / 2))  # after the row where half the cells are reached
    return min(max(halfway, start + 1), end - 1)  # both halves keep a row: (9, 10) cells split after the first


def memory_groups(heads: tuple[int, ...], num_tokens: int) -> list[tuple[int, ...]]:
    """Cut a run of heads into groups whose float32 squares together stay within MEMORY_CELLS (at least one head)."""
    per_group = max(1, MEMORY_CELLS // (num_tokens * num_tokens))
    return [heads[start:start + per_group] for start in range(0, len(heads), per_group)]


def write_page(path: Path, html: str, max_file_mb: float, what: str) -> None:
    """Write a page, or refuse when it exceeds the budget after all (what it holds besides attention, such as the
    links between many parts, outgrew the slack; or a page that cannot be cut, like the index's text)."""
    size = len(html.encode("utf-8"))
    if size > max_file_mb * MB:
        raise UsageError(f"{what} needs {size / MB:.3f} MB, more than --max-file-mb {max_file_mb:g}; raise it.")
    write_html(path, html)
