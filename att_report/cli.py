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
from att_report.capturing.config import ATTENTION_DTYPE_CHOICES, MODEL_DTYPE_CHOICES, CaptureConfig, option_help
from att_report.errors import AttReportError, UsageError
from att_report.report.render import (
    DEFAULT_MAX_FILE_MB,
    DEFAULT_SINGLE_FILE_MB,
    RenderOptions,
    check_render_target,
    render,
)

DEMO_PROMPT = "In two sentences: why is the sky blue, and why is the sunset red?"
DEMO_NEW_TOKENS = 48


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; a user mistake prints one line and returns a non-zero code, never a traceback."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.handler(args) or 0)
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
    render.set_defaults(handler=run_render_command)

    run = commands.add_parser("run", help="capture, then render: one command from prompt to report")
    add_capture_arguments(run)
    run.add_argument("-o", "--output", required=True, type=Path, help="the report folder to write")
    run.add_argument("--keep-capture", type=Path, metavar="DIR", help="also keep the capture store at DIR")
    add_render_arguments(run, with_force=False)
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


def add_render_arguments(parser: argparse.ArgumentParser, with_force: bool = True) -> None:
    """Add the report options (shared by `render` and `run`)."""
    parser.add_argument("--aggregate", choices=AGGREGATES, default="none",
                        help="none: one file per layer and group of 8 heads; heads: the mean of each layer's heads; "
                             "layers: the mean over all heads and layers")
    parser.add_argument("--max-file-mb", type=float, default=DEFAULT_MAX_FILE_MB,
                        help=f"split a chunk whose file would exceed this many MB (default {DEFAULT_MAX_FILE_MB:g})")
    parser.add_argument("--single-file", action="store_true",
                        help="write the whole report as one HTML file at -o, for a bug ticket")
    parser.add_argument("--single-file-mb", type=float, default=DEFAULT_SINGLE_FILE_MB,
                        help=f"the largest single file to write (default {DEFAULT_SINGLE_FILE_MB:g})")
    parser.add_argument("--zip", action="store_true", help="also pack the report folder as OUTPUT.zip")
    if with_force:
        parser.add_argument("--force", action="store_true", help="replace an earlier report at the output path")


def render_options_from(args: argparse.Namespace) -> RenderOptions:
    return RenderOptions(aggregate=args.aggregate, max_file_mb=args.max_file_mb, single_file=args.single_file,
                         single_file_mb=args.single_file_mb, zip=args.zip, force=args.force)


def add_capture_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every CaptureConfig option (shared by `capture` and `run`)."""
    def helped(name: str) -> str:
        return option_help(CaptureConfig, name)

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
    parser.add_argument("--max-new-tokens", type=int, default=64, help=helped("max_new_tokens"))
    parser.add_argument("--sample", action="store_true", help=helped("sample"))
    parser.add_argument("--seed", type=int, default=0, help=helped("seed"))
    parser.add_argument("--temperature", type=float, default=1.0, help=helped("temperature"))
    parser.add_argument("--top-p", type=float, default=1.0, help=helped("top_p"))
    parser.add_argument("--top-k", type=int, default=0, help=helped("top_k"))
    parser.add_argument("--saliency", action="store_true", help=helped("saliency"))
    parser.add_argument("--neurons", type=int, default=0, metavar="K", help=helped("neurons"))
    parser.add_argument("--predict-all", action="store_true", help=helped("predict_all"))
    parser.add_argument("--attention-dtype", choices=ATTENTION_DTYPE_CHOICES, default="float16", help=helped("attention_dtype"))
    parser.add_argument("--force", action="store_true", help=helped("force"))
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def capture_config_from(args: argparse.Namespace) -> CaptureConfig:
    """Map parsed flags onto a CaptureConfig, reading --prompt-file and --completion-file."""
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
        attention_dtype=args.attention_dtype, force=args.force, progress=args.progress,
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
    if args.prompts_file is not None:
        return run_batch_command(args)
    from att_report.capturing.pipeline import capture_with_config  # imports torch: only for capture commands

    store = capture_with_config(capture_config_from(args), args.output)
    print(f"capture written to {store}")
    return 0


def run_info_command(args: argparse.Namespace) -> int:
    from att_report.info import info  # numpy only: info never imports torch

    sys.stdout.write(info(args.capture, with_metrics=args.metrics, as_json=args.json))
    return 0


def run_batch_command(args: argparse.Namespace) -> int:
    """Capture every prompt of a JSONL file; report failing lines at the end and exit 1 if any failed."""
    from att_report.capturing.batch import capture_batch, summary_lines  # imports torch

    result = capture_batch(capture_config_from(args), args.prompts_file, args.output)
    for line in summary_lines(result, args.prompts_file):
        print(line, file=sys.stderr if result.failures else sys.stdout)
    return 1 if result.failures else 0


def run_render_command(args: argparse.Namespace) -> int:
    written = render(args.capture, args.output, render_options_from(args))
    print(f"report written to {written}" + (f" and {written.with_name(written.name + '.zip')}" if args.zip else ""))
    return 0


def run_run_command(args: argparse.Namespace) -> int:
    """Capture into --keep-capture or a temporary folder, then render; the report is checked first, so no work is lost."""
    if args.prompts_file is not None:
        raise UsageError("`att-report run` takes one prompt; capture a --prompts-file with `att-report capture`, "
                         "then render each capture.")
    options = render_options_from(args)
    check_render_target(args.output, options)
    from att_report.capturing.pipeline import capture_with_config  # imports torch: only for capture commands

    with tempfile.TemporaryDirectory(prefix="att-report-") as scratch:
        store = capture_with_config(capture_config_from(args), args.keep_capture or Path(scratch) / "capture")
        written = render(store, args.output, options)
    print(f"report written to {written}")
    return 0


def run_demo_command(args: argparse.Namespace) -> int:
    """Capture the built-in chat prompt with the embedded model and render it."""
    options = RenderOptions(force=args.force)
    check_render_target(args.output, options)
    from att_report.capturing.pipeline import capture_with_config

    config = CaptureConfig(prompt=DEMO_PROMPT, chat=True, max_new_tokens=DEMO_NEW_TOKENS, progress=args.progress)
    with tempfile.TemporaryDirectory(prefix="att-report-") as scratch:
        written = render(capture_with_config(config, Path(scratch) / "capture"), args.output, options)
    print(f"report written to {written}; open {written / 'index.html'} in a browser")
    return 0


def run_compare_command(args: argparse.Namespace) -> int:
    written = compare(args.capture_a, args.capture_b, args.output, force=args.force, max_file_mb=args.max_file_mb)
    print(f"comparison written to {written}; open {written / 'index.html'} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
