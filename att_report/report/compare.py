"""The compare report: two captures side by side, one page per layer and head group, and an index ranking heads.

Two phrasings of one request, or one prompt through two models with one tokenizer: their tokens are aligned by
text (see `alignment`), every page shows both captures' text views for the same heads with aligned tokens linked,
and the index ranks heads by how differently the two captures spread attention over the aligned prompt tokens.
When both captures stored neurons, a neurons page shows how the units both stored differ at the aligned tokens.
Like `render`, this reads one layer of each store at a time and never imports torch.

Pages hold the same head groups as a report's chunk pages; where a page would exceed the size budget, every page
holds fewer heads (halved until all fit), so the pages form one grid and their links always resolve.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from att_report.analysis.alignment import (
    HeadDivergence,
    TokenAlignment,
    align_tokens,
    check_comparable,
    head_divergence,
    prompt_pairs,
)
from att_report.atomic import staged_directory
from att_report.report.chunks import (
    HEADS_PER_PAGE,
    INDEX_NAME,
    Chunk,
    HeadNaming,
    head_labels,
    navigation,
    part_name,
    plan_chunks,
    row_label,
)
from att_report.report.encode import SCHEME_DESCRIPTION, encode_rows
from att_report.errors import UsageError
from att_report.report.index_page import ChunkLinks, TextToken, index_facts, index_text
from att_report.analysis.neuron_compare import neuron_differences
from att_report.report.neuron_page import PAGE_NAME as NEURON_PAGE
from att_report.report.neuron_page import comparison_neuron_page
from att_report.report.render import DEFAULT_MAX_FILE_MB, Part, check_report_target, is_report, part_title, token_text
from att_report.store import CaptureStore, load
from att_report.report.templating import render_template, write_html
from att_report.report.page_types import Link, Navigation
from att_report.report.viewer import Section, SectionView, chunk_page

SIDES = ("a", "b")
MODES = ("observer", "observed")
# The compare index's <body> carries this, which tells a compare report from a render report.
INDEX_MARKER = 'data-page="compare-index"'
_MB = 1_000_000
_PAGE_SLACK = 16_384  # room for what differs between pages beyond the payloads: titles, links, head labels


@dataclass(frozen=True)
class Comparison:
    """The two captures and how their tokens align."""

    a: CaptureStore
    b: CaptureStore
    alignment: TokenAlignment

    @property
    def stores(self) -> tuple[CaptureStore, CaptureStore]:
        return self.a, self.b

    def layers(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield each layer of both captures, one pair in memory at a time."""
        yield from zip(self.a.layers(), self.b.layers())


@dataclass(frozen=True)
class SideView:
    """One capture on a compare page: its heading and its payload element."""

    key: str
    heading: str
    payload_id: str
    payload: str


@dataclass(frozen=True)
class ModeView:
    """One mode's pair of text views (observer or observed)."""

    mode: str
    heading: str
    help: str
    shown: bool


@dataclass(frozen=True)
class ComparePage:
    """Everything compare.html formats."""

    title: str
    navigation: Navigation
    notes: tuple[str, ...]
    heads: SectionView  # the head selector and the body's data-layer / data-heads
    sides: tuple[SideView, ...]
    modes: tuple[ModeView, ...]
    data: dict[str, Any]


@dataclass(frozen=True)
class HeadScore:
    """One head's divergence: for the ranking table (rank, sort values) and the heatmap (colour value)."""

    rank: int
    layer: int
    head: int
    label: str
    exact: str  # the value for sorting and colouring
    text: str
    short: str
    href: str


@dataclass(frozen=True)
class IndexSide:
    """One capture on the compare index: its text (unaligned tokens marked) and its facts."""

    key: str
    heading: str
    text: tuple[TextToken, ...]
    facts: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class IndexNeurons:
    """The compare index's word on neurons: a link to the neurons page, or why there is none."""

    href: str | None
    text: str


@dataclass(frozen=True)
class CompareIndex:
    """Everything compare_index.html formats."""

    title: str
    sides: tuple[IndexSide, ...]
    alignment: tuple[str, ...]
    divergence_help: str
    pages_help: str
    ranking: tuple[HeadScore, ...]
    head_labels: tuple[str, ...]
    heatmap: tuple[tuple[HeadScore, ...], ...]
    pages: tuple[ChunkLinks, ...]
    neurons: IndexNeurons | None


def compare(capture_a: str | Path, capture_b: str | Path, output: str | Path, force: bool = False,
            max_file_mb: float = DEFAULT_MAX_FILE_MB) -> Path:
    """Write the comparison of two captures as a report folder at `output`; refuse bad input before writing."""
    output = Path(output)
    if not max_file_mb > 0:
        raise UsageError(f"--max-file-mb must be a positive number of megabytes, not {max_file_mb}.")
    check_report_target(output, force, is_compare_report, "comparison")
    a, b = load(capture_a), load(capture_b)
    check_comparable(a, b)
    comparison = Comparison(a, b, align_tokens(a.tokens, b.tokens))
    grid = page_grid(comparison, max_file_mb)
    with staged_directory(output) as staging:
        write_comparison(comparison, grid, staging)
    return output


def is_compare_report(path: Path) -> bool:
    """A folder of our pages whose index is a compare index: the only thing `compare --force` replaces."""
    return is_report(path) and INDEX_MARKER in (path / INDEX_NAME).read_text(encoding="utf-8", errors="replace")


def write_comparison(comparison: Comparison, grid: list[list[Chunk]], directory: Path) -> None:
    """Write every compare page, then the index."""
    for row, (layer_a, layer_b) in enumerate(comparison.layers()):
        for column, chunk in enumerate(grid[row]):
            page = compare_page(comparison, chunk, (layer_a, layer_b), navigation(grid, row, column))
            write_html(directory / chunk.name, render_template("compare.html", page=page))
    neurons = write_neuron_page(comparison, directory)
    index = compare_index(comparison, grid, head_divergence(comparison.a, comparison.b, comparison.alignment), neurons)
    write_html(directory / INDEX_NAME, render_template("compare_index.html", index=index))


def write_neuron_page(comparison: Comparison, directory: Path) -> IndexNeurons | None:
    """Write the neurons page when both captures stored neurons and some tokens align; else say why, where one did."""
    numbers = neuron_differences(comparison.a, comparison.b, comparison.alignment)
    if numbers is None:
        return _missing_neurons(comparison)
    if not len(numbers.pairs):
        return IndexNeurons(None, "Both captures stored neurons, but no tokens align, so there is nothing to compare.")
    title = f"Neurons · {comparison.a.path.name} vs {comparison.b.path.name}"
    write_html(directory / NEURON_PAGE, render_template("neurons.html", page=comparison_neuron_page(
        numbers, comparison.stores, title)))
    shared = sum(len(layer.units) for layer in numbers.layers)
    return IndexNeurons(NEURON_PAGE, f"How each unit both captures stored differs (B − A) at the aligned tokens: "
                                     f"{shared} shared units over {len(numbers.layers)} layers.")


def _missing_neurons(comparison: Comparison) -> IndexNeurons | None:
    """Why there is no neurons page when exactly one capture stored neurons; None when neither did."""
    stored = [store.neurons() is not None for store in comparison.stores]
    if not any(stored):
        return None
    having, lacking = ("A", "B") if stored[0] else ("B", "A")
    return IndexNeurons(None, f"Only {having} was captured with --neurons, so there is no neuron comparison; capture "
                              f"{lacking} with --neurons as well.")


def page_grid(comparison: Comparison, max_file_mb: float) -> list[list[Chunk]]:
    """Plan the pages: the report's head groups, or, where a page would exceed the budget, fewer heads per page."""
    budget = _payload_budget(comparison, max_file_mb)
    per_page = HEADS_PER_PAGE
    grid = _grid(comparison.a, per_page)
    for row, layers in enumerate(comparison.layers()):
        while any(_payload_bytes(comparison, layers, chunk.heads or ()) > budget for chunk in grid[row]):
            if per_page == 1:
                raise UsageError(f"one head of layer {row} of the two captures does not fit --max-file-mb "
                                 f"{max_file_mb:g}; raise it.")
            per_page //= 2
            grid = _grid(comparison.a, per_page)
    return grid


def _grid(store: CaptureStore, per_page: int) -> list[list[Chunk]]:
    """The report's chunks (a layer's group of heads), each cut into pages of at most `per_page` heads."""
    return [[page for chunk in row for page in _pages(chunk, per_page)]
            for row in plan_chunks(store.num_layers, store.num_heads, "none")]


def _pages(chunk: Chunk, per_page: int) -> list[Chunk]:
    """Cut a chunk into pages of at most `per_page` heads, named and titled as a report names a split chunk's files."""
    heads = chunk.heads or ()
    pages = []
    for start in range(0, len(heads), per_page):
        slots = tuple(range(start, min(start + per_page, len(heads))))
        name = part_name(chunk, tuple(heads[slot] for slot in slots), 0, 1, 1)
        title = part_title(Part(chunk, slots, 0, 1, name), 1)
        pages.append(Chunk(chunk.layer, tuple(heads[slot] for slot in slots), name, title, name.removesuffix(".html")))
    return pages


def _payload_bytes(comparison: Comparison, layers: tuple[np.ndarray, np.ndarray], heads: tuple[int, ...]) -> int:
    return sum(len(encode_rows(layer[list(heads)], 0, store.causal)) for store, layer in zip(comparison.stores, layers))


def _payload_budget(comparison: Comparison, max_file_mb: float) -> int:
    """The payload bytes a page may hold: the budget less what a page of one head holds besides its payloads."""
    chunk = plan_chunks(1, 1, "none")[0][0]  # a page of one head
    layers = (comparison.a.attention(0), comparison.b.attention(0))
    page = compare_page(comparison, chunk, layers, navigation([[chunk]], 0, 0))
    fixed = len(render_template("compare.html", page=page).encode("utf-8")) + _PAGE_SLACK
    fixed -= sum(len(side.payload) for side in page.sides)
    budget = int(max_file_mb * _MB)
    if fixed >= budget:
        raise UsageError(f"--max-file-mb {max_file_mb:g} is below what every compare page needs before any attention "
                         f"({fixed / _MB:.2f} MB for the scripts and both captures' tokens); raise it.")
    return budget - fixed


def compare_page(comparison: Comparison, chunk: Chunk, layers: tuple[np.ndarray, np.ndarray],
                 nav: Navigation) -> ComparePage:
    """Encode both captures' heads of one page (each as a chunk page's section would be) and describe the page."""
    heads = list(chunk.heads or ())
    labels = head_labels(chunk, HeadNaming(comparison.a.num_heads, comparison.a.num_kv_heads))
    pages = [chunk_page(chunk.title, token_text(store), [Section(chunk.key, chunk.title, chunk.layer, labels,
                                                                 layer[heads], 0)], nav)
             for store, layer in zip(comparison.stores, layers)]
    sides = tuple(SideView(key, _side_heading(key, store), f"att-payload-{key}", page.first.payload)
                  for key, store, page in zip(SIDES, comparison.stores, pages))
    data = {
        "key": chunk.key,
        "pairs": [list(pair) for pair in comparison.alignment.pairs],
        "sides": {side.key: {**page.data, "sections": [{**page.data["sections"][0], "payload": side.payload_id}]}
                  for side, page in zip(sides, pages)},
    }
    helps = {"observer": pages[0].observer_help, "observed": pages[0].observed_help}
    return ComparePage(
        title=f"{chunk.title} · A vs B",
        navigation=nav,
        notes=("Weights shown as bytes / 255: each within 1/510 of the captured value.",
               _link_note(comparison)),
        heads=pages[0].first,
        sides=sides,
        modes=tuple(ModeView(mode, mode.capitalize(), helps[mode], mode == MODES[0]) for mode in MODES),
        data=data,
    )


def _side_heading(key: str, store: CaptureStore) -> str:
    return f"{key.upper()} · {store.path.name} · {store.manifest['model']['name']}"


def _link_note(comparison: Comparison) -> str:
    linked = len(comparison.alignment.pairs)
    return (f"Tokens with the same text in the same order are linked: {linked} of A's {comparison.a.num_tokens} "
            f"tokens and of B's {comparison.b.num_tokens}. Pointing at a token also shows its partner's weights on the "
            "other side; tokens without a partner are underlined.")


def compare_index(comparison: Comparison, grid: list[list[Chunk]], divergence: HeadDivergence,
                  neurons: IndexNeurons | None) -> CompareIndex:
    """The index: both texts and facts, the alignment, the heads ranked by divergence and as a heatmap, and the
    neurons page or why there is none."""
    a = comparison.a
    naming = HeadNaming(a.num_heads, a.num_kv_heads)
    hrefs = {(chunk.layer, head): f"{chunk.name}#head={head}"
             for row in grid for chunk in row for head in chunk.heads or ()}
    scores = {
        (layer, head): HeadScore(rank, layer, head, naming.label(head), repr(value), f"{value:.4f}", f"{value:.2f}",
                                 hrefs[(layer, head)])
        for rank, (layer, head, value) in enumerate(divergence.ranked(), 1)
    }
    return CompareIndex(
        title=f"Comparison · {a.path.name} vs {comparison.b.path.name}",
        sides=tuple(_index_side(key, store, partner)
                    for key, store, partner in zip(SIDES, comparison.stores, comparison.alignment.partner_maps())),
        alignment=_alignment_lines(comparison, divergence),
        divergence_help=(
            "Each head's Jensen–Shannon divergence in bits (0: the same, 1: nothing in common) between the two "
            "captures' attention of each aligned prompt token over the aligned prompt tokens (renormalized), averaged "
            "over those tokens and computed from the captured weights. Darker: the captures attend more differently."),
        pages_help=SCHEME_DESCRIPTION,
        ranking=tuple(sorted(scores.values(), key=lambda score: score.rank)),
        head_labels=tuple(naming.label(head) for head in range(a.num_heads)),
        heatmap=tuple(tuple(scores[(layer, head)] for head in range(a.num_heads)) for layer in range(a.num_layers)),
        pages=tuple(ChunkLinks(row_label(row), tuple(Link(chunk.title, chunk.name) for chunk in row)) for row in grid),
        neurons=neurons,
    )


def _index_side(key: str, store: CaptureStore, partner: dict[int, int]) -> IndexSide:
    """A capture's text with its unaligned tokens marked, and its facts."""
    text = tuple(token if i in partner else replace(token, css=token.css + " att-unaligned")
                 for i, token in enumerate(index_text(store)))
    return IndexSide(key, _side_heading(key, store), text, tuple(index_facts(store)))


def _alignment_lines(comparison: Comparison, divergence: HeadDivergence) -> tuple[str, ...]:
    """How many tokens aligned, and over how many prompt tokens the divergence was taken."""
    a, b = comparison.a, comparison.b
    aligned = len(prompt_pairs(comparison.alignment, a.prompt_length, b.prompt_length))
    lines = [(f"{aligned} prompt tokens aligned (A's prompt has {a.prompt_length} tokens, B's {b.prompt_length}); "
              f"{len(comparison.alignment.pairs)} tokens in all, completions included (of A's {a.num_tokens} and B's "
              f"{b.num_tokens}). Tokens align where both texts have the same token in the same order; the others are "
              "underlined.")]
    if divergence.rows_compared == 0:
        lines.append("Fewer than two prompt tokens aligned, so no divergence was computed: every head shows 0.")
    return tuple(lines)
