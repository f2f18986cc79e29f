"""The compare report by structure: files, links, payloads against both stores, the ranking against an independent
divergence, the size budget, and bad input through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import att_report
from att_report.cli import main
from att_report.report.compare import compare
from att_report.report.encode import ERROR_BOUND, decode_rows
from att_report.errors import OutputExistsError, UsageError
from synthetic import write_synthetic_store

# B is A with " quietly and calmly" inserted and another last word; by hand, these tokens align:
TOKENS_A = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " purred", "."]
TOKENS_B = ["The", " cat", " quietly", " and", " calmly", " sat", " on", " the", " mat", ".", " It", " slept", "."]
PROMPT_A, PROMPT_B = 7, 10
PAIRS = [(0, 0), (1, 1), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9), (7, 10), (9, 12)]
LAYERS, HEADS = 3, 10
PAGES = [f"layer-{layer:02d}-heads-{heads}.html" for layer in range(LAYERS) for heads in ("0-7", "8-9")]


def write_pair(root: Path, heads_b: int = HEADS, words: int = 0) -> tuple[Path, Path]:
    """Two synthetic captures whose token lists differ by an inserted phrase (and `words` more shared words)."""
    extra = [f" w{i}" for i in range(words)]
    a, b = root / "capture-a", root / "capture-b"
    write_synthetic_store(a, TOKENS_A[:PROMPT_A] + extra + TOKENS_A[PROMPT_A:], PROMPT_A + words, LAYERS, HEADS,
                          num_kv_heads=HEADS // 2, seed=1)
    write_synthetic_store(b, TOKENS_B[:PROMPT_B] + extra + TOKENS_B[PROMPT_B:], PROMPT_B + words, LAYERS, heads_b,
                          num_kv_heads=heads_b // 2, seed=2)
    return a, b


class Page(HTMLParser):
    """Collect a page's links, <body> attributes, tagged elements and the text of its script elements by id."""

    def __init__(self, path: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.body: dict[str, str | None] = {}
        self.scripts: dict[str, str] = {}
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []
        self._script: str | None = None
        self.feed(path.read_text(encoding="utf-8"))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "a" and attributes.get("href"):
            self.links.append(str(attributes["href"]))
        elif tag == "body":
            self.body = attributes
        elif tag == "script" and attributes.get("id"):
            self._script = str(attributes["id"])
            self.scripts[self._script] = ""
        elif tag == "tr" and "data-head" in attributes:
            self.rows.append([str(attributes["data-layer"]), str(attributes["data-head"])])

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._script is not None:
            self.scripts[self._script] += data


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_pair(tmp_path_factory.mktemp("captures"))


@pytest.fixture(scope="module")
def report(captures: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compare(*captures, tmp_path_factory.mktemp("out") / "comparison")


FIRST_DIFFERENCE = 2  # "The cat" is shared; A's " sat" meets B's " quietly"


def js_divergence(a: np.ndarray, b: np.ndarray, pairs: list[tuple[int, int]], rows: list[tuple[int, int]]) -> float:
    """Mean over the aligned query tokens `rows` of the JS divergence (bits) of their renormalized rows over the
    aligned keys `pairs`."""
    keys_a, keys_b = [i for i, _ in pairs], [j for _, j in pairs]
    total = 0.0
    for i, j in rows:
        p, q = a[i, keys_a] / a[i, keys_a].sum(), b[j, keys_b] / b[j, keys_b].sum()
        m = (p + q) / 2
        total += 0.5 * sum(x * np.log2(x / y) for x, y in zip(p, m) if x > 0)
        total += 0.5 * sum(x * np.log2(x / y) for x, y in zip(q, m) if x > 0)
    return total / len(rows)


def test_files_and_links_resolve(report: Path) -> None:
    assert sorted(path.name for path in report.iterdir()) == sorted(PAGES + ["index.html"])
    for path in report.iterdir():
        for link in Page(path).links:
            name, _, fragment = link.partition("#")
            assert (report / name).is_file(), f"{path.name} links to missing {link}"
            if fragment:
                head = fragment.removeprefix("head=")
                assert head in str(Page(report / name).body["data-heads"]).split(","), f"{link} does not hold its head"
    page = Page(report / "layer-01-heads-8-9.html")
    assert page.body["data-layer"] == "1" and page.body["data-heads"] == "8,9"
    assert {"layer-00-heads-8-9.html", "layer-02-heads-8-9.html", "layer-01-heads-0-7.html", "index.html"} <= set(page.links)


def test_payloads_decode_to_each_store(report: Path, captures: tuple[Path, Path]) -> None:
    stores = {"a": att_report.load(captures[0]), "b": att_report.load(captures[1])}
    for name in PAGES:
        page = Page(report / name)
        data = json.loads(page.scripts["att-data"])
        assert [tuple(pair) for pair in data["pairs"]] == PAIRS
        layer, heads = int(str(page.body["data-layer"])), [int(h) for h in str(page.body["data-heads"]).split(",")]
        for side, store in stores.items():
            text = data["sides"][side]
            assert text["tokens"] == store.tokens and text["promptLength"] == store.prompt_length
            meta = text["sections"][0]
            shown = decode_rows(page.scripts[meta["payload"]].strip(), meta["headCount"], 0, store.num_tokens,
                                store.num_tokens, store.causal)
            assert np.abs(shown - store.attention(layer)[heads]).max() <= ERROR_BOUND + 1e-7


def test_ranking_follows_independent_divergence(report: Path, captures: tuple[Path, Path]) -> None:
    a, b = att_report.load(captures[0]), att_report.load(captures[1])
    prompt_pairs = [(i, j) for i, j in PAIRS if i < PROMPT_A and j < PROMPT_B]
    # A causal token before the first difference sees the same text in both: only the rows after it are averaged.
    rows = [(i, j) for i, j in prompt_pairs if i >= FIRST_DIFFERENCE and j >= FIRST_DIFFERENCE]
    expected = {(layer, head): js_divergence(a.attention(layer)[head], b.attention(layer)[head], prompt_pairs, rows)
                for layer in range(LAYERS) for head in range(HEADS)}
    index = Page(report / "index.html")
    order = [(int(layer), int(head)) for layer, head in index.rows]
    assert order == sorted(expected, key=lambda key: -expected[key])
    cells = {(int(str(attrs["data-layer"])), int(str(attrs["data-head"]))): float(str(attrs["data-divergence"]))
             for tag, attrs in index.elements if "data-divergence" in attrs}
    assert cells.keys() == expected.keys()
    assert max(abs(cells[key] - expected[key]) for key in expected) < 1e-6


def test_index_shows_both_texts_and_the_alignment(report: Path) -> None:
    html = (report / "index.html").read_text(encoding="utf-8")
    assert "7 prompt tokens aligned" in html and "9 tokens in all" in html
    unaligned: dict[str, list[int]] = {"a": [], "b": []}
    side = ""
    for tag, attrs in Page(report / "index.html").elements:
        side = str(attrs.get("data-index-side") or side)
        if tag == "span" and "att-unaligned" in str(attrs.get("class")) and "data-index" in attrs:
            unaligned[side].append(int(str(attrs["data-index"])))
    assert unaligned == {"a": [8], "b": [2, 3, 4, 11]}


def test_same_captures_give_identical_bytes(report: Path, captures: tuple[Path, Path], tmp_path: Path) -> None:
    again = compare(*captures, tmp_path / "again")
    assert all((again / name).read_bytes() == (report / name).read_bytes() for name in PAGES + ["index.html"])


def test_pages_split_to_fit_the_budget(tmp_path: Path) -> None:
    a, b = write_pair(tmp_path, words=120)
    out = compare(a, b, tmp_path / "small", max_file_mb=0.1)
    names = sorted(path.name for path in out.iterdir())
    assert all((out / name).stat().st_size <= 100_000 for name in names)
    for layer in range(LAYERS):
        heads = [str(Page(out / name).body["data-heads"]) for name in names if name.startswith(f"layer-{layer:02d}-")]
        assert 3 <= len(heads) < HEADS and sorted(int(h) for group in heads for h in group.split(",")) == list(range(HEADS))
    for path in out.iterdir():
        assert all((out / link.partition("#")[0]).is_file() for link in Page(path).links)
    with pytest.raises(UsageError, match="raise it"):
        compare(a, b, tmp_path / "tiny", max_file_mb=0.01)
    assert not (tmp_path / "tiny").exists()


def run_cli(*args: object) -> tuple[int, str]:
    """Run the command in-process; return its exit code and what it printed on stderr."""
    from contextlib import redirect_stderr
    from io import StringIO

    errors = StringIO()
    with redirect_stderr(errors):
        code = main([str(arg) for arg in args])
    return code, errors.getvalue()


def assert_one_line_error(code: int, stderr: str, words: str) -> None:
    assert code != 0 and stderr.startswith("att-report: error: ") and stderr.count("\n") == 1 and words in stderr


def test_bad_input_is_refused_and_nothing_is_written(tmp_path: Path, captures: tuple[Path, Path]) -> None:
    a, b = write_pair(tmp_path / "shapes", heads_b=4)
    out = tmp_path / "out"
    assert_one_line_error(*run_cli("compare", a, b, "-o", out), "same layers and heads")
    damaged = tmp_path / "damaged"
    write_synthetic_store(damaged, TOKENS_B, PROMPT_B, LAYERS, HEADS, seed=3)
    layer = damaged / "attention" / "layer-001.npy"
    layer.write_bytes(layer.read_bytes()[:-4] + b"\x00\x3c\x00\x3c")
    assert_one_line_error(*run_cli("compare", captures[0], damaged, "-o", out), str(damaged))
    assert_one_line_error(*run_cli("compare", captures[0], captures[1], "-o", out, "--max-file-mb", "0"), "positive")
    assert not out.exists() and not [path for path in tmp_path.iterdir() if path.name.startswith(".partial-")]


def test_only_an_earlier_comparison_is_replaced(tmp_path: Path, captures: tuple[Path, Path]) -> None:
    out = tmp_path / "out"
    assert run_cli("compare", *captures, "-o", out) == (0, "")
    assert_one_line_error(*run_cli("compare", *captures, "-o", out), "--force")
    assert run_cli("compare", *captures, "-o", out, "--force")[0] == 0
    other = tmp_path / "render-report"  # what `render` writes passes is_report, but is no comparison
    other.mkdir()
    (other / "index.html").write_text('<meta name="generator" content="att-report"><body data-page="index">')
    assert_one_line_error(*run_cli("compare", *captures, "-o", other, "--force"), "is not an att-report comparison")
    with pytest.raises(OutputExistsError):
        compare(*captures, tmp_path / "render-report" / "index.html")
    assert (other / "index.html").read_text().endswith('data-page="index">')


def test_compare_never_imports_torch(captures: tuple[Path, Path], tmp_path: Path) -> None:
    script = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "  # any import of them fails
              "from att_report.cli import main; sys.exit(main(sys.argv[1:]))")
    result = subprocess.run([sys.executable, "-c", script, "compare", *map(str, captures), "-o", str(tmp_path / "out")],
                            check=False, capture_output=True, text=True, cwd=Path(__file__).parent,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "index.html").is_file()
