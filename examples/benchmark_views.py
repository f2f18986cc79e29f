"""Benchmark the chunk page at length in headless Chromium (not a test; prints figures).

A synthetic causal attention of --tokens tokens and --heads heads with a heavy tail of tiny weights (as real long
prompts have: a sink, a few strong keys, most of each row's mass spread thinly) is rendered as one chunk page; then,
by the page's own clock: open to interactive (body[data-shown]), the whole matrix drawn (canvas[data-drawn]), one
hover update of the observer view (event, handlers and the style and layout it causes) as p50 and p95, the switch to
the group mean, the JS heap (CDP Performance.getMetrics JSHeapUsedSize) and the renderer's resident memory; and the
page's size.

    python examples/benchmark_views.py [--tokens 8192] [--heads 3] [--hovers 200] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchmark import HOVER_PROBE, SHOWN_PROBE  # the main benchmark's probes: the same figures, measured the same way

from att_report.report.page_types import HeadLabel, Link, Navigation, TokenText
from att_report.report.templating import write_html
from att_report.report.viewer import Section, render_chunk_page

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from synthetic import heavy_tail_attention  # noqa: E402  (the tests' long-prompt attention, built in row blocks)

WORDS = ["The", " quick", " brown", " fox", "\n", " jumps", " over", " the", " lazy", " dog", "."]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
def build_page(path: Path, tokens: int, heads: int) -> dict[str, Any]:
    """Render the synthetic chunk page; say how long it took and how big it is."""
    attention = heavy_tail_attention(np.random.default_rng(0), heads, tokens)
    tiny = float(np.where(attention[:, -1] < 1 / 510, attention[:, -1], 0).sum(-1).mean())
    text = TokenText(tuple(WORDS[i % len(WORDS)] for i in range(tokens)), (False,) * tokens, tokens - 64, True)
    section = Section("L00-H0", "Layer 0", 0, tuple(HeadLabel(h, f"head {h}") for h in range(heads)), attention, 0)
    navigation = Navigation(index=Link("Index", "index.html"), prev_layer=None, next_layer=None, prev_group=None, next_group=None)
    started = time.perf_counter()
    write_html(path, render_chunk_page("Layer 0", text, [section], navigation))
    return {
        "tokens x heads": f"{tokens} x {heads}",
        "last row's mass in weights < 1/510": round(tiny, 3),
        "render s": round(time.perf_counter() - started, 1),
        "page MB": round(path.stat().st_size / 1e6, 2),
    }


def measure(path: Path, tokens: int, hovers: int, screenshots: Path | None) -> dict[str, Any]:
    """Open the page in headless Chromium and time it by its own clock."""
    import psutil
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        page.add_init_script(SHOWN_PROBE)
        session = page.context.new_cdp_session(page)
        session.send("Performance.enable")
        page.goto(path.as_uri())
        page.wait_for_selector("body[data-shown]", timeout=120_000)
        shown = page.evaluate("window.__shownAt")
        page.wait_for_selector("canvas[data-matrix][data-drawn]", timeout=120_000)
        drawn = page.evaluate("performance.now()")
        hover = page.evaluate(HOVER_PROBE, hovers)
        mean = page.evaluate("""() => {
          const started = performance.now();
          document.querySelector('[data-head="mean"]').click();
          document.body.offsetHeight;
          return performance.now() - started;
        }""")
        metrics = {m["name"]: m["value"] for m in session.send("Performance.getMetrics")["metrics"]}
        renderers = [p for p in psutil.process_iter(["cmdline"]) if "--type=renderer" in " ".join(p.info["cmdline"] or [])]
        resident = max((p.memory_info().rss for p in renderers), default=0)
        if screenshots:
            shoot(page, screenshots, tokens)
        browser.close()
    figures: dict[str, Any] = {
        "open to interactive, page clock, ms": round(shown),
        "whole matrix drawn, page clock, ms": round(drawn),
    }
    figures["observer hover p50 / p95 ms"] = f"{hover[0]:.1f} / {hover[1]:.1f}"
    figures["switch to the group mean (unpacks every head), ms"] = round(mean)
    figures["JSHeapUsedSize MB"] = round(metrics["JSHeapUsedSize"] / 1e6, 1)
    figures["renderer RSS MB (largest renderer)"] = round(resident / 1e6)
    return figures


def shoot(page: Any, folder: Path, tokens: int) -> None:
    """Screenshots of the long page: views with their strips, and the matrix zoomed to single tokens."""
    folder.mkdir(parents=True, exist_ok=True)
    page.hover(f'[data-view="observer"] [data-index="{tokens - 100}"]')
    page.click('[data-strip="observer"] [data-block-start]:last-child')
    page.hover('[data-view="observed"] [data-index="3"]')
    page.screenshot(path=str(folder / "views.png"))
    box = page.locator("[data-matrix]").bounding_box()
    page.mouse.move(box["x"] + 0.7 * box["width"], box["y"] + 0.9 * box["height"])
    page.screenshot(path=str(folder / "matrix-whole.png"))
    for _ in range(10):
        page.mouse.wheel(0, -100)
    page.wait_for_selector("canvas[data-matrix][data-drawn]")
    page.mouse.move(box["x"] + 0.5 * box["width"] + 3, box["y"] + 0.5 * box["height"] + 3)
    page.locator("[data-matrix-panel]").screenshot(path=str(folder / "matrix-zoomed.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=3, help="heads on the page (about what fits 10 MB at 8k)")
    parser.add_argument("--hovers", type=int, default=200, help="observer hovers timed, evenly spaced over the tokens")
    parser.add_argument("--screenshots", type=Path, help="save screenshots of the long page here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "chunk.html"
        figures = build_page(path, args.tokens, args.heads)
        figures.update(measure(path, args.tokens, args.hovers, args.screenshots))
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
