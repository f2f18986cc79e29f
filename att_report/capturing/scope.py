"""Which layers and heads a capture stores (`--layers`, `--heads`), so a big model's attention fits a disk and a
ticket. No torch here: the syntax is checked before a model loads, the range right after."""

from __future__ import annotations

import re
from dataclasses import dataclass

from att_report.errors import UsageError

PART = re.compile(r"(\d+)(?:-(\d+))?")


@dataclass(frozen=True)
class Scope:
    """The model's layers and query heads to record and store, ascending."""

    layers: list[int]
    heads: list[int]


def parse_index_spec(text: str, count: int | None, what: str) -> list[int]:
    """Read a list like `0,15,29` or `0-3,7` into ascending distinct indices below `count` (None: any)."""
    flag = f"--{what}"
    parts = [part.strip() for part in text.split(",")]
    if not text.strip():
        raise UsageError(f"{flag} {text!r} names no {what}; give indices and ranges like 0,15,29 or 0-3,7.")
    indices: set[int] = set()
    for part in parts:
        matched = PART.fullmatch(part)
        if matched is None:
            raise UsageError(f"{flag} {text!r}: {part!r} is not an index or a range; give indices and ranges like "
                             "0,15,29 or 0-3,7.")
        first = int(matched.group(1))
        last = first if matched.group(2) is None else int(matched.group(2))
        if last < first:
            raise UsageError(f"{flag} {text!r}: the range {part} runs backwards; write it as {last}-{first}.")
        if count is not None and last >= count:
            raise UsageError(f"{flag} {text!r}: {what[:-1]} {last} does not exist, this model has {count} {what} "
                             f"(0-{count - 1}); give indices in that range.")
        indices.update(range(first, last + 1))
    return sorted(indices)


def check_scope_syntax(layers: str | None, heads: str | None) -> None:
    """Refuse a malformed --layers or --heads before any model loads."""
    for text, what in ((layers, "layers"), (heads, "heads")):
        if text is not None:
            parse_index_spec(text, None, what)


def resolve_scope(layers: str | None, heads: str | None, num_layers: int, num_heads: int) -> Scope:
    """The layers and query heads to record for a model of `num_layers` x `num_heads` (None: all of them)."""
    return Scope(
        layers=list(range(num_layers)) if layers is None else parse_index_spec(layers, num_layers, "layers"),
        heads=list(range(num_heads)) if heads is None else parse_index_spec(heads, num_heads, "heads"),
    )
