"""Compare two captures: align their tokens by text and rank heads by how differently they spread attention.

Tokens are aligned where both sequences contain the same token text in the same order (the longest matching
blocks of difflib's SequenceMatcher), so two phrasings of one request, or one prompt through two models that
share a tokenizer, line up token by token wherever their text agrees.
"""

from __future__ import annotations

from dataclasses import dataclass
from difflib import SequenceMatcher

import numpy as np

from att_report.errors import UsageError
from att_report.store import CaptureStore

# Query rows compared at a time: at 8,192 keys their float64 work is about 16 MB an array.
JS_ROW_BLOCK = 256


@dataclass(frozen=True)
class TokenAlignment:
    """Pairs (index in A, index in B) of tokens with the same text in the same order."""

    pairs: tuple[tuple[int, int], ...]

    def partner_maps(self) -> tuple[dict[int, int], dict[int, int]]:
        """Map each aligned A index to its B index, and back."""
        return {a: b for a, b in self.pairs}, {b: a for a, b in self.pairs}


@dataclass(frozen=True)
class HeadDivergence:
    """Jensen-Shannon divergence (bits, 0..1) between the two captures' attention, per layer and head."""

    values: np.ndarray  # (layers, heads)
    rows_compared: int

    def ranked(self) -> list[tuple[int, int, float]]:
        """List (layer, head, divergence), most different first; ties by layer then head."""
        layers, heads = np.unravel_index(np.argsort(-self.values, axis=None, kind="stable"), self.values.shape)
        return [(int(layer), int(head), float(self.values[layer, head])) for layer, head in zip(layers, heads)]


def align_tokens(tokens_a: list[str], tokens_b: list[str]) -> TokenAlignment:
    """Align two token sequences by their text."""
    matcher = SequenceMatcher(a=tokens_a, b=tokens_b, autojunk=False)
    pairs = tuple(
        (block.a + offset, block.b + offset)
        for block in matcher.get_matching_blocks()
        for offset in range(block.size)
    )
    return TokenAlignment(pairs=pairs)


def check_comparable(store_a: CaptureStore, store_b: CaptureStore) -> None:
    """Refuse captures whose heads cannot be matched one to one."""
    shape_a, shape_b = (store_a.num_layers, store_a.num_heads), (store_b.num_layers, store_b.num_heads)
    if shape_a != shape_b:
        raise UsageError(
            f"{store_a.path} has {shape_a[0]} layers x {shape_a[1]} heads but {store_b.path} has {shape_b[0]} x "
            f"{shape_b[1]}; compare needs captures of models with the same layers and heads."
        )


def prompt_pairs(alignment: TokenAlignment, prompt_a: int, prompt_b: int) -> np.ndarray:
    """Keep the aligned pairs inside both prompts, as an (n, 2) index array."""
    kept = [(a, b) for a, b in alignment.pairs if a < prompt_a and b < prompt_b]
    return np.array(kept, dtype=np.int64).reshape(-1, 2)


def first_difference(tokens_a: list[str], tokens_b: list[str]) -> int:
    """The first position where the two token sequences differ (the shorter length when one is a prefix)."""
    same = (x == y for x, y in zip(tokens_a, tokens_b))
    return next((position for position, equal in enumerate(same) if not equal), min(len(tokens_a), len(tokens_b)))


def from_first_difference(store_a: CaptureStore, store_b: CaptureStore) -> bool:
    """Whether only the rows from the first difference on can differ: one causal model (same name, revision and
    dtype) sees the same tokens before that point in both captures, so it attends to them the same way there."""
    same_model = all(store_a.manifest["model"].get(key) == store_b.manifest["model"].get(key)
                     for key in ("name", "revision", "dtype"))
    return same_model and store_a.causal and store_b.causal


def divergence_rows(alignment: TokenAlignment, store_a: CaptureStore, store_b: CaptureStore
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The aligned prompt pairs whose attention can differ (the query rows), and all aligned prompt pairs (the keys).

    For one causal model, the rows from the first difference of the two texts on (see `from_first_difference`);
    for a bidirectional model or two models, every aligned prompt row."""
    keys = prompt_pairs(alignment, store_a.prompt_length, store_b.prompt_length)
    if len(keys) < 2:
        return keys[:0], keys
    if not from_first_difference(store_a, store_b):
        return keys, keys
    start = first_difference(store_a.tokens, store_b.tokens)
    return keys[(keys[:, 0] >= start) & (keys[:, 1] >= start)], keys


def head_js(square_a: np.ndarray, square_b: np.ndarray, rows: np.ndarray, keys: np.ndarray, causal: bool) -> float:
    """One head's mean JS divergence over the query pairs `rows`, of (T, T) attention restricted to the key pairs
    `keys` and renormalized; 0 when no row is compared. Taken JS_ROW_BLOCK rows at a time, so its float64 work stays
    a few MB however long the captures are; causal rows skip the keys after them (no weight in either capture)."""
    total, count = 0.0, 0
    for start in range(0, len(rows), JS_ROW_BLOCK):
        block = rows[start:start + JS_ROW_BLOCK]
        used = keys
        if causal:  # pairs ascend in both captures: past both blocks' last rows, every key pair holds no weight
            used = keys[:max(np.searchsorted(keys[:, side], block[:, side].max(), side="right") for side in (0, 1))]
        divergences = _row_js(square_a[block[:, 0]][:, used[:, 0]], square_b[block[:, 1]][:, used[:, 1]])
        total, count = total + float(divergences.sum()), count + len(divergences)
    return total / count if count else 0.0


def head_divergence(store_a: CaptureStore, store_b: CaptureStore, alignment: TokenAlignment) -> HeadDivergence:
    """Every head's mean JS divergence over the aligned prompt rows that can differ (see `divergence_rows`), of
    attention restricted to the aligned prompt keys and renormalized. Reads one head at a time."""
    check_comparable(store_a, store_b)
    rows, keys = divergence_rows(alignment, store_a, store_b)
    values = np.zeros((len(store_a.layer_indices), len(store_a.head_indices)))
    for i, layer in enumerate(store_a.layer_indices):
        for j, head in enumerate(store_a.head_indices):
            values[i, j] = head_js(store_a.attention(layer, heads=[head])[0], store_b.attention(layer, heads=[head])[0],
                                   rows, keys, store_a.causal and store_b.causal)
    return HeadDivergence(values=values, rows_compared=len(rows))


def _row_js(rows_a: np.ndarray, rows_b: np.ndarray) -> np.ndarray:
    """The JS divergence in bits of each pair of rows where both captures put weight on the aligned keys (the
    others are left out), each row renormalized over those keys."""
    rows_a, rows_b = rows_a.astype(np.float64), rows_b.astype(np.float64)
    mass_a, mass_b = rows_a.sum(-1, keepdims=True), rows_b.sum(-1, keepdims=True)
    usable = (mass_a[:, 0] > 0) & (mass_b[:, 0] > 0)
    p, q = rows_a[usable] / mass_a[usable], rows_b[usable] / mass_b[usable]
    middle = (p + q) / 2
    return (_kl_bits(p, middle) + _kl_bits(q, middle)) / 2


def _kl_bits(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    ratio = np.divide(p, q, out=np.ones_like(p), where=(p > 0) & (q > 0))
    return (p * np.log2(ratio)).sum(-1)
