"""Neuron activations of two captures compared, against numbers computed here from the stores' neuron files: the
shared units, A, B and B - A at the aligned tokens (synthetic stores with hand-picked units, and two tiny-Llama
captures of prompts that share most words), the compare report's neurons page in Chromium, and no page (or the
reason on the index) when a capture lacks neurons."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from synthetic import write_synthetic_store
from test_compare_report import PAIRS, PROMPT_A, PROMPT_B, TOKENS_A, TOKENS_B

import att_report
from att_report.analysis.alignment import align_tokens
from att_report.report.compare import compare
from att_report.analysis.neuron_compare import NeuronComparison, neuron_differences

LAYERS = 3
# Each capture picked its own units; A stores 4 per layer, B 5. By hand: layer 0 shares 3 and 5, layer 1 shares
# 0 to 3 (in another order), layer 2 shares none.
UNITS_A = [[5, 1, 9, 3], [0, 1, 2, 3], [10, 11, 12, 13]]
UNITS_B = [[3, 7, 5, 2, 8], [3, 2, 1, 0, 4], [20, 21, 22, 23, 24]]
ONLY = [((1, 9), (7, 2, 8)), ((), (4,)), ((10, 11, 12, 13), (20, 21, 22, 23, 24))]
BREAKS = [2, 8]  # the aligned tokens after B's inserted phrase and after A's unaligned " purred"
PRINTED = 5e-5  # the readout prints 4 decimals
SLACK = 1e-6  # data-value's decimal text read back as float64


def write_neuron_pair(root: Path, neurons_a: bool = True, neurons_b: bool = True) -> tuple[Path, Path]:
    """The compare report's synthetic pair of captures, with random activations for UNITS_A and UNITS_B (units of
    very different magnitudes) where asked."""
    rng = np.random.default_rng(7)
    values_a = rng.normal(size=(LAYERS, len(TOKENS_A), 4)) * [1.0, 3.0, 0.1, 10.0]
    values_b = rng.normal(size=(LAYERS, len(TOKENS_B), 5)) * [10.0, 1.0, 0.5, 3.0, 1.0]
    a, b = root / "capture-a", root / "capture-b"
    write_synthetic_store(a, TOKENS_A, PROMPT_A, LAYERS, 2, seed=1,
                          neurons=(np.array(UNITS_A), values_a) if neurons_a else None)
    write_synthetic_store(b, TOKENS_B, PROMPT_B, LAYERS, 2, seed=2,
                          neurons=(np.array(UNITS_B), values_b) if neurons_b else None)
    return a, b


def expected(path_a: Path, path_b: Path, pairs: list[tuple[int, int]]) -> list[dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Per layer, per unit both files list: (A's values, B's values) at the aligned tokens, read with plain loops."""
    units_a, units_b = (np.load(path / "neurons" / "units.npy").tolist() for path in (path_a, path_b))
    values_a, values_b = (np.load(path / "neurons" / "values.npy") for path in (path_a, path_b))
    layers = []
    for layer in range(len(units_a)):
        shared = {}
        for slot_a, unit in enumerate(units_a[layer]):
            if unit in units_b[layer]:
                slot_b = units_b[layer].index(unit)
                shared[unit] = (np.array([values_a[layer, i, slot_a] for i, _ in pairs], dtype=np.float64),
                                np.array([values_b[layer, j, slot_b] for _, j in pairs], dtype=np.float64))
        layers.append(shared)
    return layers


def mean_abs(values: tuple[np.ndarray, np.ndarray]) -> float:
    return float(np.mean(np.abs(values[1] - values[0])))


def assert_matches(comparison: NeuronComparison, truth: list[dict[int, tuple[np.ndarray, np.ndarray]]]) -> None:
    """Same shared units, largest mean |B - A| first, and the same A, B and B - A at every aligned token."""
    assert len(comparison.layers) == len(truth)
    for layer, shared in zip(comparison.layers, truth):
        assert sorted(layer.units.tolist()) == sorted(shared)
        means = [mean_abs(shared[unit]) for unit in layer.units.tolist()]
        assert means == sorted(means, reverse=True)
        assert np.allclose(layer.mean_abs_difference, means, rtol=1e-12, atol=0)
        for slot, unit in enumerate(layer.units.tolist()):
            a, b = shared[unit]
            assert np.array_equal(layer.a[slot], a) and np.array_equal(layer.b[slot], b)
            assert np.allclose(layer.difference[slot], b - a, rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# The numbers.


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_neuron_pair(tmp_path_factory.mktemp("neuron-pair"))


def test_synthetic_differences_equal_plain_loops(pair: tuple[Path, Path]) -> None:
    a, b = att_report.load(pair[0]), att_report.load(pair[1])
    alignment = align_tokens(a.tokens, b.tokens)
    assert list(alignment.pairs) == PAIRS
    comparison = neuron_differences(a, b, alignment)
    assert comparison is not None
    assert comparison.pairs.tolist() == [list(p) for p in PAIRS] and comparison.prompt_pairs == 7
    assert_matches(comparison, expected(*pair, PAIRS))
    assert [(layer.only_a, layer.only_b) for layer in comparison.layers] == ONLY
    assert comparison.layers[2].units.size == 0 and comparison.layers[2].a.shape == (0, len(PAIRS))


@pytest.fixture(scope="module")
def llama_pair(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny-Llama captures whose prompts differ in one word."""
    root = tmp_path_factory.mktemp("neuron-llama")
    folder = str(tiny_model("llama-gqa"))
    return tuple(att_report.capture(prompt, root / name, model=folder, neurons=8, max_new_tokens=4, progress=False)
                 for name, prompt in (("a", "The quick brown fox jumps over the lazy dog"),
                                      ("b", "The quick brown fox leaps over the lazy dog")))


def test_tiny_llama_differences_equal_plain_loops(llama_pair: tuple[Path, Path]) -> None:
    a, b = att_report.load(llama_pair[0]), att_report.load(llama_pair[1])
    alignment = align_tokens(a.tokens, b.tokens)
    comparison = neuron_differences(a, b, alignment)
    assert comparison is not None
    truth = expected(*llama_pair, list(alignment.pairs))
    assert_matches(comparison, truth)
    assert any(layer.units.size for layer in comparison.layers), "no unit shared: the test would check nothing"
    # A causal model sees the same tokens before the first differing one, so there B - A is 0.
    same = next(i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y)
    assert same > 2 and alignment.pairs[:same] == tuple((i, i) for i in range(same))
    for layer in comparison.layers:
        if layer.units.size:
            assert np.abs(layer.difference[:, :same]).max() <= 1e-5 * np.abs(layer.a).max()
            assert np.abs(layer.difference[:, same:]).max() > 1e-2 * np.abs(layer.a).max()


# ---------------------------------------------------------------------------------------------------------------
# The compare report.


@pytest.fixture(scope="module")
def report(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compare(*pair, tmp_path_factory.mktemp("neuron-report") / "comparison")


def test_index_links_the_page_and_the_page_says_what_each_layer_shares(report: Path) -> None:
    index = (report / "index.html").read_text(encoding="utf-8")
    assert 'href="neurons.html" data-neurons-link' in index and "6 shared units over 3 layers" in index
    page = (report / "neurons.html").read_text(encoding="utf-8")
    assert "Layer 0: 2 units shared (A stored 4 units and B 5). Only A: 1, 9. Only B: 7, 2, 8." in page
    assert "Layer 1: 4 units shared (A stored 4 units and B 5). Only A: none. Only B: 4." in page
    assert "Layer 2: no unit is shared" in page and "within 1/254 of that unit" in page


@pytest.mark.parametrize("with_a, with_b, said", [(True, False, "Only A was captured with --neurons"),
                                                   (False, True, "Only B was captured with --neurons"),
                                                   (False, False, None)])
def test_no_page_unless_both_captures_have_neurons(tmp_path: Path, with_a: bool, with_b: bool, said: str | None) -> None:
    out = compare(*write_neuron_pair(tmp_path, with_a, with_b), tmp_path / "comparison")
    assert not (out / "neurons.html").exists()
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "neurons.html" not in index
    if said is None:
        assert "data-neurons-note" not in index
    else:
        assert said in index


# ---------------------------------------------------------------------------------------------------------------
# The page in Chromium.


def aligned_values(page: Any) -> list[str | None]:
    return page.eval_on_selector_all("[data-neuron-text] [data-index]", "els => els.map(e => e.getAttribute('data-value'))")


def assert_unit_shown(page: Any, values: tuple[np.ndarray, np.ndarray]) -> None:
    """Each aligned token's data-value is B - A within the stated bound, 1/254 of the unit's largest |B - A|."""
    shown = aligned_values(page)
    assert None not in shown
    difference = values[1] - values[0]
    assert np.abs(np.array([float(v) for v in shown]) - difference).max() <= np.abs(difference).max() / 254 + SLACK


def readout(page: Any, slot: int, column: int, units: int) -> tuple[float, float, float]:
    """Point at a heatmap cell; read B - A, A and B from the status line."""
    box = page.query_selector("[data-neuron-map]").bounding_box()
    page.mouse.move(box["x"] + (column + 0.5) * box["width"] / len(PAIRS), box["y"] + (slot + 0.5) * box["height"] / units)
    text = page.text_content('[data-status="neurons"]')
    found = re.search(r"A (\d+) · B (\d+) “.*”: B − A (\S+) · A (\S+) · B (\S+)$", text)
    assert found and (int(found[1]), int(found[2])) == PAIRS[column], text
    return float(found[3]), float(found[4]), float(found[5])


@pytest.mark.browser
def test_page_shows_b_minus_a_of_each_shared_unit(page: Any, report: Path, pair: tuple[Path, Path]) -> None:
    truth = expected(*pair, PAIRS)
    page.goto((report / "neurons.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    texts = page.eval_on_selector_all("[data-neuron-text] [data-index]", "els => els.map(e => e.textContent)")
    assert texts == [TOKENS_A[i] for i, _ in PAIRS]
    gaps = page.eval_on_selector_all("[data-neuron-text] .att-gap", "els => els.map(e => Number(e.dataset.index))")
    assert gaps == BREAKS
    for layer in (0, 1):
        page.select_option("[data-neuron-layer]", str(layer))
        order = sorted(truth[layer], key=lambda unit: -mean_abs(truth[layer][unit]))
        options = page.eval_on_selector_all("[data-neuron-unit] option", "els => els.map(e => e.textContent)")
        assert options == [f"unit {unit}" for unit in order]
        rows = page.eval_on_selector_all(f'[data-neuron-summary-layer="{layer}"] tr',
                                         "rows => rows.map(r => [...r.cells].map(c => Number(c.dataset.value)))")
        assert [row[0] for row in rows] == order
        for row in rows:
            a, b = truth[layer][row[0]]
            assert row[1:] == pytest.approx([mean_abs((a, b)), a.mean(), b.mean()], rel=1e-9, abs=1e-12)
        for slot, unit in enumerate(order):
            page.select_option("[data-neuron-unit]", str(slot))
            assert_unit_shown(page, truth[layer][unit])
            a, b = truth[layer][unit]
            got = readout(page, slot, 3, len(order))
            bounds = [np.abs(b - a).max(), np.abs(a).max(), np.abs(b).max()]
            for value, want, bound in zip(got, (b[3] - a[3], a[3], b[3]), bounds):
                assert abs(value - want) <= bound / 254 + PRINTED
    page.click('[data-neuron-summary-layer="1"] tr[data-slot="2"]')
    assert page.input_value("[data-neuron-unit]") == "2"
    assert_unit_shown(page, truth[1][sorted(truth[1], key=lambda unit: -mean_abs(truth[1][unit]))[2]])
    page.select_option("[data-neuron-layer]", "2")
    assert page.eval_on_selector_all("[data-neuron-unit] option", "els => els.length") == 0
    assert aligned_values(page) == [None] * len(PAIRS)
    assert page.is_visible('[data-neuron-layer-note="2"]') and not page.is_visible('[data-neuron-layer-note="0"]')
    assert "no unit is shared" in page.text_content('[data-neuron-layer-note="2"]')
    assert page.console_errors == [] and page.page_errors == [] and page.dialogs == []
    assert page.requests and all(urlsplit(url).scheme in ("file", "data", "blob") for url in page.requests)


@pytest.mark.browser
def test_heatmap_spans_its_panel(page: Any, report: Path) -> None:
    """However few the aligned tokens, the units x tokens heatmap fills its panel's width, not a corner of it."""
    page.goto((report / "neurons.html").as_uri())
    page.wait_for_selector("body[data-ready]")
    gaps = page.eval_on_selector("[data-neuron-map]", """canvas => {
        const wrap = canvas.parentElement.getBoundingClientRect(), box = canvas.getBoundingClientRect();
        return [box.left - wrap.left, wrap.right - box.right, box.width / canvas.width];
    }""")
    assert abs(gaps[0]) <= 1 and abs(gaps[1]) <= 1 and gaps[2] > 12  # wider than the old fixed 12 px per token
    assert page.console_errors == [] and page.page_errors == []
