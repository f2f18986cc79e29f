"""The chunk page in a real Chromium: weights shown against the synthetic attention, interaction, offline."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from att_report.report.encode import ERROR_BOUND, decode_rows, quantize
from att_report.report.templating import write_html
from att_report.report.page_types import HeadLabel
from att_report.report.viewer import Section, render_chunk_page
from synthetic import random_attention
from test_viewer_page import NAVIGATION, make_section, make_text, tokens_for

pytestmark = pytest.mark.browser

TOKENS = 24
PROMPT = 16
SLACK = 1e-6  # the page's decimal text of q / 255 read back as float64


@pytest.fixture(scope="module")
def attention() -> np.ndarray:
    return random_attention(np.random.default_rng(21), 3, TOKENS, causal=True)


def open_page(page: Any, path: Path, html: str, fragment: str = "") -> None:
    """Write the page, open it from file:// and wait until its first section is shown."""
    write_html(path, html)
    page.goto(path.as_uri() + fragment)
    page.wait_for_selector("body[data-shown]")


@pytest.fixture
def chunk(page: Any, tmp_path: Path, attention: np.ndarray) -> Any:
    """An ordinary chunk page of three heads, opened."""
    html = render_chunk_page("Layer 3", make_text(tokens_for(TOKENS), PROMPT), [make_section(attention)], NAVIGATION)
    open_page(page, tmp_path / "chunk.html", html)
    return page


def weights(page: Any, view: str) -> list[str | None]:
    return page.eval_on_selector_all(f'[data-view="{view}"] [data-index]', "els => els.map(e => e.getAttribute('data-weight'))")


def numbers(values: list[str | None]) -> np.ndarray:
    assert all(value is not None for value in values), "a token carries no data-weight"
    return np.array([float(value) for value in values if value is not None])


def hover(page: Any, view: str, index: int) -> None:
    page.hover(f'[data-view="{view}"] [data-index="{index}"]')


def pressed(page: Any) -> list[str]:
    return page.eval_on_selector_all('[data-section-heads]:not([hidden]) [aria-pressed="true"]',
                                     "els => els.map(e => e.getAttribute('data-head'))")


def expected_matrix(attention: np.ndarray, head: str) -> np.ndarray:
    return attention.mean(axis=0) if head == "mean" else attention[int(head)]


def test_opens_offline_without_errors(chunk: Any) -> None:
    assert chunk.console_errors == [] and chunk.page_errors == [] and chunk.dialogs == []
    assert chunk.requests and all(url.split(":", 1)[0] in ("file", "data", "blob") for url in chunk.requests)
    assert pressed(chunk) == ["0"]
    assert [int(i) for i in chunk.eval_on_selector_all('[data-view="observer"] [data-index]',
                                                        "els => els.map(e => e.dataset.index)")] == list(range(TOKENS))


def test_page_decode_equals_decode_rows(chunk: Any, attention: np.ndarray) -> None:
    heads, columns = chunk.evaluate("""async () => {
        const data = await attReport.page.readSection('L03-H0-2'), out = new Int32Array(data.tokens), rows = [], cols = [];
        for (let h = 0; h < 3; h++) for (let r = 0; r < data.tokens; r++) { data.fillRow([h], r, out); rows.push(...out); }
        for (let h = 0; h < 3; h++) for (let k = 0; k < data.tokens; k++) { data.fillColumn([h], k, out); cols.push(...out); }
        return [rows, cols];
    }""")
    payload = chunk.eval_on_selector("#att-payload-0", "e => e.textContent.trim()")
    expected = np.rint(decode_rows(payload, 3, 0, TOKENS, TOKENS, True).astype(np.float64) * 255)
    np.testing.assert_array_equal(np.array(heads).reshape(3, TOKENS, TOKENS), expected)
    np.testing.assert_array_equal(np.array(columns).reshape(3, TOKENS, TOKENS).transpose(0, 2, 1), expected)


@pytest.mark.parametrize("head", ["0", "2", "mean"])
def test_observer_view_shows_each_row(chunk: Any, attention: np.ndarray, head: str) -> None:
    chunk.click(f'[data-head="{head}"]')
    matrix = expected_matrix(attention, head)
    for token in (0, 7, TOKENS - 1):
        hover(chunk, "observer", token)
        assert np.abs(numbers(weights(chunk, "observer")) - matrix[token]).max() <= ERROR_BOUND + SLACK


@pytest.mark.parametrize("head", ["1", "mean"])
def test_observed_view_shows_each_column(chunk: Any, attention: np.ndarray, head: str) -> None:
    chunk.click(f'[data-head="{head}"]')
    matrix = expected_matrix(attention, head)
    for token in (0, 5, TOKENS - 1):
        hover(chunk, "observed", token)
        assert np.abs(numbers(weights(chunk, "observed")) - matrix[:, token]).max() <= ERROR_BOUND + SLACK


def test_double_click_freezes_each_view_on_its_own(chunk: Any, attention: np.ndarray) -> None:
    chunk.dblclick('[data-view="observer"] [data-index="5"]')
    hover(chunk, "observer", 9)
    assert np.abs(numbers(weights(chunk, "observer")) - attention[0, 5]).max() <= ERROR_BOUND + SLACK
    assert "frozen" in chunk.text_content('[data-status="observer"]')
    assert "token 5" in chunk.text_content('[data-status="observer"]') and "token 9" in chunk.text_content('[data-status="observer"]')
    hover(chunk, "observed", 3)  # the other view still follows the pointer
    assert np.abs(numbers(weights(chunk, "observed")) - attention[0, :, 3]).max() <= ERROR_BOUND + SLACK
    chunk.dblclick('[data-view="observer"] [data-index="5"]')
    hover(chunk, "observer", 9)
    assert np.abs(numbers(weights(chunk, "observer")) - attention[0, 9]).max() <= ERROR_BOUND + SLACK
    assert "frozen" not in chunk.text_content('[data-status="observer"]')


def test_head_click_switches_views_and_matrix(chunk: Any, attention: np.ndarray) -> None:
    hover(chunk, "observer", 10)
    chunk.click('[data-head="2"]')
    assert pressed(chunk) == ["2"]
    assert np.abs(numbers(weights(chunk, "observer")) - attention[2, 10]).max() <= ERROR_BOUND + SLACK
    matrix = chunk.locator("[data-matrix]")
    cell = matrix.bounding_box()["width"] / TOKENS
    matrix.hover(position={"x": 4.5 * cell, "y": 20.5 * cell})  # query 20, key 4
    status = chunk.text_content('[data-status="matrix"]')
    assert status.startswith("token 20 ") and "→ token 4 " in status
    assert abs(float(status.rsplit(": ", 1)[1]) - attention[2, 20, 4]) <= ERROR_BOUND + 5e-5


def test_keyboard_moves_token_and_head(chunk: Any, attention: np.ndarray) -> None:
    hover(chunk, "observer", 3)
    chunk.mouse.move(0, 0)
    chunk.keyboard.press("ArrowRight")
    chunk.keyboard.press("ArrowRight")
    assert np.abs(numbers(weights(chunk, "observer")) - attention[0, 5]).max() <= ERROR_BOUND + SLACK
    chunk.keyboard.press("ArrowLeft")
    assert np.abs(numbers(weights(chunk, "observer")) - attention[0, 4]).max() <= ERROR_BOUND + SLACK
    chunk.keyboard.press("ArrowDown")
    assert pressed(chunk) == ["1"]
    chunk.keyboard.press("]")
    assert pressed(chunk) == ["2"]
    chunk.keyboard.press("]")
    assert pressed(chunk) == ["mean"]
    chunk.keyboard.press("[")
    chunk.keyboard.press("ArrowUp")
    assert pressed(chunk) == ["1"]
    assert np.abs(numbers(weights(chunk, "observer")) - attention[1, 4]).max() <= ERROR_BOUND + SLACK


def background_red(page: Any, index: int) -> int:
    colour = page.eval_on_selector(f'[data-view="observer"] [data-index="{index}"]', "e => getComputedStyle(e).backgroundColor")
    return int(colour.split("(")[1].split(",")[0])


def test_scale_options_change_colours_not_weights(chunk: Any, attention: np.ndarray) -> None:
    # Colours run from white (level 0) to rgb(96, 165, 250) (level 64); red = 255 - 159 * level / 64, rounded.
    hover(chunk, "observer", 12)
    before = weights(chunk, "observer")
    assert background_red(chunk, int(np.argmax(attention[0, 12]))) == 96  # row-max (the default): the max is full colour
    chunk.uncheck('[data-option="row-max"]')
    chunk.check('[data-option="ignore-sink"]')
    assert weights(chunk, "observer") == before
    assert chunk.eval_on_selector('[data-view="observer"] [data-index="0"]', "e => e.classList.contains('att-excluded')")
    q = quantize(attention[0, 12]).astype(np.float64)  # the bytes the page holds (error diffusion)
    other = int(np.argmax(q[1:])) + 1
    level = math.floor(q[other] / (255 - q[0]) * 64 + 0.5)  # absolute scale of the weight left after the first token
    assert background_red(chunk, other) == math.floor(255 - 159 * level / 64 + 0.5)


def test_hash_opens_a_head(page: Any, tmp_path: Path, attention: np.ndarray) -> None:
    html = render_chunk_page("Layer 3", make_text(tokens_for(TOKENS), PROMPT), [make_section(attention)], NAVIGATION)
    open_page(page, tmp_path / "chunk.html", html, "#head=2")
    assert pressed(page) == ["2"]


def test_sections_decode_lazily_and_switch(page: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    layers = [random_attention(rng, 2, TOKENS, True) for _ in range(3)]
    sections = [make_section(layer, key=f"L{i:02d}", layer=i, heads=(2 * i, 2 * i + 1)) for i, layer in enumerate(layers)]
    open_page(page, tmp_path / "all.html", render_chunk_page("all", make_text(tokens_for(TOKENS), PROMPT), sections, NAVIGATION))
    decoded = "els => els.map(e => e.getAttribute('data-decoded'))"
    assert page.eval_on_selector_all('script[type="application/octet-stream"]', decoded) == ["true", None, None]
    page.select_option("[data-section-select]", "L02")
    page.wait_for_selector('body[data-shown="L02"]')
    assert page.eval_on_selector_all('script[type="application/octet-stream"]', decoded) == ["true", None, "true"]
    assert page.get_attribute("body", "data-layer") == "2" and page.get_attribute("body", "data-heads") == "4,5"
    page.click('[data-section-heads="L02"] [data-head="5"]')
    hover(page, "observer", 20)
    assert np.abs(numbers(weights(page, "observer")) - layers[2][1, 20]).max() <= ERROR_BOUND + SLACK
    page.evaluate("location.hash = 'section=L01&head=mean'")
    page.wait_for_selector('body[data-shown="L01"]')
    assert pressed(page) == ["mean"] and page.get_attribute("body", "data-heads") == "2,3"
    hover(page, "observed", 6)
    assert np.abs(numbers(weights(page, "observed")) - layers[1].mean(0)[:, 6]).max() <= ERROR_BOUND + SLACK
    assert page.console_errors == [] and page.page_errors == []


def test_split_page_has_no_rows_outside(page: Any, tmp_path: Path, attention: np.ndarray) -> None:
    section = make_section(attention, row_start=8, row_count=8)
    open_page(page, tmp_path / "rows.html", render_chunk_page("rows", make_text(tokens_for(TOKENS), PROMPT), [section], NAVIGATION))
    hover(page, "observer", 3)
    assert set(weights(page, "observer")) == {None}
    assert "no row on this page" in page.text_content('[data-status="observer"]')
    hover(page, "observer", 10)
    assert np.abs(numbers(weights(page, "observer")) - attention[0, 10]).max() <= ERROR_BOUND + SLACK
    hover(page, "observed", 2)
    shown = numbers(weights(page, "observed"))
    expected = np.where((np.arange(TOKENS) >= 8) & (np.arange(TOKENS) < 16), attention[0, :, 2], 0.0)
    assert np.abs(shown - expected).max() <= ERROR_BOUND + SLACK
    outside = page.eval_on_selector_all('[data-view="observed"] .att-norow', "els => els.map(e => Number(e.dataset.index))")
    assert outside == list(range(8)) + list(range(16, TOKENS))


def test_bidirectional_rows_cover_every_token(page: Any, tmp_path: Path) -> None:
    attention = random_attention(np.random.default_rng(9), 1, TOKENS, causal=False)
    section = Section("enc", "Layer 0", 0, (HeadLabel(0, "head 0"),), attention, 0)
    open_page(page, tmp_path / "enc.html", render_chunk_page("enc", make_text(tokens_for(TOKENS), TOKENS, causal=False), [section], NAVIGATION))
    hover(page, "observer", 2)
    assert np.abs(numbers(weights(page, "observer")) - attention[0, 2]).max() <= ERROR_BOUND + SLACK
    assert (attention[0, 2, 3:] > 2 * ERROR_BOUND).any()  # weights after the token exist and were checked


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_export_downloads_a_picture(chunk: Any, fmt: str) -> None:
    with chunk.expect_download() as info:
        chunk.click(f'[data-export="{fmt}"]')
    download = info.value
    assert download.suggested_filename == f"L03-H0-2-head-0.{fmt}"
    content = Path(download.path()).read_bytes()
    if fmt == "png":
        assert content.startswith(b"\x89PNG\r\n\x1a\n")
        width = int.from_bytes(content[16:20], "big")
        assert width >= 1200 and width % TOKENS == 0
    else:
        root = ElementTree.fromstring(content)
        assert root.tag.endswith("svg")
        rects = [e for e in root.iter() if e.tag.endswith("rect")]
        assert len(rects) > TOKENS  # background, grey triangle runs and coloured runs
        assert any(e.text and "Layer 3" in e.text for e in root.iter() if e.tag.endswith("text"))
    assert all(url.split(":", 1)[0] in ("file", "data", "blob") for url in chunk.requests)
