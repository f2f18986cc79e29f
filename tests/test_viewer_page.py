"""The chunk page by structure: an html.parser walk checks the DOM contract, the payloads, and that nothing leaves."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest

from att_report.report.encode import ERROR_BOUND, decode_rows
from att_report.errors import InternalError
from att_report.report.templating import environment
from att_report.report.page_types import HeadLabel, Link, Navigation, TokenText, token_kind, token_label
from att_report.report.viewer import Section, chunk_page, render_chunk_page
from synthetic import random_attention

WORDS = ["The", " quick", " brown", " fox", "\n", " jumps", " over", " the", " lazy", " dog", ".", "  "]
NAVIGATION = Navigation(
    index=Link("Index", "index.html"),
    prev_layer=Link("← layer 2", "layer-02-heads-0-7.html"),
    next_layer=None,
    prev_group=None,
    next_group=Link("heads 8 →", "layer-03-heads-8.html"),
)


def make_text(tokens: list[str], prompt_length: int, causal: bool = True, special: list[bool] | None = None) -> TokenText:
    """A TokenText with no special tokens unless given."""
    return TokenText(tuple(tokens), tuple(special or [False] * len(tokens)), prompt_length, causal)


def make_section(
    attention: np.ndarray, key: str = "L03-H0-2", layer: int | str = 3, row_start: int = 0, row_count: int | None = None,
    heads: tuple[int, ...] | None = None, kv_group: int = 2,
) -> Section:
    """A section of the given (heads, T, T) attention, its heads labelled with their KV group."""
    indices = heads if heads is not None else tuple(range(attention.shape[0]))
    end = attention.shape[1] if row_count is None else row_start + row_count
    return Section(
        key=key,
        title=f"Layer {layer} · heads {indices[0]}–{indices[-1]}",
        layer=layer,
        heads=tuple(HeadLabel(h, f"head {h} · kv {h // kv_group}") for h in indices),
        matrices=attention[:, row_start:end],
        row_start=row_start,
    )


class Walk(HTMLParser):
    """Collect every start tag with its attributes, and the text of each element that holds text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.texts: dict[int, str] = {}
        self._open: list[int] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        if tag not in ("meta", "input", "br", "link"):
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.texts[self._open[-1]] = self.texts.get(self._open[-1], "") + data

    def find(self, tag: str | None = None, **attrs: str | None) -> list[tuple[int, dict[str, str | None]]]:
        """Elements with this tag (any if None) whose attributes equal `attrs` (None: present with any value)."""
        def matches(found: dict[str, str | None]) -> bool:
            return all(name.replace("_", "-") in found and (value is None or found[name.replace("_", "-")] == value)
                       for name, value in attrs.items())
        return [(i, a) for i, (t, a) in enumerate(self.elements) if (tag is None or t == tag) and matches(a)]

    def text(self, index: int) -> str:
        return self.texts.get(index, "")


def tokens_for(count: int) -> list[str]:
    return [WORDS[i % len(WORDS)] for i in range(count)]


@pytest.fixture(scope="module")
def attention() -> np.ndarray:
    return random_attention(np.random.default_rng(11), 3, 12, causal=True)


@pytest.fixture(scope="module")
def single(attention: np.ndarray) -> Walk:
    html = render_chunk_page("Layer 3 · heads 0–2", make_text(tokens_for(12), 9), [make_section(attention)], NAVIGATION,
                             ["Weights stored as float16."])
    return Walk(html)


def test_body_names_layer_and_heads(single: Walk) -> None:
    (_, body), = single.find("body")
    assert body["data-layer"] == "3" and body["data-heads"] == "0,1,2"


def test_views_and_head_selector_follow_the_contract(single: Walk) -> None:
    assert len(single.find(data_view="observer")) == 1 and len(single.find(data_view="observed")) == 1
    buttons = single.find("button", data_head=None)
    assert [a["data-head"] for _, a in buttons] == ["0", "1", "2", "mean"]
    assert [single.text(i) for i, _ in buttons] == ["head 0 · kv 0", "head 1 · kv 0", "head 2 · kv 1", "group mean"]
    assert len(single.find("canvas", data_matrix=None)) == 1
    assert {a["data-export"] for _, a in single.find("button", data_export=None)} == {"png", "svg"}
    assert {a["data-option"] for _, a in single.find("input", data_option=None)} == {"row-max", "ignore-sink", "log"}
    assert {a["data-strip"] for _, a in single.find(data_strip=None)} == {"observer", "observed"}
    assert {a["data-matrix-zoom"] for _, a in single.find("button", data_matrix_zoom=None)} == {"in", "out", "whole"}
    assert len(single.find("canvas", data_matrix_overlay=None)) == 1 and len(single.find(data_matrix_legend=None)) == 1


def test_one_json_payload_holds_the_tokens(single: Walk) -> None:
    scripts = single.find("script", type="application/json")
    assert len(scripts) == 1
    data = json.loads(single.text(scripts[0][0]))
    assert data["tokens"] == tokens_for(12) and data["promptLength"] == 9 and data["causal"] is True
    assert data["kinds"] == {"4": "newline", "11": "blank"}  # only the tokens that draw no ink
    assert data["labels"] == {"4": "⏎"}  # only the spellings that differ from the token
    assert data["special"] == []
    assert data["sections"] == [{
        "key": "L03-H0-2", "title": "Layer 3 · heads 0–2", "layer": "3", "heads": "0,1,2", "payload": "att-payload-0",
        "headCount": 3, "rowStart": 0, "rowCount": 12, "reading": "attention",
    }]
    assert data["opening"] == "L03-H0-2"


def test_matrix_payload_decodes_to_the_attention(single: Walk, attention: np.ndarray) -> None:
    (index, attrs), = single.find("script", type="application/octet-stream")
    assert attrs["id"] == "att-payload-0"
    decoded = decode_rows(single.text(index).strip(), 3, 0, 12, 12, causal=True)
    assert np.abs(decoded - attention).max() <= ERROR_BOUND + 1e-7


def test_csp_present_and_no_url_anywhere() -> None:
    html = render_chunk_page("t", make_text(tokens_for(12), 9), [make_section(
        random_attention(np.random.default_rng(1), 3, 12, True))], NAVIGATION)
    (_, csp), = Walk(html).find("meta", http_equiv="Content-Security-Policy")
    assert "default-src 'none'" in (csp["content"] or "") and "connect-src data: blob:" in (csp["content"] or "")
    assert not re.search(r"[A-Za-z][A-Za-z0-9+.-]*://", html), "a URL with a scheme is in the page"
    assert "url(" not in html and "@import" not in html
    for _, attrs in Walk(html).elements:
        assert "src" not in attrs and "action" not in attrs
        href = attrs.get("href")
        if href is not None:
            assert re.fullmatch(r"[\w.-]+\.html(#[\w=&.-]*)?|#[\w=&.-]*", href), href


def test_navigation_links_present_only_where_given(single: Walk) -> None:
    links = [(single.text(i), a["href"]) for i, a in single.find("a", href=None)]
    assert links == [("Index", "index.html"), ("← layer 2", "layer-02-heads-0-7.html"), ("heads 8 →", "layer-03-heads-8.html")]
    notes = [single.text(i) for i, _ in single.find("p", **{"class": "att-note"})]
    assert notes == ["Weights stored as float16."]


def test_same_input_gives_identical_bytes(attention: np.ndarray) -> None:
    def render() -> str:
        return render_chunk_page("t", make_text(tokens_for(12), 9), [make_section(attention.copy())], NAVIGATION)
    assert render() == render()


def test_several_sections_get_a_selector_and_their_own_heads() -> None:
    rng = np.random.default_rng(2)
    first = make_section(random_attention(rng, 2, 12, True), key="L00-H0-1", layer=0)
    second = make_section(random_attention(rng, 1, 12, True), key="L01-H8", layer=1, heads=(8,), kv_group=4)
    mean = Section("mean", "Mean of all layers", "mean", (HeadLabel("mean", "mean of heads"),),
                   random_attention(rng, 1, 12, True), 0)
    walk = Walk(render_chunk_page("all", make_text(tokens_for(12), 12), [first, second, mean], NAVIGATION))
    (select, _), = walk.find("select", data_section_select=None)
    options = walk.find("option")
    assert [a["value"] for _, a in options] == ["L00-H0-1", "L01-H8", "mean"]
    assert [walk.text(i) for i, _ in options] == ["Layer 0 · heads 0–1", "Layer 1 · heads 8–8", "Mean of all layers"]
    groups = walk.find("div", data_section_heads=None)
    assert [(a["data-section-heads"], "hidden" in a) for _, a in groups] == [
        ("L00-H0-1", False), ("L01-H8", True), ("mean", True)]
    heads = [(a["data-head"], a["data-slot"]) for _, a in walk.find("button", data_head=None)]
    assert heads == [("0", "0"), ("1", "1"), ("mean", "mean"), ("8", "0"), ("mean", "mean"), ("mean", "0")]
    assert [a["id"] for _, a in walk.find("script", type="application/octet-stream")] == [
        "att-payload-0", "att-payload-1", "att-payload-2"]
    (_, body), = walk.find("body")
    assert body["data-layer"] == "0" and body["data-heads"] == "0,1"


def test_a_page_opens_at_the_section_asked_for_with_that_sections_words_and_options() -> None:
    rng = np.random.default_rng(6)
    attention = make_section(random_attention(rng, 2, 12, True), key="L00-H0-1", layer=0)
    saliency = Section("saliency", "Saliency", "mean", (HeadLabel("mean", "gradient norm"),),
                       random_attention(rng, 1, 12, True), 0, reading="saliency")
    page = chunk_page("both", make_text(tokens_for(12), 12), [attention, saliency], NAVIGATION, opening="saliency")
    walk = Walk(environment().get_template("chunk.html").render(page=page))
    (_, body), = walk.find("body")
    assert body["data-layer"] == "mean" and json.loads(walk.text(walk.find("script", type="application/json")[0][0]))[
        "opening"] == "saliency"
    assert [(a["data-section-heads"], "hidden" in a) for _, a in walk.find("div", data_section_heads=None)] == [
        ("L00-H0-1", True), ("saliency", False)]
    shown = [walk.text(index) for index, a in walk.find("p", data_reading=None) if "hidden" not in a]
    assert len(shown) == 3 and all("log-probability" in line for line in shown)  # observer, observed, matrix help
    assert [a["data-option"] for _, a in walk.find("input", data_option=None)] == ["row-max", "ignore-sink", "log"]
    assert [a["data-readings"] for _, a in walk.find("label", data_readings=None)] == [
        "saliency attention", "attention", "saliency attention"]
    with pytest.raises(InternalError, match="'rollout'"):
        chunk_page("both", make_text(tokens_for(12), 12), [attention, saliency], NAVIGATION, opening="rollout")


def test_split_page_says_which_rows_it_holds() -> None:
    attention = random_attention(np.random.default_rng(4), 2, 12, True)
    walk = Walk(render_chunk_page("rows", make_text(tokens_for(12), 12), [make_section(attention, row_start=5, row_count=5)],
                                  NAVIGATION))
    (index, attrs), = walk.find("p", data_rows_note="L03-H0-2")
    assert "tokens 5–9 of 12" in walk.text(index) and "hidden" not in attrs
    (payload, _), = walk.find("script", type="application/octet-stream")
    decoded = decode_rows(walk.text(payload).strip(), 2, 5, 5, 12, True)
    assert np.abs(decoded - attention[:, 5:10]).max() <= ERROR_BOUND + 1e-7


def test_before_viewer_block_comes_before_the_viewer(attention: np.ndarray) -> None:
    page = chunk_page("single", make_text(tokens_for(12), 9), [make_section(attention)], NAVIGATION)
    template = environment().from_string(
        '{% extends "chunk.html" %}{% block before_viewer %}<section id="index-part">index</section>{% endblock %}')
    html = template.render(page=page)
    assert html.index('id="index-part"') < html.index("<main") and 'data-view="observer"' in html


def test_bidirectional_help_says_every_token() -> None:
    attention = random_attention(np.random.default_rng(5), 1, 12, causal=False)
    page = chunk_page("enc", make_text(tokens_for(12), 12, causal=False), [make_section(attention)], NAVIGATION)
    assert page.observer_help == "Hover a token: how much it attended to each token (its row)."
    assert page.observed_help == "Hover a token: how much each token attended to it (its column)."


@pytest.mark.parametrize(("token", "kind", "label"), [
    ("hello", "", "hello"),
    (" ", "blank", " "),
    ("\t", "blank", "⇥"),
    ("\u0301", "blank", "\u0301"),
    ("\n\n", "newline", "⏎⏎"),
    (" \r\n", "newline", " ␍⏎"),
    ("", "empty", ""),
    ("\x00\u200b", "blank", "\\u0000\\u200b"),
    ("x" * 40, "", "x" * 31 + "…"),
])
def test_token_kind_and_label(token: str, kind: str, label: str) -> None:
    assert token_kind(token) == kind and token_label(token) == label


def test_refuses_inconsistent_input(attention: np.ndarray) -> None:
    text = make_text(tokens_for(12), 9)
    with pytest.raises(InternalError, match="expected \\(3 heads, rows, 12 tokens\\)"):
        render_chunk_page("t", text, [make_section(attention[:, :, :11])], NAVIGATION)
    with pytest.raises(InternalError, match="repeat"):
        render_chunk_page("t", text, [make_section(attention), make_section(attention)], NAVIGATION)
    with pytest.raises(InternalError, match="no sections"):
        render_chunk_page("t", text, [], NAVIGATION)
    with pytest.raises(InternalError, match="one flag per token"):
        render_chunk_page("t", make_text(tokens_for(12), 13), [make_section(attention)], NAVIGATION)
