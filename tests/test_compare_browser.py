"""Compare pages in a real Chromium: both sides' weights against their stores, partners, heads, modes, the index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import att_report
from att_report.report.compare import compare
from att_report.report.encode import ERROR_BOUND
from att_report.store import CaptureStore
from test_compare_report import HEADS, LAYERS, PAIRS, write_pair

pytestmark = pytest.mark.browser

SLACK = 1e-6  # the page's decimal text of q / 255 read back as float64
PAGE = "layer-01-heads-0-7.html"
LAYER = 1


@pytest.fixture(scope="module")
def comparison(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CaptureStore, CaptureStore]:
    root = tmp_path_factory.mktemp("compare")
    a, b = write_pair(root)
    return compare(a, b, root / "report"), att_report.load(a), att_report.load(b)


@pytest.fixture
def opened(page: Any, comparison: tuple[Path, CaptureStore, CaptureStore]) -> Any:
    page.goto((comparison[0] / PAGE).as_uri())
    page.wait_for_selector("body[data-shown]")
    return page


def view(side: str, mode: str = "observer") -> str:
    return f'[data-view="{mode}"][data-side="{side}"]'


def weights(page: Any, side: str, mode: str = "observer") -> list[str | None]:
    return page.eval_on_selector_all(f"{view(side, mode)} [data-index]", "els => els.map(e => e.getAttribute('data-weight'))")


def close_to(page: Any, side: str, expected: np.ndarray, mode: str = "observer") -> bool:
    shown = weights(page, side, mode)
    assert None not in shown, f"a token of side {side} carries no data-weight"
    return float(np.abs(np.array([float(value) for value in shown]) - expected).max()) <= ERROR_BOUND + SLACK


def partners(page: Any, side: str, mode: str = "observer") -> list[tuple[int, str]]:
    found = page.eval_on_selector_all(f"{view(side, mode)} .att-partner",
                                      "els => els.map(e => [Number(e.dataset.index), e.dataset.partnerOf])")
    return [(index, partner_of) for index, partner_of in found]


def hover(page: Any, side: str, index: int, mode: str = "observer") -> None:
    page.hover(f'{view(side, mode)} [data-index="{index}"]')


def test_opens_offline_with_unaligned_tokens_marked(opened: Any) -> None:
    assert opened.console_errors == [] and opened.page_errors == [] and opened.dialogs == []
    assert opened.requests and all(url.split(":", 1)[0] in ("file", "data", "blob") for url in opened.requests)
    assert opened.get_attribute("body", "data-layer") == "1" and opened.get_attribute("body", "data-heads") == "0,1,2,3,4,5,6,7"
    unaligned = "els => els.map(e => Number(e.dataset.index))"
    assert opened.eval_on_selector_all(f"{view('a')} .att-unaligned", unaligned) == [8]
    assert opened.eval_on_selector_all(f"{view('b', 'observed')} .att-unaligned", unaligned) == [2, 3, 4, 11]


@pytest.mark.parametrize("side, other", [("a", "b"), ("b", "a")])
def test_hover_shows_both_sides_of_an_aligned_token(opened: Any, comparison: Any, side: str, other: str) -> None:
    stores = {"a": comparison[1], "b": comparison[2]}
    opened.click('[data-head="2"]')
    for a_index, b_index in (PAIRS[5], PAIRS[-1]):
        token, partner = (a_index, b_index) if side == "a" else (b_index, a_index)
        hover(opened, side, token)
        assert close_to(opened, side, stores[side].attention(LAYER)[2, token])
        assert partners(opened, other) == [(partner, str(token))] and partners(opened, side) == []
        assert close_to(opened, other, stores[other].attention(LAYER)[2, partner])


def test_unaligned_token_shows_no_partner(opened: Any) -> None:
    hover(opened, "a", 5)
    hover(opened, "a", 8)  # " purred": B has " slept" there
    assert partners(opened, "b") == [] and set(weights(opened, "b")) == {None}
    assert "no matching token" in opened.text_content('[data-status="observer"][data-side="b"]')
    hover(opened, "b", 3)  # " and", inserted in B
    assert partners(opened, "a") == [] and "no matching token" in opened.text_content('[data-status="observer"][data-side="a"]')


def test_heads_modes_and_freezing(opened: Any, comparison: Any) -> None:
    _, a, b = comparison
    opened.click('[data-mode="observed"]')
    assert opened.is_hidden(view("a")) and opened.is_visible(view("a", "observed"))
    hover(opened, "b", 6, "observed")  # " on": A's token 3
    assert close_to(opened, "b", b.attention(LAYER)[0, :, 6], "observed")
    assert close_to(opened, "a", a.attention(LAYER)[0, :, 3], "observed")
    opened.click('[data-head="mean"]')
    assert close_to(opened, "a", a.attention(LAYER)[:8].mean(axis=0)[:, 3], "observed")
    opened.click('[data-head="7"]')
    opened.dblclick(f'{view("a", "observed")} [data-index="1"]')
    hover(opened, "a", 4, "observed")
    hover(opened, "b", 9, "observed")
    assert close_to(opened, "b", b.attention(LAYER)[7, :, 1], "observed")  # frozen on the partner of A's token 1
    assert partners(opened, "b", "observed") == [(1, "1")]
    assert "frozen" in opened.text_content('[data-status="observed"][data-side="b"]')


def test_fragment_opens_a_head(page: Any, comparison: Any) -> None:
    page.goto((comparison[0] / "layer-02-heads-8-9.html").as_uri() + "#head=9")
    page.wait_for_selector("body[data-shown]")
    pressed = page.eval_on_selector_all('[aria-pressed="true"][data-head]', "els => els.map(e => e.dataset.head)")
    assert pressed == ["9"] and page.get_attribute("body", "data-heads") == "8,9"


def test_index_ranking_shows_the_top_heads_sorts_and_expands(page: Any, comparison: Any) -> None:
    page.goto((comparison[0] / "index.html").as_uri())
    page.wait_for_selector("body[data-ready]")

    def column(at: int) -> list[float]:
        """Column `at` of the rows a reader sees (laid out, not hidden), top to bottom."""
        return page.eval_on_selector_all("[data-ranking] tbody tr",
                                         f"rows => rows.filter(r => r.getClientRects().length)"
                                         f".map(r => Number(r.cells[{at}].dataset.sort))")

    heads = LAYERS * HEADS
    assert heads > 20
    divergences = column(3)
    assert column(0) == list(range(1, 21)) and divergences == sorted(divergences, reverse=True)
    page.click('th[data-sort-column="1"]')  # layers, smallest first; still only 20 rows shown
    assert column(1) == sorted(column(1)) and column(1)[0] == 0 and len(column(1)) == 20
    button = "[data-show-all]"
    assert page.inner_text(button) == f"Show all {heads} heads"
    page.click(button)
    assert page.get_attribute(button, "aria-expanded") == "true" and page.inner_text(button) == "Show the top 20 only"
    layers = column(1)
    assert layers == sorted(layers) and layers.count(0) == HEADS and len(layers) == heads
    page.click('th[data-sort-column="3"]')  # divergence, largest first
    everything = column(3)
    assert everything[:20] == divergences and everything == sorted(everything, reverse=True)
    assert page.get_attribute('th[data-sort-column="3"]', "aria-sort") == "descending"
    page.click('th[data-sort-column="3"]')
    assert column(3) == sorted(everything) and page.get_attribute('th[data-sort-column="3"]', "aria-sort") == "ascending"
    page.click(button)
    assert column(3) == sorted(everything)[:20]
    colours = page.eval_on_selector_all("[data-heatmap] [data-divergence]", "els => els.map(e => e.style.backgroundColor)")
    assert all(colours) and len(set(colours)) > 1
    assert page.console_errors == [] and page.page_errors == []


def test_both_indexes_sort_with_the_one_shared_function(page: Any, comparison: Any, tmp_path: Path) -> None:
    js = Path(__file__).resolve().parent.parent / "js"
    assert [path.name for path in sorted(js.glob("*.js")) if "ns.sortTable = " in path.read_text()] == ["tables.js"]
    report = tmp_path / "report"
    att_report.render(comparison[0].parent / "capture-a", report)
    sources = []
    for index, ready in ((comparison[0] / "index.html", "body[data-ready]"), (report / "index.html", "body[data-grid-ready]")):
        page.goto(index.as_uri())
        page.wait_for_selector(ready)
        sources.append(page.evaluate("attReport.sortTable.toString()"))
    assert sources[0] == sources[1] and "data-sort-first" in sources[0]
    assert page.console_errors == [] and page.page_errors == []
