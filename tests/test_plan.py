"""The report plan and its one size fitter, on disk: every page kind under a small --max-file-mb, file names that say
what each file holds, the single file with every view the folder has, rollout left out (and said so) at length,
render's peak memory against the number of layers (in a subprocess), and the compare divergence rule."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthetic import write_synthetic_store
from test_render import assemble, body, page_data, render_cli, walk, within_budget
from test_viewer_page import Walk, tokens_for

import att_report
from att_report.analysis.alignment import align_tokens, divergence_rows, first_difference
from att_report.errors import UsageError
from att_report.report.encode import ERROR_BOUND
from att_report.report.fitting import fit
from att_report.report.thumbnails import layer_thumbnails, thumbnail_size

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 480
COMPLETION = 60
LAYERS, HEADS = 3, 4
UNITS = 40  # enough that all layers' neurons exceed one page of the small budget
BUDGET_MB = 0.1  # above a page without attention (and the index's parts), below one head's page or rollout layer


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A causal store with every optional product: saliency (completion rows only) and neurons."""
    path = tmp_path_factory.mktemp("plan") / "store"
    rng = np.random.default_rng(7)
    saliency = np.tril(rng.random((TOKENS, TOKENS)))
    saliency[: TOKENS - COMPLETION] = 0  # rows without a value: the prompt
    neurons = (np.tile(np.arange(UNITS), (LAYERS, 1)), rng.normal(size=(LAYERS, TOKENS, UNITS)))
    write_synthetic_store(path, tokens_for(TOKENS), TOKENS - COMPLETION, LAYERS, HEADS, causal=True, seed=4,
                          dtype="float32", neurons=neurons, saliency=saliency)
    return path


@pytest.fixture(scope="module")
def small(store_path: Path) -> Path:
    return render_cli(store_path, store_path.parent / "small", "--max-file-mb", str(BUDGET_MB))


def kind_of(name: str) -> str:
    return name.removesuffix(".html").split("-")[0]


def test_every_page_kind_stays_under_a_small_budget(small: Path) -> None:
    within_budget(small, BUDGET_MB)
    names = [path.name for path in small.iterdir()]
    assert {kind_of(name) for name in names} >= {"index", "layer", "rollout", "saliency", "neurons"}
    rows_split = [name for name in names if "-rows-" in name]
    assert any(name.startswith("layer-") for name in rows_split), "no head was cut into ranges of rows"
    assert any(name.startswith("rollout-") for name in rows_split), "no rollout layer was cut into ranges of rows"
    assert "neurons.html" not in names, "the neurons of all layers did not need more than one page"


def test_neuron_pages_hold_every_layer_once_named_by_their_layers(small: Path, store_path: Path) -> None:
    values = att_report.load(store_path).neurons()[1]
    shown = []
    for path in sorted(small.glob("neurons-layers-*.html")):
        first, last = (int(n) for n in re.fullmatch(r"neurons-layers-(\d+)-(\d+)\.html", path.name).groups())
        page = walk(path)
        options = [page.text(i) for i, _ in page.find("option", value=None)]
        assert options == [f"layer {layer}" for layer in range(first, last + 1)]
        data = json.loads(page.text(page.find("script", id="att-data")[0][0]))
        scales = np.array(data["scales"])[:, 0]  # per layer and unit: the largest |value| the page scales by
        assert np.allclose(scales, np.abs(values[first:last + 1]).max(axis=1), rtol=1e-6)
        shown += range(first, last + 1)
    assert shown == list(range(LAYERS))


def test_every_file_is_named_by_what_it_holds(small: Path) -> None:
    """layer-LL-heads-A[-B][-rows-S-E].html holds exactly heads A..B and query rows S..E (all rows without -rows-)."""
    for path in small.glob("layer-*.html"):
        match = re.fullmatch(r"layer-(\d+)-heads-(\d+)(?:-(\d+))?(?:-rows-(\d+)-(\d+))?\.html", path.name)
        assert match, path.name
        layer, first, last, row_first, row_last = match.groups()
        heads = list(range(int(first), int(last or first) + 1))
        (section,) = page_data(walk(path))["sections"]
        assert body(walk(path))["data-heads"] == ",".join(map(str, heads)) == section["heads"]
        assert section["layer"] == str(int(layer))
        rows = (0, TOKENS - 1) if row_first is None else (int(row_first), int(row_last))
        assert (section["rowStart"], section["rowStart"] + section["rowCount"] - 1) == rows, path.name


def test_split_files_together_hold_every_weight_once(small: Path, store_path: Path) -> None:
    store = att_report.load(store_path)
    values, counts = assemble(small, LAYERS, HEADS, TOKENS)
    assert (counts == 1).all()
    assert np.abs(values - np.array([store.attention(layer) for layer in range(LAYERS)])).max() <= ERROR_BOUND + 1e-6


def test_analysis_files_hold_their_sections_in_order_and_link_on(small: Path) -> None:
    """The rollout files together hold every row of every layer once, in order, each linking the next."""
    files = sorted(small.glob("rollout*.html"), key=lambda path: [int(n) for n in re.findall(r"\d+", path.name)])
    covered = []
    for number, path in enumerate(files):
        page = walk(path)
        for section in page_data(page)["sections"]:
            covered.append((int(section["layer"]), section["rowStart"], section["rowCount"]))
        links = {attrs["href"] for _, attrs in page.find("a", href=None)}
        if number + 1 < len(files):
            assert files[number + 1].name in links
    for layer in range(LAYERS):
        rows = sorted((start, count) for held, start, count in covered if held == layer)
        assert [start for start, _ in rows] == [0] + list(np.cumsum([count for _, count in rows])[:-1])
        assert sum(count for _, count in rows) == TOKENS


def test_single_file_has_every_view_the_folder_has(store_path: Path, small: Path) -> None:
    single = render_cli(store_path, store_path.parent / "single.html", "--single-file")
    page = walk(single)
    keys = [section["key"] for section in page_data(page)["sections"]]
    assert any(key.startswith("rollout-") for key in keys) and any(key.startswith("saliency-") for key in keys)
    (frame,) = [attrs for _, attrs in page.find("iframe", data_neurons_frame=None)]
    inner = Walk(frame["srcdoc"] or "")
    neurons = json.loads(inner.text(inner.find("script", id="att-data")[0][0]))
    assert neurons["units"] == [list(range(UNITS))] * LAYERS
    assert inner.find("a", href=None) == []  # the framed page links to no index of its own


def test_single_file_neurons_run_in_the_browser(page: Any, store_path: Path) -> None:
    single = store_path.parent / "single.html"
    if not single.exists():
        render_cli(store_path, single, "--single-file")
    page.goto(single.as_uri())
    page.wait_for_selector("body[data-shown]")
    frame = page.frame_locator("[data-neurons-frame]")
    frame.locator("body[data-ready]").wait_for()
    values = frame.locator("[data-neuron-text] [data-index]").evaluate_all(
        "els => els.map(e => Number(e.getAttribute('data-value')))")
    stored = att_report.load(store_path).neurons()[1][0, :, 0]
    assert np.abs(np.array(values) - stored).max() <= np.abs(stored).max() / 254 + 1e-6
    assert page.requests == [single.as_uri()] and page.page_errors == []


# VmHWM, the peak resident memory of this process image: getrusage's ru_maxrss would also count the memory of the
# pytest process it was forked from, which Linux carries across exec.
MEMORY_PROBE = textwrap.dedent("""
    import re, sys
    import att_report
    assert att_report.__file__.startswith(sys.argv[3]), att_report.__file__
    att_report.render(sys.argv[1], sys.argv[2])
    print(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1))
""")


def peak_rss_kb(store: Path, output: Path) -> int:
    """Render in a fresh interpreter running this worktree's code; return its peak resident memory in KiB."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(store), str(output), str(ROOT)], env=env,
                          capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def test_render_peak_memory_does_not_grow_with_the_number_of_layers(tmp_path: Path) -> None:
    tokens, heads = 1000, 4
    layer_kb = heads * tokens * tokens * 4 // 1024  # one layer's float32 (heads, T, T) square: 15.6 MiB
    peaks = {}
    for layers in (4, 16):  # from 4 on: the first layers also warm caches (templates, token data) once
        write_synthetic_store(tmp_path / f"store-{layers}", tokens_for(tokens), tokens - 10, layers, heads,
                              causal=True, seed=layers)
        peaks[layers] = peak_rss_kb(tmp_path / f"store-{layers}", tmp_path / f"report-{layers}")
    # Holding every layer would add twelve layers' squares (188 MiB); one pass holds one head at a time, and what
    # does grow with the layers (thumbnails, metrics, the index's lists, the allocator's slack) stays under one square.
    assert peaks[16] - peaks[4] < layer_kb, peaks


def test_divergence_rows_start_at_the_first_difference(tmp_path: Path) -> None:
    a_tokens = ["The", " cat", " sat", " down", ".", " Yes"]
    b_tokens = ["The", " cat", " slowly", " sat", " down", ".", " No"]
    assert first_difference(a_tokens, b_tokens) == 2 and first_difference(a_tokens, a_tokens[:3]) == 3
    for causal in (True, False):
        write_synthetic_store(tmp_path / f"a{causal}", a_tokens, 5, 1, 1, causal=causal)
        write_synthetic_store(tmp_path / f"b{causal}", b_tokens, 6, 1, 1, causal=causal)
        a, b = att_report.load(tmp_path / f"a{causal}"), att_report.load(tmp_path / f"b{causal}")
        rows, keys = divergence_rows(align_tokens(a_tokens, b_tokens), a, b)
        assert keys.tolist() == [[0, 0], [1, 1], [2, 3], [3, 4], [4, 5]]
        assert rows.tolist() == (keys[2:] if causal else keys).tolist()


def test_index_parts_moved_to_pages_of_their_own_still_work(page: Any, small: Path) -> None:
    """With the page list and the metrics moved out, the index still explains a completion token and draws its grid,
    and metrics.html sorts its table on its own (the grid moves last, only when the metrics page alone fits)."""
    index = walk(small / "index.html")
    moved = {attrs["href"] for _, attrs in index.find("a", data_index_elsewhere=None)}
    assert moved == {"metrics.html", "pages.html"}
    page.goto((small / "index.html").as_uri())
    token = TOKENS - COMPLETION + 3
    page.wait_for_function("window.attReport && window.attReport.details")  # the token details are wired
    page.hover(f'[data-index-text] [data-index="{token}"]')
    assert page.get_attribute("[data-token-details]", "data-shown-index") == str(token)
    page.wait_for_selector("body[data-grid-ready]")
    drawn = page.eval_on_selector_all("canvas[data-thumb]", "els => els.filter(e => e.width > 0).length")
    assert drawn == LAYERS * HEADS
    page.goto((small / "metrics.html").as_uri())
    page.click('[data-metrics-table] th[data-metric="entropy"]')
    values = page.eval_on_selector_all(
        '[data-metrics-table] tbody tr', "rows => rows.map(r => Number(r.cells[4].getAttribute('data-sort')))")
    assert len(values) == LAYERS * HEADS and values == sorted(values, reverse=True)
    assert page.page_errors == [] and all(url.startswith("file://") for url in page.requests)


def test_fitter_halves_heads_then_rows_and_covers_each_once() -> None:
    """A payload of one byte per cell held: 4 square heads of 10 causal rows (55 cells each) under a budget of 30."""
    def encode(slots: tuple[int, ...], rows: tuple[int, int] | None) -> tuple[str, ...]:
        start, end = rows or (0, 10)
        return ("x" * len(slots) * sum(row + 1 for row in range(start, end)),)

    pieces = fit(4, encode, 30, lambda slot: f"head {slot}", (10, True))
    assert all(piece.size <= 30 for piece in pieces)
    assert all(len(piece.slots) == 1 for piece in pieces)  # heads were halved before any row was cut
    held = sorted((piece.slots[0], row) for piece in pieces for row in range(*(piece.rows or (0, 10))))
    assert held == [(slot, row) for slot in range(4) for row in range(10)]
    # 55 cells > 30: cut where the cells halve; rows 0-6 hold 1 + ... + 7 = 28 cells, rows 7-9 hold 8 + 9 + 10 = 27
    assert [piece.rows for piece in pieces if piece.slots == (0,)] == [(0, 7), (7, 10)]
    with pytest.raises(UsageError, match="one query row of head 0"):
        fit(4, encode, 5, lambda slot: f"head {slot}", (10, True))
    assert [piece.slots for piece in fit(4, encode, 120, lambda slot: "", None)] == [(0, 1), (2, 3)]


def test_thumbnails_follow_their_rule_cell_by_cell() -> None:
    """Each row scaled to its own largest weight, then the largest scaled weight of each block, as round(255 x)."""
    rng = np.random.default_rng(9)
    attention = rng.random((2, 101, 101)).astype(np.float32)
    attention[0, 5] = 0  # a row without weight stays 0
    size = thumbnail_size(101)
    edges = np.linspace(0, 101, size + 1).round().astype(int)
    expected = np.zeros((2, size, size), dtype=np.uint8)
    for head in range(2):
        rows = [row / row.max() if row.max() > 0 else row for row in attention[head].astype(np.float64)]
        for i in range(size):
            for j in range(size):
                block = [rows[r][edges[j]:edges[j + 1]] for r in range(edges[i], edges[i + 1])]
                expected[head, i, j] = round(255 * max(float(values.max()) for values in block))
    assert np.abs(layer_thumbnails(attention).astype(int) - expected).max() <= 1  # float32 vs float64 at .5
