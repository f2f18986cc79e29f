"""The render stage: a capture store in, a folder of self-contained HTML pages (or one file) out. No torch here.

One pass reads each head of each layer once (see `layer_pass`) and feeds every product from it: the chunk pages,
fitted to the size budget (`fitting`) and named by what they hold (`plan`), the thumbnails, the head metrics, the
rollout. A row of chunk pages is written when the next row's files are known, so that its links resolve. The
analyses and the index come last. Pages are written into a staging folder that replaces the target only when whole.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from att_report.atomic import check_replaceable, staged_directory, staged_file
from att_report.errors import OutputExistsError, UsageError
from att_report.report.analysis_pages import (
    ROLLOUT_NOTE,
    ROLLOUT_TITLE,
    SALIENCY_NOTE,
    SALIENCY_TITLE,
    AnalysisSeries,
    length_rollout_section,
    rollout_omitted,
    rollout_section,
    saliency_sections,
)
from att_report.report.chunks import INDEX_NAME, Chunk, HeadNaming, head_labels, plan_chunks, row_label
from att_report.report.encode import PAGE_PRECISION_NOTE, encode_rows
from att_report.report.fitting import MB, PAGE_SLACK, Rows, fit, memory_groups, payload_budget, write_page
from att_report.report.index_page import INDEX_PARTS, PART_PAGES, ChunkLinks, IndexPage, index_page
from att_report.report.layer_pass import LayerPass
from att_report.report.neuron_page import PAGE_NAME as NEURON_PAGE
from att_report.report.neuron_page import neuron_page
from att_report.report.page_types import HeadLabel, Link, MEAN, Navigation, TokenText
from att_report.report.plan import AnalysisFiles, FileGrid, Part, chunk_part
from att_report.report.progress import LayerProgress
from att_report.report.templating import render_template
from att_report.report.thumbnails import pack_thumbnails
from att_report.report.viewer import Section, chunk_page
from att_report.store import CaptureStore, load

DEFAULT_MAX_FILE_MB = 10.0
DEFAULT_SINGLE_FILE_MB = 25.0
GENERATOR = "att-report"


@dataclass(frozen=True)
class RenderOptions:
    """How to render: aggregation, file size budgets, one file or a folder, a zip beside it, replacing."""

    aggregate: str = "none"
    max_file_mb: float = DEFAULT_MAX_FILE_MB
    single_file: bool = False
    single_file_mb: float = DEFAULT_SINGLE_FILE_MB
    zip: bool = False
    force: bool = False
    progress: bool = True  # a line on stderr per step of layers, with the time left


@dataclass(frozen=True)
class FittedPart:
    """One planned file with its encoded attention."""

    part: Part
    payload: str


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


def token_text(store: CaptureStore) -> TokenText:
    return TokenText(tuple(store.tokens), tuple(store.special), store.prompt_length, store.causal)


def write_report(store: CaptureStore, directory: Path, options: RenderOptions) -> None:
    """Write every chunk page, the analyses and the index into `directory`, reading the store once."""
    grid = plan_chunks(store.layer_indices, store.head_indices, options.aggregate)
    text = token_text(store)
    budget = payload_budget(options.max_file_mb, fixed_page_bytes(store, text),
                            f"the {store.num_tokens:,} tokens")
    reader = report_pass(store, options.aggregate)
    rollout = AnalysisSeries("rollout", ROLLOUT_TITLE, ROLLOUT_NOTE, text, directory, budget, options.max_file_mb,
                             open_last=True)
    files = FileGrid()
    pending: list[FittedPart] = []
    for layer, fitted in fitted_rows(store, grid, reader, budget, options.progress):
        if reader.rollout_so_far is not None:
            rollout.add(rollout_section(layer, reader.rollout_so_far))
        if fitted:
            files.rows.append([file.part for file in fitted])
            if pending:
                write_chunk_row(store, files, len(files.rows) - 2, pending, text, directory, options.max_file_mb)
            pending = fitted
    write_chunk_row(store, files, len(files.rows) - 1, pending, text, directory, options.max_file_mb)
    if not reader.rollout:  # at length: the last rows through every layer, from a second pass in reverse
        rollout.add(length_rollout_section(store))
    analyses = [replace(rollout.close(), omitted=rollout_omitted(store.num_tokens, len(store.layer_indices)))]
    saliency = AnalysisSeries("saliency", SALIENCY_TITLE, SALIENCY_NOTE, text, directory, budget, options.max_file_mb)
    for section in saliency_sections(store):
        saliency.add(section)
    if saliency.has_sections:
        analyses.append(saliency.close())
    neurons = write_neuron_pages(store, text, directory, options.max_file_mb)
    if neurons is not None:
        analyses.append(neurons)
    write_index(_index(store, grid, files, reader, analyses), directory, options.max_file_mb)


def write_neuron_pages(store: CaptureStore, text: TokenText, directory: Path, max_file_mb: float
                       ) -> AnalysisFiles | None:
    """Write the neurons page, or, where it would exceed the budget, pages of fewer layers each (named by their
    layers); None when the capture has no neurons."""
    neurons = store.neurons()
    if neurons is None:
        return None
    layers = len(neurons[0])

    def page(slots: tuple[int, ...], rows: Rows) -> tuple[str, ...]:
        return (render_template("neurons.html", page=neuron_page(store, text, layers=slots)),)

    budget = int(max_file_mb * MB) - PAGE_SLACK  # the pages are measured whole; the slack covers non-ASCII bytes
    pieces = fit(layers, page, budget, lambda slot: f"the neurons of layer {slot}")
    files = []
    for piece in pieces:
        name = NEURON_PAGE if len(pieces) == 1 else f"neurons-layers-{piece.slots[0]}-{piece.slots[-1]}.html"
        write_page(directory / name, piece.payloads[0], max_file_mb, "the neurons page")
        files.append(Link("open" if len(pieces) == 1 else f"layers {piece.slots[0]}–{piece.slots[-1]}", name))
    return AnalysisFiles("Neuron activations", tuple(files))


def write_index(index: IndexPage, directory: Path, max_file_mb: float) -> None:
    """Write the index; where it would exceed the budget, move its parts (the page list, then the metrics) to pages
    of their own, linked from it."""
    moved: list[str] = []
    while True:
        elsewhere = tuple(Link(*PART_PAGES[part]) for part in moved)
        page = replace(index, shown=tuple(part for part in INDEX_PARTS if part not in moved), elsewhere=elsewhere)
        html = render_template("index.html", index=page)
        if len(html.encode("utf-8")) <= max_file_mb * MB or len(moved) == len(INDEX_PARTS):
            break
        moved.append(INDEX_PARTS[len(moved)])
    write_page(directory / INDEX_NAME, html, max_file_mb, "the index")
    for part in moved:
        title, name = PART_PAGES[part]
        html = render_template("index_part.html", index=index, part=part, title=title)
        write_page(directory / name, html, max_file_mb, f"the index's {title.lower()} page")


def report_pass(store: CaptureStore, aggregate: str) -> LayerPass:
    """The pass a report needs: head means only for an aggregate or the rollout."""
    rollout = not rollout_omitted(store.num_tokens, len(store.layer_indices))
    return LayerPass(store, keep_means=rollout or aggregate != "none", rollout=rollout)


def fitted_rows(store: CaptureStore, grid: list[list[Chunk]], reader: LayerPass, budget: int, progress: bool
                ) -> Iterator[tuple[int, list[FittedPart]]]:
    """Read the store once, layer by layer, and yield each layer with its row of files fitted to `budget` payload
    bytes (for aggregate 'layers', none until the last layer, which brings the one mean); the rollout through the
    layer is ready in `reader` when it is yielded. With `progress`, say on stderr how far the pass is."""
    aggregate_layers = grid[0][0].layer == MEAN
    shown = LayerProgress(len(store.layer_indices), "rendering", progress)
    for row, layer in enumerate(store.layer_indices):
        chunks = [] if aggregate_layers else grid[row]
        files: list[FittedPart] = []
        if chunks and chunks[0].heads is not None:
            for chunk in chunks:
                for group in memory_groups(chunk.heads or (), store.num_tokens):
                    files += fit_chunk(chunk, reader.read_heads(layer, group), group, store, budget)
        else:
            for head in store.head_indices:
                reader.read(layer, head)
        mean = reader.finish_layer()
        if chunks and chunks[0].heads is None and mean is not None:
            files = fit_chunk(chunks[0], mean[np.newaxis], None, store, budget)
        if aggregate_layers and row == len(store.layer_indices) - 1:
            files = fit_chunk(grid[0][0], reader.overall_mean()[np.newaxis], None, store, budget)
        shown.advance()
        yield layer, files


def fit_chunk(chunk: Chunk, squares: np.ndarray, heads: tuple[int, ...] | None, store: CaptureStore, budget: int
              ) -> list[FittedPart]:
    """Fit the (n, T, T) `squares` of `heads` (None: the chunk's one mean) into files of at most `budget` bytes."""
    causal, num_tokens = store.causal, store.num_tokens

    def encode(slots: tuple[int, ...], rows: Rows) -> tuple[str, ...]:
        start, end = rows or (0, num_tokens)
        return (encode_rows(squares[slots[0]:slots[-1] + 1, start:end], start, causal),)  # slots are consecutive

    pieces = fit(len(squares), encode, budget,
                 lambda slot: chunk.title if heads is None else f"layer {chunk.layer} · head {heads[slot]}",
                 (num_tokens, causal))
    return [FittedPart(chunk_part(chunk, None if heads is None else tuple(heads[slot] for slot in piece.slots),
                                  piece.rows), piece.payloads[0])
            for piece in pieces]


def write_chunk_row(store: CaptureStore, files: FileGrid, row: int, fitted: list[FittedPart], text: TokenText,
                    directory: Path, max_file_mb: float) -> None:
    """Write the files of one row of the grid, now that the rows around it are known."""
    for file in fitted:
        html = part_html(store, file, files.navigation(row, file.part), text)
        what = f"the page {file.part.name} with its links"
        write_page(directory / file.part.name, html, max_file_mb, what)


def part_section(store: CaptureStore, file: FittedPart) -> Section:
    """The viewer section of one planned file: its heads' labels, its rows and its payload, keyed by its name."""
    part = file.part
    naming = HeadNaming(store.num_heads, store.num_kv_heads)
    labels = head_labels(part.chunk, naming) if part.heads is None else tuple(
        HeadLabel(head, naming.label(head)) for head in part.heads)
    start, end = part.rows or (0, store.num_tokens)
    shape = (len(labels), end - start, store.num_tokens)  # a stand-in: the payload holds the weights
    return Section(key=part.name.removesuffix(".html"), title=part.title, layer=part.chunk.layer, heads=labels,
                   matrices=np.broadcast_to(np.float32(0), shape), row_start=part.row_start, payload=file.payload)


def part_html(store: CaptureStore, file: FittedPart, nav: Navigation, text: TokenText) -> str:
    """Render one file of a chunk."""
    page = chunk_page(f"{file.part.title} · {store.manifest['model']['name']}", text, [part_section(store, file)], nav,
                      page_notes(store, file.part, len(nav.parts)))
    return render_template("chunk.html", page=page)


def fixed_page_bytes(store: CaptureStore, text: TokenText) -> int:
    """The size of a chunk page holding one tiny section: scripts, styles and token data, without attention."""
    chunk = Chunk(0, (0,), "size", "size")
    part = chunk_part(chunk, (0,), (0, 1))
    empty = FittedPart(part, encode_rows(np.zeros((1, 1, store.num_tokens), np.float32), 0, store.causal))
    files = FileGrid([[part]])
    return len(part_html(store, empty, files.navigation(0, part), text).encode("utf-8"))


def page_notes(store: CaptureStore, part: Part, part_count: int) -> list[str]:
    """What a reader of one page must know: how exact the numbers are, and whether the chunk was split."""
    notes = [PAGE_PRECISION_NOTE]
    if part.chunk.is_mean:
        notes.append("The mean is taken over the captured weights, then quantized once.")
    if part_count > 1:
        notes.append(f"This chunk is split into {part_count} files, each under the size budget and the memory one "
                     "page may take while it is written; the others are linked above.")
    return notes


def _index(store: CaptureStore, grid: list[list[Chunk]], files: FileGrid, reader: LayerPass,
           analyses: list[AnalysisFiles]) -> IndexPage:
    """The index view-model, its grid cells opening the file that holds each head's first rows."""
    aggregate_layers = grid[0][0].layer == MEAN
    hrefs = {}
    for row, layer in enumerate(store.layer_indices):
        for head in store.head_indices:
            part = files.file_of(0 if aggregate_layers else row, head)
            hrefs[(layer, head)] = part.name if part.heads is None else f"{part.name}#head={head}"
    links = [ChunkLinks(row_label([part.chunk for part in parts]), tuple(Link(part.title, part.name) for part in parts))
             for parts in files.rows]
    links += [ChunkLinks(page.title, page.files) for page in analyses if page.files]
    split, chunks = files.split_chunks()
    notes = [f"{split} of {chunks} chunks were split into files of fewer heads or fewer query rows, to keep each "
             "file under the size budget and the memory one page may take while it is written; each file's name "
             "says which heads and rows it holds."] if split else []
    notes += [page.omitted for page in analyses if page.omitted]
    return index_page(store, hrefs, links, pack_thumbnails(reader.thumbnails), notes, reader.head_metrics())


def check_render_target(output: Path, options: RenderOptions) -> None:
    """Refuse bad options or an output that may not be replaced, before any slow work."""
    _check_options(options)
    if options.single_file:
        from att_report.report.single_file import check_single_file_target

        check_single_file_target(output, options.force)
        return
    check_report_target(output, options.force)
    if options.zip:
        check_replaceable(_zip_path(output), options.force, _is_report_zip, "report archive")


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
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{output} is a file; give a folder path for the {kind}.")
    check_replaceable(output, force, is_ours, kind)


def _zip_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".zip")


def _is_report_zip(path: Path) -> bool:
    """Whether `path` is an archive `zip_report` wrote: a zip holding FOLDER/index.html."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return f"{path.stem}/index.html" in archive.namelist()


def zip_report(folder: Path) -> Path:
    """Pack a report folder into FOLDER.zip beside it, deterministically (sorted names, fixed dates)."""
    target = _zip_path(folder)
    with staged_file(target) as staging, zipfile.ZipFile(staging, "w", compression=zipfile.ZIP_DEFLATED,
                                                         compresslevel=9) as archive:
        for path in sorted(folder.iterdir()):
            info = zipfile.ZipInfo(f"{folder.name}/{path.name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return target
