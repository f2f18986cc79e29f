"""Reports inline in Jupyter: a real notebook executed by nbclient on an ipykernel, converted by nbconvert, and its
HTML opened in Chromium, where the iframe's observer view must give the store's weights; plus the pieces alone."""

from __future__ import annotations

import html.parser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import att_report
from att_report.errors import UsageError
from att_report.report.notebook import inline_report
from synthetic import write_synthetic_store

REPO = Path(__file__).resolve().parent.parent
TOKENS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " slept", " there"]
BOUND = 1 / 255 + 1e-6  # a page's bytes diffuse each row's rounding: each weight within 1/255 of the store


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    write_synthetic_store(tmp_path / "store", TOKENS, prompt_length=6, num_layers=2, num_heads=3)
    return tmp_path / "store"


class _Iframes(html.parser.HTMLParser):
    """Collect every iframe's attributes (values unescaped, as a browser reads them)."""

    def __init__(self) -> None:
        super().__init__()
        self.iframes: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "iframe":
            self.iframes.append(dict(attrs))


def iframes_of(markup: str) -> list[dict[str, str | None]]:
    parser = _Iframes()
    parser.feed(markup)
    return parser.iframes


def test_store_repr_is_a_sandboxed_iframe_carrying_the_single_file_report(store_path: Path, tmp_path: Path) -> None:
    [iframe] = iframes_of(att_report.load(store_path)._repr_html_())
    assert iframe["sandbox"] == "allow-scripts allow-downloads"  # never allow-same-origin: the notebook stays apart
    single = att_report.render(store_path, tmp_path / "single.html", att_report.RenderOptions(single_file=True))
    expected = single.read_text(encoding="utf-8").replace("<head>", '<head>\n<base href="about:srcdoc">', 1)
    assert iframe["srcdoc"] == expected


def test_a_chosen_layer_and_head_open_through_the_fragment(store_path: Path) -> None:
    page = inline_report(store_path, layer=1, head=2).page
    assert '<script>location.hash = "section=layer-01-heads-0-2\\u0026head=2";</script>' in page


@pytest.mark.parametrize(("choice", "message"), [
    ({"layer": 2}, "layer=2 is not in .* it holds layers 0 to 1"),
    ({"layer": 0, "head": 3}, "head=3 is not in .* it holds heads 0 to 2"),
])
def test_a_layer_or_head_the_store_lacks_is_refused(store_path: Path, choice: dict[str, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        inline_report(store_path, **choice)


def test_over_the_budget_the_chosen_layer_page_is_shown(tmp_path: Path) -> None:
    tokens = [f" t{i}" for i in range(120)]
    write_synthetic_store(tmp_path / "long", tokens, prompt_length=100, num_layers=4, num_heads=3)
    single = att_report.render(tmp_path / "long", tmp_path / "single.html", att_report.RenderOptions(single_file=True))
    budget = single.stat().st_size / 2 / 1e6  # the whole does not fit; one layer of four does
    report = inline_report(tmp_path / "long", layer=2, max_mb=budget)
    assert '<body data-layer="2" data-heads="0,1,2"' in report.page
    assert report.title == "Layer 2 · heads 0–2 (the whole report is over " + f"{budget:g} MB)"


def test_when_not_even_one_layer_fits_the_error_names_max_mb(store_path: Path) -> None:
    with pytest.raises(UsageError, match="max_mb"):
        inline_report(store_path, max_mb=0.01)


def test_a_damaged_store_shows_one_line_instead_of_a_traceback(store_path: Path) -> None:
    store = att_report.load(store_path)
    (store_path / store.manifest["attention"]["files"][0]["path"]).unlink()
    shown = store._repr_html_()
    assert shown.startswith('<p class="att-report-inline-error">att-report: ') and "Traceback" not in shown


def _notebook(cells: list[str]) -> Any:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return notebook


def _execute(notebook: Any, path: Path) -> Any:
    """Run the notebook on a real ipykernel from the repository root (so this checkout's att_report is imported),
    save it, and read it back as Jupyter would."""
    import nbformat
    from nbclient import NotebookClient

    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    nbformat.write(notebook, path)
    return nbformat.read(path, as_version=4)


def _nbconvert_html(notebook_path: Path) -> Path:
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_filename(str(notebook_path))
    target = notebook_path.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def _observer_weights(frame: Any, index: int) -> tuple[str, list[float]]:
    """Hover token `index` in the frame's observer view; return the selected head and every token's data-weight."""
    view = frame.locator('[data-view="observer"]').first
    view.locator(f'[data-index="{index}"]').hover()
    head = frame.locator('[data-head][aria-pressed="true"]').first.get_attribute("data-head")
    weights = view.locator("[data-index]").evaluate_all("nodes => nodes.map(n => Number(n.getAttribute('data-weight')))")
    return head, weights


def _open_offline(page: Any, path: Path) -> list[str]:
    """Open a file with every network request refused (nbconvert's page itself names CDN scripts); return what the
    report iframes asked for or logged as an error, which must be nothing."""
    from_frames: list[str] = []
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    page.on("request", lambda request: request.frame != page.main_frame and from_frames.append(request.url))
    page.on("console", lambda message: message.type == "error" and message.location.get("url") == "about:srcdoc"
            and from_frames.append(message.text))
    page.goto(path.as_uri())
    return from_frames


@pytest.mark.browser
def test_executed_notebook_shows_the_report_inline_in_nbconvert_html(store_path: Path, tmp_path: Path,
                                                                       page: Any) -> None:
    notebook = _execute(_notebook([
        f"import att_report\nassert att_report.__file__.startswith({str(REPO)!r}), att_report.__file__\n"
        f"store = att_report.load({str(store_path)!r})\nstore",
        f"att_report.show({str(store_path)!r}, layer=1, head=2)\nprint('shown')",
    ]), tmp_path / "inline.ipynb")
    for cell in notebook.cells:
        assert not [output for output in cell.outputs if output.output_type == "error"], cell.outputs
        html_outputs = [output.data["text/html"] for output in cell.outputs if "text/html" in output.get("data", {})]
        assert len(html_outputs) == 1 and len(iframes_of(html_outputs[0])) == 1  # saved with the notebook

    converted = _nbconvert_html(tmp_path / "inline.ipynb")
    problems = _open_offline(page, converted)
    frames = page.frame_locator("iframe.att-report-inline")
    store = att_report.load(store_path)
    for nth, (layer, expected_head) in enumerate([(0, None), (1, "2")]):
        frame = frames.nth(nth)
        frame.locator('[data-view="observer"] [data-index]').first.wait_for()
        head, weights = _observer_weights(frame, 7)
        assert expected_head is None or head == expected_head
        truth = store.attention(layer)[int(head), 7]
        assert np.abs(np.array(weights) - truth).max() <= BOUND
    # A link to another section opens it inside the frame; the notebook page stays where it is.
    inline = next(frame for frame in page.frames if frame.url.startswith("about:srcdoc"))
    target = inline.eval_on_selector_all('a[href^="#section="]', "links => links.map(link => "
                                         "link.getAttribute('href')).find(href => href !== location.hash)")
    inline.click(f'a[href="{target}"]')
    inline.wait_for_function("href => location.hash === href", arg=target)
    assert page.url == converted.as_uri()
    assert problems == []


@pytest.mark.browser
def test_a_capture_from_a_model_in_memory_shows_inline(tmp_path: Path, page: Any) -> None:
    pytest.importorskip("torch")
    notebook = _execute(_notebook([
        f"import sys\nsys.path.insert(0, {str(REPO / 'tests')!r})\nimport att_report\n"
        "from tiny_models import build_tiny_model\nmodel, tokenizer = build_tiny_model('llama-gqa')",
        f"path = att_report.capture('The quick brown fox', {str(tmp_path / 'fox')!r}, model=model, "
        "tokenizer=tokenizer, max_new_tokens=4, progress=False)\natt_report.show(path)",
    ]), tmp_path / "model.ipynb")
    assert not [output for cell in notebook.cells for output in cell.outputs if output.output_type == "error"]
    problems = _open_offline(page, _nbconvert_html(tmp_path / "model.ipynb"))
    frame = page.frame_locator("iframe.att-report-inline").first
    frame.locator('[data-view="observer"] [data-index]').first.wait_for()
    store = att_report.load(tmp_path / "fox")
    last = store.num_tokens - 1
    head, weights = _observer_weights(frame, last)
    assert np.abs(np.array(weights) - store.attention(0)[int(head), last]).max() <= BOUND
    assert problems == []
