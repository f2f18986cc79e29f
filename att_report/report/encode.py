"""Pack attention matrices into the compact text a page carries, and unpack them exactly as the page does.

The scheme (pure numpy + zlib + base64; js/decode.js is its browser half):
1. Quantize each query row with error diffusion: the running rounding error is carried along the row, so byte j
   is q_j = round(255 * W_j) - round(255 * W_(j-1)), W_j being the sum of the row's weights up to key j. The page
   shows q / 255. Every prefix sum of a row is then within 1/510 of the true one, so each weight is within 1/255,
   and each block of consecutive keys (a row, 64 keys) sums to within 1/255 of the true sum: weights below 1/510
   are not all lost to zero (plain rounding drops a fifth of a row's mass at a few thousand tokens).
2. Order the cells column by column: for each of the n heads in turn, for each key column j = 0..T-1, the held
   query rows r = row_start..row_start+R-1 in order, skipping r < j when causal (only the lower triangle is kept).
   Attention columns (a sink, the diagonal, a strong token) are more alike than rows, so deflate finds more.
3. Split into runs: C, the count of cells, and N, the count of non-zero ones, each as 4 bytes little-endian; then for each non-zero cell in that
   order the number of zero cells before it since the previous non-zero one (a "gap"): one byte if below 255,
   else the byte 255 followed by the gap as 4 bytes little-endian; then the N non-zero bytes in the same order.
   Attention is sparse at this precision (typically 5-25% of the cells are non-zero), so gaps are short.
4. Compress with zlib (deflate in a zlib wrapper, level 6, deterministic) and write base64 (ASCII).
The browser undoes 4 with atob and DecompressionStream('deflate'), then scatters 3-2 into dense rows.
"""

from __future__ import annotations

import base64
import binascii
import zlib

import numpy as np

from att_report.errors import InternalError
from att_report.store.codec import diffuse

QUANT_LEVELS = 255
ERROR_BOUND = 1 / 255  # each weight shown, against the captured one
SUM_BOUND = 1 / 255  # the sum of any run of consecutive keys of a row (a block, the whole row), likewise
PREFIX_BOUND = 1 / 510  # the sum of a row's keys 0..j
COMPRESSION_LEVEL = 6  # level 9 is ~15x slower on these streams for ~3% fewer bytes
_ESCAPE = 255
# Weights a little outside [0, 1] from float rounding are clipped; anything further is a caller's mistake.
_RANGE_SLACK = 1e-3
_BLOCK_CELLS = 1 << 22  # rows quantized at a time, in cells: 32 MB of float64 scratch
SCHEME_DESCRIPTION = (
    "Each row of weights is stored in the pages as bytes round(255 × running sum) minus the previous one (error "
    "diffusion) and shown as byte / 255, so every weight shown is within 1/255 ≈ 0.0039 of the captured value and "
    "every run of consecutive weights (a block of keys, a whole row) sums to within 1/255 of the captured sum: "
    "no mass is lost to rounding; causal matrices keep only their lower triangle, and the bytes are "
    "deflate-compressed and base64-encoded inside the page."
)
PAGE_PRECISION_NOTE = ("Weights shown as bytes / 255 with error diffusion: each weight, and each run of consecutive "
                       "weights, within 1/255 of the captured value.")


def encode_rows(matrices: np.ndarray, row_start: int, causal: bool) -> str:
    """Quantize and pack query rows row_start.. of n heads into base64 text small enough to inline in a page."""
    if matrices.ndim != 3:
        raise InternalError(
            f"The matrices to encode have shape {matrices.shape}; expected (heads, rows, tokens), so pass a 3-D array."
        )
    _check_rows(row_start, matrices.shape[1], matrices.shape[2])
    cell_count, positions, values = _nonzero_cells(quantize(np.asarray(matrices)), row_start, causal)
    gaps = np.diff(positions, prepend=-1) - 1
    header = cell_count.to_bytes(4, "little") + len(positions).to_bytes(4, "little")
    raw = header + _gap_bytes(gaps) + values.tobytes()
    return base64.b64encode(zlib.compress(raw, COMPRESSION_LEVEL)).decode("ascii")


def _nonzero_cells(steps: np.ndarray, row_start: int, causal: bool) -> tuple[int, np.ndarray, np.ndarray]:
    """The kept cells' count, and the positions and bytes of the non-zero ones in payload order: head by head, key
    by key, the rows that key is kept in (a causal key k from row max(k, row_start) on). Found from the (head, row,
    key) array's few non-zero bytes (a row has at most 255), never by gathering every cell in column order."""
    heads, rows, tokens = steps.shape
    first = np.maximum(np.arange(tokens), row_start) - row_start if causal else np.zeros(tokens, dtype=np.int64)
    kept = np.maximum(rows - first, 0)
    column_starts = np.cumsum(kept) - kept
    per_head = int(kept.sum())
    head, row, key = np.nonzero(steps)
    if causal:  # bytes above the diagonal are zero for causal weights; never let one shift the others
        below = row >= first[key]
        head, row, key = head[below], row[below], key[below]
    positions = head * per_head + column_starts[key] + (row - first[key])
    order = np.argsort(positions)
    return heads * per_head, positions[order], steps[head, row, key][order]


def _gap_bytes(gaps: np.ndarray) -> bytes:
    """Write each gap as one byte, or as the escape byte and 4 bytes little-endian when it is 255 or more."""
    escaped = gaps >= _ESCAPE
    lengths = np.where(escaped, 5, 1)
    starts = np.cumsum(lengths) - lengths
    out = np.zeros(int(lengths.sum()), dtype=np.uint8)
    out[starts] = np.minimum(gaps, _ESCAPE)
    long_gaps = gaps[escaped].astype("<u4").view(np.uint8).reshape(-1, 4)
    for offset in range(4):
        out[starts[escaped] + 1 + offset] = long_gaps[:, offset]
    return out.tobytes()


def _read_gaps(stream: np.ndarray, count: int) -> np.ndarray:
    """Invert _gap_bytes for `count` gaps, or raise ValueError when the stream does not hold exactly that many."""
    if not (stream == _ESCAPE).any():  # the common case: every gap is one byte
        if len(stream) != count:
            raise ValueError("gap count")
        return stream.astype(np.int64)
    gaps = np.zeros(count, dtype=np.int64)
    at = 0
    for index in range(count):
        if at >= len(stream):
            raise ValueError("gap count")
        if stream[at] == _ESCAPE:
            gaps[index] = int(stream[at + 1:at + 5].view("<u4")[0])
            at += 5
        else:
            gaps[index] = stream[at]
            at += 1
    if at != len(stream):
        raise ValueError("gap count")
    return gaps


def decode_rows(payload: str, n: int, row_start: int, row_count: int, num_tokens: int, causal: bool) -> np.ndarray:
    """Unpack a payload the way the page does: float32 (n, row_count, num_tokens), zeros above the diagonal."""
    _check_rows(row_start, row_count, num_tokens)
    try:
        raw = np.frombuffer(zlib.decompress(base64.b64decode(payload, validate=True)), dtype=np.uint8)
    except (binascii.Error, zlib.error) as error:
        raise InternalError(f"The attention payload is not base64 zlib data ({error}); encode it with encode_rows.") from None
    mask = _column_mask(row_start, row_count, num_tokens, causal)
    cell_count = n * int(mask.sum())
    try:
        cells_encoded, count = (int(value) for value in raw[:8].view("<u4"))
        if cells_encoded != cell_count or len(raw) < 8 + count:
            raise ValueError("cells")
        gaps = _read_gaps(raw[8:len(raw) - count], count)
        positions = np.cumsum(gaps + 1) - 1
        if count and positions[-1] >= cell_count:
            raise ValueError("cells")
    except (ValueError, IndexError):
        raise InternalError(
            f"The attention payload holds {len(raw)} bytes, which does not fit {n} heads of rows "
            f"{row_start}..{row_start + row_count - 1} over {num_tokens} tokens; pass the shape it was encoded with."
        ) from None
    cells = np.zeros(cell_count, dtype=np.uint8)
    cells[positions] = raw[len(raw) - count:]
    transposed = np.zeros((n, num_tokens, row_count), dtype=np.uint8)
    transposed[:, mask] = cells.reshape(n, -1)
    return transposed.transpose(0, 2, 1).astype(np.float32) / np.float32(QUANT_LEVELS)


def quantize(matrices: np.ndarray) -> np.ndarray:
    """Map rows of weights in [0, 1] (the last axis) to bytes by error diffusion: byte j is the rounded running sum
    of 255 * w up to j minus the one before, so rounding errors never pile up along a row. Refuse values that are not
    attention weights."""
    values = np.asarray(matrices)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (-_RANGE_SLACK <= low and high <= 1 + _RANGE_SLACK):  # also refuses NaN, which fails every comparison
        raise InternalError(
            f"The matrices to encode hold values from {low:.4g} to {high:.4g}; expected weights in [0, 1], "
            "so normalize the matrix (and remove NaN or infinite values) before viewing it."
        )
    rows = values.reshape(-1, values.shape[-1]) if values.size else values.reshape(0, 1)
    out = np.empty(rows.shape, dtype=np.uint8)
    step = max(1, _BLOCK_CELLS // rows.shape[1])  # bounds the float64 scratch whatever the size
    for start in range(0, len(rows), step):
        out[start:start + step] = diffuse(rows[start:start + step])  # the store's error diffusion, to the byte
    return out.reshape(values.shape)


def _column_mask(row_start: int, row_count: int, num_tokens: int, causal: bool) -> np.ndarray:
    """Mark the kept cells of the transposed (key, row) grid; C order walks it column by column."""
    if not causal:
        return np.ones((num_tokens, row_count), dtype=bool)
    rows = np.arange(row_start, row_start + row_count)
    return rows[np.newaxis, :] >= np.arange(num_tokens)[:, np.newaxis]


def _check_rows(row_start: int, row_count: int, num_tokens: int) -> None:
    """Refuse a row range that does not lie inside the token sequence."""
    if row_start < 0 or row_count < 1 or row_start + row_count > num_tokens:
        raise InternalError(
            f"Query rows {row_start}..{row_start + row_count - 1} do not lie within the {num_tokens} tokens; "
            "pass row_start >= 0 and at least one row that ends by the last token."
        )
