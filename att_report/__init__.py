"""att-report: static, offline HTML reports of what a transformer attends to.

Two stages meet at one boundary on disk: `capture` (torch) writes a store, `render` (no torch) reads it;
`show` puts a report inline in a Jupyter notebook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from att_report.analysis.metrics import HeadMetrics, head_metrics, layer_statistics, rollout
from att_report.report.compare import compare
from att_report.report.notebook import show
from att_report.errors import AttReportError
from att_report.report.render import RenderOptions, render
from att_report.store import CaptureStore, load

__version__ = "0.1.0"
__all__ = [
    "AttReportError", "CaptureStore", "HeadMetrics", "RenderOptions", "__version__", "capture", "compare",
    "head_metrics", "layer_statistics", "load", "render", "rollout", "show",
]

if TYPE_CHECKING:
    from pathlib import Path


def capture(*args: Any, **kwargs: Any) -> Path:
    """Run a model on a prompt and store its attention; see `att_report.capturing.pipeline.capture`."""
    from att_report.capturing.pipeline import capture as run_capture  # torch is imported only when capturing

    return run_capture(*args, **kwargs)
