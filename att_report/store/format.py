"""The store format's names, numbers and encodings, shared by the writer and the reader (specified in the README,
section "The capture store").

FORMAT_VERSION history:
  1 - first version: float16/float32 attention of every layer and head, causal layers packed as their lower triangle.
  2 - encodings: `uint8-diffused` (error-diffused bytes, zero-run coded and zlib-compressed per head and block of
      rows, with an index) besides float16/float32; scope (`layer_indices`, `head_indices`); each file entry names
      its layer; head metrics computed at capture from the float32 weights (`attention.metrics`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from att_report.errors import StoreError

FORMAT_NAME = "att-report-capture"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
LAYER_DIR = "attention"
LAYOUT_LOWER_TRIANGLE = "lower-triangle"
LAYOUT_SQUARE = "square"
ROW_BLOCK = 64  # query rows per compressed chunk of a `uint8-diffused` layer
COMPACT = "uint8-diffused"
AUTO = "auto"
COMPACT_FROM_TOKENS = 1024  # `auto` stores float16 below this length, uint8-diffused from it on
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Encoding:
    """How a store holds attention weights, and how far a stored weight may be from the model's float32 value."""

    name: str
    dtype: str  # numpy dtype of the stored values
    exact: bool  # float32: the model's values themselves
    weight_bound: float  # largest |stored - model| of one weight (float16: of a weight up to 1)
    sum_bound: float  # largest |stored - model| of the sum of any block of consecutive keys of a row
    bound: str  # the bound, as one sentence for a person

    @property
    def chunked(self) -> bool:
        """Stored as compressed chunks with an index, rather than as one memory-mappable .npy array."""
        return self.name == COMPACT


ENCODINGS: dict[str, Encoding] = {
    "float32": Encoding("float32", "float32", True, 0.0, 0.0, "exact: the model's float32 weights"),
    "float16": Encoding(
        "float16", "float16", False, 2.0**-12, 2.0**-11,
        "float16: each weight within 2^-11 of its value, relative (at most 0.00025 absolute); "
        "any sum of a row's weights within 2^-11 of its value, relative",
    ),
    COMPACT: Encoding(
        COMPACT, "uint8", False, 1 / 255, 1 / 255,
        "uint8-diffused: each weight within 1/255 (0.0039) of the model's float32 value; the sum of every run of "
        "consecutive keys of a row (each block of 64 keys, the whole row) within 1/255, no mass lost",
    ),
}
ATTENTION_DTYPE_CHOICES = (AUTO, "float16", "float32", "uint8")  # what a user may ask for; uint8 = uint8-diffused


def resolve_encoding(choice: str, num_tokens: int) -> Encoding:
    """Turn a user's choice (`auto`, `float16`, `float32`, `uint8` or an encoding name) into an encoding; `auto`
    is float16 below COMPACT_FROM_TOKENS tokens (small stores, no second quantization before the page's), compact
    from there on (a float16 store grows as T^2: 1.1 GB per 270 heads at 2,048 tokens)."""
    if choice == AUTO:
        return ENCODINGS[COMPACT if num_tokens >= COMPACT_FROM_TOKENS else "float16"]
    name = COMPACT if choice == "uint8" else choice
    if name not in ENCODINGS:
        raise StoreError(f"attention dtype {choice!r} is not storable; use one of "
                         f"{', '.join(ATTENTION_DTYPE_CHOICES)}.")
    return ENCODINGS[name]


def encoding_of_v1(dtype: str) -> Encoding:
    """The encoding a version-1 store used: its `attention.dtype`."""
    return ENCODINGS[dtype]


def index_spans(indices: list[int]) -> str:
    """Write indices as ranges, `0-3, 7`, as the --layers and --heads options take them."""
    spans: list[str] = []
    for index in indices:
        if spans and index == int(spans[-1].split("-")[-1]) + 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{index}"
        else:
            spans.append(str(index))
    return ", ".join(spans)


def layer_file_name(layer: int, encoding: Encoding) -> str:
    """Name a layer's data file by the model's layer index, zero-padded so that a listing sorts by layer."""
    return f"{LAYER_DIR}/layer-{layer:03d}.{'bin' if encoding.chunked else 'npy'}"


def index_file_name(layer: int) -> str:
    """Name the chunk index of a chunked layer."""
    return f"{LAYER_DIR}/layer-{layer:03d}.index.npy"


def row_blocks(num_tokens: int) -> int:
    """How many ROW_BLOCK-row blocks cover T query rows."""
    return -(-num_tokens // ROW_BLOCK)


def cells_per_row(num_tokens: int, causal: bool) -> np.ndarray:
    """How many keys each query row holds: i + 1 for a causal row i, else T."""
    return np.arange(1, num_tokens + 1) if causal else np.full(num_tokens, num_tokens)


@lru_cache(maxsize=8)
def key_mask(row_start: int, rows: int, num_tokens: int, causal: bool) -> np.ndarray:
    """(rows, T) booleans: the cells of those query rows that can hold weight (key j <= query i if causal)."""
    if not causal:
        return np.ones((rows, num_tokens), dtype=bool)
    return np.arange(num_tokens)[np.newaxis, :] <= np.arange(row_start, row_start + rows)[:, np.newaxis]


def lower_triangle_mask(size: int) -> np.ndarray:
    """Select the lower triangle, diagonal included; boolean indexing walks it row by row."""
    return key_mask(0, size, size, True)


def stored_shape(num_heads: int, num_tokens: int, causal: bool) -> tuple[int, ...]:
    """Give the shape of a dense (.npy) layer file."""
    if causal:
        return (num_heads, num_tokens * (num_tokens + 1) // 2)
    return (num_heads, num_tokens, num_tokens)


def pack_layer(attention: np.ndarray, causal: bool, dtype: str) -> np.ndarray:
    """Turn a (heads, T, T) layer into its dense stored form: the lower triangle of each head for causal models."""
    if causal:
        attention = attention[:, lower_triangle_mask(attention.shape[-1])]
    return np.ascontiguousarray(attention, dtype=np.dtype(dtype))


def unpack_layer(stored: np.ndarray, causal: bool, num_tokens: int) -> np.ndarray:
    """Invert `pack_layer` into a float32 (heads, T, T) array; the upper triangle of a causal layer is zero."""
    if not causal:
        return stored.astype(np.float32)
    square = np.zeros((stored.shape[0], num_tokens, num_tokens), dtype=np.float32)
    square[:, lower_triangle_mask(num_tokens)] = stored
    return square


def sha256_of(path: Path) -> str:
    """Hash a file in chunks, so a multi-gigabyte layer never sits in memory twice."""
    digest, buffer = hashlib.sha256(), bytearray(_HASH_CHUNK)
    with open(path, "rb") as handle:
        while size := handle.readinto(buffer):
            digest.update(memoryview(buffer)[:size])
    return digest.hexdigest()
