"""The report's analyses against truth computed here: rollout and saliency pages, the index's confidence details and
strip, masked-LM predictions, the neurons page, and the head metrics table and heatmaps.

Expected values come from the store's arrays (numpy, written out in this file) or from the manifest, never from
att_report.analysis or the view-models that format them. Browser tests also check that no page logs an error or
asks for anything outside itself.
"""

from __future__ import annotations

import math
import re
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from synthetic import write_synthetic_store
from test_viewer_browser import SLACK, hover, numbers, weights
from test_render import decoded_sections
from test_viewer_page import Walk, tokens_for

import att_report
from att_report.analysis.metrics import rollout_rows
from att_report.report.encode import ERROR_BOUND
from att_report.report.plan import ROLLOUT_MAX_TOKENS
from att_report.report.render import render
from att_report.store import CaptureStore

PROMPT = "The quick brown fox jumps over"
NEURONS = 4
PERCENT_SLACK = 0.05  # percentage points: the page prints probabilities with one decimal
MASKED_PROMPT = "the quick brown [MASK] jumps"
LABEL_ESCAPES = {"\n": "⏎", "\r": "␍", "\t": "⇥"}  # how status lines spell these; other control characters as \uXXXX


# ---------------------------------------------------------------------------------------------------------------
# Fixtures: one capture per model, one render each.


@pytest.fixture(scope="module")
def llama(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[CaptureStore, Path]:
    """A tiny Llama (GQA) capture with saliency and neurons, and its rendered report folder. Sampled, so that some
    completion tokens are not the likeliest: the page must show each token's own probability, not the top one's."""
    root = tmp_path_factory.mktemp("report-analyses")
    store_path = att_report.capture(PROMPT, root / "capture", model=str(tiny_model("llama-gqa")), max_new_tokens=6,
                                    sample=True, seed=3, saliency=True, neurons=NEURONS, progress=False)
    store = att_report.load(store_path)
    assert store.num_tokens > store.prompt_length + 1, "the tiny model generated too little to test the completion"
    return store, render(store_path, root / "report")


@pytest.fixture(scope="module")
def bert(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[CaptureStore, Path]:
    """A tiny BERT masked-LM capture with one [MASK], and its report."""
    root = tmp_path_factory.mktemp("report-masked")
    store_path = att_report.capture(MASKED_PROMPT, root / "capture", model=str(tiny_model("bert")), progress=False)
    return att_report.load(store_path), render(store_path, root / "report")


@pytest.fixture(scope="module", params=[True, False], ids=["causal", "bidirectional"])
def synthetic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[CaptureStore, Path]:
    """A synthetic store of 2 layers x 10 heads (two head groups per layer), causal or not, and its report."""
    root = tmp_path_factory.mktemp("report-metrics")
    tokens = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " was", " warm", " and", " dry"]
    write_synthetic_store(root / "capture", tokens, prompt_length=8, num_layers=2, num_heads=10, causal=request.param,
                          seed=4)
    return att_report.load(root / "capture"), render(root / "capture", root / "report")


# ---------------------------------------------------------------------------------------------------------------
# Helpers.


def open_report_page(page: Any, report: Path, name: str, ready: str) -> None:
    """Open one page of a report from file:// and wait for `ready` (a selector the page sets when interactive)."""
    page.goto((report / name).as_uri())
    page.wait_for_selector(ready)


def assert_clean(page: Any) -> None:
    """No console or page errors, no dialogs, and no request that leaves the page's own file."""
    assert page.console_errors == [] and page.page_errors == [] and page.dialogs == []
    assert page.requests and all(urlsplit(url).scheme in ("file", "data", "blob") for url in page.requests), page.requests


def show_section(page: Any, key: str) -> None:
    page.select_option("[data-section-select]", key)
    page.wait_for_selector(f'body[data-shown="{key}"]')


def residual_rollout(store: CaptureStore) -> list[np.ndarray]:
    """Abnar & Zuidema's rollout after each layer, in float64: A_hat = 0.5 mean_heads(A) + 0.5 I, rows renormalized,
    multiplied A_hat_l @ ... @ A_hat_0."""
    result, rollouts = np.eye(store.num_tokens), []
    for layer in range(store.num_layers):
        step = 0.5 * store.attention(layer).astype(np.float64).mean(axis=0) + 0.5 * np.eye(store.num_tokens)
        step /= step.sum(axis=1, keepdims=True)
        result = step @ result
        rollouts.append(result)
    return rollouts


def row_shares(row: np.ndarray) -> np.ndarray:
    magnitude = np.abs(row.astype(np.float64))
    return magnitude / magnitude.sum()


def shown_label(text: str) -> str:
    """A token as a status line spells it: tab and line breaks as symbols, other control characters as \\uXXXX."""
    def spell(char: str) -> str:
        if char in LABEL_ESCAPES:
            return LABEL_ESCAPES[char]
        return f"\\u{ord(char):04x}" if unicodedata.category(char) in ("Cc", "Cf") else char

    return "".join(spell(char) for char in text)


def percent(text: str) -> float:
    """Read a probability as the page prints it, '12.3%' or (below 0.1%) '4.2e-04', in percent."""
    return float(text[:-1]) if text.endswith("%") else float(text) * 100


def token_details(page: Any) -> tuple[str, list[tuple[str, float]]]:
    """The details line: its heading text, and each alternative as (label, percent)."""
    line = page.locator("[data-token-details]")
    heading = line.evaluate("e => Array.from(e.childNodes).filter(n => n.nodeType === 3).map(n => n.data).join('')")
    alternatives = []
    for item in line.locator(".att-alt").all_text_contents():
        match = re.fullmatch(r"“(.*)” (\S+)", item, re.DOTALL)
        assert match, f"alternative {item!r} is not “label” probability"
        alternatives.append((match.group(1), percent(match.group(2))))
    return heading, alternatives


def assert_alternatives(shown: list[tuple[str, float]], expected: list[tuple[str, float]]) -> None:
    """Same labels in the same order; each probability within PERCENT_SLACK percentage points."""
    assert [label for label, _ in shown] == [shown_label(text) for text, _ in expected]
    for (_, got), (_, want) in zip(shown, expected):
        assert abs(got - want * 100) <= PERCENT_SLACK


def neuron_values(page: Any) -> np.ndarray:
    values = page.eval_on_selector_all("[data-neuron-text] [data-index]", "els => els.map(e => e.getAttribute('data-value'))")
    assert None not in values, "a token carries no data-value"
    return np.array([float(value) for value in values])


def assert_neuron_unit(page: Any, store: CaptureStore, layer: int, slot: int) -> None:
    """The text view shows unit slot `slot` of `layer`: within scale / 254 of the captured values."""
    expected = store.neurons()[1][layer, :, slot].astype(np.float64)
    bound = np.abs(expected).max() / 254
    assert np.abs(neuron_values(page) - expected).max() <= bound + 1e-6


def luminance(rgb: tuple[int, ...]) -> float:
    """WCAG 2 relative luminance of an sRGB colour."""
    linear = [c / 255 / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(css_a: str, css_b: str) -> float:
    """WCAG 2 contrast ratio of two computed CSS colours, 'rgb(r, g, b)'."""
    a, b = (luminance(tuple(int(part) for part in re.findall(r"\d+", css)[:3])) for css in (css_a, css_b))
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


@pytest.mark.browser
def test_neuron_text_is_readable_on_every_colour(page: Any, tmp_path: Path) -> None:
    """Each token's text keeps WCAG AA contrast (4.5:1) on its background, from white to the darkest blue and red, and
    special tokens stay marked by an outline in their text colour."""
    count = 24
    tokens = ["<s>"] + [f" w{i}" for i in range(1, count - 1)] + ["</s>"]
    special = [i in (0, 5, 12, 18, count - 1) for i in range(count)]
    ramp = np.linspace(-1, 1, count)  # unit 0: every shade of both colours; unit 1: the reverse
    values = np.stack([np.stack([ramp, -ramp], axis=1)] * 2).astype(np.float32)
    write_synthetic_store(tmp_path / "capture", tokens, prompt_length=count - 4, special=special,
                          neurons=(np.array([[3, 9], [3, 9]]), values))
    report = render(tmp_path / "capture", tmp_path / "report")
    open_report_page(page, report, "neurons.html", "body[data-ready]")
    read = ("els => els.map(e => { const s = getComputedStyle(e); "
            "return [s.color, s.backgroundColor, s.outlineStyle, s.outlineColor, e.classList.contains('att-special')]; })")
    for slot in ("0", "1"):
        page.select_option("[data-neuron-unit]", slot)
        shown = page.eval_on_selector_all("[data-neuron-text] [data-index]", read)
        backgrounds = {background for _, background, *_ in shown}
        assert "rgb(37, 99, 235)" in backgrounds and "rgb(220, 38, 38)" in backgrounds and len(backgrounds) == count
        ratios = [contrast(colour, background) for colour, background, *_ in shown]
        assert min(ratios) >= 4.5, [(tokens[i], shown[i][:2]) for i, ratio in enumerate(ratios) if ratio < 4.5]
        outlined = [(style, colour == outline) for colour, _, style, outline, is_special in shown if is_special]
        assert outlined == [("dashed", True)] * sum(special)
    assert_clean(page)


class Tree(Walk):
    """Walk that also records each element's parent, to read nested structures (table rows, heatmap rows)."""

    def __init__(self, html: str) -> None:
        self.parents: list[int] = []
        super().__init__(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.parents.append(self._open[-1] if self._open else -1)
        super().handle_starttag(tag, attrs)

    def inside(self, ancestor: int, tag: str | None = None, **attrs: str | None) -> list[tuple[int, dict[str, str | None]]]:
        """The elements under `ancestor` that match, as find() gives them, in document order."""
        def descends(index: int) -> bool:
            while index >= 0:
                index = self.parents[index]
                if index == ancestor:
                    return True
            return False

        return [(index, found) for index, found in self.find(tag, **attrs) if descends(index)]


def index_tree(report: Path) -> Tree:
    return Tree((report / "index.html").read_text(encoding="utf-8"))


def metrics_table(tree: Tree) -> tuple[list[str], dict[tuple[int, int], tuple[list[float], str]]]:
    """The metric name of each column ('' for layer and head), and per (layer, head) the data-sort value of each
    cell and where the row links to."""
    (table, _), = tree.find("table", data_metrics_table=None)
    names = [attrs.get("data-metric") or "" for _, attrs in tree.inside(table, "th", data_sort_column=None)]
    rows = {}
    for index, row in tree.inside(table, "tr", data_layer=None, data_head=None):
        values = [float(cell["data-sort"]) for _, cell in tree.inside(index, "td", data_sort=None)]
        (_, link), = tree.inside(index, "a", href=None)
        rows[(int(row["data-layer"]), int(row["data-head"]))] = (values, link["href"])
    return names, rows


def heatmap_links(tree: Tree) -> dict[str, list[list[str]]]:
    """Per metric heatmap, its cells' links as rows (layers) of cells (heads)."""
    maps = {}
    for figure, attrs in tree.find("figure", data_metric_map=None):
        rows = tree.inside(figure, "div", **{"class": "att-heat-row"})
        maps[attrs["data-metric-map"]] = [[link["href"] for _, link in tree.inside(row, "a", href=None)] for row, _ in rows]
    return maps


def page_holding(report: Path, href: str) -> tuple[str, set[str], str]:
    """What a link opens: the page's body data-layer, its data-heads, and the link's fragment."""
    target = urlsplit(href)
    (_, body), = Walk((report / target.path).read_text(encoding="utf-8")).find("body")
    return body["data-layer"], set(body["data-heads"].split(",")), target.fragment


# Plain per-head metrics over the cells a query can attend to (keys 0..i when causal), written out row by row.


def keys_seen(store: CaptureStore, row: int) -> int:
    return row + 1 if store.causal else store.num_tokens


def loop_entropy(store: CaptureStore, head: np.ndarray) -> float:
    """Mean over rows with at least two keys of -sum p log p / log(keys)."""
    values = []
    for row in range(store.num_tokens):
        keys = keys_seen(store, row)
        if keys < 2:
            continue
        entropy = -sum(float(p) * math.log(float(p)) for p in head[row, :keys] if p > 0)
        values.append(entropy / math.log(keys))
    return sum(values) / len(values)


def loop_sink(store: CaptureStore, head: np.ndarray) -> float:
    return sum(float(head[row, 0]) for row in range(store.num_tokens)) / store.num_tokens


def loop_max(store: CaptureStore, head: np.ndarray) -> float:
    """The largest weight among rows that see at least two keys (issue 12: a causal row 0 is 1.0 in every head)."""
    return max(float(head[row, key]) for row in range(store.num_tokens) for key in range(keys_seen(store, row))
               if keys_seen(store, row) > 1)


# ---------------------------------------------------------------------------------------------------------------
# Rollout and saliency pages.


@pytest.mark.browser
def test_rollout_page_shows_the_rollout_of_each_layer(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    store, report = llama
    expected = residual_rollout(store)
    queries = (store.prompt_length // 2, store.prompt_length, store.num_tokens - 1)
    # The layers must differ beyond the page's precision, or showing the wrong one could pass.
    assert np.abs(expected[0][list(queries)] - expected[1][list(queries)]).max() > 4 * ERROR_BOUND
    open_report_page(page, report, "rollout.html", "body[data-shown]")
    for layer in (1, 0):
        show_section(page, f"rollout-L{layer}")
        for query in queries:
            hover(page, "observer", query)
            assert np.abs(numbers(weights(page, "observer")) - expected[layer][query]).max() <= ERROR_BOUND + SLACK
    assert_clean(page)


def test_long_capture_shows_the_last_rows_of_the_rollout_through_every_layer(tmp_path: Path) -> None:
    """Past ROLLOUT_MAX_TOKENS the whole rollout is not computed: the page holds the rollout through the last layer
    for the completion and the prompt's last token, equal to those rows of the full product computed here, and the
    index says what was left out and why."""
    count = ROLLOUT_MAX_TOKENS + 40
    write_synthetic_store(tmp_path / "capture", tokens_for(count), prompt_length=count - 6, num_layers=3,
                          num_heads=2, seed=5)
    store = att_report.load(tmp_path / "capture")
    expected = residual_rollout(store)[-1][count - 7:]
    assert np.abs(rollout_rows(store, range(count - 7, count)) - expected).max() < 1e-5
    report = render(store.path, tmp_path / "report", att_report.RenderOptions(progress=False))
    (section, shown), = decoded_sections(Walk((report / "rollout.html").read_text(encoding="utf-8")))
    assert (section["rowStart"], section["rowCount"], section["layer"]) == (count - 7, 7, "2")
    assert np.abs(shown[0] - expected).max() <= ERROR_BOUND + 1e-6
    assert np.abs(shown[0].sum(axis=-1) - 1).max() <= ERROR_BOUND  # error diffusion keeps each row's mass
    index = (report / "index.html").read_text(encoding="utf-8")
    assert "shown through the last layer only" in index and f"{count:,} tokens" in index
    single = render(store.path, tmp_path / "single.html", att_report.RenderOptions(single_file=True, progress=False))
    held = {found["key"]: matrix for found, matrix in decoded_sections(Walk(single.read_text(encoding="utf-8")))}
    assert np.array_equal(held["rollout-L2"], shown)  # the single file holds the same rows


@pytest.mark.browser
def test_rollout_page_opens_at_the_last_layer(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    store, report = llama
    rollouts, last, query = residual_rollout(store), store.num_layers - 1, store.num_tokens - 1
    assert np.abs(rollouts[last][query] - rollouts[0][query]).max() > 4 * ERROR_BOUND  # opening at 0 would fail
    open_report_page(page, report, "rollout.html", "body[data-shown]")
    assert page.get_attribute("body", "data-shown") == f"rollout-L{last}" and page.get_attribute("body", "data-layer") == str(last)
    assert page.input_value("[data-section-select]") == f"rollout-L{last}"
    hover(page, "observer", query)
    assert np.abs(numbers(weights(page, "observer")) - rollouts[last][query]).max() <= ERROR_BOUND + SLACK
    assert_clean(page)


def shown_options(page: Any) -> set[str]:
    """The scale options a reader can see."""
    return set(page.eval_on_selector_all("[data-option]", "els => els.filter(e => e.getClientRects().length)"
                                                          ".map(e => e.dataset.option)"))


ATTENTION_WORDS = ("attended", "(the query) gives weight", "the tokens they attend to")


@pytest.mark.browser
@pytest.mark.parametrize("name, words, options", [
    ("rollout.html", "representation after this layer draws on", {"row-max", "ignore-sink", "log"}),
    ("saliency.html", "share of the gradient of", {"row-max", "log"}),
    ("layer-00-heads-0-3.html", "how much it attended to", {"row-max", "ignore-sink", "log"}),
])
def test_each_page_says_what_its_matrices_are(page: Any, llama: tuple[CaptureStore, Path], name: str, words: str,
                                              options: set[str]) -> None:
    """Rollout and saliency are not attention: their pages say what they are, and offer only the options that apply
    (saliency has no attention sink to ignore)."""
    _, report = llama
    open_report_page(page, report, name, "body[data-shown]")
    text = page.inner_text("main")  # what a reader sees: hidden elements are left out
    assert words in text
    selector = page.inner_text("[data-section-heads]:not([hidden]) .att-label")
    if name != "layer-00-heads-0-3.html":
        assert not [phrase for phrase in ATTENTION_WORDS if phrase in text]
        assert selector == "Matrix"  # no head is chosen here
    else:
        assert selector == "Head"
    assert shown_options(page) == options
    assert_clean(page)


@pytest.mark.browser
def test_single_file_offers_each_section_its_own_options(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    """One page holds attention, rollout and saliency: the words and options follow the section shown, and an option
    a section does not offer stops applying there."""
    store, report = llama
    single = render(store.path, report.parent / "single" / "report.html", att_report.RenderOptions(single_file=True))
    open_report_page(page, single.parent, single.name, "body[data-shown]")
    assert shown_options(page) == {"row-max", "ignore-sink", "log"}
    page.check('[data-option="ignore-sink"]')
    hover(page, "observer", store.num_tokens - 1)
    excluded = "els => els.filter(e => e.classList.contains('att-excluded')).map(e => Number(e.dataset.index))"
    assert page.eval_on_selector_all('[data-view="observer"] [data-index]', excluded) == [0]
    show_section(page, "saliency-grad-norm")
    assert shown_options(page) == {"row-max", "log"} and "share of the gradient of" in page.inner_text("main")
    hover(page, "observer", store.num_tokens - 2)
    assert page.eval_on_selector_all('[data-view="observer"] [data-index]', excluded) == []
    assert page.is_hidden("[data-legend-sink]")
    show_section(page, f"rollout-L{store.num_layers - 1}")
    assert shown_options(page) == {"row-max", "ignore-sink", "log"} and page.is_checked('[data-option="ignore-sink"]')
    hover(page, "observer", store.num_tokens - 1)
    assert page.eval_on_selector_all('[data-view="observer"] [data-index]', excluded) == [0]
    assert_clean(page)


@pytest.mark.browser
@pytest.mark.parametrize("kind", ["grad_norm", "grad_x_input"])
def test_saliency_page_shows_row_shares(page: Any, llama: tuple[CaptureStore, Path], kind: str) -> None:
    store, report = llama
    saliency = store.saliency(kind)
    open_report_page(page, report, "saliency.html", "body[data-shown]")
    show_section(page, "saliency-" + kind.replace("_", "-"))
    for query in (store.prompt_length, store.num_tokens - 1):
        expected = row_shares(saliency[query])
        assert expected[:query].max() > 4 * ERROR_BOUND and not expected[query:].any()
        hover(page, "observer", query)
        assert np.abs(numbers(weights(page, "observer")) - expected).max() <= ERROR_BOUND + SLACK
    assert_clean(page)


def test_the_two_saliency_kinds_differ(llama: tuple[CaptureStore, Path]) -> None:
    """Otherwise a page that showed one kind under both names would pass the test above."""
    store, _ = llama
    row = store.num_tokens - 1
    assert np.abs(row_shares(store.saliency("grad_norm")[row]) - row_shares(store.saliency("grad_x_input")[row])).max() \
        > 4 * ERROR_BOUND


# ---------------------------------------------------------------------------------------------------------------
# The index: confidence details, the strip, masked-LM predictions.


@pytest.mark.browser
def test_index_hover_shows_probability_and_alternatives(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    store, report = llama
    completion = store.manifest["completion"]
    assert any(logprob < top[0]["logprob"] - 0.01 for logprob, top in zip(completion["logprobs"], completion["top"]))
    open_report_page(page, report, "index.html", "body[data-grid-ready]")
    for offset, (logprob, top) in enumerate(zip(completion["logprobs"], completion["top"])):
        index = store.prompt_length + offset
        area = "[data-index-text]" if offset % 2 == 0 else "[data-confidence-strip]"
        page.hover(f'{area} [data-index="{index}"]')
        assert page.get_attribute("[data-token-details]", "data-shown-index") == str(index)
        heading, alternatives = token_details(page)
        shown = re.search(r"p = (\S+%|\S+e-\d+)", heading)
        assert shown, heading
        assert abs(percent(shown.group(1)) - math.exp(logprob) * 100) <= PERCENT_SLACK
        assert len(top) == 5
        assert_alternatives(alternatives, [(choice["text"], math.exp(choice["logprob"])) for choice in top])
    assert_clean(page)


@pytest.mark.browser
def test_confidence_strip_has_one_cell_per_completion_token(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    store, report = llama
    open_report_page(page, report, "index.html", "body[data-grid-ready]")
    cells = page.eval_on_selector_all("[data-confidence-strip] [data-index]",
                                      "els => els.map(e => [Number(e.dataset.index), Number(e.dataset.probability)])")
    assert [index for index, _ in cells] == list(range(store.prompt_length, store.num_tokens))
    expected = np.exp(np.array(store.manifest["completion"]["logprobs"], dtype=np.float64))
    np.testing.assert_allclose([probability for _, probability in cells], expected, rtol=1e-12)
    assert_clean(page)


@pytest.mark.browser
def test_index_hover_on_mask_shows_the_masked_lm_predictions(page: Any, bert: tuple[CaptureStore, Path]) -> None:
    store, report = bert
    predictions = store.manifest["predictions"]
    (mask,) = predictions["positions"]
    assert store.tokens[mask].strip() == "[MASK]"
    open_report_page(page, report, "index.html", "body[data-grid-ready]")
    page.hover(f'[data-index-text] [data-index="{mask}"]')
    assert page.get_attribute("[data-token-details]", "data-shown-index") == str(mask)
    heading, alternatives = token_details(page)
    assert "masked" in heading
    assert len(predictions["top"][0]) == 5
    assert_alternatives(alternatives, [(choice["text"], choice["probability"]) for choice in predictions["top"][0]])
    assert_clean(page)


# ---------------------------------------------------------------------------------------------------------------
# The neurons page.


@pytest.mark.browser
def test_neurons_page_shows_each_unit_of_each_layer(page: Any, llama: tuple[CaptureStore, Path]) -> None:
    store, report = llama
    units, values = store.neurons()
    assert units.shape == (store.num_layers, NEURONS)
    # Units must differ beyond the page's precision, or showing the wrong one could pass.
    assert np.abs(values[1, :, 0] - values[1, :, 2]).max() > 0.1 * np.abs(values[1]).max()
    assert np.abs(values[0, :, 0] - values[1, :, 0]).max() > 0.1 * np.abs(values[:, :, 0]).max()
    open_report_page(page, report, "neurons.html", "body[data-ready]")
    texts = page.eval_on_selector_all("[data-neuron-text] [data-index]", "els => els.map(e => e.textContent)")
    assert texts == store.tokens
    assert_neuron_unit(page, store, layer=0, slot=0)
    page.select_option("[data-neuron-layer]", "1")
    assert page.eval_on_selector_all("[data-neuron-unit] option", "els => els.map(e => e.textContent)") == [
        f"unit {unit}" for unit in units[1]]
    assert_neuron_unit(page, store, layer=1, slot=0)
    page.select_option("[data-neuron-unit]", "2")
    assert_neuron_unit(page, store, layer=1, slot=2)
    assert_clean(page)


# ---------------------------------------------------------------------------------------------------------------
# Head metrics in the index.


@pytest.mark.parametrize("name, compute", [("entropy", loop_entropy), ("sink", loop_sink), ("max_weight", loop_max)])
def test_metrics_table_equals_plain_loops(synthetic: tuple[CaptureStore, Path], name: str, compute: Any) -> None:
    store, report = synthetic
    columns, table = metrics_table(index_tree(report))
    assert sorted(table) == [(layer, head) for layer in range(store.num_layers) for head in range(store.num_heads)]
    column = columns.index(name)
    for layer in range(store.num_layers):
        attention = store.attention(layer)
        for head in range(store.num_heads):
            values, _ = table[(layer, head)]
            assert values[:2] == [layer, head]
            assert values[column] == pytest.approx(compute(store, attention[head]), rel=1e-5, abs=1e-7)
    shown = {values[column] for values, _ in table.values()}
    assert len(shown) > len(table) // 2  # the heads differ (float16 may tie a few): a mix-up would show


def test_metrics_table_and_heatmaps_link_to_the_page_of_each_head(synthetic: tuple[CaptureStore, Path]) -> None:
    store, report = synthetic
    tree = index_tree(report)
    _, table = metrics_table(tree)
    maps = heatmap_links(tree)
    assert {"entropy", "sink", "max_weight"} <= set(maps)
    links = {(layer, head): [href] for (layer, head), (_, href) in table.items()}
    for rows in maps.values():
        assert [len(row) for row in rows] == [store.num_heads] * store.num_layers
        for layer, row in enumerate(rows):
            for head, href in enumerate(row):
                links[(layer, head)].append(href)
    files = set()
    for (layer, head), hrefs in links.items():
        for href in hrefs:
            page_layer, page_heads, fragment = page_holding(report, href)
            assert page_layer == str(layer) and str(head) in page_heads, (href, layer, head)
            assert fragment in ("", f"head={head}"), href
            files.add(urlsplit(href).path)
    assert len(files) == 4  # two head groups in each of two layers


@pytest.mark.browser
def test_thumbnail_grid_uses_the_page_width(page: Any, synthetic: tuple[CaptureStore, Path]) -> None:
    """The grid of every layer x head spans its panel, with square thumbnails larger than their 12 cells."""
    store, report = synthetic
    open_report_page(page, report, "index.html", "body[data-grid-ready]")
    wrap = page.eval_on_selector(".att-grid-wrap", "e => e.clientWidth")
    grid = page.eval_on_selector("[data-grid]", "e => e.getBoundingClientRect().width")
    sizes = page.eval_on_selector_all("canvas[data-thumb]", "els => els.map(e => { const r = e.getBoundingClientRect(); "
                                                            "return [Math.round(r.width), Math.round(r.height)]; })")
    assert len(sizes) == store.num_layers * store.num_heads and len({tuple(size) for size in sizes}) == 1
    width, height = sizes[0]
    assert grid >= 0.98 * wrap and width == height and width >= (wrap - 100) / store.num_heads - 8
    assert_clean(page)


@pytest.mark.browser
def test_metrics_table_sorts_by_a_clicked_column(page: Any, synthetic: tuple[CaptureStore, Path]) -> None:
    _, report = synthetic
    open_report_page(page, report, "index.html", "body[data-grid-ready]")
    header = '[data-metrics-table] th[data-metric="sink"]'
    column = int(page.get_attribute(header, "data-sort-column"))
    read = ("(rows, column) => rows.map(r => [r.dataset.layer + '/' + r.dataset.head, "
            "Number(r.cells[column].getAttribute('data-sort'))])")

    def table_rows() -> list[tuple[str, float]]:
        return [tuple(row) for row in page.eval_on_selector_all("[data-metrics-table] tbody tr", read, column)]

    before = table_rows()
    values = [value for _, value in before]
    assert values != sorted(values) and values != sorted(values, reverse=True)  # sorting has something to do
    page.click(header)
    descending = table_rows()
    assert [value for _, value in descending] == sorted(values, reverse=True)
    assert sorted(descending) == sorted(before)  # rows moved whole
    page.click(header)
    assert [value for _, value in table_rows()] == sorted(values)
    assert_clean(page)
