"""Token alignment and head divergence of two captures, against hand computations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import att_report
from att_report.analysis.alignment import JS_ROW_BLOCK, align_tokens, check_comparable, head_divergence
from att_report.errors import UsageError
from synthetic import write_synthetic_store


def test_alignment_pairs_equal_text_in_order() -> None:
    alignment = align_tokens(["Please", " add", " 2", " and", " 3"], ["Kindly", " add", " 2", " plus", " 3"])
    assert alignment.pairs == ((1, 1), (2, 2), (4, 4))
    to_b, to_a = alignment.partner_maps()
    assert to_b[4] == 4 and to_a[2] == 2 and 0 not in to_b


def test_alignment_handles_insertions() -> None:
    alignment = align_tokens(["a", "b", "c"], ["x", "a", "y", "b", "c"])
    assert alignment.pairs == ((0, 1), (1, 3), (2, 4))


def _js_bits(p: list[float], q: list[float]) -> float:
    """Jensen-Shannon divergence in bits of the two renormalized rows, written out term by term."""
    p = [float(value) / sum(map(float, p)) for value in p]
    q = [float(value) / sum(map(float, q)) for value in q]
    total = 0.0
    for pi, qi in zip(p, q):
        mi = (pi + qi) / 2
        if pi > 0:
            total += 0.5 * pi * math.log2(pi / mi)
        if qi > 0:
            total += 0.5 * qi * math.log2(qi / mi)
    return total


def rename_model(store: Path, name: str) -> None:
    """Make a synthetic store claim another model, as a capture of the same prompt through a second model would."""
    manifest = json.loads((store / "manifest.json").read_text(encoding="utf-8"))
    manifest["model"]["name"] = name
    (store / "manifest.json").write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")


def test_identical_captures_do_not_diverge(tmp_path: Path) -> None:
    tokens = ["a", "b", "c", "d", "e"]
    write_synthetic_store(tmp_path / "a", tokens, 4, num_layers=2, num_heads=3, seed=1)
    write_synthetic_store(tmp_path / "b", tokens, 4, num_layers=2, num_heads=3, seed=1)
    a, b = att_report.load(tmp_path / "a"), att_report.load(tmp_path / "b")
    result = head_divergence(a, b, align_tokens(a.tokens, b.tokens))
    assert result.rows_compared == 0  # one causal model, one text: no row can differ
    np.testing.assert_allclose(result.values, 0)
    rename_model(tmp_path / "b", "another model")
    b = att_report.load(tmp_path / "b")
    result = head_divergence(a, b, align_tokens(a.tokens, b.tokens))
    assert result.rows_compared == 4  # two models: every aligned prompt row can differ
    np.testing.assert_allclose(result.values, 0, atol=1e-6)


def test_divergence_matches_hand_computation(tmp_path: Path) -> None:
    tokens = ["a", "b", "c"]
    write_synthetic_store(tmp_path / "a", tokens, 3, num_layers=1, num_heads=2, seed=1)
    write_synthetic_store(tmp_path / "b", tokens, 3, num_layers=1, num_heads=2, seed=2)
    rename_model(tmp_path / "b", "another model")  # one prompt through two models: every row can differ
    a, b = att_report.load(tmp_path / "a"), att_report.load(tmp_path / "b")
    result = head_divergence(a, b, align_tokens(a.tokens, b.tokens))
    layer_a, layer_b = a.attention(0), b.attention(0)
    for head in range(2):
        expected = np.mean([_js_bits(list(layer_a[head, row, : row + 1]), list(layer_b[head, row, : row + 1]))
                            for row in range(3)])
        assert result.values[0, head] == pytest.approx(expected, abs=1e-6)
    assert result.ranked()[0][2] >= result.ranked()[1][2]


def test_divergence_over_many_row_blocks_matches_hand_computation(tmp_path: Path) -> None:
    """Long captures are compared a block of rows at a time: the mean must still be over every row."""
    count = 2 * JS_ROW_BLOCK + 37
    tokens = [f"t{i}" for i in range(count)]
    write_synthetic_store(tmp_path / "a", tokens, count, num_layers=1, num_heads=1, seed=3)
    write_synthetic_store(tmp_path / "b", tokens, count, num_layers=1, num_heads=1, seed=4)
    rename_model(tmp_path / "b", "another model")
    a, b = att_report.load(tmp_path / "a"), att_report.load(tmp_path / "b")
    result = head_divergence(a, b, align_tokens(a.tokens, b.tokens))
    layer_a, layer_b = a.attention(0)[0], b.attention(0)[0]
    expected = np.mean([_js_bits(list(layer_a[row, : row + 1]), list(layer_b[row, : row + 1])) for row in range(count)])
    assert result.rows_compared == count
    assert result.values[0, 0] == pytest.approx(expected, abs=1e-9)


def test_captures_of_different_shapes_are_refused(tmp_path: Path) -> None:
    write_synthetic_store(tmp_path / "a", ["a", "b"], 2, num_heads=3)
    write_synthetic_store(tmp_path / "b", ["a", "b"], 2, num_heads=4)
    with pytest.raises(UsageError, match="same layers and heads"):
        check_comparable(att_report.load(tmp_path / "a"), att_report.load(tmp_path / "b"))
