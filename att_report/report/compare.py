"""The compare report: two captures side by side, one page per layer and head group, and an index ranking heads.

Two phrasings of one request, or one prompt through two models with one tokenizer: their tokens are aligned by
text (see `alignment`), every page shows both captures' text views for the same heads with aligned tokens linked,
and the index ranks heads by how differently the two captures spread attention over the aligned prompt tokens.
When both captures stored neurons, a neurons page shows how the units both stored differ at the aligned tokens.
Like `render`, this reads one layer of each store at a time and never imports torch.

Pages come from the report plan and the one fitter (`plan`, `fitting`): a report's head groups, cut into fewer heads
where a page would exceed the size budget, each file named by the heads it holds. Each head of each layer of both
captures is read once; that pass also gives the divergence ranking.
"""

from __future__ import annotations

from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from att_report.analysis.alignment import (
    HeadDivergence,
    TokenAlignment,
    align_tokens,
    check_comparable,
    divergence_rows,
    from_first_difference,
    head_js,
    prompt_pairs,
)
from att_report.analysis.neuron_compare import neuron_differences
from att_report.atomic import staged_directory
from att_report.errors import UsageError
from att_report.report.chunks import INDEX_NAME, Chunk, HeadNaming, plan_chunks, row_label
from att_report.report.encode import PAGE_PRECISION_NOTE, SCHEME_DESCRIPTION, encode_rows
from att_report.report.fitting import Rows, fit, memory_groups, payload_budget, write_page
from att_report.report.index_page import ChunkLinks, TextToken, index_facts, index_text
from att_report.report.neuron_page import PAGE_NAME as NEURON_PAGE
from att_report.report.neuron_page import comparison_neuron_page
from att_report.report.page_types import HeadLabel, Link, Navigation
from att_report.report.plan import FileGrid, Part, chunk_part
from att_report.report.render import DEFAULT_MAX_FILE_MB, check_report_target, is_report, token_text
from att_report.report.templating import render_template
from att_report.report.viewer import Section, SectionView, chunk_page
from att_report.store import CaptureStore, load

SIDES = ("a", "b")
MODES = ("observer", "observed")
# The compare index's <body> carries this, which tells a compare report from a render report.
INDEX_MARKER = 'data-page="compare-index"'


@dataclass(frozen=True)
class Comparison:
    """The two captures and how their tokens align."""

    a: CaptureStore
    b: CaptureStore
    alignment: TokenAlignment

    @property
    def stores(self) -> tuple[CaptureStore, CaptureStore]:
        return self.a, self.b

    def read_heads(self, layer: int, heads: tuple[int, ...], helper: Executor) -> tuple[np.ndarray, np.ndarray]:
        """Both captures' (heads, T, T) squares of `heads` of one layer (a memory group: see `memory_groups`), B's
        read on the helper thread while A's is read here."""
        read_b = helper.submit(self.b.attention, layer, heads)
        return self.a.attention(layer, heads=heads), read_b.result()


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
class FittedPage:
    """One planned compare page with both captures' encoded attention."""

    part: Part
    payloads: tuple[str, str]


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
    budget = payload_budget(max_file_mb, _fixed_page_bytes(comparison), "both captures' tokens")
    with staged_directory(output) as staging:
        write_comparison(comparison, staging, budget, max_file_mb)
    return output


def is_compare_report(path: Path) -> bool:
    """A folder of our pages whose index is a compare index: the only thing `compare --force` replaces."""
    return is_report(path) and INDEX_MARKER in (path / INDEX_NAME).read_text(encoding="utf-8", errors="replace")


def write_comparison(comparison: Comparison, directory: Path, budget: int, max_file_mb: float) -> None:
    """Read each layer of both captures once, head by head: fit and write the compare pages (a row when the next
    row's files are known, so its links resolve) and score each head's divergence; then the neurons page and the
    index."""
    a, b = comparison.stores
    grid = plan_chunks(a.layer_indices, a.head_indices, "none")
    rows, keys = divergence_rows(comparison.alignment, a, b)
    values = np.zeros((len(a.layer_indices), len(a.head_indices)))
    files = FileGrid()
    pending: list[FittedPage] = []

    def score(squares: tuple[np.ndarray, np.ndarray]) -> list[float]:
        return [head_js(square_a, square_b, rows, keys, a.causal and b.causal) for square_a, square_b in zip(*squares)]

    with ThreadPoolExecutor(max_workers=2) as helpers:  # numpy and zlib release the GIL: A, B and the scores at once
        for row, layer in enumerate(a.layer_indices):
            fitted: list[FittedPage] = []
            for chunk in grid[row]:
                for group in memory_groups(chunk.heads or (), max(a.num_tokens, b.num_tokens)):
                    squares = comparison.read_heads(layer, group, helpers)
                    scores = helpers.submit(score, squares)  # while the same squares are encoded
                    fitted += _fit_pages(comparison, chunk, group, squares, budget, helpers)
                    for head, value in zip(group, scores.result()):
                        values[row, a.head_indices.index(head)] = value
            files.rows.append([page.part for page in fitted])
            if pending:
                _write_row(comparison, files, row - 1, pending, directory, max_file_mb)
            pending = fitted
    _write_row(comparison, files, len(files.rows) - 1, pending, directory, max_file_mb)
    neurons = write_neuron_page(comparison, directory, max_file_mb)
    divergence = HeadDivergence(values=values, rows_compared=len(rows))
    index = compare_index(comparison, files, divergence, neurons)
    html = render_template("compare_index.html", index=index)
    write_page(directory / INDEX_NAME, html, max_file_mb, "the comparison's index")


def _fit_pages(comparison: Comparison, chunk: Chunk, heads: tuple[int, ...],
               squares: tuple[np.ndarray, np.ndarray], budget: int, helper: Executor) -> list[FittedPage]:
    """Cut a group of heads into pages of fewer heads until both captures' payloads together fit `budget`; B's
    payload is encoded on the helper thread while A's is encoded here."""
    def encode(slots: tuple[int, ...], rows: Rows) -> tuple[str, ...]:
        (store_a, store_b), (square_a, square_b) = comparison.stores, squares
        payload_b = helper.submit(encode_rows, square_b[slots[0]:slots[-1] + 1], 0, store_b.causal)
        return encode_rows(square_a[slots[0]:slots[-1] + 1], 0, store_a.causal), payload_b.result()

    pieces = fit(len(heads), encode, budget,
                 lambda slot: f"layer {chunk.layer} · head {heads[slot]} of the two captures")
    return [FittedPage(chunk_part(chunk, tuple(heads[slot] for slot in piece.slots)),
                       (piece.payloads[0], piece.payloads[1])) for piece in pieces]


def _write_row(comparison: Comparison, files: FileGrid, row: int, pages: list[FittedPage], directory: Path,
               max_file_mb: float) -> None:
    for page in pages:
        html = render_template("compare.html", page=compare_page(comparison, page, files.navigation(row, page.part)))
        what = f"the page {page.part.name} with its links"
        write_page(directory / page.part.name, html, max_file_mb, what)


def _fixed_page_bytes(comparison: Comparison) -> int:
    """The size of a compare page of one head without attention: scripts, styles and both captures' tokens."""
    chunk = plan_chunks([0], [0], "none")[0][0]
    part = chunk_part(chunk, (0,))
    empty = tuple(encode_rows(np.zeros((1, 1, store.num_tokens), np.float32), 0, store.causal)  # one row: a few bytes
                  for store in comparison.stores)
    page = compare_page(comparison, FittedPage(part, (empty[0], empty[1])), FileGrid([[part]]).navigation(0, part))
    return len(render_template("compare.html", page=page).encode("utf-8"))


def write_neuron_page(comparison: Comparison, directory: Path, max_file_mb: float) -> IndexNeurons | None:
    """Write the neurons page when both captures stored neurons and some tokens align; else say why, where one did."""
    numbers = neuron_differences(comparison.a, comparison.b, comparison.alignment)
    if numbers is None:
        return _missing_neurons(comparison)
    if not len(numbers.pairs):
        return IndexNeurons(None, "Both captures stored neurons, but no tokens align, so there is nothing to compare.")
    title = f"Neurons · {comparison.a.path.name} vs {comparison.b.path.name}"
    html = render_template("neurons.html", page=comparison_neuron_page(numbers, comparison.stores, title))
    write_page(directory / NEURON_PAGE, html, max_file_mb, "the neurons comparison")
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


def compare_page(comparison: Comparison, fitted: FittedPage, nav: Navigation) -> ComparePage:
    """Describe one compare page: both captures' heads of one file, each as a chunk page's section would be."""
    part = fitted.part
    heads = part.heads or ()
    naming = HeadNaming(comparison.a.num_heads, comparison.a.num_kv_heads)
    labels = tuple(HeadLabel(head, naming.label(head)) for head in heads)
    key = part.name.removesuffix(".html")
    pages = [chunk_page(part.title, token_text(store), [Section(
        key, part.title, part.chunk.layer, labels,
        np.broadcast_to(np.float32(0), (len(heads), store.num_tokens, store.num_tokens)),  # the payload holds them
        0, payload)], nav) for store, payload in zip(comparison.stores, fitted.payloads)]
    sides = tuple(SideView(side, _side_heading(side, store), f"att-payload-{side}", page.first.payload)
                  for side, store, page in zip(SIDES, comparison.stores, pages))
    data = {
        "key": key,
        "pairs": [list(pair) for pair in comparison.alignment.pairs],
        "sides": {side.key: {**page.data, "sections": [{**page.data["sections"][0], "payload": side.payload_id}]}
                  for side, page in zip(sides, pages)},
    }
    helps = {"observer": pages[0].observer_help, "observed": pages[0].observed_help}
    return ComparePage(
        title=f"{part.title} · A vs B",
        navigation=nav,
        notes=(PAGE_PRECISION_NOTE,
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


def compare_index(comparison: Comparison, files: FileGrid, divergence: HeadDivergence,
                  neurons: IndexNeurons | None) -> CompareIndex:
    """The index: both texts and facts, the alignment, the heads ranked by divergence and as a heatmap, and the
    neurons page or why there is none."""
    a = comparison.a
    naming = HeadNaming(a.num_heads, a.num_kv_heads)
    hrefs = {(part.chunk.layer, head): f"{part.name}#head={head}"
             for row in files.rows for part in row for head in part.heads or ()}
    scores = {
        (layer, head): HeadScore(rank, layer, head, naming.label(head), repr(value), f"{value:.4g}", f"{value:.2g}",
                                 hrefs[(layer, head)])
        for rank, (layer, head, value) in enumerate(divergence.ranked(), 1)
    }
    return CompareIndex(
        title=f"Comparison · {a.path.name} vs {comparison.b.path.name}",
        sides=tuple(_index_side(key, store, partner)
                    for key, store, partner in zip(SIDES, comparison.stores, comparison.alignment.partner_maps())),
        alignment=_alignment_lines(comparison, divergence),
        divergence_help=_divergence_rule(from_first_difference(a, comparison.b)),
        pages_help=SCHEME_DESCRIPTION,
        ranking=tuple(sorted(scores.values(), key=lambda score: score.rank)),
        head_labels=tuple(naming.label(head) for head in range(a.num_heads)),
        heatmap=tuple(tuple(scores[(layer, head)] for head in range(a.num_heads)) for layer in range(a.num_layers)),
        pages=tuple(ChunkLinks(row_label([part.chunk for part in row]), tuple(Link(part.title, part.name)
                                                                             for part in row)) for row in files.rows),
        neurons=neurons,
    )


def _divergence_rule(first_difference_on: bool) -> str:
    """State the ranking's rule on the page."""
    rows = ("from the first token where the two texts differ on (one causal model sees the same tokens before it in "
            "both captures, so its attention there cannot differ and would only dilute the mean)" if first_difference_on
            else "all of them (two models, or a bidirectional model, can attend differently at every token)")
    return ("Each head's Jensen–Shannon divergence in bits (0: the same, 1: nothing in common) between the two "
            "captures' attention of an aligned prompt token over the aligned prompt tokens (renormalized), averaged "
            f"over the aligned prompt tokens {rows}, and computed from the captured weights. Colours are relative to "
            "the largest divergence: darker, the captures attend more differently.")


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
        lines.append("No aligned prompt token can attend differently (the prompts agree up to their aligned end, or "
                     "fewer than two prompt tokens aligned), so no divergence was computed: every head shows 0.")
    else:
        lines.append(f"The divergence is averaged over {divergence.rows_compared} aligned prompt tokens.")
    return tuple(lines)
