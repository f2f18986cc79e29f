"""The one Jinja2 environment every page is rendered with, and the one way pages reach the disk."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import orjson
from markupsafe import Markup

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # att_report/


def asset_dir(name: str) -> Path:
    """Find `templates` or `js`: inside the installed wheel, else at the top of a source checkout."""
    for candidate in (_PACKAGE_DIR / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"att-report's {name}/ directory is missing; reinstall att-report.")


def script_json(value: Any) -> Markup:
    """Serialize `value` for a <script type="application/json"> element, escaping every character that could end it."""
    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    return Markup(text)  # safe: JSON with every markup-significant character escaped


def read_js(name: str) -> Markup:
    """Inline one of our own scripts from js/; a literal '</script' in it would be a bug, so refuse it."""
    text = (asset_dir("js") / name).read_text(encoding="utf-8")
    if "</script" in text.lower():
        raise ValueError(f"js/{name} contains '</script', which would end its inline element.")
    return Markup(compact_source(text))  # safe: our own source file, checked above


def read_css(name: str) -> Markup:
    """Inline one of our own style sheets from templates/."""
    text = (asset_dir("templates") / name).read_text(encoding="utf-8")
    if "</style" in text.lower():
        raise ValueError(f"templates/{name} contains '</style', which would end its inline element.")
    return Markup(compact_source(text))  # safe: our own source file, checked above


def compact_source(text: str) -> str:
    """Drop indentation, blank lines and whole-line /* comments */ from our own JS or CSS: every page carries its
    scripts, so this is paid once per file. Lines are kept, so no statement can run into the next."""
    lines = (line.strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line and not (line.startswith("/*") and line.endswith("*/")))


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Build the strict environment: autoescape, undefined names are errors, no stray whitespace."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(asset_dir("templates"))),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["script_json"] = script_json
    env.globals["read_js"] = read_js
    env.globals["read_css"] = read_css
    return env


def render_template(name: str, **context: Any) -> str:
    """Render one page template with the given view-model context."""
    return environment().get_template(name).render(**context)


def write_html(path: Path, html: str) -> None:
    """Write a page with fixed encoding and newlines, so identical input gives identical bytes."""
    path.write_bytes(html.encode("utf-8"))
