"""The types every page of a report shares: token text, head labels, links and navigation, and how a token is
spelled on a page. Kept apart from any one page so the index, chunk, analysis, neuron and compare pages agree."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

MEAN = "mean"
LABEL_LIMIT = 32
# How the views show a token whose characters are all invisible (the token's own text is never changed).
KIND_NEWLINE, KIND_BLANK, KIND_EMPTY = "newline", "blank", "empty"
_VISIBLE_ESCAPES = {"\n": "⏎", "\r": "␍", "\t": "⇥"}


@dataclass(frozen=True)
class HeadLabel:
    """One choice of the head selector: a head's index in its layer (or "mean") and its label."""

    index: int | str
    label: str


@dataclass(frozen=True)
class TokenText:
    """The token sequence as text: each token's characters, which are special, where the completion starts."""

    tokens: tuple[str, ...]
    special: tuple[bool, ...]
    prompt_length: int
    causal: bool


@dataclass(frozen=True)
class Link:
    """A link to another page of the report."""

    label: str
    href: str


@dataclass(frozen=True)
class Navigation:
    """Where a chunk page leads: the index, the neighbouring layers and head groups (None at an edge), and the
    other files of the same chunk when it was split to fit the size budget."""

    index: Link
    prev_layer: Link | None
    next_layer: Link | None
    prev_group: Link | None
    next_group: Link | None
    parts: tuple[Link, ...] = ()


@lru_cache(maxsize=4)
def token_data(text: TokenText) -> dict[str, Any]:
    """The page data about the tokens, the same on every page of a report, so computed once per text.

    Sparse where most tokens agree (js/decode.js `expandTokenData` fills the lists in): `labels` names only the
    tokens whose status-line spelling differs from their text, `kinds` only the tokens that draw no ink, `special`
    lists the indices of special tokens."""
    return {
        "tokens": list(text.tokens),
        "labels": {str(i): label for i, token in enumerate(text.tokens) if (label := token_label(token)) != token},
        "kinds": {str(i): kind for i, token in enumerate(text.tokens) if (kind := token_kind(token))},
        "special": [i for i, special in enumerate(text.special) if special],
        "promptLength": text.prompt_length,
        "causal": text.causal,
    }


def token_kind(token: str) -> str:
    """Say whether a token shows nothing by itself, so the views can mark it without changing its text."""
    if token == "":
        return KIND_EMPTY
    if all(_inkless(char) for char in token):
        return KIND_NEWLINE if "\n" in token else KIND_BLANK
    return ""


def token_label(token: str) -> str:
    """Spell a token for a status line: whitespace and control characters made visible, long ones cut."""
    spelled = "".join(_VISIBLE_ESCAPES.get(char) or (f"\\u{ord(char):04x}" if _control(char) else char) for char in token)
    return spelled if len(spelled) <= LABEL_LIMIT else spelled[: LABEL_LIMIT - 1] + "…"


def _inkless(char: str) -> bool:
    """Whitespace, control/format characters and combining marks draw no ink of their own."""
    return char.isspace() or _control(char) or unicodedata.category(char) in ("Mn", "Me")


def _control(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cf") and char not in _VISIBLE_ESCAPES
