"""The report plan: which files a report (folder, single file or comparison) has, what each holds, its name and title.

One plan serves every output. The chunks (a layer's group of heads, or an aggregate) come from `chunks`; the size
fitter (`fitting`) cuts a chunk into parts of fewer heads or fewer query rows; this module names each part by what it
holds (`layer-03-heads-0-3-rows-0-119.html`, "Layer 3 · heads 0–3 · query rows 0–119") from its fields, never by
editing another name, and links the files: the same heads one layer up and down, the neighbouring groups, the other
parts of the same chunk. Analyses (rollout, saliency, neurons) are planned pages too, with the reason when one is
left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from att_report.report.chunks import INDEX_NAME, Chunk, heads_title, span
from att_report.report.page_types import Link, Navigation

# Rollout multiplies T x T matrices through every layer (about 2 T^3 flops a layer): 0.5 TFLOP for 30 layers at 2,048
# tokens, 33 TFLOP at 8,192. Up to this length it is computed in full; beyond, the report says it was left out.
ROLLOUT_MAX_TOKENS = 2048
# A split chunk's file links all its files while their links take at most about this many bytes; beyond, only the
# previous and next file (the index lists them all), so a page's links stay within the fitter's slack.
PARTS_LINK_BYTES = 3_000


@dataclass(frozen=True)
class Part:
    """One file of a chunk: the heads it holds (None: the chunk's mean) and its query rows (None: every row; else
    start..end-1)."""

    chunk: Chunk
    heads: tuple[int, ...] | None
    rows: tuple[int, int] | None
    name: str
    title: str

    @property
    def row_start(self) -> int:
        return 0 if self.rows is None else self.rows[0]

    def holds(self, head: int) -> bool:
        return self.heads is None or head in self.heads


def chunk_part(chunk: Chunk, heads: tuple[int, ...] | None, rows: tuple[int, int] | None = None) -> Part:
    """Name and title one file of `chunk` by what it holds: its layer, its heads, its rows unless it has them all."""
    stem, title = chunk.stem, chunk.title
    if heads is not None:
        stem += f"-heads-{span(heads, '-')}"
        title = f"Layer {chunk.layer} · {heads_title(heads)}"
    if rows is not None:
        stem += f"-rows-{rows[0]}-{rows[1] - 1}"
        title += f" · query rows {rows[0]}–{rows[1] - 1}"
    return Part(chunk, heads, rows, f"{stem}.html", title)


def analysis_name(stem: str, labels: tuple[str, ...], only: bool) -> str:
    """Name an analysis file by the sections it holds ('rollout-L0-to-L7.html'), or plainly when it is the only one."""
    if only:
        return f"{stem}.html"
    return f"{stem}-{labels[0]}.html" if len(labels) == 1 else f"{stem}-{labels[0]}-to-{labels[-1]}.html"


@dataclass
class FileGrid:
    """The files of a folder report or comparison, row by row (a layer, or the aggregate), as the fitter made them."""

    rows: list[list[Part]] = field(default_factory=list)

    def navigation(self, row: int, part: Part) -> Navigation:
        """Links of one file: the index, the same heads one row up and down, the first file of the neighbouring
        chunks of its row, and every file of its chunk when the chunk was split."""
        chunks = list(dict.fromkeys(other.chunk for other in self.rows[row]))
        position = chunks.index(part.chunk)
        siblings = [other for other in self.rows[row] if other.chunk == part.chunk]

        def layer_link(step: int) -> Link | None:
            if not 0 <= row + step < len(self.rows):
                return None
            target = self._file_like(self.rows[row + step], part)
            layer = target.chunk.layer
            return Link(f"← layer {layer}" if step < 0 else f"layer {layer} →", target.name)

        def group_link(step: int) -> Link | None:
            if not 0 <= position + step < len(chunks):
                return None
            chunk = chunks[position + step]
            target = next(other for other in self.rows[row] if other.chunk == chunk)
            label = "mean" if chunk.heads is None else heads_title(chunk.heads)
            return Link(f"← {label}" if step < 0 else f"{label} →", target.name)

        return Navigation(
            index=Link("Index", INDEX_NAME),
            prev_layer=layer_link(-1),
            next_layer=layer_link(1),
            prev_group=group_link(-1),
            next_group=group_link(1),
            parts=_part_links(siblings, part),
        )

    @staticmethod
    def _file_like(files: list[Part], part: Part) -> Part:
        """The file of another row that holds the same first head from its first row, else that row's first file."""
        head = part.heads[0] if part.heads else None
        return next((other for other in files if (head is None or other.holds(head)) and other.row_start == 0),
                    files[0])

    def file_of(self, layer_row: int, head: int) -> Part:
        """The file that holds `head` of a row from its first query row (where the index's grid cell opens)."""
        return next(part for part in self.rows[layer_row] if part.holds(head) and part.row_start == 0)

    def split_chunks(self) -> tuple[int, int]:
        """How many chunks were split, out of how many."""
        chunks = [part.chunk for row in self.rows for part in row]
        distinct = list(dict.fromkeys(chunks))
        return sum(chunks.count(chunk) > 1 for chunk in distinct), len(distinct)


def _part_links(siblings: list[Part], part: Part) -> tuple[Link, ...]:
    """Every file of a split chunk, or only the neighbours of `part` when the list would be long."""
    if len(siblings) < 2:
        return ()
    if sum(len(other.title) + len(other.name) + 60 for other in siblings) > PARTS_LINK_BYTES:
        position = siblings.index(part)
        siblings = siblings[max(position - 1, 0):position + 2]
    return tuple(Link(other.title, other.name) for other in siblings)


@dataclass(frozen=True)
class AnalysisFiles:
    """An analysis page as the index lists it: its title, its files and, when part of it was left out, what and
    why."""

    title: str
    files: tuple[Link, ...]
    omitted: str = ""
