"""Shared fixtures: tiny model folders for capture tests; a real headless Chromium (Debian's, never a downloaded one)
driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

# Tests never touch the network: a hub id fails at once instead of retrying for half a minute. huggingface_hub reads
# this when first imported, which is after this file loads.
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parent.parent

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def cli_environment(**changes: str | None) -> dict[str, str]:
    """This process's environment for a subprocess that must import this checkout's att_report (not an installed
    copy), with `changes` applied (None removes a variable)."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    for name, value in changes.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def on_ci() -> bool:
    """Whether this run is CI: any non-empty CI other than 0 or false (CI systems set true, 1 or yes)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def unavailable(message: str) -> NoReturn:
    """Skip a test whose browser, package or model is missing here; on CI, where everything is installed, fail."""
    if on_ci():
        pytest.fail(f"{message}; CI must run every test (CI={os.environ['CI']!r}).")
    pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Give the folder of a tiny model of a kind in tests/tiny_models.py, built once per session when first asked."""
    from tiny_models import tiny_model_folder  # imports torch: only for the tests that use a model

    root = tmp_path_factory.mktemp("tiny-models")
    return lambda kind: tiny_model_folder(kind, root)


def _chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Launch Chromium once per session; without one, skip locally but fail on CI."""
    executable = _chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        unavailable("no Chromium on PATH (apt-get install chromium) or no playwright package (pip install playwright)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """Open a fresh page that records console errors, page errors, dialogs and every network request."""
    context = browser.new_context()
    opened = context.new_page()
    opened.console_errors = []
    opened.page_errors = []
    opened.dialogs = []
    opened.requests = []
    opened.on("console", lambda message: message.type == "error" and opened.console_errors.append(message.text))
    opened.on("pageerror", lambda error: opened.page_errors.append(str(error)))
    opened.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
    opened.on("request", lambda request: opened.requests.append(request.url))
    yield opened
    context.close()
