"""`--layers` and `--heads`: parsing, what a scoped capture stores (against the model's own weights), rendering it,
and the disk-space refusal."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import att_report
from att_report.capturing.recorder import FLOAT32_TOLERANCE
from att_report.capturing.scope import parse_index_spec, resolve_scope
from att_report.cli import main
from att_report.errors import AttReportError, StoreError, UsageError
from att_report.store.space import check_disk_space, projected_store_bytes

Models = Callable[[str], Path]
PROMPT = "The quick brown fox jumps over the lazy dog."


@pytest.mark.parametrize(("text", "expected"), [("0,15,29", [0, 15, 29]), ("0-3,7", [0, 1, 2, 3, 7]),
                                                (" 7 , 2-2,1-3 ", [1, 2, 3, 7]), ("29", [29])])
def test_index_specs_read_as_ascending_indices(text: str, expected: list[int]) -> None:
    assert parse_index_spec(text, 30, "layers") == expected


@pytest.mark.parametrize(("text", "phrase"), [
    ("", "--heads '' names no heads"), ("1,,2", "'' is not an index or a range"), ("-1", "'-1' is not an index"),
    ("2-", "'2-' is not an index"), ("a-b", "'a-b' is not an index"), ("5-3", "the range 5-3 runs backwards"),
    ("0-9", "head 9 does not exist, this model has 9 heads (0-8)"),
])
def test_bad_index_specs_say_what_is_wrong_and_the_fix(text: str, phrase: str) -> None:
    with pytest.raises(UsageError, match=re.escape(phrase)) as raised:
        parse_index_spec(text, 9, "heads")
    assert "\n" not in str(raised.value) and ("give" in str(raised.value) or "write it as" in str(raised.value))


def test_no_spec_means_every_layer_and_head() -> None:
    scope = resolve_scope(None, "1", 3, 4)
    assert (scope.layers, scope.heads) == ([0, 1, 2], [1])


def test_a_bad_spec_exits_with_2_before_any_model_loads(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code = main(["capture", "--prompt", "hi", "--layers", "2-1", "--no-progress", "-o", str(tmp_path / "c")])
    assert code == 2 and capfd.readouterr().err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_scoped_capture_stores_the_models_own_slices(tiny_model: Models, tmp_path: Path) -> None:
    folder = tiny_model("llama-gqa")  # 4 query heads in 2 groups: heads 1 and 3 come from different groups
    store = att_report.load(att_report.capture(PROMPT, tmp_path / "c", model=str(folder), max_new_tokens=3,
                                               layers="1", heads="1,3", attention_dtype="float32", progress=False))
    assert (store.layer_indices, store.head_indices) == ([1], [1, 3])
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        truth = model(torch.tensor([store.token_ids]), output_attentions=True).attentions[1][0, [1, 3]].numpy()
    np.testing.assert_allclose(store.attention(1), truth, rtol=0, atol=FLOAT32_TOLERANCE)
    np.testing.assert_allclose(store.attention(1, heads=[3]), truth[1:], rtol=0, atol=FLOAT32_TOLERANCE)
    for unstored in (lambda: store.attention(0), lambda: store.attention(1, heads=[0])):
        with pytest.raises(AttReportError, match="not stored"):
            unstored()


def test_a_scoped_run_renders_pages_for_the_stored_layers_only(tiny_model: Models, tmp_path: Path) -> None:
    code = main(["run", "--model", str(tiny_model("gpt2")), "--prompt", PROMPT, "--max-new-tokens", "2",
                 "--layers", "1", "--heads", "0-1", "--keep-capture", str(tmp_path / "capture"), "--no-progress",
                 "-o", str(tmp_path / "report")])
    assert code == 0
    store = att_report.load(tmp_path / "capture")
    assert (store.layer_indices, store.head_indices) == ([1], [0, 1])
    pages = sorted(path.name for path in (tmp_path / "report").glob("layer-*.html"))
    assert pages and {int(re.match(r"layer-0*(\d+)", name).group(1)) for name in pages} == {1}


def test_a_disk_too_small_is_refused_naming_both_sizes(tmp_path: Path) -> None:
    needed = projected_store_bytes(30, 9, 8192, causal=True, dtype="float32")
    assert projected_store_bytes(1, 1, 8192, causal=True, dtype="float32") < needed / 200
    check_disk_space(tmp_path / "not" / "yet", 1000)
    with pytest.raises(StoreError, match="needs about .* but .* free; free some space") as raised:
        check_disk_space(tmp_path / "not" / "yet", 1 << 62)  # 4.6 EB: more than any file system here
    assert "store fewer layers or heads" in str(raised.value)
