"""The whole report as one HTML file for a bug ticket: the index on top, every chunk a section decoded on demand.

Sections are the same chunks a report folder has (see `chunks`), unsplit; the grid and the section selector open
them through the page's fragment (#section=KEY&head=H). The file is refused, before it is written, when it would
exceed its size budget, with the options that make it fit.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from att_report.report.analysis_pages import rollout_sections, saliency_sections
from att_report.atomic import PARTIAL_PREFIX, check_replaceable
from att_report.report.chunks import Chunk, HeadNaming, chunk_of, head_labels, plan_chunks, row_label
from att_report.errors import OutputExistsError, UsageError
from att_report.report.index_page import ChunkLinks, index_page, report_title
from att_report.report.render import GENERATOR, RenderOptions, chunk_matrices, row_source, token_text
from att_report.store import CaptureStore
from att_report.report.templating import render_template
from att_report.report.thumbnails import pack_thumbnails
from att_report.report.page_types import Link, Navigation
from att_report.report.viewer import Section, chunk_page

_MB = 1_000_000


def check_single_file_target(output: Path, force: bool) -> None:
    """Refuse a folder, an existing file without --force, and any file this renderer did not write."""
    if output.is_dir():
        raise OutputExistsError(f"{output} is a folder; with --single-file, -o names the HTML file to write.")
    check_replaceable(output, force, _is_single_file_report, "single-file report")


def render_single_file(store: CaptureStore, output: Path, options: RenderOptions) -> Path:
    """Write the report as one file at `output`, or say how to make it fit the budget."""
    budget = int(options.single_file_mb * _MB)
    grid = plan_chunks(store.num_layers, store.num_heads, options.aggregate)
    naming = HeadNaming(store.num_heads, store.num_kv_heads)
    thumbnails: list[np.ndarray] = []
    sections: list[Section] = []
    payload_bytes = 0

    def add(section: Section, layers_done: int) -> None:
        """Keep a section encoded, or refuse as soon as the file would exceed its budget."""
        nonlocal payload_bytes
        section = section.encoded(store.causal)
        payload_bytes += len(section.payload or "")
        if payload_bytes > budget:
            raise UsageError(_too_large(store, options, layers_done))
        sections.append(section)

    for row in range(len(grid)):
        source, row_thumbnails = row_source(store, grid, row)
        thumbnails += row_thumbnails
        for chunk in grid[row]:
            add(Section(chunk.key, chunk.title, chunk.layer, head_labels(chunk, naming), chunk_matrices(source, chunk),
                        0), row + 1)
    analyses: list[ChunkLinks] = []
    for title, extra in (("Attention rollout", rollout_sections(store)), ("Gradient saliency", saliency_sections(store))):
        links = []
        for section in extra:
            add(section, store.num_layers)
            links.append(Link(section.title, f"#section={section.key}"))
        if links:
            analyses.append(ChunkLinks(title, tuple(links)))
    hrefs = {(layer, head): _fragment(grid, layer, head) for layer in range(store.num_layers)
             for head in range(store.num_heads)}
    links = [ChunkLinks(row_label(chunks), tuple(Link(chunk.title, f"#section={chunk.key}") for chunk in chunks))
             for chunks in grid] + analyses
    index = index_page(store, grid, hrefs, links, pack_thumbnails(thumbnails), [])
    navigation = Navigation(index=Link("Overview", "#top"), prev_layer=None, next_layer=None, prev_group=None,
                            next_group=None)
    page = chunk_page(report_title(store), token_text(store), sections, navigation,
                      ["Choose a layer and heads in the grid or the section list; each is decoded when first shown."])
    html = render_template("single.html", page=page, index=index).encode("utf-8")
    if len(html) > budget:
        raise UsageError(_too_large(store, options, store.num_layers))
    _write_atomically(output, html)
    return output


def _fragment(grid: list[list[Chunk]], layer: int, head: int) -> str:
    """Where the grid cell of (layer, head) points inside the single file."""
    chunk = chunk_of(grid, layer, head)
    return f"#section={chunk.key}" + ("" if chunk.heads is None else f"&head={head}")


def _too_large(store: CaptureStore, options: RenderOptions, layers_done: int) -> str:
    advice = ("render a folder instead (drop --single-file) and attach it with --zip"
              if options.aggregate != "none" else
              "try --aggregate heads (one mean per layer, about "
              f"{store.num_heads}x smaller), or render a folder and attach it with --zip")
    return (f"the single-file report exceeds --single-file-mb {options.single_file_mb:g} after {layers_done} of "
            f"{store.num_layers} layers; {advice}, or raise --single-file-mb.")


def _is_single_file_report(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            head = handle.read(2048).decode("utf-8", "replace")
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head


def _write_atomically(output: Path, html: bytes) -> None:
    """Write beside the target and rename, so a crash never leaves half a file under the real name."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{PARTIAL_PREFIX}{output.name}.{os.getpid()}")
    try:
        staging.write_bytes(html)
        os.replace(staging, output)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
