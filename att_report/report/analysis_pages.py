"""Token x token analyses as pages of the same viewer: attention rollout per layer, and gradient saliency.

DESIGN.md principle 6: an analysis is one more named matrix. Each becomes a Section of a chunk page; sections are
packed greedily into files under the size budget (`rollout.html`, `rollout-2.html`, ...), linked in order. Saliency is not a probability, so each of its rows is scaled to sum to 1 (the share of the row's saliency
each token carries), and the page says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from att_report.analysis.metrics import rollout
from att_report.report.chunks import INDEX_NAME
from att_report.store import CaptureStore
from att_report.report.templating import render_template, write_html
from att_report.report.page_types import HeadLabel, Link, MEAN, Navigation, TokenText
from att_report.report.readings import ROLLOUT, SALIENCY
from att_report.report.viewer import Section, chunk_page

ROLLOUT_NOTE = (
    "Attention rollout (Abnar & Zuidema, 2020): each layer's head mean with the residual connection, "
    "0.5 · A + 0.5 · I with rows renormalized, multiplied through the layers up to the one shown. Row t: how much "
    "token t's representation after that layer draws on each input token."
)
SALIENCY_NOTE = (
    "Gradient saliency: row t holds, for each earlier token j, the size of the gradient of log p(token t) with "
    "respect to token j's input embedding (norm, or |gradient · embedding|), scaled so each row sums to 1: the share "
    "of the row's saliency token j carries. Rows without a value (prompt tokens) are empty."
)
SALIENCY_KINDS = (("grad_norm", "gradient norm"), ("grad_x_input", "|gradient × input|"))


@dataclass(frozen=True)
class AnalysisPage:
    """An analysis written to the report: its name for the index and its files."""

    title: str
    files: tuple[str, ...]


def write_analysis_pages(store: CaptureStore, text: TokenText, directory: Path, payload_budget: int) -> list[AnalysisPage]:
    """Write the rollout pages, and the saliency pages when the capture has saliency; return what was written."""
    pages = [_write_pages("rollout", "Attention rollout", rollout_sections(store), ROLLOUT_NOTE, text, directory,
                          payload_budget, open_last=True)]
    saliency = list(saliency_sections(store))
    if saliency:
        pages.append(_write_pages("saliency", "Gradient saliency", saliency, SALIENCY_NOTE, text, directory,
                                  payload_budget))
    return pages


def saliency_shares(matrix: np.ndarray) -> np.ndarray:
    """Scale each row of a saliency matrix by its absolute sum; all-zero rows stay zero."""
    magnitude = np.abs(matrix.astype(np.float64))
    sums = magnitude.sum(axis=-1, keepdims=True)
    return np.divide(magnitude, sums, out=np.zeros_like(magnitude), where=sums > 0).astype(np.float32)


def rollout_sections(store: CaptureStore) -> Iterator[Section]:
    for layer, matrix in enumerate(rollout(store)):
        yield Section(f"rollout-L{layer}", f"Rollout through layer {layer}", layer,
                      (HeadLabel(MEAN, f"rollout to layer {layer}"),), matrix[np.newaxis], 0, reading=ROLLOUT)


def saliency_sections(store: CaptureStore) -> Iterator[Section]:
    for kind, label in SALIENCY_KINDS:
        matrix = store.saliency(kind)
        if matrix is not None:
            yield Section(f"saliency-{kind.replace('_', '-')}", f"Saliency · {label}", MEAN,
                          (HeadLabel(MEAN, label),), saliency_shares(matrix)[np.newaxis], 0, reading=SALIENCY)


def _write_pages(stem: str, title: str, sections: Iterable[Section], note: str, text: TokenText, directory: Path,
                 budget: int, open_last: bool = False) -> AnalysisPage:
    """Pack sections into files of at most `budget` payload bytes, linked in order, each opening at its first section
    (or, with `open_last`, its last: the rollout through the most layers). Each section is encoded once and kept only
    as its payload until its file is written (a file is written when the next one starts, so it can link to it)."""
    names: list[str] = []
    pending: list[Section] = []
    used = 0

    def flush(has_next: bool) -> None:
        names.append(f"{stem}.html" if not names else f"{stem}-{len(names) + 1}.html")
        previous = Link(f"← {stem} file {len(names) - 1}", names[-2]) if len(names) > 1 else None
        following = Link(f"{stem} file {len(names) + 1} →", f"{stem}-{len(names) + 1}.html") if has_next else None
        navigation = Navigation(Link("Index", INDEX_NAME), None, None, previous, following)
        page = chunk_page(title, text, pending, navigation, [note], opening=pending[-1].key if open_last else None)
        write_html(directory / names[-1], render_template("chunk.html", page=page))

    for section in sections:
        section = section.encoded(text.causal)
        size = len(section.payload or "")
        if pending and used + size > budget:
            flush(has_next=True)
            pending, used = [], 0
        pending.append(section)
        used += size
    flush(has_next=False)
    return AnalysisPage(title, tuple(names))
