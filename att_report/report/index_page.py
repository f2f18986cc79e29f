"""The index page's view-model: the text, the facts of the capture, the grid of every layer x head, the chunk list.

Everything shown is computed here as strings; templates/_index.html only formats it. The same view-model fills
the standalone index.html and the top of a single-file report (whose links are fragments instead of file names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from att_report.analysis.metrics import HeadMetrics
from att_report.info import recorded_with
from att_report.report.chunks import HeadNaming
from att_report.report.confidence import StripCell, confidence_strip, token_details
from att_report.report.encode import SCHEME_DESCRIPTION
from att_report.report.metrics_view import MetricsView, metrics_view
from att_report.store import CaptureStore
from att_report.report.thumbnails import DESCRIPTION as THUMBNAIL_DESCRIPTION
from att_report.report.thumbnails import thumbnail_size
from att_report.report.page_types import Link, token_kind


# The parts of the index that move to a page of their own when the index would exceed the size budget, in the order
# they move, with their titles and file names.
INDEX_PARTS = ("pages", "metrics", "grid")
PART_PAGES = {"pages": ("Pages", "pages.html"), "metrics": ("Head metrics", "metrics.html"),
              "grid": ("Every layer × head", "grid.html")}


@dataclass(frozen=True)
class TextToken:
    """One token of the index text: its exact characters and how to mark it."""

    text: str
    css: str
    kind: str


@dataclass(frozen=True)
class GridCell:
    """One head of the grid: its thumbnail's position in the payload, its label and where it opens."""

    thumb: int
    label: str
    href: str


@dataclass(frozen=True)
class GridRow:
    layer: int
    cells: tuple[GridCell, ...]


@dataclass(frozen=True)
class ChunkLinks:
    """The files (or sections) of one layer, or of the aggregate."""

    label: str
    links: tuple[Link, ...]


@dataclass(frozen=True)
class IndexPage:
    """Everything the index formats."""

    title: str
    text: tuple[TextToken, ...]
    strip: tuple[StripCell, ...]
    facts: tuple[tuple[str, str], ...]
    precision: tuple[str, ...]
    notes: tuple[str, ...]
    head_labels: tuple[str, ...]
    grid: tuple[GridRow, ...]
    chunk_links: tuple[ChunkLinks, ...]
    metrics: MetricsView
    thumbnails: str
    data: dict[str, Any]
    shown: tuple[str, ...] = INDEX_PARTS  # the parts on the index itself; the others are pages of their own
    elsewhere: tuple[Link, ...] = ()  # links to those pages


def report_title(store: CaptureStore) -> str:
    return f"Attention · {store.manifest['model']['name']}"


def index_page(
    store: CaptureStore,
    hrefs: dict[tuple[int, int], str],
    chunk_links: list[ChunkLinks],
    thumbnails: str,
    notes: list[str],
    metrics: HeadMetrics,
) -> IndexPage:
    """Build the index of a rendered report; `hrefs[(layer, head)]` is where each head of the grid opens, and
    `metrics` and `thumbnails` come from the render's one pass over the store."""
    naming = HeadNaming(store.num_heads, store.num_kv_heads)
    heads = store.head_indices
    rows = tuple(
        GridRow(layer, tuple(GridCell(row * len(heads) + column, naming.label(head), hrefs[(layer, head)])
                             for column, head in enumerate(heads)))
        for row, layer in enumerate(store.layer_indices)
    )
    return IndexPage(
        title=report_title(store),
        text=tuple(index_text(store)),
        strip=confidence_strip(store),
        facts=tuple(index_facts(store)),
        precision=(f"Captured attention was stored as {store.encoding.bound}.", SCHEME_DESCRIPTION,
                   THUMBNAIL_DESCRIPTION),
        notes=tuple(notes),
        head_labels=tuple(naming.label(head) for head in range(store.num_heads)),
        grid=rows,
        chunk_links=tuple(chunk_links),
        metrics=metrics_view(metrics, [naming.label(head) for head in range(store.num_heads)], hrefs),
        thumbnails=thumbnails,
        data={"thumbSize": thumbnail_size(store.num_tokens), "layers": store.num_layers, "heads": store.num_heads,
              "details": token_details(store)},
    )


def index_text(store: CaptureStore) -> list[TextToken]:
    """The prompt and completion token by token, completion and special tokens marked."""
    special = store.special
    return [
        TextToken(
            text=token,
            css="att-token" + (" att-completion" if i >= store.prompt_length else "") + (" att-special" if special[i] else ""),
            kind=token_kind(token),
        )
        for i, token in enumerate(store.tokens)
    ]


def index_facts(store: CaptureStore) -> list[tuple[str, str]]:
    """The model, input and generation facts a reader of a bug ticket needs, as label/value pairs."""
    manifest = store.manifest
    model, generation = manifest["model"], manifest["generation"]
    completion_length = store.num_tokens - store.prompt_length
    facts = [
        ("Model", str(model["name"])),
        ("Architecture", f"{model.get('architecture')} ({model.get('model_type')})"),
        ("Layers × heads", f"{store.num_layers} × {store.num_heads}"
                           + (f" ({store.num_kv_heads} key/value heads, shared by "
                              f"{store.num_heads // store.num_kv_heads} query heads each)"
                              if store.num_kv_heads < store.num_heads else "")),
        ("Weights", str(model.get("dtype"))),
        ("Attention", "causal (each token sees the tokens before it)" if store.causal else "bidirectional"),
        ("Tokens", f"{store.num_tokens:,} ({store.prompt_length:,} prompt + {completion_length:,} completion)"),
        ("Input", str((manifest.get("input") or {}).get("mode", "raw"))),
        ("Completion", _generation_text(generation)),
    ]
    if generation.get("device"):
        recorded = recorded_with(generation) or "recorded with eager attention"
        facts.append(("Device", f"{generation['device']}, {recorded}"))
    software = manifest.get("software") or {}
    if software:
        facts.append(("Software", ", ".join(f"{name} {version}" for name, version in sorted(software.items()))))
    return facts


def _generation_text(generation: dict[str, Any]) -> str:
    mode = generation.get("mode", "none")
    described = {
        "greedy": "generated greedily",
        "sample": (f"sampled (seed {generation.get('seed')}, temperature {generation.get('temperature')}, "
                   f"top-p {generation.get('top_p')}, top-k {generation.get('top_k')})"),
        "given": "given (teacher-forced)",
        "none": "none",
    }.get(mode, mode)
    if generation.get("stop_reason"):
        described += f"; stopped at {'the end-of-sequence token' if generation['stop_reason'] == 'eos' else 'the token limit'}"
    return described
