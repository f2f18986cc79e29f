"""A rendered report in a real Chromium, opened from file://: the index grid, its links into the chunk pages, the
weights those pages show against the store, navigation, grid export, and the single-file report."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import pytest
from synthetic import write_synthetic_store
from test_render import HEADS, KV_HEADS, LAYERS, PROMPT, TOKENS, render_cli
from test_viewer_browser import SLACK, expected_matrix, hover, numbers, pressed, weights

import att_report
from att_report.report.encode import ERROR_BOUND

pytestmark = pytest.mark.browser

OFFLINE = ("file", "data", "blob")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("render-browser") / "store"
    write_synthetic_store(path, TOKENS, PROMPT, LAYERS, HEADS, KV_HEADS, causal=True, seed=7)
    return path


@pytest.fixture(scope="module")
def attention(store: Path) -> list[np.ndarray]:
    """The stored attention as the reader gives it: (heads, T, T) per layer."""
    opened = att_report.load(store)
    return [opened.attention(layer) for layer in range(opened.num_layers)]


@pytest.fixture(scope="module")
def report(store: Path) -> Path:
    return render_cli(store, store.parent / "report")


@pytest.fixture(scope="module")
def single(store: Path) -> Path:
    return render_cli(store, store.parent / "single" / "report.html", "--single-file")


def open_index(page: Any, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-grid-ready]")


def open_chunk(page: Any, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-shown]")


def stayed_offline(page: Any) -> None:
    assert page.console_errors == [] and page.page_errors == [] and page.dialogs == []
    assert page.requests and all(url.split(":", 1)[0] in OFFLINE for url in page.requests), page.requests


def shown(page: Any) -> tuple[str, str]:
    return page.get_attribute("body", "data-layer"), page.get_attribute("body", "data-heads")


def thumbnail_pixels(page: Any, layer: int, head: int) -> np.ndarray:
    """The RGB pixels of one grid thumbnail, (rows, columns, 3)."""
    width, height, data = page.eval_on_selector(
        f'[data-grid-layer="{layer}"][data-grid-head="{head}"] canvas',
        "c => [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]")
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)[:, :, :3]


def test_index_opens_offline_and_draws_each_head(page: Any, report: Path, attention: list[np.ndarray]) -> None:
    open_index(page, report / "index.html")
    stayed_offline(page)
    assert page.eval_on_selector_all("canvas[data-thumb]", "els => els.length") == LAYERS * HEADS
    for layer, head in ((0, 0), (2, 7)):
        pixels = thumbnail_pixels(page, layer, head)
        assert pixels.shape[:2] == (len(TOKENS), len(TOKENS))  # 40 tokens: one cell per query row and key
        colours = {tuple(pixel) for pixel in pixels.reshape(-1, 3)}
        assert len(colours) > 2, "the thumbnail is blank"
        # Above the diagonal a causal head has no weight: one colour. Each row's strongest key: the full colour.
        above = {tuple(pixels[r, c]) for r in range(len(TOKENS)) for c in range(r + 1, len(TOKENS))}
        strongest = {tuple(pixels[r, int(np.argmax(attention[layer][head, r]))]) for r in range(len(TOKENS))}
        assert len(above) == 1 and len(strongest) == 1 and above != strongest


@pytest.mark.parametrize(("layer", "head"), [(1, 8), (2, 5)])
def test_grid_cell_opens_that_head(page: Any, report: Path, layer: int, head: int) -> None:
    open_index(page, report / "index.html")
    with page.expect_navigation():
        page.click(f'[data-grid-layer="{layer}"][data-grid-head="{head}"]')
    page.wait_for_selector("body[data-shown]")
    assert shown(page)[0] == str(layer) and str(head) in shown(page)[1].split(",")
    assert pressed(page) == [str(head)]
    stayed_offline(page)


def test_chunk_page_shows_the_stored_rows_and_columns(page: Any, report: Path, attention: list[np.ndarray]) -> None:
    open_chunk(page, report / "layer-01-heads-0-7.html")
    texts = page.eval_on_selector_all('[data-view="observer"] [data-index]', "els => els.map(e => e.textContent)")
    indices = page.eval_on_selector_all('[data-view="observed"] [data-index]', "els => els.map(e => e.dataset.index)")
    assert texts == TOKENS and indices == [str(i) for i in range(len(TOKENS))]
    group = attention[1][:8]  # the page's heads are 0-7, so a head's index is its slot
    for head in ("3", "6", "mean"):
        page.click(f'[data-head="{head}"]')
        assert pressed(page) == [head]
        matrix = expected_matrix(group, head)
        for token in (0, 21, len(TOKENS) - 1):
            hover(page, "observer", token)
            assert np.abs(numbers(weights(page, "observer")) - matrix[token]).max() <= ERROR_BOUND + SLACK
            hover(page, "observed", token)
            assert np.abs(numbers(weights(page, "observed")) - matrix[:, token]).max() <= ERROR_BOUND + SLACK
    stayed_offline(page)


def test_navigation_leads_to_the_neighbours(page: Any, report: Path) -> None:
    open_chunk(page, report / "layer-01-heads-0-7.html")
    steps = [("layer 2 →", ("2", "0,1,2,3,4,5,6,7")), ("head 8 →", ("2", "8")), ("← layer 1", ("1", "8")),
             ("← heads 0–7", ("1", "0,1,2,3,4,5,6,7")), ("← layer 0", ("0", "0,1,2,3,4,5,6,7"))]
    for label, expected in steps:
        with page.expect_navigation():
            page.click(f'nav a.att-nav-link:text-is("{label}")')
        page.wait_for_selector("body[data-shown]")
        assert shown(page) == expected, label
    with page.expect_navigation():
        page.click("nav a.att-nav-index")
    page.wait_for_selector("body[data-grid-ready]")
    stayed_offline(page)


def test_grid_exports_a_png_and_an_svg(page: Any, report: Path) -> None:
    open_index(page, report / "index.html")
    with page.expect_download() as info:
        page.click('[data-grid-export="png"]')
    png = Path(info.value.path()).read_bytes()
    assert info.value.suggested_filename.endswith(".png") and png.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", png[16:24])
    assert width >= HEADS * len(TOKENS) and height >= LAYERS * len(TOKENS)  # every thumbnail, at least a pixel a cell
    with page.expect_download() as info:
        page.click('[data-grid-export="svg"]')
    assert info.value.suggested_filename.endswith(".svg")
    root = ElementTree.fromstring(Path(info.value.path()).read_bytes())
    assert root.tag.endswith("svg")
    texts = [element.text for element in root.iter() if element.tag.endswith("text")]
    assert all(f"layer {layer}" in texts for layer in range(LAYERS))
    assert len([element for element in root.iter() if element.tag.endswith("rect")]) > LAYERS * HEADS
    stayed_offline(page)


def test_single_file_opens_sections_when_asked(page: Any, single: Path, attention: list[np.ndarray]) -> None:
    page.goto(single.as_uri())
    page.wait_for_selector("body[data-shown][data-grid-ready]")
    decoded = "els => els.filter(e => e.hasAttribute('data-decoded')).map(e => e.id)"
    payloads = 'script[type="application/octet-stream"][id^="att-payload-"]'
    assert page.eval_on_selector_all(payloads, decoded) == ["att-payload-0"]
    page.click('[data-grid-layer="2"][data-grid-head="8"]')
    page.wait_for_function("document.body.dataset.layer === '2' && document.body.dataset.heads === '8'")
    assert pressed(page) == ["8"]
    sections = page.evaluate("JSON.parse(document.getElementById('att-data').textContent).sections")
    (section,) = [s for s in sections if s["layer"] == "2" and s["heads"] == "8"]
    assert page.get_attribute("body", "data-shown") == section["key"]
    assert sorted(page.eval_on_selector_all(payloads, decoded)) == sorted({"att-payload-0", section["payload"]})
    hover(page, "observer", 33)
    assert np.abs(numbers(weights(page, "observer")) - attention[2][8, 33]).max() <= ERROR_BOUND + SLACK
    stayed_offline(page)
