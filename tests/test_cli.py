"""The command line as a user meets it: where to open what was written, what each --force replaces, the names it
gives, the help it prints, and a bug reported as a bug."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic import write_synthetic_store

import att_report
from att_report import cli
from att_report.cli import main
from att_report.errors import InternalError
from att_report.report.progress import LayerProgress, clock

TOKENS = ["The", " sky", " is", " blue", "."]


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    write_synthetic_store(tmp_path / "capture", TOKENS, prompt_length=3)
    return tmp_path / "capture"


def run_cli(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(list(argv))
    captured = capfd.readouterr()
    return code, captured.out, captured.err


def one_error_line(code: int, stderr: str) -> str:
    assert code != 0 and stderr.count("\n") == 1 and stderr.startswith("att-report: error: "), stderr
    return stderr


def test_render_reports_its_progress_on_stderr_unless_asked_not_to(capture: Path, tmp_path: Path,
                                                                    capfd: pytest.CaptureFixture[str]) -> None:
    """Not a terminal: one line when the pass ends (and one per REPORT_EVERY_S before it), never on stdout."""
    layers = len(att_report.load(capture).layer_indices)
    code, stdout, stderr = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "report"))
    assert code == 0 and "rendering" not in stdout
    assert re.fullmatch(rf"rendering: layer {layers} of {layers}, \d+:\d\d elapsed\n", stderr), stderr
    code, _, stderr = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "quiet"), "--no-progress")
    assert code == 0 and stderr == ""


def test_progress_estimates_the_time_left_from_the_mean_layer_time() -> None:
    progress = LayerProgress(30, "rendering", enabled=True, stream=io.StringIO())
    progress.done = 10
    assert progress.line(125.0) == "rendering: layer 10 of 30, 2:05 elapsed, about 4:10 left"  # 12.5 s a layer x 20
    assert clock(3 * 3600 + 61) == "3:01:01"


def test_render_says_where_to_open_the_report(capture: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "report"))
    index = (tmp_path / "report" / "index.html").resolve()
    assert code == 0 and index.is_file()
    assert stdout == f"report written to {tmp_path / 'report'}; open {index.as_uri()} in a browser\n"
    assert index.as_uri().startswith("file:///")


def test_single_file_gets_the_html_extension(capture: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "sky-single"), "--single-file")
    written = tmp_path / "sky-single.html"
    assert code == 0 and written.is_file() and not (tmp_path / "sky-single").exists()
    assert stdout == f"report written to {written}; open {written.resolve().as_uri()} in a browser\n"
    code, _, _ = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "named.HTML"), "--single-file")
    assert code == 0 and (tmp_path / "named.HTML").is_file() and not (tmp_path / "named.HTML.html").exists()


def test_an_empty_report_folder_is_simply_used(capture: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "report").mkdir()
    code, _, stderr = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "report"))
    assert code == 0, stderr
    assert (tmp_path / "report" / "index.html").is_file()


@pytest.mark.parametrize("command", ["render", "info", "compare"])
def test_a_report_given_as_a_capture_is_named(command: str, capture: Path, tmp_path: Path,
                                              capfd: pytest.CaptureFixture[str]) -> None:
    assert main(["render", str(capture), "-o", str(tmp_path / "report")]) == 0
    extra = {"render": ["-o", str(tmp_path / "again")], "info": [], "compare": [str(capture), "-o", str(tmp_path / "c")]}
    stderr = one_error_line(*run_cli(capfd, command, str(tmp_path / "report"), *extra[command])[::2])
    assert "report is an att-report report, not a capture; load() and every command take the capture directory" in stderr
    assert "capture it again" not in stderr


def test_a_bug_is_reported_as_a_bug(capture: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An internal invariant failure (injected here: none is known) exits 70, not 2, and says where it belongs."""
    def broken_render(*_: object) -> Path:
        raise InternalError("The matrices to encode have shape (3,); expected (heads, rows, tokens).")

    monkeypatch.setattr(cli, "render", broken_render)
    code, _, stderr = run_cli(capfd, "render", str(capture), "-o", str(tmp_path / "report"))
    assert code == 70 and stderr.count("\n") == 1
    assert stderr.startswith("att-report: internal error: The matrices to encode have shape (3,)")
    assert f"This is a bug in att-report {att_report.__version__}, not a mistake in what you gave" in stderr


def help_text(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """What `att-report COMMAND --help` prints, with argparse's line wrapping undone."""
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_says_what_each_force_replaces(capsys: pytest.CaptureFixture[str]) -> None:
    run_help = help_text("run", capsys)
    assert run_help.endswith(" --force replace an earlier report at -o")
    assert "--force-capture replace an earlier capture at --keep-capture DIR (--force never touches it)" in run_help
    assert "--force replace an existing capture at the output path" in help_text("capture", capsys)
    for command in ("capture", "run"):
        assert "--max-new-tokens MAX_NEW_TOKENS most tokens to generate (0: the prompt alone); default 64" in \
            help_text(command, capsys)


@pytest.fixture(scope="module")
def gpt2(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("gpt2")


def test_run_force_replaces_the_report_and_only_force_capture_the_kept_capture(
        gpt2: Path, capture: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report"
    assert main(["render", str(capture), "-o", str(report)]) == 0
    common = ["run", "--model", str(gpt2), "--prompt", "hello", "--max-new-tokens", "2", "--no-progress",
              "-o", str(report), "--keep-capture", str(capture)]
    stderr = one_error_line(*run_cli(capfd, *common, "--force")[::2])
    assert "capture already holds an att-report capture; pass --force-capture to replace it." in stderr
    assert att_report.load(capture).manifest["model"]["name"] == "synthetic"  # the unrelated capture is intact
    code, stdout, stderr = run_cli(capfd, *common, "--force", "--force-capture")
    assert code == 0, stderr
    assert att_report.load(capture).manifest["input"]["prompt"] == "hello"
    assert stdout == f"report written to {report}; open {(report / 'index.html').resolve().as_uri()} in a browser\n"
    stderr = one_error_line(*run_cli(capfd, "run", "--model", str(gpt2), "--prompt", "hi", "-o",
                                     str(tmp_path / "other"), "--force-capture")[::2])
    assert "--force-capture replaces the capture kept with --keep-capture DIR" in stderr


@pytest.mark.parametrize("single_file", [False, True], ids=["folder", "single-file"])
def test_refusals_name_what_was_found_and_the_one_thing_to_do(single_file: bool, capture: Path, tmp_path: Path,
                                                               capfd: pytest.CaptureFixture[str]) -> None:
    """Something not ours is refused the same way with or without --force, and without advice to pass it; an
    earlier report of ours asks for --force, and --force replaces it."""
    flags = ["--single-file"] if single_file else []
    foreign = tmp_path / ("notes.html" if single_file else "notes")
    if single_file:
        foreign.write_text("<p>keep me</p>", encoding="utf-8")
    else:
        foreign.mkdir()
        (foreign / "index.html").write_text("<p>keep me</p>", encoding="utf-8")
    for force in ([], ["--force"]):
        stderr = one_error_line(*run_cli(capfd, "render", str(capture), "-o", str(foreign), *flags, *force)[::2])
        assert f"{foreign} exists and is not an att-report" in stderr and "never replaces it" in stderr
        assert "--force" not in stderr
    ours = tmp_path / ("ours.html" if single_file else "ours")
    assert main(["render", str(capture), "-o", str(ours), *flags]) == 0
    stderr = one_error_line(*run_cli(capfd, "render", str(capture), "-o", str(ours), *flags)[::2])
    assert stderr.endswith(f"{ours} already holds an att-report {'single-file report' if single_file else 'report'}; "
                           "pass --force to replace it.\n")
    assert run_cli(capfd, "render", str(capture), "-o", str(ours), *flags, "--force")[0] == 0
