"""Reports inline in Jupyter: a store's report shown in a sandboxed `<iframe srcdoc>` below the cell.

The page is the single-file report (or, when the whole is over the budget, the chosen layer's page of a report
folder), rendered through the public `render` into a temporary place and carried whole inside the iframe: no
server, no file beside the notebook, so it survives saving the notebook and nbconvert's HTML. The iframe is
sandboxed without `allow-same-origin`, so the report's scripts run but cannot touch the notebook.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from att_report.errors import AttReportError, UsageError
from att_report.report.chunks import plan_chunks
from att_report.report.render import RenderOptions, render
from att_report.report.templating import render_template
from att_report.store import CaptureStore, load

DEFAULT_INLINE_MB = 10.0  # a notebook keeps every output it shows; bigger reports fall back to one layer's page
DEFAULT_HEIGHT = 720
_HEAD = "<head>"
_BODY = re.compile(r'<body[^>]*\bdata-layer="(?P<layer>[^"]*)"[^>]*\bdata-heads="(?P<heads>[^"]*)"')


@dataclass(frozen=True)
class InlineReport:
    """A report page ready for the notebook: `_repr_html_` gives the iframe that carries it."""

    page: str = field(repr=False)  # the self-contained HTML page, before it is put into srcdoc
    title: str
    height: int = DEFAULT_HEIGHT

    def _repr_html_(self) -> str:
        return render_template("notebook.html", report=self)


def inline_report(store_or_path: CaptureStore | str | Path, layer: int | None = None, head: int | None = None,
                  max_mb: float = DEFAULT_INLINE_MB, height: int = DEFAULT_HEIGHT) -> InlineReport:
    """Render a store for the notebook, opened on `layer` and `head` when given."""
    store = store_or_path if isinstance(store_or_path, CaptureStore) else load(store_or_path)
    _check_choice(store, layer, head)
    shown_layer = store.layer_indices[0] if layer is None else layer
    shown_head = store.head_indices[0] if head is None else head
    grid = plan_chunks(store.layer_indices, store.head_indices, "none")
    chunk = next(c for c in grid[store.layer_indices.index(shown_layer)] if c.heads is None or shown_head in c.heads)
    with tempfile.TemporaryDirectory(prefix="att-report-inline-") as scratch:
        whole = _single_file(store, Path(scratch) / "report.html", max_mb)
        if whole is not None:
            key = None if layer is None and head is None else chunk.key
            title = f"{store.manifest['model']['name']} · {store.num_layers} layers × {store.num_heads} heads"
            return InlineReport(_opened_at(whole, _query(key, head)), title, height)
        page = _layer_page(store, Path(scratch) / "report", shown_layer, shown_head, max_mb)
    return InlineReport(_opened_at(page, _query(None, head)), f"{chunk.title} (the whole report is over {max_mb:g} "
                        "MB)", height)


def _single_file(store: CaptureStore, output: Path, max_mb: float) -> str | None:
    """The single-file report, or None when it would be over `max_mb` (render refuses it before writing)."""
    try:
        render(store.path, output, RenderOptions(single_file=True, single_file_mb=max_mb, progress=False))
    except UsageError:
        return None
    return output.read_text(encoding="utf-8")


def _layer_page(store: CaptureStore, folder: Path, layer: int, head: int, max_mb: float) -> str:
    """The first page of a report folder (pages at most `max_mb` each) that shows `head` of `layer`, found by the
    chunk pages' own `<body data-layer data-heads>` (the DOM contract), whatever the fitter named the files."""
    try:
        render(store.path, folder, RenderOptions(max_file_mb=max_mb, progress=False))
    except UsageError as error:
        raise UsageError(f"the report is over max_mb={max_mb:g} MB even one layer at a time ({error}); "
                         "pass a larger max_mb.") from None
    for path in sorted(folder.glob("layer-*.html")):
        page = path.read_text(encoding="utf-8")
        body = _BODY.search(page)
        if body and body["layer"] == str(layer) and str(head) in body["heads"].split(","):
            return page
    raise UsageError(f"the report of {store.path} has no page for layer {layer}, head {head}; render it with "
                     "att_report.render() and open its index.")


def store_html(store: CaptureStore) -> str:
    """What a store shows as a cell's last expression: its report, or the one line saying why not."""
    try:
        return inline_report(store)._repr_html_()
    except AttReportError as error:
        return render_template("notebook.html", report=None, error=str(error))


def show(store_or_path: CaptureStore | str | Path, layer: int | None = None, head: int | None = None, *,
         max_mb: float = DEFAULT_INLINE_MB, height: int = DEFAULT_HEIGHT) -> None:
    """Display a store's report in the running notebook now, wherever the call stands in its cell."""
    try:
        from IPython.display import display
    except ImportError:
        raise UsageError("att_report.show() displays in Jupyter and needs IPython (pip install ipykernel); "
                         "outside a notebook, use att_report.render().") from None
    display(inline_report(store_or_path, layer, head, max_mb, height))


def _check_choice(store: CaptureStore, layer: int | None, head: int | None) -> None:
    """Refuse a layer or head the store does not hold, naming what it does hold."""
    if layer is not None and layer not in store.layer_indices:
        raise UsageError(f"layer={layer} is not in {store.path}; it holds layers {_span(store.layer_indices)}.")
    if head is not None and head not in store.head_indices:
        raise UsageError(f"head={head} is not in {store.path}; it holds heads {_span(store.head_indices)}.")


def _span(indices: list[int]) -> str:
    return f"{indices[0]} to {indices[-1]}" if indices == list(range(indices[0], indices[-1] + 1)) else str(indices)


def _query(section: str | None, head: int | None) -> str:
    """The fragment the report's pages read to open a section and head (see js/chunk.js, openFragment)."""
    return "&".join(f"{name}={value}" for name, value in (("section", section), ("head", head)) if value is not None)


def _opened_at(page: str, fragment: str) -> str:
    """Make the page work inside srcdoc: resolve its #fragment links against the iframe's own document (a srcdoc
    document otherwise resolves them against the notebook's address, and a click would load the notebook into the
    frame), and open it at `fragment`."""
    if _HEAD not in page:
        raise ValueError("a rendered page has no <head>; the templates changed, so notebook.py must follow.")
    head = render_template("_notebook_head.html", fragment=fragment)
    return page.replace(_HEAD, _HEAD + "\n" + head.rstrip("\n"), 1)
