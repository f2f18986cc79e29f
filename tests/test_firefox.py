"""Firefox smoke test: a report's index and a chunk page open from file:// in Debian's firefox-esr, driven through
WebDriver BiDi by tests/firefox/smoke.mjs (puppeteer-core, no downloaded browser): no network request, no console
error, the observer view's data-weight within 1/255 of the store, and canvas export giving a PNG; and a notebook's
inline report (the iframe srcdoc) opening on its layer and head, its links staying inside the frame."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import att_report
from att_report.report.notebook import inline_report
from conftest import unavailable
from synthetic import write_synthetic_store

DRIVER = Path(__file__).resolve().parent / "firefox"
BOUND = 1 / 255 + 1e-6  # a page's bytes diffuse each row's rounding: each weight within 1/255 of the store
PNG_SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10]
# Hostile and multi-byte text, so Firefox's decoding of the escaped token data is exercised too.
TOKENS = ["<s>", "Ünïcode", " </script>", " 🙂", " &amp;", " the", " cat", " sat", " on", " a", " mat", "."]
TOKEN = 10


def _firefox_driver() -> tuple[str, str]:
    """The firefox-esr and node executables, with the driver's packages installed; else skip (fail on CI)."""
    firefox, node = shutil.which("firefox-esr"), shutil.which("node")
    missing = [what for what, present in (("firefox-esr (apt-get install firefox-esr)", firefox),
                                          ("node (apt-get install nodejs npm)", node),
                                          ("tests/firefox/node_modules (npm ci in tests/firefox)",
                                           (DRIVER / "node_modules" / "puppeteer-core").is_dir())) if not present]
    if missing:
        unavailable("the Firefox smoke test needs " + ", ".join(missing) + "; bash .ci/run installs them")
    assert firefox and node
    return firefox, node


@pytest.mark.browser
def test_report_pages_work_in_firefox(tmp_path: Path) -> None:
    firefox, node = _firefox_driver()
    write_synthetic_store(tmp_path / "store", TOKENS, prompt_length=8, num_layers=2, num_heads=3)
    report = att_report.render(tmp_path / "store", tmp_path / "report")
    inline = tmp_path / "notebook.html"  # what a notebook page holds around a cell's output
    inline.write_text("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>notebook</title></head><body>"
                      + inline_report(tmp_path / "store", layer=1, head=2)._repr_html_() + "</body></html>\n",
                      encoding="utf-8")
    done = subprocess.run([node, "smoke.mjs", firefox, str(report / "index.html"),
                           str(report / "layer-00-heads-0-2.html"), str(TOKEN), str(inline)],
                          cwd=DRIVER, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])

    for page in (seen["index"], seen["chunk"], seen["inline"]):
        assert page["consoleErrors"] == [] and page["pageErrors"] == [], page["url"]
        # data: and blob: are no network: Firefox itself may load a data: font; nothing else may be asked for.
        assert [url for url in page["requests"] if url.split(":", 1)[0] not in ("data", "blob")] == [], page["url"]
    assert "Firefox/" in seen["chunk"]["userAgent"]
    store = att_report.load(tmp_path / "store")
    for page, layer in ((seen["chunk"], 0), (seen["inline"], 1)):
        truth = store.attention(layer)[int(page["head"]), TOKEN]
        assert len(page["weights"]) == len(TOKENS)
        assert np.abs(np.array(page["weights"]) - truth).max() <= BOUND
    assert seen["inline"]["head"] == "2" and seen["inline"]["frameUrl"] == "about:srcdoc#section=layer-01-heads-0-2&head=2"
    assert seen["inline"]["clickedUrl"] == "about:srcdoc" + seen["inline"]["clicked"]
    assert seen["inline"]["parentUrl"] == inline.as_uri()
    for export in (seen["index"]["gridPng"], seen["chunk"]["matrixPng"]):
        assert export["head"] == PNG_SIGNATURE and export["size"] > 100 and export["name"].endswith(".png")
