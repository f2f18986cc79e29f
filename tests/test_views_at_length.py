"""The chunk page at length in a real Chromium: no attention hidden by rounding, the mass strips, log colour, the
matrix downsampled and zoomed to single tokens, and fragments that name no section."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from att_report.report.encode import ERROR_BOUND, SUM_BOUND, decode_rows
from att_report.report.viewer import render_chunk_page
from synthetic import heavy_tail_attention
from test_viewer_browser import SLACK, hover, numbers, open_page, weights
from test_viewer_page import NAVIGATION, make_section, make_text, tokens_for

pytestmark = pytest.mark.browser

TOKENS = 1500
PROMPT = 1400
BLOCK = 64
ROWS = (700, 1100, TOKENS - 1)


@pytest.fixture(scope="module")
def attention() -> np.ndarray:
    """Two heads whose rows put a fifth or more of their mass in weights below 1/510, as a long prompt's do."""
    matrices = heavy_tail_attention(np.random.default_rng(30), 2, TOKENS)
    tiny = np.where(matrices < 1 / 510, matrices, 0).sum(-1)
    assert np.median(tiny[:, 700:]) > 0.2  # plain rounding would lose that much of each row
    return matrices


@pytest.fixture(scope="module")
def html(attention: np.ndarray) -> str:
    return render_chunk_page("Layer 3", make_text(tokens_for(TOKENS), PROMPT), [make_section(attention)], NAVIGATION)


@pytest.fixture
def long_page(page: Any, tmp_path: Path, html: str) -> Any:
    page.set_viewport_size({"width": 1600, "height": 900})
    open_page(page, tmp_path / "long.html", html)
    return page


def expected(attention: np.ndarray, head: str) -> np.ndarray:
    return attention.mean(axis=0) if head == "mean" else attention[int(head)]


@pytest.mark.parametrize("head", ["0", "mean"])
def test_observer_rows_and_blocks_keep_their_mass(long_page: Any, attention: np.ndarray, head: str) -> None:
    long_page.click(f'[data-head="{head}"]')
    matrix = expected(attention, head).astype(np.float64)
    for row in ROWS:
        hover(long_page, "observer", row)
        shown = numbers(weights(long_page, "observer"))
        assert np.abs(shown - matrix[row]).max() <= ERROR_BOUND + SLACK
        assert abs(shown.sum() - matrix[row].sum()) <= 0.01
        blocks = np.add.reduceat(shown - matrix[row], np.arange(0, TOKENS, BLOCK))
        assert np.abs(blocks).max() <= min(0.01, SUM_BOUND + 1e-6)
        plain = np.rint(matrix[row] * 255) / 255  # what rounding each weight on its own would show
        assert abs(plain.sum() - matrix[row].sum()) > 0.05


def test_observed_columns_keep_each_weight(long_page: Any, attention: np.ndarray) -> None:
    long_page.click('[data-head="1"]')
    for key in (0, 3, 900):
        hover(long_page, "observed", key)
        assert np.abs(numbers(weights(long_page, "observed")) - attention[1, :, key]).max() <= ERROR_BOUND + SLACK


def strip_cells(page: Any, view: str) -> list[dict[str, Any]]:
    return page.eval_on_selector_all(f'[data-strip="{view}"] [data-block-start]', """cells => cells.map(c => ({
        start: Number(c.dataset.blockStart), end: Number(c.dataset.blockEnd), mass: c.getAttribute('data-mass')}))""")


@pytest.mark.parametrize("view", ["observer", "observed"])
def test_strip_cells_are_the_block_sums(long_page: Any, attention: np.ndarray, view: str) -> None:
    hover(long_page, view, 1200)
    cells = strip_cells(long_page, view)
    size = int(long_page.get_attribute(f'[data-strip="{view}"]', "data-block-size"))
    assert size == math.ceil(TOKENS / 128) and [c["start"] for c in cells] == list(range(0, TOKENS, size))
    shown = numbers(weights(long_page, view))
    truth = attention[0, 1200] if view == "observer" else attention[0, :, 1200]
    for cell in cells:
        block = slice(cell["start"], cell["end"] + 1)
        assert float(cell["mass"]) == pytest.approx(shown[block].sum(), abs=1e-9)
        if view == "observer":  # consecutive keys of one row: within the block bound of the encoding
            assert abs(float(cell["mass"]) - truth[block].sum()) <= SUM_BOUND + 1e-6
        else:  # one weight per row: each within its own bound
            assert abs(float(cell["mass"]) - truth[block].sum()) <= size * ERROR_BOUND


def test_strip_click_scrolls_its_view_there(long_page: Any) -> None:
    hover(long_page, "observer", 5)
    long_page.click('[data-strip="observer"] [data-block-start="1020"]')
    offset = long_page.evaluate("""() => {
        const box = document.querySelector('[data-view="observer"]');
        const token = box.querySelector('[data-index="1020"]');
        return [box.scrollTop, token.getBoundingClientRect().top - box.getBoundingClientRect().top];
    }""")
    assert offset[0] > 0 and 0 <= offset[1] <= 30
    assert long_page.evaluate("window.scrollY") == 0  # only the view scrolled, not the page


def red_of(page: Any, index: int) -> int:
    colour = page.eval_on_selector(f'[data-view="observer"] [data-index="{index}"]', "e => getComputedStyle(e).backgroundColor")
    return 255 if colour == "rgba(0, 0, 0, 0)" else int(colour.split("(")[1].split(",")[0])


def test_log_colour_shows_small_weights(long_page: Any, attention: np.ndarray) -> None:
    long_page.uncheck('[data-option="row-max"]')
    hover(long_page, "observer", 1300)
    before = weights(long_page, "observer")
    shown = numbers(before)
    small = int(np.flatnonzero((shown > 0) & (shown < 0.005))[0])  # one byte: level round(64 / 255) = 0, no colour
    assert red_of(long_page, small) == 255
    assert long_page.is_hidden('[data-legend-ramp="log"].att-legend-bar')
    long_page.check('[data-option="log"]')
    assert weights(long_page, "observer") == before
    assert long_page.is_visible('[data-legend-ramp="log"].att-legend-bar')
    assert long_page.is_hidden('[data-legend-ramp="linear"].att-legend-bar')
    for index in (small, int(np.argmax(shown))):
        level = min(64, max(8, math.floor(8 + 56 * (1 + math.log10(shown[index]) / 3) + 0.5)))
        assert red_of(long_page, index) == math.floor(255 - 159 * level / 64 + 0.5)


def matrix_state(page: Any) -> tuple[list[int], list[int]]:
    region = page.get_attribute("[data-matrix]", "data-region")
    cells = page.get_attribute("[data-matrix]", "data-cell-tokens")
    return [int(v) for v in region.split()], [int(v) for v in cells.split()]


def readout(page: Any) -> tuple[int, int, str]:
    status = page.locator('[data-status="matrix"]')
    return int(status.get_attribute("data-query")), int(status.get_attribute("data-key")), status.get_attribute("data-weight")


def block_of(index: int, bins: int) -> slice:
    """The tokens of the matrix cell (a block of the whole view) that holds token `index`."""
    cell = next(i for i in range(bins) if (i + 1) * TOKENS // bins > index)
    return slice(cell * TOKENS // bins, (cell + 1) * TOKENS // bins)


def test_matrix_downsamples_then_zooms_to_exact_weights(long_page: Any, html: str, attention: np.ndarray) -> None:
    payload = long_page.eval_on_selector("#att-payload-0", "e => e.textContent.trim()")
    # the bytes / 255 the page holds, as float64 like the page's decimals
    stored = np.rint(decode_rows(payload, 2, 0, TOKENS, TOKENS, True)[0].astype(np.float64) * 255) / 255
    long_page.wait_for_selector("[data-matrix][data-drawn]")
    region, cells = matrix_state(long_page)
    assert region == [0, TOKENS - 1, 0, TOKENS - 1] and min(cells) > 1
    assert "largest weight" in long_page.text_content("[data-matrix-legend]")
    canvas = long_page.locator("[data-matrix]")
    box = canvas.bounding_box()
    long_page.mouse.move(box["x"] + 0.6 * box["width"], box["y"] + 0.8 * box["height"])
    query, key, weight = readout(long_page)
    assert float(weight) == stored[query, key] and abs(float(weight) - attention[0, query, key]) <= ERROR_BOUND
    bins = long_page.evaluate("() => { const c = document.querySelector('[data-matrix]'); return [c.height, c.width]; }")
    rows, keys = (block_of(index, count) for index, count in zip((query, key), bins))
    assert rows.start <= 0.8 * TOKENS < rows.stop + cells[1] and keys.start <= 0.6 * TOKENS < keys.stop + cells[0]
    assert float(weight) == np.tril(stored)[rows, keys].max()  # the block's largest stored weight
    for _ in range(40):  # a busy browser may coalesce wheel events, so wheel until the deepest zoom
        if matrix_state(long_page)[1] == [1, 1] and matrix_state(long_page)[0][1] - matrix_state(long_page)[0][0] == 7:
            break
        long_page.mouse.wheel(0, -100)
        long_page.wait_for_timeout(30)
    region, cells = matrix_state(long_page)
    assert cells == [1, 1] and region[1] - region[0] + 1 == 8 and region[3] - region[2] + 1 == 8
    assert "one query token" in long_page.text_content("[data-matrix-legend]")
    box = canvas.bounding_box()
    for fx, fy in ((0.3, 0.9), (0.05, 0.55), (0.95, 0.95)):  # inside cells, off their edges
        long_page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        query, key, weight = readout(long_page)
        assert (query, key) == (region[0] + int(fy * 8), region[2] + int(fx * 8))
        assert float(weight) == stored[query, key] and abs(float(weight) - attention[0, query, key]) <= ERROR_BOUND
        assert long_page.text_content('[data-status="matrix"]').endswith(f"{stored[query, key]:.4f}")
    long_page.click('[data-matrix-zoom="whole"]')
    assert matrix_state(long_page)[0] == [0, TOKENS - 1, 0, TOKENS - 1]
    assert long_page.page_errors == []


def overlay_alpha(page: Any, x: float, y: float) -> int:
    return page.evaluate("""([x, y]) => {
        const overlay = document.querySelector('[data-matrix-overlay]'), box = overlay.getBoundingClientRect();
        const ratio = overlay.width / box.width;
        const pixels = overlay.getContext('2d').getImageData(Math.round(x * ratio), Math.round(y * ratio) - 3, 1, 7).data;
        return Math.max(...pixels.filter((_, i) => i % 4 === 3));  // the most opaque of 7 pixels down the probe
    }""", [x, y])


def test_matrix_crosshair_and_layout_beside_the_views(long_page: Any) -> None:
    canvas, overlay = long_page.locator("[data-matrix]").bounding_box(), long_page.locator("[data-matrix-overlay]").bounding_box()
    left, top = canvas["x"] - overlay["x"], canvas["y"] - overlay["y"]
    probe = (left + 0.9 * canvas["width"], top + 0.4 * canvas["height"])
    assert overlay_alpha(long_page, *probe) == 0
    long_page.mouse.move(canvas["x"] + 0.2 * canvas["width"], canvas["y"] + 0.4 * canvas["height"])
    assert overlay_alpha(long_page, *probe) > 0  # the horizontal line through the pointed row
    observed = long_page.locator('[data-view="observed"]').bounding_box()
    panel = long_page.locator("[data-matrix-panel]").bounding_box()
    assert panel["x"] >= observed["x"] + observed["width"] and abs(panel["y"] - long_page.locator(
        '[aria-label="Observer view"]').bounding_box()["y"]) < 1
    assert overlay["height"] <= 900 and panel["x"] + panel["width"] <= 1600


@pytest.mark.parametrize("fragment", ["#section=constructor", "#section=__proto__&head=toString", "#section=hasOwnProperty"])
def test_fragment_naming_no_section_opens_the_first(page: Any, tmp_path: Path, fragment: str) -> None:
    attention = heavy_tail_attention(np.random.default_rng(2), 2, 40)
    html = render_chunk_page("Layer 3", make_text(tokens_for(40), 30), [make_section(attention)], NAVIGATION)
    open_page(page, tmp_path / "frag.html", html, fragment)
    assert page.get_attribute("body", "data-shown") == "L03-H0-2" and page.page_errors == []
    hover(page, "observer", 20)
    assert np.abs(numbers(weights(page, "observer")) - attention[0, 20]).max() <= ERROR_BOUND + SLACK


@pytest.mark.parametrize("options", [(), ("ignore-sink",), ("log",), ("ignore-sink", "log")])
def test_matrix_cells_take_the_text_views_colours(page: Any, tmp_path: Path, options: tuple[str, ...]) -> None:
    # At 40 tokens each matrix cell is one token: cell (q, k) has the colour of token k in the observer view of q.
    attention = heavy_tail_attention(np.random.default_rng(5), 2, 40)
    html = render_chunk_page("Layer 3", make_text(tokens_for(40), 40), [make_section(attention)], NAVIGATION)
    open_page(page, tmp_path / "colours.html", html)  # all prompt: no completion background under the colours
    for option in options:
        page.check(f'[data-option="{option}"]')
    page.click('[data-head="mean"]')
    page.wait_for_selector("[data-matrix][data-drawn]")
    assert matrix_state(page)[1] == [1, 1]
    pixels = np.array(page.evaluate("""() => {
        const canvas = document.querySelector('[data-matrix]');
        return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
    }""")).reshape(40, 40, 4)[..., :3]
    for query in (1, 17, 39):
        hover(page, "observer", query)
        colours = page.eval_on_selector_all('[data-view="observer"] [data-index]',
                                            "els => els.map(e => getComputedStyle(e).backgroundColor)")
        for key in range(query + 1):
            if "ignore-sink" in options and key == 0:
                assert tuple(pixels[query, key]) == (226, 228, 232)  # left out of the scale, as the text view's hatch
                continue
            rgb = (255, 255, 255) if colours[key] == "rgba(0, 0, 0, 0)" else tuple(int(v) for v in colours[key][4:-1].split(","))
            assert tuple(pixels[query, key]) == rgb, (query, key)
        assert all(tuple(pixels[query, key]) == (243, 244, 246) for key in range(query + 1, 40))  # above the diagonal


def test_rendered_report_keeps_each_rows_mass_against_the_store(page: Any, tmp_path: Path) -> None:
    # End to end: a store of 2,000 tokens written as capture writes it (float16), rendered by att_report.render, its
    # chunk page opened; the observer view against the store's own rows, and the share plain rounding would lose.
    import att_report
    from synthetic import write_synthetic_store

    tokens = tokens_for(2000)
    write_synthetic_store(tmp_path / "store", tokens, 1990, num_layers=1, num_heads=2, seed=4)
    store = att_report.load(tmp_path / "store")
    report = att_report.render(tmp_path / "store", tmp_path / "report")
    (chunk,) = sorted(report.glob("layer-*.html"))
    page.goto(chunk.as_uri())
    page.wait_for_selector("body[data-shown]")
    for head, rows in ((0, (1500, 1999)), (1, (1000,))):
        page.click(f'[data-head="{head}"]')
        for row in rows:
            truth = store.attention(0, heads=[head], rows=[row])[0, 0].astype(np.float64)
            assert np.where(truth < 1 / 510, truth, 0).sum() > 0.05  # what rounding each weight would have lost
            hover(page, "observer", row)
            shown = numbers(weights(page, "observer"))
            assert np.abs(shown - truth).max() <= ERROR_BOUND + SLACK
            assert abs(shown.sum() - truth.sum()) <= 0.01
            assert np.abs(np.add.reduceat(shown - truth, np.arange(0, 2000, BLOCK))).max() <= 0.01


def test_matrix_of_a_split_page_reads_its_own_rows(page: Any, tmp_path: Path) -> None:
    attention = heavy_tail_attention(np.random.default_rng(6), 1, 24)
    section = make_section(attention, row_start=8, row_count=8, heads=(0,))
    open_page(page, tmp_path / "rows.html", render_chunk_page("rows", make_text(tokens_for(24), 20), [section], NAVIGATION))
    region, cells = matrix_state(page)
    assert region == [8, 15, 0, 23] and cells == [1, 1]
    box = page.locator("[data-matrix]").bounding_box()
    for query, key in ((8, 3), (15, 15), (12, 0)):
        page.mouse.move(box["x"] + (key + 0.5) * box["width"] / 24, box["y"] + (query - 8 + 0.5) * box["height"] / 8)
        assert readout(page)[:2] == (query, key)
        assert abs(float(readout(page)[2]) - attention[0, query, key]) <= ERROR_BOUND
    page.mouse.move(box["x"] + 20.5 * box["width"] / 24, box["y"] + 0.5 * box["height"] / 8)  # query 8, key 20
    assert page.text_content('[data-status="matrix"]').endswith("none (a later token)")


def test_matrix_marks_the_shown_tokens_and_a_click_freezes_the_views_there(long_page: Any, attention: np.ndarray) -> None:
    canvas, overlay = long_page.locator("[data-matrix]").bounding_box(), long_page.locator("[data-matrix-overlay]").bounding_box()
    left, top = canvas["x"] - overlay["x"], canvas["y"] - overlay["y"]
    row_line = (left + 0.95 * canvas["width"], top + (1200 + 0.5) / TOKENS * canvas["height"])
    assert overlay_alpha(long_page, *row_line) == 0
    hover(long_page, "observer", 1200)
    assert overlay_alpha(long_page, *row_line) > 0  # the observer's row, marked across the matrix
    long_page.click('[data-matrix-zoom="in"]')
    long_page.click('[data-matrix-zoom="in"]')
    region, cells = matrix_state(long_page)
    box = long_page.locator("[data-matrix]").bounding_box()
    long_page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.75 * box["height"])
    query, key, _ = readout(long_page)
    assert region[0] <= query <= region[1] and region[2] <= key <= region[3]
    frozen = "els => els.map(e => Number(e.dataset.index))"
    assert long_page.eval_on_selector_all('[data-view="observer"] .att-frozen', frozen) == [query]
    assert long_page.eval_on_selector_all('[data-view="observed"] .att-frozen', frozen) == [key]
    assert np.abs(numbers(weights(long_page, "observer")) - attention[0, query]).max() <= ERROR_BOUND + SLACK
    assert np.abs(numbers(weights(long_page, "observed")) - attention[0, :, key]).max() <= ERROR_BOUND + SLACK
