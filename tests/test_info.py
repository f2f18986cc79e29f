"""`att-report info`: the facts of a capture as text and JSON, the metrics table, errors, and no torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

import att_report
from att_report.cli import main
from att_report.store import ENCODINGS, MANIFEST_NAME
from synthetic import write_synthetic_store

REPO = Path(__file__).resolve().parent.parent
TOKENS = ["Why", " is", "\n", " the", " sky", "?", " Because", " light", "\x1b[31m", " scatters", "."]
PROMPT_LENGTH = 6


def _edit_manifest(store: Path, **sections: dict[str, Any]) -> None:
    """Merge sections into a written store's manifest (it carries no checksum of its own)."""
    path = store / MANIFEST_NAME
    manifest = orjson.loads(path.read_bytes())
    for key, value in sections.items():
        manifest[key] = {**manifest.get(key, {}), **value}
    path.write_bytes(orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS))


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """A causal capture with generation settings, versions and timings like a real one, and hostile text."""
    path = tmp_path / "sky"
    write_synthetic_store(path, TOKENS, PROMPT_LENGTH, num_layers=3, num_heads=4, num_kv_heads=2, seed=2)
    _edit_manifest(
        path,
        model={"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "architecture": "LlamaForCausalLM",
               "model_type": "llama"},
        input={"mode": "chat", "system": "Be terse.", "prompt": "Why is\nthe sky?"},
        generation={"mode": "sample", "max_new_tokens": 5, "seed": 7, "temperature": 0.8, "top_p": 0.9, "top_k": 40,
                    "stop_reason": "length", "device": "cuda:0", "record_attention": "eager"},
        software={"att_report": "0.1.0", "torch": "2.13.0", "numpy": "2.4.6"},
        timings={"load_s": 1.25, "generate_s": 0.5, "record_s": 0.125},
        neurons={"k": 8},
    )
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _line(text: str, label: str) -> str:
    """The value on the line that starts with `label` (labels are padded to one width)."""
    (line,) = [line for line in text.splitlines() if line.split("  ")[0] == label]
    return line[len(label):].strip()


def test_text_states_the_facts(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["info", str(capture)], capsys)
    assert code == 0 and err == ""
    assert _line(out, "model") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _line(out, "architecture") == "LlamaForCausalLM (llama)"
    assert _line(out, "layers") == "3"
    assert _line(out, "heads") == "4 per layer, 2 key/value heads"
    assert _line(out, "causal").startswith("yes")
    assert _line(out, "tokens") == "11 (6 prompt + 5 completion)"
    assert _line(out, "input") == "chat"
    assert _line(out, "system") == '"Be terse."'
    assert _line(out, "prompt") == '"Why is⏎the sky?"'
    assert _line(out, "completion") == '" Because light\\u001b[31m scatters."'
    assert _line(out, "generation") == "sample, max_new_tokens=5, seed=7, temperature=0.8, top_k=40, top_p=0.9"
    assert _line(out, "stop reason") == "length"
    assert _line(out, "device") == "cuda:0"
    assert _line(out, "attention") == "float16, lower-triangle, recorded with eager attention"
    assert _line(out, "bound").startswith("float16: each weight within 2^-11 of its value, relative")
    assert _line(out, "stored layers") == "all 3" and _line(out, "stored heads") == "all 4"
    assert _line(out, "head metrics") == "computed at capture from the model's float32 weights"
    size = sum(entry.stat().st_size for entry in capture.rglob("*") if entry.is_file())
    assert f"({size:,} bytes)" in _line(out, "size on disk")
    assert _line(out, "optional arrays") == "neurons (k=8)"
    assert _line(out, "software") == "att_report 0.1.0, numpy 2.4.6, torch 2.13.0"
    assert _line(out, "timings") == "generate 0.5 s, load 1.25 s, record 0.125 s"
    assert "\x1b" not in out  # an escape sequence in a token never reaches the terminal
    values = [line.split("  ")[0] for line in out.splitlines()]
    starts = {len(line) - len(line[len(label):].lstrip()) for line, label in zip(out.splitlines(), values)}
    assert len(starts) == 1  # every value starts in the same column


def test_long_text_is_shortened_with_its_length(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_manifest(capture, input={"prompt": "ab" * 300})
    _, out, _ = _run(["info", str(capture)], capsys)
    assert _line(out, "prompt") == '"' + "ab" * 50 + '… (600 characters)"'


def test_encoder_capture_has_no_completion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_store(tmp_path / "enc", ["[CLS]", " a", " b", "[SEP]"], 4, causal=False)
    _, out, _ = _run(["info", str(tmp_path / "enc")], capsys)
    assert _line(out, "causal").startswith("no")
    assert _line(out, "completion") == "(none)"
    assert _line(out, "attention") == "float16, square"
    assert _line(out, "generation") == "none"


def test_json_matches_the_store(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["info", str(capture), "--json"], capsys)
    document = json.loads(out)
    assert code == 0
    assert document["model"]["num_layers"] == 3 and document["model"]["num_heads"] == 4
    assert document["model"]["num_kv_heads"] == 2 and document["model"]["causal"] is True
    assert document["tokens"] == {"total": 11, "prompt": 6, "completion": 5}
    assert document["input"]["prompt"] == "Why is\nthe sky?"  # full text, not shortened or spelled
    assert document["completion"] == "".join(TOKENS[PROMPT_LENGTH:])
    assert document["generation"]["seed"] == 7 and document["generation"]["stop_reason"] == "length"
    assert document["attention"] == {
        "encoding": "float16", "dtype": "float16", "layout": "lower-triangle", "bound": ENCODINGS["float16"].bound,
        "weight_bound": 2**-12, "sum_bound": 2**-11, "layer_indices": [0, 1, 2], "head_indices": [0, 1, 2, 3],
        "metrics_source": "computed at capture from the model's float32 weights",
    }
    assert document["size_bytes"] == sum(
        os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(capture) for name in names
    )
    assert document["optional"] == {"saliency": None, "neurons": {"k": 8}, "predictions": None}
    assert document["software"]["torch"] == "2.13.0" and document["timings"]["load_s"] == 1.25
    assert "metrics" not in document


def test_json_metrics_match_the_attention(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(["info", str(capture), "--json", "--metrics"], capsys)
    metrics = json.loads(out)["metrics"]
    store = att_report.load(capture)
    names = [definition["name"] for definition in metrics["definitions"]]
    assert set(names) == set(metrics["values"]) and "sink" in names
    for layer in range(3):
        attention = store.attention(layer).astype(np.float64)
        np.testing.assert_allclose(metrics["values"]["sink"][layer], attention[:, :, 0].mean(axis=1), atol=1e-6)
        np.testing.assert_allclose(metrics["values"]["max_weight"][layer], attention[:, 1:].max(axis=(1, 2)),
                                   atol=1e-6)  # rows with two keys and more
    assert metrics["source"] == "computed at capture from the model's float32 weights"


def test_metrics_table_has_every_head_in_aligned_columns(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(["info", str(capture), "--metrics"], capsys)
    lines = out.splitlines()
    header_at = next(index for index, line in enumerate(lines) if line.split()[:2] == ["layer", "head"])
    table = lines[header_at: header_at + 1 + 3 * 4]
    assert len({len(line) for line in table}) == 1  # right-aligned columns: every row equally wide
    assert [tuple(map(int, line.split()[:2])) for line in table[1:]] == [(l, h) for l in range(3) for h in range(4)]
    store = att_report.load(capture)
    sink_column = table[0].split().index("sink") - 1  # the label "row max" is two words, its values one
    sink_1_2 = float(store.attention(1)[2, :, 0].astype(np.float64).mean())
    assert table[1 + 1 * 4 + 2].split()[sink_column] == f"{sink_1_2:.3f}"
    assert any(line.startswith("entropy") and "log(keys" in line for line in lines[header_at:])  # the legend


def test_compact_scoped_capture_says_its_encoding_scope_and_bound(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_synthetic_store(tmp_path / "c", TOKENS, PROMPT_LENGTH, num_layers=6, num_heads=5, dtype="uint8",
                          layer_indices=[0, 2, 3, 4], head_indices=[1, 4])
    _, out, _ = _run(["info", str(tmp_path / "c"), "--metrics"], capsys)
    assert _line(out, "attention") == "uint8-diffused, lower-triangle"
    assert _line(out, "bound").startswith("uint8-diffused: each weight within 1/255 (0.0039)")
    assert _line(out, "stored layers") == "0, 2-4 (of 6)" and _line(out, "stored heads") == "1, 4 (of 5)"
    lines = out.splitlines()
    header_at = next(index for index, line in enumerate(lines) if line.split()[:2] == ["layer", "head"])
    shown = [tuple(map(int, line.split()[:2])) for line in lines[header_at + 1: header_at + 9]]
    assert shown == [(layer, head) for layer in (0, 2, 3, 4) for head in (1, 4)]  # the model's indices


def test_a_damaged_capture_is_one_error_line(capture: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer_file = capture / "attention" / "layer-001.npy"
    layer_file.write_bytes(layer_file.read_bytes()[:-10])
    code, out, err = _run(["info", str(capture)], capsys)
    assert code != 0 and out == ""
    assert err.startswith("att-report: error: ") and "layer-001.npy" in err and err.count("\n") == 1


def test_a_folder_that_is_not_a_capture_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(["info", str(tmp_path)], capsys)
    assert code != 0 and out == ""
    assert err.startswith("att-report: error: ") and "manifest.json" in err and err.count("\n") == 1


def test_info_and_analysis_never_import_torch(capture: Path) -> None:
    script = (
        "import contextlib, io, sys\n"
        "import att_report.analysis.metrics, att_report.info\n"
        "from att_report.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    codes = [main(['info', {str(capture)!r}, '--metrics']), main(['info', {str(capture)!r}, '--json'])]\n"
        "print(codes, sorted(name for name in sys.modules if name.split('.')[0] in ('torch', 'transformers')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[0, 0] []"
