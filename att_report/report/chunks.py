"""Which chunks a report has: one per layer and group of heads (or an aggregate), with titles and head labels.

The chunks are pure bookkeeping, decided before any matrix is read. A chunk becomes one file or, to fit the size
budget, several; `plan` names and links those files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from att_report.errors import UsageError
from att_report.report.page_types import HeadLabel, MEAN

HEADS_PER_PAGE = 8
AGGREGATES = ("none", "heads", "layers")
INDEX_NAME = "index.html"


@dataclass(frozen=True)
class Chunk:
    """One planned chunk: a layer (or "mean" over layers) and the heads it shows (None: the mean over heads); `stem`
    starts the names of its files (`layer-03`, `layer-03-mean`, `mean`)."""

    layer: int | str
    heads: tuple[int, ...] | None
    stem: str
    title: str

    @property
    def is_mean(self) -> bool:
        return self.heads is None

    @property
    def key(self) -> str:
        """The chunk's name when one file holds it whole: its file's stem, and its section key in a single file."""
        return self.stem if self.heads is None else f"{self.stem}-heads-{span(self.heads, '-')}"

    @property
    def name(self) -> str:
        return f"{self.key}.html"


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


def plan_chunks(layers: Sequence[int], heads: Sequence[int], aggregate: str) -> list[list[Chunk]]:
    """Plan the chunks of the stored `layers` and `heads` as rows of a grid: one row per layer (one row in all for
    aggregate 'layers')."""
    if aggregate not in AGGREGATES:
        raise UsageError(f"--aggregate {aggregate!r} is unknown; use one of {', '.join(AGGREGATES)}.")
    width = max(2, len(str(max(layers))))
    if aggregate == "layers":
        return [[Chunk(MEAN, None, "mean", f"Mean over all {len(layers)} layers and {len(heads)} heads")]]
    if aggregate == "heads":
        return [[Chunk(layer, None, f"layer-{layer:0{width}d}-mean", f"Layer {layer} · mean of {len(heads)} heads")]
                for layer in layers]
    groups = [tuple(heads[start:start + HEADS_PER_PAGE]) for start in range(0, len(heads), HEADS_PER_PAGE)]
    return [[Chunk(layer, group, f"layer-{layer:0{width}d}", f"Layer {layer} · {heads_title(group)}")
             for group in groups] for layer in layers]


def heads_title(heads: tuple[int, ...]) -> str:
    """Title a run of heads: 'head 8' or 'heads 0–7'."""
    return f"head {heads[0]}" if len(heads) == 1 else f"heads {span(heads, '–')}"


def head_labels(chunk: Chunk, naming: HeadNaming) -> tuple[HeadLabel, ...]:
    """The head selector's choices for a chunk: its heads by label, or the one mean of an aggregate."""
    if chunk.heads is None:
        return (HeadLabel(MEAN, f"mean of {naming.num_heads} heads"),)
    return tuple(HeadLabel(head, naming.label(head)) for head in chunk.heads)


def row_label(row: list[Chunk]) -> str:
    """Name a row of the grid in the index's list of pages."""
    return "All layers" if row[0].layer == MEAN else f"Layer {row[0].layer}"


def span(heads: tuple[int, ...] | None, joiner: str) -> str:
    """Spell a run of consecutive heads: '8' or '0-7'."""
    if not heads:
        return MEAN
    return str(heads[0]) if len(heads) == 1 else f"{heads[0]}{joiner}{heads[-1]}"
