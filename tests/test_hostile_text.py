"""Hostile token text is data: nothing in it runs, and every view reads back exactly the tokens' characters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from att_report.report.templating import write_html
from att_report.report.page_types import HeadLabel
from att_report.report.viewer import Section, render_chunk_page
from synthetic import random_attention
from test_viewer_page import NAVIGATION, Walk, make_text

HOSTILE = [
    "<|im_start|>",
    "</script><script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "{{ 7*7 }}",
    "{% raw %}",
    "\"double\" 'single'",
    "`backtick`",
    "${alert(2)}",
    "&amp;",
    "&lt;b&gt;",
    "<!--",
    "]]>",
    "\\u003c/script>",
    "👩‍💻",
    "e\u0301",
    "\u0301",
    "שלום",
    "\u202ereversed",
    "\x00\x07\x1b[31m",
    "\n",
    "\t",
    "\r\n",
    "\u2028\u2029",
    "",
    " ",
    "\ufeff",
]
SPECIAL = [index == 0 for index in range(len(HOSTILE))]


@pytest.fixture(scope="module")
def hostile_html() -> str:
    attention = random_attention(np.random.default_rng(13), 1, len(HOSTILE), causal=True)
    section = Section(
        key='k"<x>', title="<b>\"title\"</b> & {{ 1 }}", layer=0, heads=(HeadLabel(0, "<i>head</i> 0"),),
        matrices=attention, row_start=0,
    )
    return render_chunk_page("</title><script>alert(3)</script>", make_text(HOSTILE, 10, special=SPECIAL), [section],
                             NAVIGATION, ["<script>alert(4)</script>"])


def test_markup_in_text_stays_text(hostile_html: str) -> None:
    walk = Walk(hostile_html)
    assert [tag for tag, _ in walk.elements].count("script") == 1 + 1 + 1  # JSON, one payload, our inline code
    assert not [tag for tag, _ in walk.elements if tag in ("img", "b", "i")]
    (json_index, _), = walk.find("script", type="application/json")
    assert json.loads(walk.text(json_index))["tokens"] == HOSTILE
    (title, _), = walk.find("title")
    assert walk.text(title) == "</title><script>alert(3)</script>"


def test_browser_runs_nothing_and_reads_back_the_tokens(page: Any, tmp_path: Path, hostile_html: str) -> None:
    path = tmp_path / "hostile.html"
    write_html(path, hostile_html)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-shown]")
    for view in ("observer", "observed"):
        texts = page.eval_on_selector_all(f'[data-view="{view}"] [data-index]', "els => els.map(e => e.textContent)")
        assert texts == HOSTILE
        assert page.eval_on_selector(f'[data-view="{view}"]', "e => e.textContent") == "".join(HOSTILE)
    for index in (1, 2, 7, 18):
        page.hover(f'[data-view="observer"] [data-index="{index}"]')
    page.dblclick('[data-view="observed"] [data-index="2"]')
    page.click('[data-head="0"]')
    assert page.dialogs == [] and page.page_errors == [] and page.console_errors == []
    assert page.title() == "</title><script>alert(3)</script>"
    assert page.text_content('[data-head="0"]') == "<i>head</i> 0"
    assert page.locator("img").count() == 0
    assert all(url.split(":", 1)[0] in ("file", "data", "blob") for url in page.requests)


def test_every_token_can_be_pointed_at(page: Any, tmp_path: Path, hostile_html: str) -> None:
    path = tmp_path / "hostile.html"
    write_html(path, hostile_html)
    page.goto(path.as_uri())
    page.wait_for_selector("body[data-shown]")
    widths = page.eval_on_selector_all(
        '[data-view="observer"] [data-index]',
        "els => els.map(e => Math.max(0, ...Array.from(e.getClientRects(), r => Math.min(r.width, r.height))))")
    assert [index for index, width in enumerate(widths) if width < 3] == []
