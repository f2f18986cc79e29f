"""The `att-report` command: argparse subcommands, each mapped onto one library call."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from att_report import __version__
from att_report.report.chunks import AGGREGATES
from att_report.report.compare import compare
from att_report.atomic import check_replaceable
from att_report.capturing.config import (
    ATTENTION_DTYPE_CHOICES,
    MODEL_DTYPE_CHOICES,
    CaptureConfig,
    check_settings,
    option_help,
)
from att_report.capturing.prompts import check_prompt_options
from att_report.errors import AttReportError, InternalError, UsageError
from att_report.report.render import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_SINGLE_FILE_MB,
    RenderOptions,
    check_render_target,
    render,
)
from att_report.store import check_is_capture, is_store

DEMO_PROMPT = "In two sentences: why is the sky blue, and why is the sunset red?"
DEMO_NEW_TOKENS = 48


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user mistake prints one line and returns a non-zero code, never a traceback."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
    except InternalError as error:
        print(f"att-report: internal error: {error} This is a bug in att-report {__version__}, not a mistake in what "
              "you gave; please report it with the command you ran and this line.", file=sys.stderr)
        return error.exit_code
    except AttReportError as error:
        print(f"att-report: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("att-report: interrupted; nothing was written.", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """Report a bad command line as one error line, like every other user mistake (subcommands inherit this)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`).")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="att-report", description="Static HTML reports of transformer attention.")
    parser.add_argument("--version", action="version", version=f"att-report {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    capture = commands.add_parser("capture", help="run a model on a prompt and store its attention")
    add_capture_arguments(capture)
    capture.add_argument("--force", action="store_true", help=option_help(CaptureConfig, "force"))
    capture.add_argument("-o", "--output", required=True, type=Path, help="the capture directory to write")
    capture.set_defaults(handler=run_capture_command)
    info = commands.add_parser("info", help="describe a capture: model, tokens, texts, settings, size, versions")
    info.add_argument("capture", type=Path, help="a capture directory (written by `att-report capture`)")
    info.add_argument("--metrics", action="store_true", help="add a table of every layer x head with every metric")
    info.add_argument("--json", action="store_true", help="print one JSON document instead of aligned lines")
    info.set_defaults(handler=run_info_command)

    render = commands.add_parser("render", help="turn a capture into an HTML report (no torch needed)")
    render.add_argument("capture", type=Path, help="the capture directory that `att-report capture -o` wrote")
    render.add_argument("-o", "--output", required=True, type=Path,
                        help="the report folder to write (with --single-file: the HTML file)")
    add_render_arguments(render)
    render.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress lines")
    render.set_defaults(handler=run_render_command)

    run = commands.add_parser("run", help="capture, then render: one command from prompt to report")
    add_capture_arguments(run)
    run.add_argument("-o", "--output", required=True, type=Path,
                     help="the report folder to write (with --single-file: the HTML file)")
    run.add_argument("--keep-capture", type=Path, metavar="DIR", help="also keep the capture store at DIR")
    run.add_argument("--force-capture", action="store_true",
                     help="replace an earlier capture at --keep-capture DIR (--force never touches it)")
    add_render_arguments(run)
    run.set_defaults(handler=run_run_command)

    demo = commands.add_parser("demo", help="a report of the embedded SmolLM2 on a built-in chat prompt")
    demo.add_argument("-o", "--output", required=True, type=Path, help="the report folder to write")
    demo.add_argument("--force", action="store_true", help="replace an earlier report at the output path")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    demo.set_defaults(handler=run_demo_command)

    compare = commands.add_parser("compare", help="two captures side by side, heads ranked by how they differ")
    compare.add_argument("capture_a", type=Path, help="the first capture directory (shown on the left)")
    compare.add_argument("capture_b", type=Path, help="the second capture directory (shown on the right)")
    compare.add_argument("-o", "--output", required=True, type=Path, help="the comparison folder to write")
    compare.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                         help=f"put fewer heads on a page that would exceed this many MB (default {DEFAULT_MAX_FILE_MB:g})")
    compare.add_argument("--force", action="store_true", help="replace an earlier comparison at the output path")
    compare.set_defaults(handler=run_compare_command)
    return parser


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the report options (shared by `render` and `run`)."""
    parser.add_argument("--aggregate", choices=AGGREGATES, default="none",
                        help="none: one file per layer and group of 8 heads; heads: the mean of each layer's heads; "
                             "layers: the mean over all heads and layers")
    parser.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                        help=f"split a chunk whose file would exceed this many MB (default {DEFAULT_MAX_FILE_MB:g})")
    parser.add_argument("--single-file", action="store_true",
                        help="write the whole report as one HTML file at -o (.html is added if missing), for a bug ticket")
    parser.add_argument("--single-file-mb", type=float, default=DEFAULT_SINGLE_FILE_MB,
                        help=f"the largest single file to write (default {DEFAULT_SINGLE_FILE_MB:g})")
    parser.add_argument("--zip", action="store_true", help="also pack the report folder as OUTPUT.zip")
    parser.add_argument("--force", action="store_true", help="replace an earlier report at -o")


def render_options_from(args: argparse.Namespace) -> RenderOptions:
    return RenderOptions(aggregate=args.aggregate, max_file_mb=args.max_file_mb, single_file=args.single_file,
                         single_file_mb=args.single_file_mb, zip=args.zip, force=args.force, progress=args.progress)


def add_capture_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every CaptureConfig option (shared by `capture` and `run`)."""
    def helped(name: str) -> str:
        return option_help(CaptureConfig, name)

    def defaulted(name: str) -> str:
        return option_help(CaptureConfig, name) + "; default %(default)s"

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help=helped("prompt"))
    source.add_argument("--prompt-file", type=Path, help="read the prompt from a UTF-8 file")
    source.add_argument("--prompts-file", type=Path,
                        help="capture each line of a JSONL file ({\"prompt\", optional \"completion\", \"id\"}) into OUTPUT/ID")
    parser.add_argument("--model", help=helped("model"))
    parser.add_argument("--gguf-file", help=helped("gguf_file"))
    parser.add_argument("--revision", help=helped("revision"))
    parser.add_argument("--trust-remote-code", action="store_true", help=helped("trust_remote_code"))
    parser.add_argument("--dtype", choices=MODEL_DTYPE_CHOICES, default="auto", help=helped("dtype"))
    parser.add_argument("--device", default="auto", help=helped("device"))
    parser.add_argument("--device-map", choices=["auto"], help=helped("device_map"))
    parser.add_argument("--chat", action="store_true", help=helped("chat"))
    parser.add_argument("--system", help=helped("system"))
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--completion", help=helped("completion"))
    given.add_argument("--completion-file", type=Path, help="read the known completion from a UTF-8 file")
    parser.add_argument("--max-new-tokens", type=int, default=64, help=defaulted("max_new_tokens"))
    parser.add_argument("--sample", action="store_true", help=helped("sample"))
    parser.add_argument("--seed", type=int, default=0, help=defaulted("seed"))
    parser.add_argument("--temperature", type=float, default=1.0, help=defaulted("temperature"))
    parser.add_argument("--top-p", type=float, default=1.0, help=defaulted("top_p"))
    parser.add_argument("--top-k", type=int, default=0, help=defaulted("top_k"))
    parser.add_argument("--saliency", action="store_true", help=helped("saliency"))
    parser.add_argument("--neurons", type=int, default=0, metavar="K", help=helped("neurons"))
    parser.add_argument("--predict-all", action="store_true", help=helped("predict_all"))
    parser.add_argument("--attention-dtype", choices=ATTENTION_DTYPE_CHOICES, default="auto", help=helped("attention_dtype"))
    parser.add_argument("--layers", metavar="SPEC", help=helped("layers"))
    parser.add_argument("--heads", metavar="SPEC", help=helped("heads"))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def capture_config_from(args: argparse.Namespace, force: bool) -> CaptureConfig:
    """Map parsed flags onto a CaptureConfig, reading --prompt-file and --completion-file; `force` replaces an
    earlier capture (`capture --force`, `run --force-capture`)."""
    if args.prompt is not None:
        prompt = args.prompt
    elif args.prompt_file is not None:
        prompt = read_text_file(args.prompt_file, "--prompt-file")
    else:
        prompt = ""  # --prompts-file: each line supplies its own prompt
    completion = args.completion
    if args.completion_file is not None:
        completion = read_text_file(args.completion_file, "--completion-file")
    return CaptureConfig(
        prompt=prompt, model=args.model, gguf_file=args.gguf_file, revision=args.revision,
        trust_remote_code=args.trust_remote_code, dtype=args.dtype, device=args.device, device_map=args.device_map,
        chat=args.chat, system=args.system, completion=completion, max_new_tokens=args.max_new_tokens,
        sample=args.sample, seed=args.seed, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
        saliency=args.saliency, neurons=args.neurons, predict_all=args.predict_all,
        attention_dtype=args.attention_dtype, layers=args.layers, heads=args.heads, force=force,
        progress=args.progress,
    )


def read_text_file(path: Path, flag: str) -> str:
    """Read a UTF-8 text file named by a flag, or say why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{flag} {path} does not exist; give the path of a UTF-8 text file.")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"{flag} {path} cannot be read as UTF-8 text ({error}); give a UTF-8 text file.")


def run_capture_command(args: argparse.Namespace) -> int:
    config = capture_config_from(args, force=args.force)
    if args.prompts_file is not None:
        return run_batch_command(args, config)
    check_capture_request(config, args.output, "--force")
    from att_report.capturing.pipeline import capture_with_config  # imports torch: only once the request is checked

    store = capture_with_config(config, args.output)
    print(f"capture written to {store}")
    return 0


def check_capture_request(config: CaptureConfig, output: Path, force_flag: str) -> None:
    """Refuse every argument that no model can fix before torch is imported, so a mistake costs a moment."""
    check_replaceable(output, config.force, is_store, "capture", force_flag)
    check_prompt_options(config)
    check_settings(config)


def run_info_command(args: argparse.Namespace) -> int:
    from att_report.info import info  # numpy only: info never imports torch

    check_is_capture(args.capture)
    sys.stdout.write(info(args.capture, with_metrics=args.metrics, as_json=args.json))
    return 0


def run_batch_command(args: argparse.Namespace, config: CaptureConfig) -> int:
    """Capture every prompt of a JSONL file; report failing lines at the end and exit 1 if any failed."""
    check_settings(config)
    from att_report.capturing.batch import capture_batch, summary_lines  # imports torch

    result = capture_batch(config, args.prompts_file, args.output)
    for line in summary_lines(result, args.prompts_file):
        print(line, file=sys.stderr if result.failures else sys.stdout)
    return 1 if result.failures else 0


def single_file_path(output: Path) -> Path:
    """Give a single-file report the .html name a browser and a bug tracker need."""
    return output if output.suffix.lower() in (".html", ".htm") else output.with_name(output.name + ".html")


def run_render_command(args: argparse.Namespace) -> int:
    check_is_capture(args.capture)
    output = single_file_path(args.output) if args.single_file else args.output
    print(opening_line("report", render(args.capture, output, render_options_from(args)), args.zip))
    return 0


def run_run_command(args: argparse.Namespace) -> int:
    """Capture into --keep-capture or a temporary folder, then render; every target is checked first, so no work is
    lost, and --force replaces only the report (an earlier kept capture needs --force-capture)."""
    if args.prompts_file is not None:
        raise UsageError("`att-report run` takes one prompt; capture a --prompts-file with `att-report capture`, "
                         "then render each capture.")
    if args.force_capture and args.keep_capture is None:
        raise UsageError("--force-capture replaces the capture kept with --keep-capture DIR; add --keep-capture DIR.")
    output = single_file_path(args.output) if args.single_file else args.output
    if args.keep_capture is not None and args.keep_capture.absolute() == output.absolute():
        raise UsageError(f"--keep-capture and -o both name {output}; give the capture and the report their own paths.")
    options = render_options_from(args)
    check_render_target(output, options)
    config = capture_config_from(args, force=args.force_capture)
    with tempfile.TemporaryDirectory(prefix="att-report-") as scratch:
        store = args.keep_capture or Path(scratch) / "capture"
        check_capture_request(config, store, "--force-capture")
        from att_report.capturing.pipeline import capture_with_config  # imports torch: only for capture commands

        written = render(capture_with_config(config, store), output, options)
    print(opening_line("report", written, args.zip))
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """Capture the built-in chat prompt with the embedded model and render it."""
    options = RenderOptions(force=args.force, progress=args.progress)
    check_render_target(args.output, options)
    from att_report.capturing.pipeline import capture_with_config

    config = CaptureConfig(prompt=DEMO_PROMPT, chat=True, max_new_tokens=DEMO_NEW_TOKENS, progress=args.progress)
    with tempfile.TemporaryDirectory(prefix="att-report-") as scratch:
        written = render(capture_with_config(config, Path(scratch) / "capture"), args.output, options)
    print(opening_line("report", written))
    return 0


def run_compare_command(args: argparse.Namespace) -> int:
    for capture in (args.capture_a, args.capture_b):
        check_is_capture(capture)
    written = compare(args.capture_a, args.capture_b, args.output, force=args.force, max_file_mb=args.max_file_mb)
    print(opening_line("comparison", written))
    return 0


def opening_line(kind: str, written: Path, zipped: bool = False) -> str:
    """Say where the output is and the address to open in a browser (a folder opens at its index.html)."""
    page = written / "index.html" if written.is_dir() else written
    also = f" and {written.with_name(written.name + '.zip')}" if zipped else ""
    return f"{kind} written to {written}{also}; open {page.resolve().as_uri()} in a browser"


if __name__ == "__main__":
    sys.exit(main())
