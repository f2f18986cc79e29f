"""The render stage by structure, without a browser: report folders, aggregates, size-budget splitting, zip,
single files, refusals, the torch-free render path, a wheel install, and a tiny real model end to end.

Every number a page carries is decoded (`decode_rows`, the page's own scheme) and compared with the store, never
with what the renderer computed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import pytest
from synthetic import write_synthetic_store
from test_viewer_page import Walk, tokens_for

import att_report
from att_report.cli import main
from att_report.report.encode import ERROR_BOUND, decode_rows
from att_report.report.fitting import PAGE_SLACK
from att_report.report.render import fixed_page_bytes, token_text

ROOT = Path(__file__).resolve().parents[1]
TOKENS = tokens_for(40)
PROMPT = 30
LAYERS, HEADS, KV_HEADS = 3, 9, 3  # three query heads share each key/value head
SLACK = 1e-6  # float32 rounding of a mean, and of byte / 255
SPLIT_TOKENS = 480
SPLIT_MB = 0.1  # above every page without attention (index parts included), below one head's page at 480 tokens
REPORTS = ["gqa", "bidi", "heads", "layers", "split"]


# ---------------------------------------------------------------------------------------------- helpers


def render_cli(capture: Path, output: Path, *flags: str) -> Path:
    """Render through the command line, as a user would; it must succeed."""
    assert main(["render", str(capture), "-o", str(output), *flags]) == 0
    return output


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the command line, expecting a refusal: non-zero code and exactly one error line on stderr."""
    capsys.readouterr()  # what earlier commands printed
    code = main(argv)
    err = capsys.readouterr().err
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("att-report: error:"), err
    return lines[0]


def no_leftovers(folder: Path) -> None:
    assert [entry.name for entry in folder.iterdir() if entry.name.startswith(".partial-")] == []


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(entry.relative_to(path)): entry.read_bytes() for entry in sorted(path.rglob("*")) if entry.is_file()}


def walk(path: Path) -> Walk:
    return Walk(path.read_text(encoding="utf-8"))


def body(page: Walk) -> dict[str, str | None]:
    (_, attrs), = page.find("body")
    return attrs


def page_data(page: Walk) -> dict[str, Any]:
    (index, _), = page.find("script", id="att-data")
    return json.loads(page.text(index))


def decoded_sections(page: Walk) -> Iterator[tuple[dict[str, Any], np.ndarray]]:
    """Each section of a viewer page with its payload decoded: (heads, rows, tokens) weights."""
    data = page_data(page)
    for section in data["sections"]:
        (index, _), = page.find("script", id=section["payload"])
        yield section, decode_rows(page.text(index).strip(), section["headCount"], section["rowStart"],
                                   section["rowCount"], len(data["tokens"]), data["causal"])


def chunk_pages(folder: Path) -> list[Path]:
    """The chunk files of a report: one per layer and head group (or its parts), or the aggregate's."""
    return sorted(path for path in folder.glob("*.html") if path.name.startswith("layer-") or path.name == "mean.html")


def assemble(folder: Path, num_layers: int, num_heads: int, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Put every chunk page's decoded rows back into whole matrices, counting how often each row was given."""
    values = np.zeros((num_layers, num_heads, num_tokens, num_tokens))
    counts = np.zeros((num_layers, num_heads, num_tokens), dtype=int)
    for path in chunk_pages(folder):
        for section, matrices in decoded_sections(walk(path)):
            heads = [int(head) for head in section["heads"].split(",")]
            rows = slice(section["rowStart"], section["rowStart"] + section["rowCount"])
            values[int(section["layer"]), heads, rows] = matrices
            counts[int(section["layer"]), heads, rows] += 1
    return values, counts


def index_pages(folder: Path) -> list[Walk]:
    """The index and the pages it moved its parts to (grid, metrics, page list) to stay under the size budget."""
    index = walk(folder / "index.html")
    return [index, *(walk(folder / str(attrs["href"])) for _, attrs in index.find("a", data_index_elsewhere=None))]


def split_href(href: str) -> tuple[str, str]:
    file, _, fragment = href.partition("#")
    return file, fragment


def kv_group(head: int, num_heads: int = HEADS, num_kv_heads: int = KV_HEADS) -> int:
    """The README's rule: head h reads kv head h // (heads / kv heads)."""
    return head // (num_heads // num_kv_heads)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("render")


@pytest.fixture(scope="module")
def gqa_store(workspace: Path) -> Path:
    """3 layers x 9 heads over 3 key/value heads, 40 tokens, causal, stored as float16."""
    write_synthetic_store(workspace / "gqa-store", TOKENS, PROMPT, LAYERS, HEADS, KV_HEADS, causal=True, seed=1)
    return workspace / "gqa-store"


@pytest.fixture(scope="module")
def gqa_attention(gqa_store: Path) -> list[np.ndarray]:
    """The stored attention, as the reader gives it."""
    store = att_report.load(gqa_store)
    return [store.attention(layer) for layer in range(store.num_layers)]


@pytest.fixture(scope="module")
def bidi_store(workspace: Path) -> tuple[Path, list[np.ndarray]]:
    """An encoder's store: 2 layers x 4 heads, every token sees every token, stored exactly (float32)."""
    layers = write_synthetic_store(workspace / "bidi-store", TOKENS[:24], 24, 2, 4, causal=False, seed=2, dtype="float32")
    return workspace / "bidi-store", layers


@pytest.fixture(scope="module")
def split_store(workspace: Path) -> Path:
    write_synthetic_store(workspace / "split-store", tokens_for(SPLIT_TOKENS), SPLIT_TOKENS - 20, LAYERS, HEADS, KV_HEADS,
                          causal=True, seed=3, dtype="float32")
    return workspace / "split-store"


@pytest.fixture(scope="module")
def gqa(workspace: Path, gqa_store: Path) -> Path:
    return render_cli(gqa_store, workspace / "one" / "report", "--zip")


@pytest.fixture(scope="module")
def gqa_again(workspace: Path, gqa_store: Path) -> Path:
    return render_cli(gqa_store, workspace / "two" / "report", "--zip")


@pytest.fixture(scope="module")
def bidi(workspace: Path, bidi_store: tuple[Path, list[np.ndarray]]) -> Path:
    return render_cli(bidi_store[0], workspace / "bidi")


@pytest.fixture(scope="module")
def heads(workspace: Path, gqa_store: Path) -> Path:
    return render_cli(gqa_store, workspace / "heads", "--aggregate", "heads")


@pytest.fixture(scope="module")
def layers(workspace: Path, gqa_store: Path) -> Path:
    return render_cli(gqa_store, workspace / "layers", "--aggregate", "layers")


@pytest.fixture(scope="module")
def split(workspace: Path, split_store: Path) -> Path:
    return render_cli(split_store, workspace / "split", "--max-file-mb", str(SPLIT_MB))


@pytest.fixture(scope="module")
def single(workspace: Path, gqa_store: Path) -> Path:
    return render_cli(gqa_store, workspace / "single" / "report.html", "--single-file")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


# ---------------------------------------------------------------------------------------------- report folders


def test_one_chunk_file_per_layer_and_group_of_eight_heads(gqa: Path) -> None:
    names = {path.name for path in gqa.iterdir()}
    assert "index.html" in names
    expected = [(layer, group) for layer in range(LAYERS) for group in ("0-7", "8")]
    assert [path.name for path in chunk_pages(gqa)] == [f"layer-{layer:02d}-heads-{group}.html" for layer, group in expected]
    shown = [(body(walk(path))["data-layer"], body(walk(path))["data-heads"]) for path in chunk_pages(gqa)]
    assert shown == [(str(layer), "0,1,2,3,4,5,6,7" if group == "0-7" else "8") for layer, group in expected]


@pytest.mark.parametrize("report", REPORTS + ["single"], indirect=True)
def test_every_link_resolves(report: Path) -> None:
    folder = report.parent if report.is_file() else report
    pages = {path.name: walk(path) for path in folder.glob("*.html")}
    checked = 0
    for name, page in pages.items():
        for _, attrs in page.find(href=None):
            href = attrs["href"] or ""
            file, fragment = split_href(href)
            target = pages.get(file or name)
            assert target is not None, f"{name} links to {href}, which is not in the report"
            if "=" in fragment:
                params = parse_qs(fragment, strict_parsing=True)
                sections = {section["key"]: section for section in page_data(target)["sections"]}
                section = sections[params["section"][0]] if "section" in params else next(iter(sections.values()))
                if "head" in params:
                    assert params["head"][0] in section["heads"].split(","), f"{name}: {href} names a head not there"
            elif fragment:
                assert target.find(id=fragment), f"{name}: {href} names no element"
            checked += 1
    assert checked > len(pages)  # every page links somewhere: the index, its neighbours, the grid


@pytest.mark.parametrize("report", REPORTS + ["single"], indirect=True)
def test_nothing_reaches_outside_the_page(report: Path) -> None:
    folder = report.parent if report.is_file() else report
    for path in folder.glob("*.html"):
        html = path.read_text(encoding="utf-8")
        assert not re.search(r"[a-z][a-z0-9+.-]*://|\b(?:https?|ftp|wss?):", html, re.IGNORECASE), path.name
        assert not re.search(r"\burl\s*\(|@import", html, re.IGNORECASE), path.name  # CSS that loads
        page = Walk(html)
        loaders = {"img", "iframe", "frame", "link", "object", "embed", "audio", "video", "source", "base", "form",
                   "track", "image", "use"}
        assert [tag for tag, _ in page.elements if tag in loaders] == [], path.name
        for _, attrs in page.elements:
            for name in ("src", "srcset", "action", "formaction", "poster", "background", "ping", "data", "xlink:href"):
                assert not attrs.get(name), f"{path.name}: {name}={attrs.get(name)!r}"
            href = attrs.get("href")
            assert href is None or (":" not in href and not href.startswith("/")), f"{path.name}: href {href!r}"
        (_, csp), = page.find("meta", http_equiv="Content-Security-Policy")
        policy = csp["content"] or ""
        assert "default-src 'none'" in policy and "connect-src data: blob:" in policy, path.name
        assert not re.search(r"https?:|\*|'self'", policy), policy


def test_chunk_pages_follow_the_dom_contract(gqa: Path) -> None:
    for path in chunk_pages(gqa):
        page = walk(path)
        data = page_data(page)
        assert data["tokens"] == TOKENS and data["promptLength"] == PROMPT and data["causal"] is True
        (section,) = data["sections"]
        assert (body(page)["data-layer"], body(page)["data-heads"]) == (section["layer"], section["heads"])
        assert len(page.find(data_view="observer")) == 1 and len(page.find(data_view="observed")) == 1
        heads = [int(head) for head in section["heads"].split(",")]
        buttons = page.find("button", data_head=None)
        assert [attrs["data-head"] for _, attrs in buttons] == [str(head) for head in heads] + ["mean"]
        for (index, _), head in zip(buttons, heads):
            assert f"head {head}" in page.text(index) and f"kv {kv_group(head)}" in page.text(index)


@pytest.mark.parametrize("report", ["gqa", "split", "heads", "layers"], indirect=True)
def test_index_grid_opens_the_page_holding_each_head(report: Path) -> None:
    cells = [cell for page in index_pages(report) for cell in page.find("a", data_grid_layer=None)]
    assert sorted((int(a["data-grid-layer"] or ""), int(a["data-grid-head"] or "")) for _, a in cells) == [
        (layer, head) for layer in range(LAYERS) for head in range(HEADS)]
    aggregate = report.name in ("heads", "layers")
    for _, attrs in cells:
        layer, head = attrs["data-grid-layer"], attrs["data-grid-head"]
        file, fragment = split_href(attrs["href"] or "")
        target = body(walk(report / file))
        assert target["data-layer"] == ("mean" if report.name == "layers" else layer)
        if aggregate:
            assert target["data-heads"] == "mean"
        else:
            assert head in (target["data-heads"] or "").split(",") and fragment == f"head={head}"


@pytest.mark.parametrize("report", ["gqa", "split"], indirect=True)
def test_index_lists_every_chunk_file(report: Path) -> None:
    listed = {attrs["href"] for page in index_pages(report) for _, attrs in page.find("a", data_chunk_link=None)}
    assert {path.name for path in chunk_pages(report)} <= listed


def test_payloads_decode_to_the_stored_attention(gqa: Path, gqa_attention: list[np.ndarray]) -> None:
    values, counts = assemble(gqa, LAYERS, HEADS, len(TOKENS))
    assert (counts == 1).all()
    assert np.abs(values - np.array(gqa_attention)).max() <= ERROR_BOUND + SLACK


def test_bidirectional_payloads_hold_every_cell(bidi: Path, bidi_store: tuple[Path, list[np.ndarray]]) -> None:
    written = np.array(bidi_store[1])
    values, counts = assemble(bidi, *written.shape[:3])
    assert (counts == 1).all()
    assert np.abs(values - written).max() <= ERROR_BOUND + SLACK
    assert (np.triu(written, 1) > 2 * ERROR_BOUND).any()  # weights above the diagonal exist, and were compared
    assert page_data(walk(chunk_pages(bidi)[0]))["causal"] is False


# ---------------------------------------------------------------------------------------------- aggregates


def test_aggregate_heads_is_one_mean_per_layer(heads: Path, gqa_attention: list[np.ndarray]) -> None:
    pages = chunk_pages(heads)
    assert len(pages) == LAYERS
    for layer, path in enumerate(pages):
        page = walk(path)
        assert (body(page)["data-layer"], body(page)["data-heads"]) == (str(layer), "mean")
        ((_, matrices),) = decoded_sections(page)
        assert matrices.shape == (1, len(TOKENS), len(TOKENS))
        expected = gqa_attention[layer].astype(np.float64).mean(axis=0)
        assert np.abs(matrices[0] - expected).max() <= ERROR_BOUND + SLACK


def test_aggregate_layers_is_one_mean_of_everything(layers: Path, gqa_attention: list[np.ndarray]) -> None:
    assert [path.name for path in chunk_pages(layers)] == ["mean.html"]
    page = walk(layers / "mean.html")
    assert (body(page)["data-layer"], body(page)["data-heads"]) == ("mean", "mean")
    ((_, matrices),) = decoded_sections(page)
    expected = np.array(gqa_attention, dtype=np.float64).mean(axis=(0, 1))
    assert np.abs(matrices[0] - expected).max() <= ERROR_BOUND + SLACK


# ---------------------------------------------------------------------------------------------- size budget


def within_budget(folder: Path, max_mb: float) -> None:
    """Every page, the index included, is at most `max_mb` MB."""
    sizes = {path.name: path.stat().st_size for path in folder.iterdir()}
    over = {name: size for name, size in sizes.items() if size > max_mb * 1_000_000}
    assert over == {}, f"files over --max-file-mb {max_mb}: {over}"


def test_split_files_stay_within_the_budget(split: Path) -> None:
    within_budget(split, SPLIT_MB)
    pages = [walk(path) for path in chunk_pages(split)]
    sections = [section for page in pages for section in page_data(page)["sections"]]
    assert any(section["rowCount"] < SPLIT_TOKENS for section in sections), "no chunk was split by rows"
    assert all(len(section["heads"].split(",")) < 8 for section in sections), "a group of 8 heads was not split"


def test_split_files_cover_each_head_and_row_once(split: Path, split_store: Path) -> None:
    store = att_report.load(split_store)
    values, counts = assemble(split, store.num_layers, store.num_heads, SPLIT_TOKENS)
    assert (counts == 1).all()
    stored = np.array([store.attention(layer) for layer in range(store.num_layers)])
    assert np.abs(values - stored).max() <= ERROR_BOUND + SLACK


def test_index_says_chunks_were_split(split: Path, gqa: Path) -> None:
    def notes(folder: Path) -> str:
        index = walk(folder / "index.html")
        return " ".join(index.text(i) for i, _ in index.find(data_index_note=None))

    assert "split" in notes(split)
    assert "split" not in notes(gqa)


def test_parts_of_a_chunk_link_to_each_other(split: Path) -> None:
    parts: dict[tuple[str, int], list[str]] = {}
    for path in chunk_pages(split):
        attrs = body(walk(path))
        first_head = int((attrs["data-heads"] or "").split(",")[0])
        parts.setdefault((attrs["data-layer"] or "", first_head // 8), []).append(path.name)
    assert len(parts) == LAYERS * 2  # (heads 0-7, head 8) of each layer

    def order(name: str) -> tuple[int, int]:  # by first head, then first query row (names say what they hold)
        head, rows = re.search(r"heads-(\d+)", name), re.search(r"rows-(\d+)", name)
        return int(head.group(1)) if head else 0, int(rows.group(1)) if rows else 0

    for names in parts.values():
        names.sort(key=order)
        for position, name in enumerate(names):
            links = {attrs["href"] for _, attrs in walk(split / name).find("a", href=None)}
            # Every other part while their links are short; else at least the parts before and after it.
            neighbours = set(names[max(position - 1, 0):position + 2]) - {name}
            assert neighbours <= links, f"{name} does not link its neighbouring parts"
            assert set(names) - {name} <= links or len(names) > 4, f"{name} does not link every part of its chunk"


def test_tight_budget_counts_the_links_between_parts(capsys: pytest.CaptureFixture[str], workspace: Path,
                                                    tmp_path: Path) -> None:
    """Just above the smallest budget, a chunk splits into a great many files that each link to all the others."""
    path = workspace / "tight-store"
    write_synthetic_store(path, tokens_for(120), 100, 1, 8, causal=True, seed=5, dtype="float32")
    store = att_report.load(path)
    # the renderer's own floor only picks the budgets to try; the sizes are checked on disk
    floor = fixed_page_bytes(store, token_text(store)) + PAGE_SLACK
    rendered = 0
    for extra in (300, 1_000, 4_000):
        max_mb = (floor + extra) / 1_000_000
        output = tmp_path / f"report-{extra}"
        if main(["render", str(path), "-o", str(output), "--max-file-mb", f"{max_mb:.6f}"]) == 0:
            within_budget(output, max_mb)
            values, counts = assemble(output, 1, 8, 120)
            assert (counts == 1).all() and np.abs(values - store.attention(0)).max() <= ERROR_BOUND + SLACK
            rendered += 1
        else:
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and "--max-file-mb" in lines[0] and not output.exists()
    assert rendered  # the largest of these budgets leaves room for the links
    no_leftovers(tmp_path)


def test_budget_below_one_page_is_refused(capsys: pytest.CaptureFixture[str], gqa_store: Path, tmp_path: Path) -> None:
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report"), "--max-file-mb", "0.001"])
    assert "--max-file-mb" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- determinism, zip


def test_same_capture_renders_to_identical_bytes(gqa: Path, gqa_again: Path) -> None:
    first, second = snapshot(gqa), snapshot(gqa_again)
    assert sorted(first) == sorted(second)
    assert [name for name in first if first[name] != second[name]] == []
    zipped = gqa.with_name("report.zip")
    assert zipped.read_bytes() == gqa_again.with_name("report.zip").read_bytes()


def test_zip_holds_exactly_the_folder(gqa: Path) -> None:
    with zipfile.ZipFile(gqa.with_name("report.zip")) as archive:
        assert archive.testzip() is None
        held = {info.filename: archive.read(info) for info in archive.infolist()}
    assert held == {f"report/{name}": content for name, content in snapshot(gqa).items()}


def test_zip_replaces_only_a_report_archive(capsys: pytest.CaptureFixture[str], gqa_store: Path,
                                            tmp_path: Path) -> None:
    stranger = tmp_path / "report.zip"
    stranger.write_bytes(b"someone's archive")
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report"), "--zip", "--force"])
    assert "report.zip" in line and "not an att-report report archive" in line
    assert stranger.read_bytes() == b"someone's archive" and not (tmp_path / "report").exists()

    stranger.unlink()
    render_cli(gqa_store, tmp_path / "report", "--zip")
    earlier = stranger.read_bytes()
    shutil.rmtree(tmp_path / "report")
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report"), "--zip"])
    assert "report.zip" in line and "--force" in line and not (tmp_path / "report").exists()
    render_cli(gqa_store, tmp_path / "report", "--zip", "--force")
    assert stranger.read_bytes() == earlier


# ---------------------------------------------------------------------------------------------- single file


def test_single_file_holds_every_chunk(single: Path, gqa_attention: list[np.ndarray]) -> None:
    assert [path.name for path in single.parent.iterdir()] == ["report.html"]
    page = walk(single)
    seen = np.zeros((LAYERS, HEADS), dtype=int)
    for section, matrices in decoded_sections(page):
        if section["heads"] == "mean":
            continue  # an analysis (rollout) section, not a chunk
        layer, heads = int(section["layer"]), [int(head) for head in section["heads"].split(",")]
        assert section["rowStart"] == 0 and section["rowCount"] == len(TOKENS)
        assert np.abs(matrices - gqa_attention[layer][heads]).max() <= ERROR_BOUND + SLACK
        seen[layer, heads] += 1
    assert (seen == 1).all()
    cells = page.find("a", data_grid_layer=None)
    assert len(cells) == LAYERS * HEADS and all((a["href"] or "").startswith("#section=") for _, a in cells)


def test_single_file_over_budget_is_refused(capsys: pytest.CaptureFixture[str], gqa_store: Path, tmp_path: Path) -> None:
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report.html"), "--single-file",
                            "--single-file-mb", "0.01"])
    assert "--single-file-mb" in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- refusals


def test_damaged_store_is_refused(capsys: pytest.CaptureFixture[str], gqa_store: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "damaged"
    shutil.copytree(gqa_store, damaged)
    layer_file = damaged / "attention" / "layer-001.npy"
    content = bytearray(layer_file.read_bytes())
    content[-3] ^= 0x40  # a weight changes; size and header stay valid
    layer_file.write_bytes(bytes(content))
    line = refused(capsys, ["render", str(damaged), "-o", str(tmp_path / "report")])
    assert "layer-001.npy" in line and "checksum" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["damaged"]


def test_folder_that_is_not_a_store_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not a capture")
    line = refused(capsys, ["render", str(tmp_path / "notes"), "-o", str(tmp_path / "report")])
    assert str(tmp_path / "notes") in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes"]


def test_existing_report_needs_force(capsys: pytest.CaptureFixture[str], gqa_store: Path, bidi: Path, tmp_path: Path) -> None:
    shutil.copytree(bidi, tmp_path / "report")
    before = snapshot(tmp_path / "report")
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report")])
    assert "--force" in line
    assert snapshot(tmp_path / "report") == before
    no_leftovers(tmp_path)


def test_force_replaces_an_earlier_report(gqa_store: Path, gqa: Path, bidi: Path, tmp_path: Path) -> None:
    shutil.copytree(bidi, tmp_path / "report")
    render_cli(gqa_store, tmp_path / "report", "--force")
    assert snapshot(tmp_path / "report") == snapshot(gqa)
    assert [path.name for path in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_folder_with_other_files_is_never_replaced(capsys: pytest.CaptureFixture[str], gqa_store: Path, bidi: Path,
                                                   tmp_path: Path, force: list[str]) -> None:
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "chapter-1.txt").write_text("years of work")
    (tmp_path / "thesis" / "index.html").write_text("<p>my own page</p>")
    shutil.copytree(bidi, tmp_path / "report-plus")  # an earlier report that someone added a file to
    (tmp_path / "report-plus" / "notes.txt").write_text("keep me")
    before = {name: snapshot(tmp_path / name) for name in ("thesis", "report-plus")}
    for name, content in before.items():
        refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / name), *force])
        assert snapshot(tmp_path / name) == content
    no_leftovers(tmp_path)


def test_output_that_is_a_file_is_refused(capsys: pytest.CaptureFixture[str], gqa_store: Path, tmp_path: Path) -> None:
    (tmp_path / "report").write_text("a file, not a folder")
    for force in ([], ["--force"]):
        line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report"), *force])
        assert str(tmp_path / "report") in line
        assert (tmp_path / "report").read_text() == "a file, not a folder"
    no_leftovers(tmp_path)


@pytest.mark.parametrize(("flags", "named"), [
    (["--aggregate", "channels"], "--aggregate"),
    (["--max-file-mb", "0"], "--max-file-mb"),
    (["--max-file-mb", "-2"], "--max-file-mb"),
    (["--single-file", "--single-file-mb", "0"], "--single-file-mb"),
])
def test_bad_options_are_refused(capsys: pytest.CaptureFixture[str], gqa_store: Path, tmp_path: Path,
                                 flags: list[str], named: str) -> None:
    line = refused(capsys, ["render", str(gqa_store), "-o", str(tmp_path / "report"), *flags])
    assert named in line
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- packaging


def test_render_path_imports_neither_torch_nor_transformers(gqa_store: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from att_report.cli import main
        assert main(["render", {str(gqa_store)!r}, "-o", {str(tmp_path / "report")!r}]) == 0
        assert main(["render", {str(gqa_store)!r}, "-o", {str(tmp_path / "one.html")!r}, "--single-file"]) == 0
        loaded = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        assert loaded == [], loaded
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "one.html").is_file()


def _build_wheel(into: Path) -> Path:
    """Build the project's wheel with pip, offline when hatchling is at hand (else pip fetches it as CI's install does)."""
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, "-w", str(into), str(ROOT)],
                   check=True, capture_output=True, timeout=120)
    (wheel,) = into.glob("att_report-*.whl")
    return wheel


def test_a_wheel_install_renders_with_its_own_templates(gqa_store: Path, gqa: Path, tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"att_report/templates/chunk.html", "att_report/js/chunk.js", "att_report/js/index.js"} <= names
    venv = tmp_path / "venv"
    # The venv sees this interpreter's packages (numpy, jinja2, orjson, pip) but gets att_report from the wheel.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import att_report
        from att_report.cli import main
        from att_report.report.templating import asset_dir
        package = Path(att_report.__file__).parent
        assert package.is_relative_to(Path(sys.prefix)) and "site-packages" in str(package), package
        for name in ("templates", "js"):
            assert asset_dir(name) == package / name, asset_dir(name)
        assert main(["render", {str(gqa_store)!r}, "-o", "report"]) == 0
    """)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    without_checkout = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60,
                            check=False, env=without_checkout)
    assert result.returncode == 0, result.stderr
    assert snapshot(cwd / "report") == snapshot(gqa)  # same capture, same bytes as the checkout renders


# ---------------------------------------------------------------------------------------------- a real model


def test_tiny_llama_report_shows_its_own_attention(tiny_model: Any, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import LlamaForCausalLM

    folder = tiny_model("llama-gqa")
    report, capture = tmp_path / "report", tmp_path / "capture"
    assert main(["run", "--model", str(folder), "--prompt", "The quick brown fox", "--max-new-tokens", "5",
                 "-o", str(report), "--keep-capture", str(capture), "--no-progress"]) == 0
    store = att_report.load(capture)
    model = LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = model(torch.tensor([store.token_ids]), output_attentions=True).attentions
    expected = np.array([layer[0].numpy() for layer in attentions])  # (layers, heads, T, T)
    num_heads, num_kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    assert expected.shape[:2] == (store.num_layers, store.num_heads) == (2, num_heads)
    assert store.num_tokens > store.prompt_length  # a completion was generated
    values, counts = assemble(report, store.num_layers, store.num_heads, store.num_tokens)
    assert (counts == 1).all()
    float16 = 2.0**-11  # stored as float16: within 2^-11 relative of a weight <= 1
    assert np.abs(values - expected).max() <= ERROR_BOUND + float16 + 1e-5
    page = walk(chunk_pages(report)[0])
    assert page_data(page)["tokens"] == store.tokens
    labels = [page.text(i) for i, _ in page.find("button", data_head=None)]
    assert labels[:num_heads] == [f"head {h} · kv {kv_group(h, num_heads, num_kv_heads)}" for h in range(num_heads)]
