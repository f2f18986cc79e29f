"""Which chunk files a report has: one per layer and group of heads (or an aggregate), named and linked.

The plan is pure bookkeeping, decided before any matrix is read: file names, titles, head labels (with their
key/value group on grouped-query models) and the navigation between neighbouring layers and groups. Splitting a
chunk that would exceed the size budget happens later, in `render`, which gives the parts names from `part_name`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from att_report.errors import UsageError
from att_report.report.page_types import HeadLabel, Link, MEAN, Navigation

HEADS_PER_PAGE = 8
AGGREGATES = ("none", "heads", "layers")
INDEX_NAME = "index.html"


@dataclass(frozen=True)
class Chunk:
    """One planned chunk: a layer (or "mean" over layers) and the heads it shows (None: the mean over heads)."""

    layer: int | str
    heads: tuple[int, ...] | None
    name: str
    title: str
    key: str

    @property
    def is_mean(self) -> bool:
        return self.heads is None


@dataclass(frozen=True)
class HeadNaming:
    """How heads are called: by index, with their key/value group where several query heads share one."""

    num_heads: int
    num_kv_heads: int

    def label(self, head: int) -> str:
        if self.num_kv_heads >= self.num_heads or self.num_heads % self.num_kv_heads:
            return f"head {head}"
        return f"head {head} · kv {self.kv_group(head)}"

    def kv_group(self, head: int) -> int:
        """The key/value head that query head `head` reads (heads share them in equal consecutive blocks)."""
        if self.num_heads % self.num_kv_heads:
            return head
        return head // (self.num_heads // self.num_kv_heads)


def plan_chunks(num_layers: int, num_heads: int, aggregate: str) -> list[list[Chunk]]:
    """Plan the chunks as rows of a grid: one row per layer (one row in all for aggregate 'layers')."""
    if aggregate not in AGGREGATES:
        raise UsageError(f"--aggregate {aggregate!r} is unknown; use one of {', '.join(AGGREGATES)}.")
    width = max(2, len(str(num_layers - 1)))
    if aggregate == "layers":
        return [[Chunk(MEAN, None, "mean.html", f"Mean over all {num_layers} layers and {num_heads} heads", "mean")]]
    if aggregate == "heads":
        return [[Chunk(layer, None, f"layer-{layer:0{width}d}-mean.html", f"Layer {layer} · mean of {num_heads} heads",
                       f"L{layer}-mean")] for layer in range(num_layers)]
    groups = [tuple(range(start, min(start + HEADS_PER_PAGE, num_heads))) for start in range(0, num_heads, HEADS_PER_PAGE)]
    return [[Chunk(layer, group, f"layer-{layer:0{width}d}-heads-{_span(group, '-')}.html",
                   f"Layer {layer} · heads {_span(group, '–')}", f"L{layer}-H{_span(group, '-')}") for group in groups]
            for layer in range(num_layers)]


def head_labels(chunk: Chunk, naming: HeadNaming) -> tuple[HeadLabel, ...]:
    """The head selector's choices for a chunk: its heads by label, or the one mean of an aggregate."""
    if chunk.heads is None:
        return (HeadLabel(MEAN, f"mean of {naming.num_heads} heads"),)
    return tuple(HeadLabel(head, naming.label(head)) for head in chunk.heads)


def navigation(grid: list[list[Chunk]], layer_row: int, column: int, index_href: str = INDEX_NAME) -> Navigation:
    """Links of the chunk at grid[layer_row][column]: the index, the same heads one layer up and down, the neighbour groups."""
    def link(row: int, col: int, label: Callable[[Chunk], str]) -> Link | None:
        inside = 0 <= row < len(grid) and 0 <= col < len(grid[row])
        return Link(label(grid[row][col]), grid[row][col].name) if inside else None

    return Navigation(
        index=Link("Index", index_href),
        prev_layer=link(layer_row - 1, column, lambda chunk: f"← layer {chunk.layer}"),
        next_layer=link(layer_row + 1, column, lambda chunk: f"layer {chunk.layer} →"),
        prev_group=link(layer_row, column - 1, lambda chunk: f"← heads {_span(chunk.heads, '–')}"),
        next_group=link(layer_row, column + 1, lambda chunk: f"heads {_span(chunk.heads, '–')} →"),
    )


def chunk_of(grid: list[list[Chunk]], layer: int, head: int) -> Chunk:
    """The chunk that shows `head` of `layer`: its head group, or the aggregate covering it."""
    row = grid[min(layer, len(grid) - 1)]
    return next(chunk for chunk in row if chunk.heads is None or head in chunk.heads)


def row_label(row: list[Chunk]) -> str:
    """Name a row of the grid in the index's list of pages."""
    return "All layers" if row[0].layer == MEAN else f"Layer {row[0].layer}"


def part_name(chunk: Chunk, heads: tuple[int, ...] | None, row_start: int, row_end: int, num_tokens: int) -> str:
    """Name one file of a chunk split to fit the size budget: its heads and, when split by rows, its query rows."""
    stem = chunk.name.removesuffix(".html")
    if heads is not None and heads != chunk.heads:
        stem = stem.rsplit("-heads-", 1)[0] + f"-heads-{_span(heads, '-')}"
    if (row_start, row_end) != (0, num_tokens):
        stem += f"-rows-{row_start}-{row_end - 1}"
    return stem + ".html"


def _span(heads: tuple[int, ...] | None, joiner: str) -> str:
    """Spell a run of consecutive heads: '8' or '0-7'."""
    if not heads:
        return MEAN
    return str(heads[0]) if len(heads) == 1 else f"{heads[0]}{joiner}{heads[-1]}"
