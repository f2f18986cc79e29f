"""Packaging: `python -m build` makes an sdist and a wheel with the project's metadata, license and changelog, and
the sdist installs into a fresh virtual environment and renders the same bytes as this checkout."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

import att_report
from synthetic import write_synthetic_store

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ["The", " cat", " sat", " on", " the", " mat", ".", " It", " slept"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the sdist, then the wheel from it (what `python -m build` does), once; offline when hatchling is at
    hand."""
    into = tmp_path_factory.mktemp("dist")
    isolation = ["--no-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run([sys.executable, "-m", "build", *isolation, "--outdir", str(into), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (sdist,), (wheel,) = into.glob("att_report-*.tar.gz"), into.glob("att_report-*.whl")
    return sdist, wheel


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        return archive.read(name).decode("utf-8")


def test_sdist_and_wheel_carry_metadata_license_and_changelog(built: tuple[Path, Path]) -> None:
    sdist, wheel = built
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "templates/chunk.html", "js/chunk.js",
            "att_report/report/notebook.py"} <= names
    assert not [name for name in names if "node_modules" in name]
    with zipfile.ZipFile(wheel) as archive:
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in archive.namelist())
    metadata = _metadata(wheel)
    for line in ("License-Expression: MIT", "License-File: LICENSE", "Classifier: Framework :: Jupyter",
                 "Requires-Python: >=3.10"):
        assert line in metadata


def test_an_sdist_install_renders_as_the_checkout_does(built: tuple[Path, Path], tmp_path: Path) -> None:
    sdist, _ = built
    venv = tmp_path / "venv"
    # The venv sees this interpreter's packages (numpy, jinja2, orjson, pip, hatchling) but gets att_report from
    # the sdist, built there into a wheel and installed.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *isolation, "--force-reinstall",
                    str(sdist)], check=True, capture_output=True, timeout=300)
    write_synthetic_store(tmp_path / "store", TOKENS, prompt_length=6, num_layers=2, num_heads=3)
    expected = att_report.render(tmp_path / "store", tmp_path / "expected")
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        import att_report
        from att_report.cli import main
        package = Path(att_report.__file__).parent
        assert package.is_relative_to(Path(sys.prefix)) and "site-packages" in str(package), package
        assert main(["render", {str(tmp_path / "store")!r}, "-o", "report"]) == 0
    """)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    clean = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}  # no checkout on the path
    result = subprocess.run([str(python), "-c", script], cwd=cwd, capture_output=True, text=True, timeout=120,
                            env=clean)
    assert result.returncode == 0, result.stderr
    rendered = sorted(path.name for path in (cwd / "report").iterdir())
    assert rendered == sorted(path.name for path in expected.iterdir())
    for name in rendered:
        assert (cwd / "report" / name).read_bytes() == (expected / name).read_bytes(), name
