"""The chunk page: view-models of the observer, observed and matrix views of one or more sections.

A section is a set of square matrices over the token sequence (the heads of a layer, or an aggregate) held for a
range of query rows. `render_chunk_page` checks the inputs, encodes each section once (see `encode`), computes
every display string, and hands the frozen view-models to templates/chunk.html, which only formats them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from att_report.report.encode import encode_rows
from att_report.errors import InternalError
from att_report.report.templating import render_template
from att_report.report.page_types import MEAN, HeadLabel, Navigation, TokenText, token_data
from att_report.report.readings import ATTENTION, OfferedControl, Reading, page_controls, page_readings

@dataclass(frozen=True)
class Section:
    """Matrices of some heads over the tokens, for query rows row_start..row_start+R-1."""

    key: str
    title: str
    layer: int | str
    heads: tuple[HeadLabel, ...]
    matrices: np.ndarray
    row_start: int
    payload: str | None = None  # encode_rows(matrices, row_start, causal), when the caller has encoded it already
    reading: str = ATTENTION  # what the matrices are: a name in att_report.report.readings

    def encoded(self, causal: bool) -> Section:
        """This section with its payload encoded now and its matrices let go: a zero-stride stand-in keeps their
        shape, so a page can hold many sections without holding their weights twice."""
        payload = self.payload or encode_rows(self.matrices, self.row_start, causal)
        return replace(self, matrices=np.broadcast_to(np.float32(0), self.matrices.shape), payload=payload)


@dataclass(frozen=True)
class HeadChoice:
    """A head selector button: the data-head value, the label shown, and which matrix it shows."""

    head: str
    label: str
    slot: str  # the position of its matrix in the section, or "mean" for the mean the page computes


@dataclass(frozen=True)
class SectionView:
    """A section ready to format: its payload element, head choices, body attributes and row note."""

    key: str
    title: str
    payload_id: str
    payload: str
    choices: tuple[HeadChoice, ...]
    selector_label: str  # "Head" for attention; "Matrix" for what no head holds (a rollout, a saliency map)
    layer_attr: str
    heads_attr: str
    rows_note: str
    reading: str


@dataclass(frozen=True)
class ChunkPage:
    """Everything chunk.html formats: title, navigation, notes, sections, what their matrices mean (the opening
    section's reading first), the scale options they offer, and the one JSON payload."""

    title: str
    navigation: Navigation
    notes: tuple[str, ...]
    sections: tuple[SectionView, ...]
    readings: tuple[Reading, ...]
    controls: tuple[OfferedControl, ...]
    opening: str
    data: dict[str, Any]

    @property
    def first(self) -> SectionView:
        """The section shown when the page opens."""
        return next(section for section in self.sections if section.key == self.opening)

    @property
    def observer_help(self) -> str:
        """The observer view's help for the opening section (a comparison page reuses it)."""
        return self.readings[0].helps["observer"]

    @property
    def observed_help(self) -> str:
        """The observed view's help for the opening section (a comparison page reuses it)."""
        return self.readings[0].helps["observed"]


def render_chunk_page(
    title: str, text: TokenText, sections: Sequence[Section], navigation: Navigation, notes: Sequence[str] = ()
) -> str:
    """Render a whole self-contained HTML document viewing `sections` over `text`."""
    return render_template("chunk.html", page=chunk_page(title, text, sections, navigation, notes))


def chunk_page(
    title: str, text: TokenText, sections: Sequence[Section], navigation: Navigation, notes: Sequence[str] = (),
    opening: str | None = None,
) -> ChunkPage:
    """Check the inputs, encode every section and compute the display strings (for chunk.html or a page extending it).
    The page opens at section `opening` (a key), else at the first."""
    _check_text(text)
    _check_sections(text, sections)
    opened = next((section for section in sections if section.key == (opening or sections[0].key)), None)
    if opened is None:
        raise InternalError(f"A chunk page was asked to open at section {opening!r}, which it does not hold; pass the key "
                         f"of one of its sections ({', '.join(section.key for section in sections)}).")
    views = tuple(_section_view(position, section, text) for position, section in enumerate(sections))
    readings = page_readings([opened.reading] + [section.reading for section in sections], text.causal)
    data = {
        **token_data(text),
        "opening": opened.key,
        "sections": [_section_data(view, section) for view, section in zip(views, sections)],
    }
    return ChunkPage(
        title=title,
        navigation=navigation,
        notes=tuple(notes),
        sections=views,
        readings=readings,
        controls=page_controls(readings),
        opening=opened.key,
        data=data,
    )


def _section_view(position: int, section: Section, text: TokenText) -> SectionView:
    """Encode one section and compute its display strings."""
    heads = tuple(
        HeadChoice(head=str(label.index), label=label.label, slot=str(slot)) for slot, label in enumerate(section.heads)
    )
    if all(choice.head != MEAN for choice in heads):
        heads += (HeadChoice(head=MEAN, label="group mean", slot=MEAN),)
    return SectionView(
        key=section.key,
        title=section.title,
        payload_id=f"att-payload-{position}",
        payload=section.payload or encode_rows(section.matrices, section.row_start, text.causal),
        choices=heads,
        selector_label="Head" if section.reading == ATTENTION else "Matrix",
        layer_attr=str(section.layer),
        heads_attr=",".join(str(label.index) for label in section.heads),
        rows_note=_rows_note(section.row_start, section.matrices.shape[1], len(text.tokens)),
        reading=section.reading,
    )


def _section_data(view: SectionView, section: Section) -> dict[str, Any]:
    """Describe a section for the page's JSON: what its payload holds and how to lay it out."""
    return {
        "key": view.key,
        "title": view.title,
        "layer": view.layer_attr,
        "heads": view.heads_attr,
        "payload": view.payload_id,
        "headCount": len(section.heads),
        "rowStart": section.row_start,
        "rowCount": int(section.matrices.shape[1]),
        "reading": view.reading,
    }


def _rows_note(row_start: int, row_count: int, num_tokens: int) -> str:
    """Say which query rows a split page holds; empty when it holds them all."""
    if row_start == 0 and row_count == num_tokens:
        return ""
    last = row_start + row_count - 1
    return (
        f"This page holds the query rows of tokens {row_start:,}–{last:,} of {num_tokens:,}; the other tokens' rows "
        "are in other files, so hovering them in the observer view shows nothing, and the observed view shows only "
        "these rows."
    )


def _check_text(text: TokenText) -> None:
    """Refuse token lists that disagree with each other."""
    if not text.tokens or len(text.special) != len(text.tokens) or not 0 <= text.prompt_length <= len(text.tokens):
        raise InternalError(
            f"The page text has {len(text.tokens)} tokens, {len(text.special)} special flags and prompt length "
            f"{text.prompt_length}; expected at least one token, one flag per token and 0 <= prompt length <= tokens."
        )


def _check_sections(text: TokenText, sections: Sequence[Section]) -> None:
    """Refuse sections whose keys repeat or whose matrices do not fit the tokens and head labels."""
    if not sections:
        raise InternalError("A chunk page was asked for with no sections; pass at least one Section.")
    keys = [section.key for section in sections]
    if len(set(keys)) != len(keys):
        raise InternalError(f"Section keys {keys} repeat; give every section of a page its own key.")
    for section in sections:
        shape = section.matrices.shape
        if len(shape) != 3 or shape[0] != len(section.heads) or shape[2] != len(text.tokens) or not section.heads:
            raise InternalError(
                f"Section {section.key!r} has matrices of shape {shape}; expected ({len(section.heads)} heads, rows, "
                f"{len(text.tokens)} tokens) with at least one head, so pass one matrix per HeadLabel."
            )
