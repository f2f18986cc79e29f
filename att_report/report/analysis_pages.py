"""Token x token analyses as pages of the same viewer: attention rollout per layer, and gradient saliency.

DESIGN.md principle 6: an analysis is one more named matrix. Each becomes a Section of a chunk page. A series of
sections is fitted like every page (see `fitting`: a section too large for one file is cut into ranges of query rows)
and packed in order into files under the size budget, each named by what it holds (`rollout.html` when one file
holds all, else `rollout-layer-0-to-layer-7.html`, ...) and linked to the previous and next file. Saliency is not a
probability, so each of its rows is scaled to sum to 1 (the share of the row's saliency each token carries), and the
page says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from att_report.analysis.metrics import rollout_rows
from att_report.report.chunks import INDEX_NAME
from att_report.report.fitting import Rows, fit, write_page
from att_report.report.encode import encode_rows
from att_report.report.page_types import HeadLabel, Link, MEAN, Navigation, TokenText
from att_report.report.plan import ROLLOUT_MAX_TOKENS, AnalysisFiles, analysis_name
from att_report.report.readings import ROLLOUT, SALIENCY
from att_report.report.templating import render_template
from att_report.report.viewer import Section, chunk_page
from att_report.store import CaptureStore

ROLLOUT_TITLE, SALIENCY_TITLE = "Attention rollout", "Gradient saliency"
ROLLOUT_ROWS = 128  # query rows of the rollout at length: 2 * 128 * T^2 flops a layer
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


def rollout_omitted(num_tokens: int, num_layers: int) -> str:
    """What a capture this long leaves out of the rollout, and why, or "" when the page has all of it."""
    if num_tokens <= ROLLOUT_MAX_TOKENS:
        return ""
    tflop = 2 * num_tokens ** 3 * num_layers / 1e12
    return (f"Attention rollout is shown through the last layer only, for the last {ROLLOUT_ROWS} or fewer query "
            f"rows (the completion and the prompt's last token): at {num_tokens:,} tokens the whole rollout through "
            f"each layer multiplies {num_layers} matrices of {num_tokens:,} × {num_tokens:,} (about {tflop:,.0f} "
            f"TFLOP), while those rows take one vector-matrix product a layer. The whole rollout is computed up to "
            f"{ROLLOUT_MAX_TOKENS:,} tokens.")


def length_rollout_rows(store: CaptureStore) -> range:
    """The query rows a long capture's rollout shows: the completion and the prompt's last token (a prompt alone, or
    an encoder: the last tokens), at most ROLLOUT_ROWS of them, the last ones."""
    first = store.prompt_length - 1 if store.num_tokens > store.prompt_length else 0
    return range(max(first, store.num_tokens - ROLLOUT_ROWS), store.num_tokens)


def length_rollout_section(store: CaptureStore) -> Section:
    """The rollout through the last stored layer for `length_rollout_rows` only (see rollout_omitted)."""
    rows = length_rollout_rows(store)
    layer = store.layer_indices[-1]
    section = rollout_section(layer, rollout_rows(store, rows))
    return replace(section, title=f"{section.title} · query rows {rows.start}–{rows.stop - 1}", row_start=rows.start)


def saliency_shares(matrix: np.ndarray) -> np.ndarray:
    """Scale each row of a saliency matrix by its absolute sum; all-zero rows stay zero."""
    magnitude = np.abs(matrix.astype(np.float64))
    sums = magnitude.sum(axis=-1, keepdims=True)
    return np.divide(magnitude, sums, out=np.zeros_like(magnitude), where=sums > 0).astype(np.float32)


def rollout_section(layer: int, matrix: np.ndarray) -> Section:
    return Section(f"rollout-L{layer}", f"Rollout through layer {layer}", layer,
                   (HeadLabel(MEAN, f"rollout to layer {layer}"),), matrix[np.newaxis], 0,
                   reading=ROLLOUT)


def saliency_sections(store: CaptureStore) -> Iterator[Section]:
    for kind, label in SALIENCY_KINDS:
        matrix = store.saliency(kind)
        if matrix is not None:
            yield Section(f"saliency-{kind.replace('_', '-')}", f"Saliency · {label}", MEAN,
                          (HeadLabel(MEAN, label),), saliency_shares(matrix)[np.newaxis], 0, reading=SALIENCY)


def fitted_sections(section: Section, causal: bool, budget: int) -> list[Section]:
    """Cut one section of a single matrix into encoded sections of query rows, each fitting `budget` payload bytes
    (just the section itself, encoded, when it fits whole)."""
    matrices, first = section.matrices, section.row_start
    held = (first, first + matrices.shape[1])  # the query rows the section holds

    def encode(slots: tuple[int, ...], rows: Rows) -> tuple[str, ...]:
        start, end = rows or held
        return (encode_rows(matrices[:, start - first:end - first], start, causal),)

    pieces = fit(1, encode, budget, lambda slot: section.title, (matrices.shape[-1], causal), held)
    if len(pieces) == 1:
        return [replace(section, payload=pieces[0].payloads[0]).encoded(causal)]
    return [replace(section, key=f"{section.key}-rows-{start}-{end - 1}",
                    title=f"{section.title} · query rows {start}–{end - 1}",
                    matrices=matrices[:, start - first:end - first], row_start=start,
                    payload=piece.payloads[0]).encoded(causal)
            for piece in pieces for start, end in [piece.rows or held]]


@dataclass
class AnalysisSeries:
    """Sections of one analysis packed in order into files of at most `budget` payload bytes. A finished file waits
    until the next one is finished, so that it can link to it by its name (which says what that file holds)."""

    stem: str
    title: str
    note: str
    text: TokenText
    directory: Path
    budget: int
    max_file_mb: float
    open_last: bool = False  # open each file at its last section (the rollout through the most layers)
    written: list[Link] = field(default_factory=list)
    _open: list[Section] = field(default_factory=list)
    _finished: list[Section] | None = None

    def add(self, section: Section) -> None:
        """Fit one section and add its pieces to the open file, starting a new file when the budget is reached."""
        for piece in fitted_sections(section, self.text.causal, self.budget):
            if self._open and sum(len(s.payload or "") for s in self._open) + len(piece.payload or "") > self.budget:
                self._finish()
            self._open.append(piece)

    @property
    def has_sections(self) -> bool:
        return bool(self._open or self._finished or self.written)

    def close(self) -> AnalysisFiles:
        """Write what is left; return the files for the index."""
        if self._open:
            self._finish()
        if self._finished is not None:
            self._write(self._finished, None, only=not self.written)
        return AnalysisFiles(self.title, tuple(self.written))

    def _finish(self) -> None:
        if self._finished is not None:
            self._write(self._finished, self._open, only=False)
        self._finished, self._open = self._open, []

    def _name(self, sections: list[Section], only: bool) -> str:
        ends = (sections[0], sections[-1]) if len(sections) > 1 else (sections[0],)
        return analysis_name(self.stem, tuple(section.key.removeprefix(f"{self.stem}-") for section in ends), only)

    def _write(self, sections: list[Section], following: list[Section] | None, only: bool) -> None:
        name = self._name(sections, only)
        label = sections[0].title if len(sections) == 1 else f"{sections[0].title} to {sections[-1].title}"
        previous = self.written[-1] if self.written else None
        after = None if following is None else self._name(following, False)
        navigation = Navigation(
            Link("Index", INDEX_NAME), None, None,
            Link(f"← {previous.label}", previous.href) if previous else None,
            Link(f"{following[0].title} →", after) if following and after else None)
        page = chunk_page(f"{self.title}: {label}", self.text, sections, navigation, [self.note],
                          opening=sections[-1].key if self.open_last else None)
        html = render_template("chunk.html", page=page)
        write_page(self.directory / name, html, self.max_file_mb, f"the page {name}")
        self.written.append(Link(label, name))
