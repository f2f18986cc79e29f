"""The README is a test: its shell commands and Python snippets run as written, parsed out of README.md, so a
README that drifts from the code fails here.

Offline and small: a model the commands name that cannot be downloaded here runs as a tiny model of the same kind
(STAND_INS); so do the captures of the embedded SmolLM2 (each costs half a minute on a loaded CPU; `demo` still runs
it for real), and captures generate FEW_TOKENS instead of the default. Nothing else is changed."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from att_report.capturing.models import EMBEDDED_PACKAGE
from att_report.cli import main
from conftest import REPO, unavailable

pytestmark = pytest.mark.smollm2

README = REPO / "README.md"
# A model the README names that this offline test cannot download -> the tiny kind (tests/tiny_models.py) it runs.
STAND_INS: dict[str | None, str] = {
    "Qwen/Qwen2.5-0.5B-Instruct": "qwen2",
    "./my-model": "gpt2",
    "big/model": "llama-gqa",
    "sentence-transformers/all-MiniLM-L6-v2": "bert",
    None: "qwen2",  # no --model: the embedded SmolLM2-135M-Instruct, a chat model
}
FEW_TOKENS = ["--max-new-tokens", "4"]
# Setup and development commands: installing, the CI script, the test suite itself, the benchmark, packaging.
NOT_RUN = (["pip"], ["bash", ".ci/run"], ["python", "-m", "pytest"], ["python", "examples/benchmark.py"],
           ["python", "-m", "build"])
# The input files the commands read, as a user would have written them.
INPUT_FILES = {
    "q.txt": "What does a transformer attend to?",
    "prompts.jsonl": '{"prompt": "Why is the sky blue?", "id": "sky"}\n{"prompt": "Why is the sea blue?"}\n',
}
SUBCOMMANDS = {"capture", "render", "run", "info", "demo", "compare"}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def readme_commands() -> list[list[str]]:
    """Every `att-report` command of the README's bash blocks, in order (a line's `&&` parts one by one)."""
    commands: list[list[str]] = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                part, words = (words[:words.index("&&")], words[words.index("&&") + 1:]) if "&&" in words \
                    else (words, [])
                if any(part[:len(prefix)] == prefix for prefix in NOT_RUN):
                    continue
                assert part[0] == "att-report", f"README.md runs {shlex.join(part)!r}: teach tests/test_readme.py it"
                commands.append(part[1:])
    return commands


def made_small(arguments: list[str], tiny_model: Callable[[str], Path]) -> list[str]:
    """Swap a model that needs the network for its tiny stand-in; generate a few tokens (a tiny model's context is short)."""
    if arguments[0] not in ("capture", "run"):
        return arguments
    small = list(arguments)
    model = None
    if "--model" in small:
        model = small.pop(small.index("--model") + 1)
        small.remove("--model")
    assert model in STAND_INS, f"README.md uses model {model}: add a stand-in to STAND_INS"
    small += ["--model", str(tiny_model(STAND_INS[model]))]
    return small if "--max-new-tokens" in small else [*small, *FEW_TOKENS]


@pytest.fixture
def embedded_model() -> None:
    import importlib.util

    if importlib.util.find_spec(EMBEDDED_PACKAGE) is None:
        unavailable(f"the {EMBEDDED_PACKAGE} package is not installed (.ci/run installs it)")


@pytest.mark.usefixtures("embedded_model")
def test_readme_commands_run_as_written(tiny_model: Callable[[str], Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name, text in INPUT_FILES.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    commands = readme_commands()
    assert {command[0] for command in commands} == SUBCOMMANDS  # every subcommand has its example
    for command in commands:
        code = main(made_small(command, tiny_model))
        captured = capfd.readouterr()
        assert code == 0, f"`att-report {shlex.join(command)}` failed: {captured.err}"
        if command[0] in ("render", "run", "demo", "compare"):
            assert captured.out.rstrip().endswith("in a browser"), captured.out  # says where to open it


def test_readme_python_snippets_run_as_written(tiny_model: Callable[[str], Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """In order, in one namespace, as in a notebook that already holds a (tiny, chat) model and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model("qwen2")  # grown to the snippets' needs: they generate 64 tokens and read layer 3
    grown = {"max_position_embeddings": 512, "num_hidden_layers": 4, "layer_types": ["full_attention"] * 4}
    namespace = {"model": AutoModelForCausalLM.from_pretrained(folder, **grown),
                 "tokenizer": AutoTokenizer.from_pretrained(folder)}
    monkeypatch.chdir(tmp_path)
    snippets = code_blocks("python")
    assert len(snippets) >= 2
    for number, snippet in enumerate(snippets, 1):
        exec(compile(snippet, f"README.md python block {number}", "exec"), namespace)  # noqa: S102 - the README's code
    assert (tmp_path / "sky" / "manifest.json").is_file() and (tmp_path / "sky-report" / "index.html").is_file()
