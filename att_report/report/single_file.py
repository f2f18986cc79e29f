"""The whole report as one HTML file for a bug ticket: the index on top, every chunk a section decoded on demand.

The file has every view the folder has, from the same plan and the same one pass over the store (see `render`):
the chunk sections (named as the folder's files; a chunk is cut only where one section would exceed the file's
budget), rollout and saliency sections, and the neurons page, embedded whole as an isolated frame. The grid and the
section selector open sections through the page's fragment (#section=KEY&head=H). The file is refused, before it is
written, when it would exceed its size budget, with the options that make it fit.
"""

from __future__ import annotations

from pathlib import Path


from att_report.atomic import check_replaceable, staged_file
from att_report.errors import OutputExistsError, UsageError
from att_report.report.analysis_pages import (
    ROLLOUT_TITLE,
    SALIENCY_TITLE,
    fitted_sections,
    length_rollout_section,
    rollout_omitted,
    rollout_section,
    saliency_sections,
)
from att_report.report.chunks import plan_chunks, row_label
from att_report.report.fitting import MB, payload_budget
from att_report.report.index_page import ChunkLinks, index_page, report_title
from att_report.report.neuron_page import neuron_page
from att_report.report.page_types import Link, MEAN, Navigation
from att_report.report.plan import FileGrid
from att_report.report.render import (
    GENERATOR,
    RenderOptions,
    fitted_rows,
    fixed_page_bytes,
    part_section,
    report_pass,
    token_text,
)
from att_report.report.templating import render_template
from att_report.report.thumbnails import pack_thumbnails
from att_report.report.viewer import Section, chunk_page
from att_report.store import CaptureStore

NEURONS_ANCHOR = "neurons"


def check_single_file_target(output: Path, force: bool) -> None:
    """Refuse a folder, an existing file without --force, and any file this renderer did not write."""
    if output.is_dir():
        raise OutputExistsError(f"{output} is a folder; with --single-file, -o names the HTML file to write.")
    check_replaceable(output, force, _is_single_file_report, "single-file report")


def render_single_file(store: CaptureStore, output: Path, options: RenderOptions) -> Path:
    """Write the report as one file at `output`, or say how to make it fit the budget."""
    limit = int(options.single_file_mb * MB)
    text = token_text(store)
    budget = payload_budget(options.single_file_mb, fixed_page_bytes(store, text), f"the {store.num_tokens:,} tokens",
                            "--single-file-mb")
    grid = plan_chunks(store.layer_indices, store.head_indices, options.aggregate)
    reader = report_pass(store, options.aggregate)
    files = FileGrid()
    sections: list[Section] = []
    rollout: list[Section] = []

    def add(new: list[Section], layers_done: int) -> None:
        """Keep encoded sections, or refuse as soon as the file would exceed its budget."""
        sections.extend(new)
        if sum(len(section.payload or "") for section in sections) > budget:
            raise UsageError(_too_large(store, options, layers_done))

    for done, (layer, fitted) in enumerate(fitted_rows(store, grid, reader, budget, options.progress), 1):
        if fitted:
            files.rows.append([file.part for file in fitted])
            add([part_section(store, file) for file in fitted], done)
        if reader.rollout_so_far is not None:
            pieces = fitted_sections(rollout_section(layer, reader.rollout_so_far), store.causal, budget)
            rollout += pieces
            add(pieces, done)
    if not reader.rollout:  # at length: the last rows through every layer, from a second pass in reverse
        rollout = fitted_sections(length_rollout_section(store), store.causal, budget)
        add(rollout, len(store.layer_indices))
    saliency = [piece for section in saliency_sections(store)
                for piece in fitted_sections(section, store.causal, budget)]
    add(saliency, len(store.layer_indices))
    analyses = [ChunkLinks(title, tuple(Link(section.title, f"#section={section.key}") for section in extra))
                for title, extra in ((ROLLOUT_TITLE, rollout), (SALIENCY_TITLE, saliency)) if extra]
    neurons = neuron_page(store, text, index_href=None)
    neurons_html = render_template("neurons.html", page=neurons) if neurons is not None else None
    if neurons_html is not None:
        analyses.append(ChunkLinks("Neuron activations", (Link("open", f"#{NEURONS_ANCHOR}"),)))
    links = [ChunkLinks(row_label([part.chunk for part in parts]),
                        tuple(Link(part.title, f"#section={_key(part.name)}") for part in parts))
             for parts in files.rows] + analyses
    omitted = rollout_omitted(store.num_tokens, len(store.layer_indices))
    index = index_page(store, _fragments(store, files, grid[0][0].layer == MEAN), links,
                       pack_thumbnails(reader.thumbnails), [omitted] if omitted else [], reader.head_metrics())
    navigation = Navigation(index=Link("Overview", "#top"), prev_layer=None, next_layer=None, prev_group=None,
                            next_group=None)
    page = chunk_page(report_title(store), text, sections, navigation,
                      ["Choose a layer and heads in the grid or the section list; each is decoded when first shown."])
    html = render_template("single.html", page=page, index=index, neurons=neurons_html,
                           neurons_anchor=NEURONS_ANCHOR).encode("utf-8")
    if len(html) > limit:
        raise UsageError(_too_large(store, options, len(store.layer_indices)))
    with staged_file(output) as staging:
        staging.write_bytes(html)
    return output


def _key(name: str) -> str:
    return name.removesuffix(".html")


def _fragments(store: CaptureStore, files: FileGrid, aggregate_layers: bool) -> dict[tuple[int, int], str]:
    """Where the grid cell of each (layer, head) points inside the single file."""
    fragments = {}
    for row, layer in enumerate(store.layer_indices):
        for head in store.head_indices:
            part = files.file_of(0 if aggregate_layers else row, head)
            fragments[(layer, head)] = f"#section={_key(part.name)}" + ("" if part.heads is None else f"&head={head}")
    return fragments


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
