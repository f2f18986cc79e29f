"""The render stage: a capture store in, a folder of self-contained HTML pages (or one file) out. No torch here.

Layers are read one at a time. Each planned chunk (see `chunks`) becomes one page, or several when its page would
exceed the size budget: first fewer heads per file, then ranges of query rows. The index comes last, with the
thumbnails gathered on the way. Pages are written into a staging folder that replaces the target only when whole.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from att_report.analysis.metrics import overall_mean
from att_report.report.analysis_pages import AnalysisPage, write_analysis_pages
from att_report.atomic import PARTIAL_PREFIX, check_replaceable, staged_directory
from att_report.report.chunks import (
    INDEX_NAME,
    Chunk,
    HeadNaming,
    chunk_of,
    head_labels,
    navigation,
    part_name,
    plan_chunks,
    row_label,
)
from att_report.report.encode import encode_rows
from att_report.errors import OutputExistsError, UsageError
from att_report.report.index_page import ChunkLinks, IndexPage, index_page
from att_report.report.neuron_page import PAGE_NAME as NEURON_PAGE
from att_report.report.neuron_page import neuron_page
from att_report.store import CaptureStore, load
from att_report.report.templating import render_template, write_html
from att_report.report.thumbnails import layer_thumbnails, pack_thumbnails
from att_report.report.page_types import Link, MEAN, TokenText
from att_report.report.viewer import Section, chunk_page

DEFAULT_MAX_FILE_MB = 10.0
DEFAULT_SINGLE_FILE_MB = 25.0
GENERATOR = "att-report"
_MB = 1_000_000
# Room left in a page's budget for what the size estimate leaves out (navigation links, notes, titles).
_PAGE_SLACK = 16_384


@dataclass(frozen=True)
class RenderOptions:
    """How to render: aggregation, file size budgets, one file or a folder, a zip beside it, replacing."""

    aggregate: str = "none"
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    single_file: bool = False
    single_file_mb: float = DEFAULT_SINGLE_FILE_MB
    zip: bool = False
    force: bool = False


@dataclass(frozen=True)
class Part:
    """One file of a chunk: which of the chunk's matrices (slots) and which query rows it holds."""

    chunk: Chunk
    slots: tuple[int, ...]
    row_start: int
    row_end: int
    name: str
    payload: str | None = None  # its attention, encoded once while fitting the size budget


def render(capture: str | Path, output: str | Path, options: RenderOptions = RenderOptions()) -> Path:
    """Render the store at `capture` to a report folder (or, with single_file, one HTML file) at `output`."""
    output = Path(output)
    check_render_target(output, options)
    store = load(capture)
    if options.single_file:
        from att_report.report.single_file import render_single_file  # the one-file layout builds on this module

        return render_single_file(store, output, options)
    with staged_directory(output) as staging:
        write_report(store, staging, options)
    if options.zip:
        zip_report(output)
    return output


def write_report(store: CaptureStore, directory: Path, options: RenderOptions) -> None:
    """Write every chunk page and the index into `directory`."""
    grid = plan_chunks(store.num_layers, store.num_heads, options.aggregate)
    text = token_text(store)
    budget = payload_budget(store, text, options.max_file_mb)
    max_bytes = int(options.max_file_mb * _MB)

    def render_row(row: int) -> tuple[list[np.ndarray], dict[str, list[Part]]]:
        """Write the pages of one grid row; return its thumbnails and files (payloads dropped, they are written)."""
        source, thumbnails = row_source(store, grid, row)
        parts_of = {}
        for column, chunk in enumerate(grid[row]):
            parts, pages = fit_pages(store, grid, row, column, chunk_matrices(source, chunk), text, budget, max_bytes)
            for part, html in zip(parts, pages):
                write_html(directory / part.name, html)
            parts_of[chunk.name] = [replace(part, payload=None) for part in parts]
        return thumbnails, parts_of

    thumbnails: list[np.ndarray] = []
    parts_of: dict[str, list[Part]] = {}  # chunk name -> its files
    # numpy and zlib release the GIL: two rows render at once, so at most two layers are in memory.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for row_thumbnails, row_parts in pool.map(render_row, range(len(grid))):
            thumbnails += row_thumbnails
            parts_of.update(row_parts)
    analyses = write_analysis_pages(store, text, directory, budget)
    neurons = neuron_page(store, text)
    if neurons is not None:
        write_html(directory / NEURON_PAGE, render_template("neurons.html", page=neurons))
        analyses.append(AnalysisPage("Neuron activations", (NEURON_PAGE,)))
    index = _index(store, grid, parts_of, pack_thumbnails(thumbnails), analyses)
    write_html(directory / INDEX_NAME, render_template("index.html", index=index))


def token_text(store: CaptureStore) -> TokenText:
    return TokenText(tuple(store.tokens), tuple(store.special), store.prompt_length, store.causal)


def row_source(store: CaptureStore, grid: list[list[Chunk]], row: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """One grid row's attention, a layer's (heads, T, T) or for 'layers' the (1, T, T) mean of all, and the
    thumbnails of the layers it covers."""
    if grid[0][0].layer != MEAN:
        attention = store.attention(row)
        return attention, [layer_thumbnails(attention)]
    return overall_mean(store)[np.newaxis], [layer_thumbnails(attention) for attention in store.layers()]


def chunk_matrices(source: np.ndarray, chunk: Chunk) -> np.ndarray:
    """The (n, T, T) matrices a chunk shows: its heads, or the mean over every head of the layer."""
    if chunk.layer == MEAN:
        return source
    if chunk.heads is None:
        return source.mean(axis=0, keepdims=True)
    return source[list(chunk.heads)]


def payload_budget(store: CaptureStore, text: TokenText, max_file_mb: float) -> int:
    """The bytes of attention payload a page may hold: the file budget less what every page carries anyway."""
    fixed = _fixed_page_bytes(text, store) + _PAGE_SLACK
    budget = int(max_file_mb * _MB)
    if fixed >= budget:
        raise UsageError(
            f"--max-file-mb {max_file_mb:g} is below what every page needs before any attention "
            f"({fixed / _MB:.2f} MB for the scripts and the {len(text.tokens):,} tokens); raise it."
        )
    return budget - fixed


def fit_parts(chunk: Chunk, matrices: np.ndarray, causal: bool, budget: int) -> list[Part]:
    """Split a chunk until every payload fits `budget` bytes: halve the heads, then halve the query rows by cells."""
    def split(slots: tuple[int, ...], start: int, end: int) -> Iterator[tuple[tuple[int, ...], int, int, str]]:
        payload = encode_rows(matrices[list(slots), start:end], start, causal)
        if len(payload) <= budget:
            yield slots, start, end, payload
        elif len(slots) > 1:
            half = len(slots) // 2
            yield from split(slots[:half], start, end)
            yield from split(slots[half:], start, end)
        elif end - start > 1:
            middle = _balanced_row_split(start, end, causal)
            yield from split(slots, start, middle)
            yield from split(slots, middle, end)
        else:
            raise UsageError(f"one query row of {chunk.title} does not fit the --max-file-mb budget; raise it.")

    num_tokens = matrices.shape[-1]
    # The first file keeps the chunk's own name, so the neighbours' links to the chunk resolve however it was split.
    return [
        Part(chunk, slots, start, end, chunk.name if number == 0 else
             part_name(chunk, None if chunk.heads is None else tuple(chunk.heads[s] for s in slots), start, end, num_tokens),
             payload)
        for number, (slots, start, end, payload) in enumerate(split(tuple(range(matrices.shape[0])), 0, num_tokens))
    ]


def fit_pages(store: CaptureStore, grid: list[list[Chunk]], row: int, column: int, matrices: np.ndarray,
              text: TokenText, budget: int, max_bytes: int) -> tuple[list[Part], list[str]]:
    """Split the chunk at grid[row][column] into pages of at most `max_bytes`. Each part links to every other, which
    the payload budget does not foresee: when a page overshoots, lower the budget by as much and split again."""
    chunk = grid[row][column]
    while True:
        parts = fit_parts(chunk, matrices, store.causal, budget)
        pages = [_part_html(store, grid, row, column, part, parts, matrices, text) for part in parts]
        overshoot = max(len(html.encode("utf-8")) for html in pages) - max_bytes
        if overshoot <= 0:
            return parts, pages
        budget -= overshoot
        if budget <= 0:
            raise UsageError(f"{chunk.title} splits into so many files that the links between them alone exceed "
                             f"--max-file-mb {max_bytes / _MB:g}; raise it.")


def _balanced_row_split(start: int, end: int, causal: bool) -> int:
    """The row that halves the cells of rows start..end-1 (causal rows grow by one cell each)."""
    if not causal:
        return (start + end) // 2
    cells = np.cumsum(np.arange(start, end) + 1)
    return start + 1 + int(np.searchsorted(cells[:-1], cells[-1] / 2))


def _fixed_page_bytes(text: TokenText, store: CaptureStore) -> int:
    """The size of a page holding one tiny section: scripts, styles and token data, without attention."""
    sample = np.zeros((1, 1, len(text.tokens)), dtype=np.float32)
    chunk = Chunk(0, (0,), "size.html", "size", "size")
    part = Part(chunk, (0,), 0, 1, "size.html")
    grid = [[chunk]]
    html = _part_html(store, grid, 0, 0, part, [part], sample, text)
    return len(html.encode("utf-8"))


def _part_html(store: CaptureStore, grid: list[list[Chunk]], row: int, column: int, part: Part, parts: list[Part],
               matrices: np.ndarray, text: TokenText) -> str:
    """Render one file of a chunk, linking its sibling parts."""
    chunk = part.chunk
    naming = HeadNaming(store.num_heads, store.num_kv_heads)
    labels = head_labels(chunk, naming)
    section = Section(
        key=part.name.removesuffix(".html"),
        title=part_title(part, len(text.tokens)),
        layer=chunk.layer,
        heads=tuple(labels[slot] for slot in part.slots),
        matrices=matrices[list(part.slots), part.row_start:part.row_end],
        row_start=part.row_start,
        payload=part.payload,
    )
    siblings = tuple(Link(part_title(other, len(text.tokens)), other.name) for other in parts) if len(parts) > 1 else ()
    nav = replace(navigation(grid, row, column), parts=siblings)
    page = chunk_page(f"{section.title} · {store.manifest['model']['name']}", text, [section], nav,
                      page_notes(store, part, len(parts)))
    return render_template("chunk.html", page=page)


def part_title(part: Part, num_tokens: int) -> str:
    title = part.chunk.title
    if part.chunk.heads is not None and len(part.slots) < len(part.chunk.heads):
        heads = [part.chunk.heads[slot] for slot in part.slots]
        title = title.split(" · heads")[0] + (f" · head {heads[0]}" if len(heads) == 1 else f" · heads {heads[0]}–{heads[-1]}")
    if (part.row_start, part.row_end) != (0, num_tokens):
        title += f" · query rows {part.row_start}–{part.row_end - 1}"
    return title


def page_notes(store: CaptureStore, part: Part, part_count: int) -> list[str]:
    """What a reader of one page must know: how exact the numbers are, and whether the chunk was split."""
    notes = [f"Weights shown as bytes / 255: each within 1/510 of the captured {store.attention_dtype} value."]
    if part.chunk.is_mean:
        notes.append("The mean is taken over the captured weights, then quantized once.")
    if part_count > 1:
        notes.append(f"This chunk is split into {part_count} files to stay under the size budget; the others are linked below.")
    return notes


def _index(store: CaptureStore, grid: list[list[Chunk]], parts_of: dict[str, list[Part]], thumbnails: str,
           analyses: list[AnalysisPage]) -> IndexPage:
    """The index view-model, its grid cells opening the file that holds each head's first rows."""
    hrefs = {}
    for layer in range(store.num_layers):
        for head in range(store.num_heads):
            chunk = chunk_of(grid, layer, head)
            if chunk.heads is None:
                hrefs[(layer, head)] = parts_of[chunk.name][0].name
            else:
                part = next(part for part in parts_of[chunk.name] if head in [chunk.heads[s] for s in part.slots])
                hrefs[(layer, head)] = f"{part.name}#head={head}"
    links = [ChunkLinks(row_label(row), tuple(Link(part_title(part, store.num_tokens), part.name)
                                              for chunk in row for part in parts_of[chunk.name]))
             for row in grid]
    links += [ChunkLinks(page.title, tuple(Link(f"file {number}" if len(page.files) > 1 else "open", name)
                                          for number, name in enumerate(page.files, 1)))
              for page in analyses]
    split = sum(len(parts) > 1 for parts in parts_of.values())
    notes = [f"{split} of {len(parts_of)} chunks exceeded the size budget and were split into files of fewer heads "
             "or fewer query rows."] if split else []
    return index_page(store, grid, hrefs, links, thumbnails, notes)


def check_render_target(output: Path, options: RenderOptions) -> None:
    """Refuse bad options or an output that may not be replaced, before any slow work."""
    _check_options(options)
    if options.single_file:
        from att_report.report.single_file import check_single_file_target

        check_single_file_target(output, options.force)
        return
    check_report_target(output, options.force)
    zipped = output.with_name(output.name + ".zip")
    if options.zip and zipped.exists() and not options.force:
        raise OutputExistsError(f"{zipped} already exists; choose another output path or pass --force to replace it.")


def _check_options(options: RenderOptions) -> None:
    for flag, value in (("--max-file-mb", options.max_file_mb), ("--single-file-mb", options.single_file_mb)):
        if not value > 0:
            raise UsageError(f"{flag} must be a positive number of megabytes, not {value}.")
    if options.single_file and options.zip:
        raise UsageError("--single-file and --zip are two ways to share a report; choose one.")


def is_report(path: Path) -> bool:
    """Tell a folder this renderer wrote (only its pages, index first) from one holding anything else."""
    index = path / INDEX_NAME
    try:
        head = index.read_bytes()[:2048].decode("utf-8", "replace")
    except OSError:
        return False
    ours = f'<meta name="generator" content="{GENERATOR}">' in head
    return ours and all(entry.is_file() and entry.suffix == ".html" for entry in path.iterdir())


def check_report_target(output: Path, force: bool, is_ours: Callable[[Path], bool] = is_report,
                        kind: str = "report") -> None:
    """Refuse to replace anything but an earlier report that `is_ours` accepts (with --force); an empty folder is
    simply used."""
    if output.is_dir() and not output.is_symlink() and not any(output.iterdir()):
        return  # an empty folder: the staged report simply takes its place
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} is a file; give a folder path for the {kind}.")
    check_replaceable(output, force, is_ours, kind)


def zip_report(folder: Path) -> Path:
    """Pack a report folder into FOLDER.zip beside it, deterministically (sorted names, fixed dates)."""
    target = folder.with_name(folder.name + ".zip")
    staging = target.with_name(f"{PARTIAL_PREFIX}{target.name}.{os.getpid()}")
    try:
        with zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
            for path in sorted(folder.iterdir()):
                info = zipfile.ZipInfo(f"{folder.name}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return target
