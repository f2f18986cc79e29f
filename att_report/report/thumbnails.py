"""Small pictures of every head for the index grid, packed for the page as one compressed payload.

A thumbnail is at most SIZE x SIZE cells: each query row is scaled to its own largest weight (so a head that puts
most weight on one sink token still shows its pattern), then each cell keeps the strongest value of its block of
rows and columns, as a byte 0..255. js/index.js draws them on canvases.
"""

from __future__ import annotations

import base64
import zlib

import numpy as np

SIZE = 40
DESCRIPTION = (
    "Each thumbnail scales every query row to its largest weight and keeps the strongest cell of each block, "
    "so the pattern of a head shows even when one token takes most of its attention."
)


def thumbnail_size(num_tokens: int) -> int:
    """Cells per side: the token count, up to SIZE."""
    return min(num_tokens, SIZE)


def layer_thumbnails(attention: np.ndarray) -> np.ndarray:
    """Turn (heads, T, T) attention into (heads, S, S) bytes, S = thumbnail_size(T).

    One pass over the T x T cells: each row's maximum per block of columns first; the row's own maximum is the
    largest of those, and dividing by a positive number keeps the order, so scaling the block maxima gives exactly
    the block maxima of the scaled rows."""
    tokens = attention.shape[-1]
    starts = np.linspace(0, tokens, thumbnail_size(tokens) + 1).round().astype(np.int64)[:-1]
    columns = np.maximum.reduceat(attention, starts, axis=2)  # (heads, T, S)
    row_max = columns.max(axis=-1, keepdims=True)
    scaled = columns / np.where(row_max > 0, row_max, 1)
    pooled = np.maximum.reduceat(scaled, starts, axis=1)
    return np.rint(np.clip(pooled, 0, 1) * 255).astype(np.uint8)


def pack_thumbnails(thumbnails: list[np.ndarray]) -> str:
    """Concatenate every layer's thumbnails in layer, head, row, column order; deflate and base64 them."""
    raw = b"".join(np.ascontiguousarray(layer).tobytes() for layer in thumbnails)
    return base64.b64encode(zlib.compress(raw, 9)).decode("ascii")
