"""Benchmark att-report on the embedded SmolLM2-135M-Instruct at about 1,000 tokens (not a test; prints figures).

Capture: plain `generate` vs `att-report capture` on the same prompt and token count (ratio of medians over
--runs), peak RSS of a capture in a fresh process against the model's own footprint, store bytes per value.
Render: wall time, report bytes per stored attention value, largest file; in headless Chromium, time from
opening a chunk to interactive and the time of one hover update.

    python examples/benchmark.py [--runs 3] [--new-tokens 900] [--prompt-repeat 1] [--skip-browser] [--skip-render]

--sweep instead times capture at length, each measurement in a fresh process: a long prompt and a short
teacher-forced completion at each of --lengths tokens, a plain SDPA forward pass against the whole capture, peak
RSS, and store bytes per stored weight, for the default attention encoding and for float16 (up to
--float16-up-to tokens); then the default capture rendered in a fresh process (wall, peak RSS, report bytes per
stored weight, largest file) and its largest chunk page opened in Chromium (examples/benchmark_views.py's figures).

    python examples/benchmark.py --sweep [--lengths 1000,2000,4000,8000] [--float16-up-to 4096] [--skip-browser]
                                 [--skip-render]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = (
    "Write a long, detailed essay about the history of the printing press, its inventors, how it spread across "
    "Europe, and how it changed science, religion, politics and everyday life. Use many paragraphs."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per timing; medians are reported")
    parser.add_argument("--new-tokens", type=int, default=900, help="tokens to generate")
    parser.add_argument("--prompt-repeat", type=int, default=1,
                        help="the essay prompt this many times over (20: about 730 prompt tokens, a prompt-heavy run)")
    parser.add_argument("--skip-browser", action="store_true", help="skip the headless Chromium timings")
    parser.add_argument("--store", type=Path, help="render this existing capture instead of capturing (render figures only)")
    parser.add_argument("--saliency-tokens", type=int, default=64, help="completion tokens explained by the saliency run")
    parser.add_argument("--sweep", action="store_true", help="time capture against a plain forward pass at --lengths")
    parser.add_argument("--lengths", default="1000,2000,4000,8000", help="token counts for --sweep, comma-separated")
    parser.add_argument("--skip-render", action="store_true", help="time capture only (no render or saliency)")
    parser.add_argument("--float16-up-to", type=int, default=4096,
                        help="--sweep captures in float16 too up to this many tokens (its store grows as tokens^2)")
    args = parser.parse_args()
    if args.sweep:
        sweep([int(length) for length in args.lengths.split(",")], args.float16_up_to, args.skip_browser,
              args.skip_render)
        return
    with tempfile.TemporaryDirectory() as scratch:
        prompt = " ".join([PROMPT] * args.prompt_repeat)
        store = args.store or benchmark_capture(Path(scratch), prompt, args.runs, args.new_tokens)
        if args.skip_render:
            return
        benchmark_render(Path(scratch), store, args.runs, args.skip_browser)
        if args.store is None:
            benchmark_saliency(store, args.saliency_tokens)


def benchmark_capture(scratch: Path, prompt: str, runs: int, new_tokens: int) -> Path:
    """Time generate and capture alternately on one loaded model; measure memory in a fresh process."""
    import torch

    from att_report.capturing.pipeline import capture_loaded
    from att_report.capturing.config import CaptureConfig
    from att_report.capturing.models import load_model

    torch.set_num_threads(os.cpu_count() or 1)
    config = CaptureConfig(prompt=prompt, chat=True, max_new_tokens=new_tokens, force=True, progress=False)
    loaded = load_model(config)
    prompt_ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    input_ids = loaded.tokenizer(prompt_ids, add_special_tokens=False, return_tensors="pt").input_ids
    generate_times, capture_times = [], []
    store = scratch / "capture"
    for _ in range(runs):
        started = time.perf_counter()
        with torch.inference_mode():
            output = loaded.model.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                                           max_new_tokens=new_tokens, do_sample=False)
        generate_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        capture_loaded(loaded, config, store, load_seconds=0.0)
        capture_times.append(time.perf_counter() - started)
    import att_report

    opened = att_report.load(store)
    assert opened.token_ids == output[0].tolist(), "capture and generate disagree on the tokens"
    tokens, layers, heads = opened.num_tokens, opened.num_layers, opened.num_heads
    store_bytes = sum(path.stat().st_size for path in store.rglob("*") if path.is_file())
    values = layers * heads * tokens * tokens
    report("capture", {
        "tokens (prompt + completion)": f"{opened.prompt_length} + {tokens - opened.prompt_length} = {tokens}",
        "plain generate, median s": round(statistics.median(generate_times), 2),
        "att-report capture, median s": round(statistics.median(capture_times), 2),
        "capture / generate": round(statistics.median(capture_times) / statistics.median(generate_times), 3),
        "store MB": round(store_bytes / 1e6, 1),
        "store bytes per attention value": round(store_bytes / values, 3),
        **peak_memory(scratch, prompt, new_tokens, heads, tokens),
    })
    return store


# The start of each memory probe, after `config`: the model loaded and paged in, the peak RSS reset to the current
# RSS (`before`), and `status(key)` to read /proc/self/status afterwards.
MODEL_AT_BASELINE = """import torch
from att_report.capturing.models import load_model
loaded = load_model(config)
with torch.inference_mode():  # page the memory-mapped weights in, so the baseline is the whole model
    loaded.model(torch.tensor([[1, 2]]))
def status(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM, the peak RSS, to the current RSS
before = status("VmRSS:")
"""


def peak_memory(scratch: Path, prompt: str, new_tokens: int, heads: int, tokens: int) -> dict[str, object]:
    """Load the model in a fresh process, reset its peak RSS, then measure the peak of generate or of capture."""
    probe = f"""
import pathlib
from att_report.capturing.config import CaptureConfig
from att_report.capturing.generation import generate
from att_report.capturing.pipeline import capture_loaded
config = CaptureConfig(prompt={prompt!r}, chat=True, max_new_tokens={new_tokens}, force=True, progress=False)
{MODEL_AT_BASELINE}mode = __import__("sys").argv[1]
if mode == "capture":
    capture_loaded(loaded, config, pathlib.Path({str(scratch / 'rss')!r}), 0.0)
elif mode == "record":
    given = __import__("att_report").load({str(scratch / 'capture')!r}).tokens
    completion = "".join(given[-{new_tokens}:])
    capture_loaded(loaded, __import__("dataclasses").replace(config, completion=completion), pathlib.Path({str(scratch / 'rss')!r}), 0.0)
else:
    text = loaded.tokenizer.apply_chat_template([{{"role": "user", "content": {prompt!r}}}], add_generation_prompt=True, tokenize=False)
    generate(loaded.model, loaded.tokenizer(text, add_special_tokens=False).input_ids, {new_tokens}, {{"do_sample": False}})
print(before, status("VmHWM:"))
"""
    figures = {}
    for mode in ("generate", "capture", "record"):
        result = subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True)
        loaded_kb, peak_kb = map(int, result.stdout.split()[-2:])
        figures[mode] = (loaded_kb / 1024, peak_kb / 1024)
    layer_mb = heads * tokens * tokens * 4 / 2**20
    model_mb = figures["capture"][0]
    return {
        "RSS of the loaded model after one forward pass, MB": round(model_mb),
        "peak RSS plain generate, MB": round(figures["generate"][1]),
        "peak RSS capture, MB": round(figures["capture"][1]),
        "peak RSS teacher-forced capture (recording pass alone), MB": round(figures["record"][1]),
        "one layer's float32 attention, MB": round(layer_mb, 1),
        "capture peak above the model, in layers": round((figures["capture"][1] - model_mb) / layer_mb, 2),
        "recording pass peak above the model, in layers": round((figures["record"][1] - model_mb) / layer_mb, 2),
    }


SALIENCY_PROBE = f"""
import sys, time, att_report
from att_report.capturing.config import CaptureConfig
from att_report.capturing.saliency import saliency_maps
store = att_report.load(sys.argv[1], verify=False)
ids = store.token_ids[: store.prompt_length + int(sys.argv[2])]
config = CaptureConfig(prompt="x", progress=False)
{MODEL_AT_BASELINE}started = time.perf_counter()
maps = saliency_maps(loaded.model, ids, store.prompt_length)
print(len(ids), len(maps.rows), time.perf_counter() - started, before, status("VmHWM:"))
"""


def benchmark_saliency(store: Path, completion_tokens: int) -> None:
    """Time `--saliency` (one forward pass, one backward pass per completion token) on the captured prompt and the
    first completion tokens, and its peak RSS above the loaded model, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", SALIENCY_PROBE, str(store), str(completion_tokens)],
                            capture_output=True, text=True, check=True)
    tokens, rows, seconds, before_kb, peak_kb = result.stdout.split()[-5:]
    report("saliency", {
        "tokens (prompt + explained completion)": f"{tokens} ({rows} explained)",
        "saliency seconds, total": round(float(seconds), 2),
        "saliency seconds per completion token": round(float(seconds) / int(rows), 3),
        "peak RSS above the loaded model, MB": round((int(peak_kb) - int(before_kb)) / 1024),
    })


def benchmark_render(scratch: Path, store: Path, runs: int, skip_browser: bool) -> None:
    """Render the store several times (median wall time), size the report, and time a chunk page in Chromium."""
    import att_report
    from att_report.report.render import RenderOptions, render

    times = []
    report_dir = scratch / "report"
    for _ in range(runs):
        started = time.perf_counter()
        render(store, report_dir, RenderOptions(force=True))
        times.append(time.perf_counter() - started)
    opened = att_report.load(store)
    values = opened.num_layers * opened.num_heads * opened.num_tokens ** 2
    stored_values = opened.num_layers * opened.num_heads * opened.num_tokens * (opened.num_tokens + 1) // 2
    files = sorted(report_dir.iterdir(), key=lambda path: path.stat().st_size)
    total = sum(path.stat().st_size for path in files)
    figures: dict[str, object] = {
        "render wall time, median s": round(statistics.median(times), 2),
        "report files": len(files),
        "report MB": round(total / 1e6, 1),
        "report bytes per stored attention value (lower triangle)": round(total / stored_values, 4),
        "report bytes per attention value (T x T)": round(total / values, 4),
        "largest file": f"{files[-1].name}, {files[-1].stat().st_size / 1e6:.2f} MB",
    }
    if not skip_browser:
        first_page = sorted(report_dir.glob("layer-00-*.html"))[0]  # one page, or the first part where it was split
        figures.update(browser_timings(first_page, opened.num_tokens, runs))
    report("render", figures)


HOVER_PROBE = """(count) => {
  const tokens = document.querySelectorAll('[data-view="observer"] [data-index]');
  const step = Math.max(1, Math.floor(tokens.length / count));
  const times = [];
  for (let i = 0; i < tokens.length; i += step) {
    const started = performance.now();
    tokens[i].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
    document.body.offsetHeight;  // include the style and layout work the update causes
    times.push(performance.now() - started);
  }
  times.sort((a, b) => a - b);
  return [times[Math.floor(times.length / 2)], times[Math.floor(times.length * 0.95)]];
}"""


SHOWN_PROBE = """
document.addEventListener('DOMContentLoaded', () => {
  new MutationObserver((_, observer) => {
    if (document.body.hasAttribute('data-shown')) { window.__shownAt = performance.now(); observer.disconnect(); }
  }).observe(document.body, {attributes: true});
}, {capture: true});
"""


def browser_timings(chunk: Path, num_tokens: int, runs: int) -> dict[str, object]:
    """Open a chunk page from file:// until it is interactive (its first section decoded, its views hover-ready:
    body[data-shown]), as the page's own clock measures it from navigation start, and as Playwright sees it from
    the goto call (which adds its own round trips); time hover updates."""
    import shutil

    from playwright.sync_api import sync_playwright

    flags = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
             "--disable-sync"]
    opens, walls, hovers = [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=flags)
        for _ in range(runs):
            page = browser.new_page()
            page.add_init_script(SHOWN_PROBE)
            started = time.perf_counter()
            page.goto(chunk.as_uri())
            page.wait_for_selector("body[data-shown]")
            walls.append((time.perf_counter() - started) * 1000)
            opens.append(page.evaluate("window.__shownAt"))
            hovers.append(page.evaluate(HOVER_PROBE, 200))
            page.close()
        browser.close()
    return {
        "chunk page": f"{chunk.name}, {chunk.stat().st_size / 1e6:.2f} MB, {num_tokens} tokens",
        "open to interactive (page clock, from navigation start), median ms": round(statistics.median(opens)),
        "open to interactive (Playwright goto to selector), median ms": round(statistics.median(walls)),
        "hover update, median ms (p95)": f"{statistics.median(h[0] for h in hovers):.2f} "
                                         f"({statistics.median(h[1] for h in hovers):.2f})",
    }


SWEEP_COMPLETION = " In short, it changed how ideas spread, and nothing was the same again."
# One measurement in a fresh process, after a short warm-up pass: argv = mode (plain or capture), tokens, attention
# dtype, scratch folder. Prints the wall seconds, for a capture its recording pass's seconds, the peak RSS in kB
# (ru_maxrss), and for a capture its store bytes, stored weights, token count, encoding and recording method.
SWEEP_PROBE = f"""
import json, pathlib, resource, sys, time
import torch
from att_report.capturing.config import CaptureConfig
from att_report.capturing.models import load_model
mode, tokens, dtype, scratch = sys.argv[1], int(sys.argv[2]), sys.argv[3], pathlib.Path(sys.argv[4])
loaded = load_model(CaptureConfig(prompt="x", progress=False))
completion = loaded.tokenizer({SWEEP_COMPLETION!r}, add_special_tokens=False).input_ids
unit = loaded.tokenizer({PROMPT!r} + " ", add_special_tokens=False).input_ids
prompt_ids = (unit * (tokens // len(unit) + 1))[:tokens - len(completion)]
ids = torch.tensor([prompt_ids + completion])
with torch.inference_mode():  # page the memory-mapped weights in and warm the kernels up, for both modes alike
    loaded.model(ids[:, :16], use_cache=False)
if mode == "plain":
    with torch.inference_mode():
        started = time.perf_counter()
        loaded.model(ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1)
        print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
else:
    from att_report.capturing.pipeline import capture_loaded
    config = CaptureConfig(prompt=loaded.tokenizer.decode(prompt_ids), completion={SWEEP_COMPLETION!r},
                           attention_dtype=dtype, force=True, progress=False)
    started = time.perf_counter()
    store = capture_loaded(loaded, config, scratch / "capture", 0.0)
    wall = time.perf_counter() - started
    manifest = json.loads((store / "manifest.json").read_text())
    attention = manifest["attention"]
    count = attention["num_tokens"]
    weights = len(attention["layer_indices"]) * len(attention["head_indices"]) * count * (count + 1) // 2
    size = sum(entry["bytes"] + entry.get("index", {{}}).get("bytes", 0) for entry in attention["files"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(wall, manifest["timings"]["record_s"], peak, size, weights, count, attention["encoding"],
          manifest["generation"]["record_attention"].replace(" ", "_"))
"""


RENDER_PROBE = """
import pathlib, resource, sys, time
from att_report.report.render import RenderOptions, render
store, output = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
started = time.perf_counter()
render(store, output, RenderOptions(progress=False))
print(time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def sweep(lengths: list[int], float16_up_to: int, skip_browser: bool, skip_render: bool) -> None:
    """For each length: a plain forward pass and a capture in the default encoding (and in float16 up to
    `float16_up_to` tokens, where the default is not float16 already), each in a fresh process, one table row per
    pair; then, unless `skip_render`, the default capture rendered in a fresh process and its largest chunk page
    opened in Chromium."""
    capture_header = ("tokens", "encoding", "plain s", "capture s", "capture/plain", "recording pass s",
                      "recording/plain", "peak RSS plain MB", "peak RSS capture MB", "store MB", "store bytes/weight",
                      "recorded by")
    render_rows = []
    print(" | ".join(capture_header))
    for length in lengths:
        plain_wall, plain_kb = map(float, run_probe(SWEEP_PROBE, "plain", str(length), "auto", "-")[:2])
        for dtype in ("auto", "float16"):
            with tempfile.TemporaryDirectory() as scratch:
                wall, record, peak_kb, size, weights, count, encoding, method = run_probe(
                    SWEEP_PROBE, "capture", str(length), dtype, scratch)[-8:]
                row = (count, encoding, f"{plain_wall:.2f}", f"{float(wall):.2f}", f"{float(wall) / plain_wall:.2f}",
                       f"{float(record):.2f}", f"{float(record) / plain_wall:.2f}", round(plain_kb / 1024),
                       round(float(peak_kb) / 1024), round(int(size) / 1e6, 1), f"{int(size) / int(weights):.4f}",
                       method)
                print(" | ".join(str(cell) for cell in row))
                sys.stdout.flush()
                if dtype == "auto" and not skip_render:
                    render_rows.append(render_figures(Path(scratch), int(weights), skip_browser))
            if encoding == "float16":
                break
            if length > float16_up_to:
                print(f"{count} | float16 | not run: its store would be {2 * int(weights) / 1e9:.1f} GB "
                      "(2 bytes per stored weight)")
                break
    for figures in render_rows:
        report(f"render, {figures.pop('tokens')} tokens", figures)


def render_figures(scratch: Path, weights: int, skip_browser: bool) -> dict[str, object]:
    """Render the capture in scratch in a fresh process; size the report; open its largest chunk page."""
    import att_report

    wall, peak_kb = map(float, run_probe(RENDER_PROBE, str(scratch / "capture"), str(scratch / "report")))
    files = sorted((path for path in (scratch / "report").iterdir()), key=lambda path: path.stat().st_size)
    total = sum(path.stat().st_size for path in files)
    pages = [path for path in files if path.name.startswith("layer-")]
    tokens = att_report.load(scratch / "capture").num_tokens
    figures: dict[str, object] = {
        "tokens": tokens,
        "render wall s": round(wall, 1),
        "render peak RSS MB": round(peak_kb / 1024),
        "report MB (files)": f"{total / 1e6:.1f} ({len(files)})",
        "report bytes per stored weight": round(total / weights, 4),
        "largest file": f"{files[-1].name}, {files[-1].stat().st_size / 1e6:.2f} MB",
    }
    if not skip_browser:
        from benchmark_views import measure

        figures["page opened"] = f"{pages[-1].name}, {pages[-1].stat().st_size / 1e6:.2f} MB"
        figures.update(measure(pages[-1], tokens, 200, None))
    return figures


def run_probe(probe: str, *arguments: str) -> list[str]:
    """Run a probe script in a fresh Python process; the words of its last line."""
    result = subprocess.run([sys.executable, "-c", probe, *arguments], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()[-1].split()


def report(stage: str, figures: dict[str, object]) -> None:
    print(f"== {stage}")
    for name, value in figures.items():
        print(f"  {name}: {value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
