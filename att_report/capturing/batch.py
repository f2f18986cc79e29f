"""Capture many prompts with one loaded model: one store per JSON line, going on past lines that fail."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
import orjson
from tqdm.auto import tqdm

from att_report.capturing.pipeline import capture_loaded
from att_report.capturing.config import CaptureConfig
from att_report.errors import AttReportError, UsageError
from att_report.capturing.models import load_model

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class BatchItem:
    """One line of a prompts file: where its store goes and what it asks for."""

    line: int
    store_name: str
    prompt: str
    completion: str | None


@dataclass(frozen=True)
class BatchResult:
    """What a batch wrote, and each line that failed with its one-line reason."""

    written: list[Path]
    failures: list[tuple[int, str]]


def read_prompts_file(path: Path) -> list[BatchItem | tuple[int, str]]:
    """Parse a JSONL prompts file; a bad line becomes (line number, reason) instead of stopping the batch."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--prompts-file {path} cannot be read as UTF-8 text ({error}); give a JSONL file.")
    items: list[BatchItem | tuple[int, str]] = []
    seen: set[str] = set()
    for number, text in enumerate(lines, start=1):
        if text.strip():
            items.append(_parse_line(number, text, seen))
    if not items:
        raise UsageError(f"--prompts-file {path} has no prompts; write one JSON object per line with a 'prompt'.")
    return items


def _parse_line(number: int, text: str, seen: set[str]) -> BatchItem | tuple[int, str]:
    try:
        record = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        return number, f"not valid JSON ({error})"
    if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
        return number, "needs a JSON object with a string 'prompt'"
    store_name = str(record.get("id", f"line-{number:04d}"))
    if not SAFE_ID.match(store_name):
        return number, f"id {store_name!r} must be letters, digits, '.', '_' or '-' (it names a directory)"
    if store_name in seen:
        return number, f"id {store_name!r} is used by an earlier line"
    seen.add(store_name)
    completion = record.get("completion")
    if completion is not None and not isinstance(completion, str):
        return number, "'completion' must be a string"
    return BatchItem(line=number, store_name=store_name, prompt=record["prompt"], completion=completion)


def capture_batch(config: CaptureConfig, prompts_file: Path, output: Path) -> BatchResult:
    """Capture every line of `prompts_file` into `output/ID`, loading the model once."""
    items = read_prompts_file(prompts_file)
    started = time.perf_counter()
    loaded = load_model(config)
    load_seconds = time.perf_counter() - started
    written: list[Path] = []
    failures: list[tuple[int, str]] = []
    for item in tqdm(items, desc="capturing prompts", unit="prompt", disable=not config.progress):
        if isinstance(item, tuple):
            failures.append(item)
            continue
        line_config = replace(config, model=loaded.name, prompt=item.prompt, completion=item.completion, progress=False)
        try:
            written.append(capture_loaded(loaded, line_config, output / item.store_name, load_seconds))
        except AttReportError as error:
            failures.append((item.line, str(error)))
        except Exception as error:  # noqa: BLE001 - one failing prompt must not lose the others
            failures.append((item.line, f"{type(error).__name__}: {error}"))
    return BatchResult(written=written, failures=failures)


def summary_lines(result: BatchResult, prompts_file: Path) -> list[str]:
    """Describe a batch for the terminal: what was written, then one line per failure."""
    lines = [f"{len(result.written)} captures written, {len(result.failures)} failed"]
    lines += [f"{prompts_file}:{line}: {reason}" for line, reason in result.failures]
    return lines
