"""The `uint8-diffused` encoding: error-diffused bytes per row, zero-run coded and zlib-compressed per chunk.

Error diffusion rounds each row's running sum rather than each weight: with P_j the exact sum of keys 0..j,
Q_j = floor(255 * P_j + 1/2) and the stored byte q_j = Q_j - Q_(j-1). Every stored prefix sum Q_j / 255 is then
within 1/510 of P_j, so each weight, and the sum of any run of consecutive keys (a block of 64, the whole row), is
within 1/255 of the model's: the mass of the many tiny weights is carried, not dropped. A row's bytes sum to
round(255 * row sum), so a row holds at most 255 non-zero bytes whatever its length: the zero-run coding stores
those only, and a store grows with the rows, not with their length.
"""

from __future__ import annotations

import zlib

import numpy as np

from att_report.errors import StoreError

# Measured on diffused chunks at 3,000 tokens of SmolLM2: level 6 takes 2.3x level 3's time for a store 7% smaller;
# at level 6 zlib took a sixth of the capture's writer time, and the writer sets the pace of a capture at length.
ZLIB_LEVEL = 3
SCALE = 255.0
SEGMENT = 64  # keys summed at once before the running sum looks inside (see diffused_steps)
DIFFUSED_CELLS = 1 << 19  # cells diffused at a time (see diffused_steps)


def diffuse(weights: np.ndarray) -> np.ndarray:
    """Quantize (..., keys) float weights along the last axis to error-diffused uint8 bytes (see the module)."""
    rows = np.asarray(weights).reshape(-1, weights.shape[-1]) if weights.size else np.zeros((0, 1), np.float32)
    row, key, steps = diffused_steps(rows)
    out = np.zeros(rows.shape, dtype=np.uint8)
    out[row, key] = steps
    return out.reshape(weights.shape)


def diffused_steps(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero bytes of `diffuse(rows)` for weights (rows, keys) in [0, 1], as (row, key, byte) in row-major
    order.

    A row's bytes are non-zero only where Q_j changes: at most 255 times. So the running sums are taken a SEGMENT of
    keys at a time: every segment's float64 sum, then Q at segment ends, and keys one by one only inside segments
    where Q changes (at length, about a third of them). Keys with no weight after a row's last weight get no byte.
    Sums in this order and in one long running sum differ by float64 rounding only. Rows are taken DIFFUSED_CELLS
    cells at a time: a larger block's temporaries outgrow the cache, which made diffusing a quarter slower.
    """
    rows = np.asarray(rows, dtype=np.float32)
    starts = range(0, max(len(rows), 1), max(1, DIFFUSED_CELLS // max(rows.shape[1], 1)))
    blocks = [_diffused_block(rows[start: start + starts.step]) for start in starts]
    return (np.concatenate([row + start for (row, _, _), start in zip(blocks, starts)]),
            np.concatenate([key for _, key, _ in blocks]), np.concatenate([value for _, _, value in blocks]))


def _diffused_block(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`diffused_steps` of float32 rows (rows, keys), all at once."""
    count, keys = rows.shape
    segments = -(-keys // SEGMENT)
    padded = _segmented(rows, segments)
    sums = padded.sum(axis=2, dtype=np.float64)
    ends = np.cumsum(sums, axis=1)
    q_end = _rounded(ends)
    q_start = np.zeros_like(q_end)
    q_start[:, 1:] = q_end[:, :-1]
    row, segment = np.nonzero(q_end != q_start)
    # Keys along the first axis, so each step of the running sums adds one key of every changed segment at once.
    running = np.empty((SEGMENT, len(row)))
    running[...] = padded[row, segment].T
    running[0] += ends[row, segment] - sums[row, segment]
    for key in range(1, SEGMENT):
        np.add(running[key], running[key - 1], out=running[key])
    q = _rounded(running, out=running)
    steps = np.empty_like(q)
    np.subtract(q[1:], q[:-1], out=steps[1:])
    np.subtract(q[0], q_start[row, segment], out=steps[0])
    changed, offset = np.divmod(np.flatnonzero(steps.T != 0), SEGMENT)
    # A step above 255 needs a weight of 1 plus float64 rounding at a half; below 0, float64 rounding at a half
    # between a segment's sum and its keys' running sum (or a weight outside [0, 1]). Never seen, never wrapped.
    values = np.clip(steps[offset, changed], 0, SCALE).astype(np.uint8)
    kept = values != 0
    return row[changed][kept], (segment[changed] * SEGMENT + offset)[kept], values[kept]


def _segmented(rows: np.ndarray, segments: int) -> np.ndarray:
    """(rows, keys) as (rows, segments, SEGMENT): a view where the keys fill whole segments, else zero-padded."""
    count, keys = rows.shape
    if keys == segments * SEGMENT and rows.strides[1] == rows.itemsize:
        return np.lib.stride_tricks.as_strided(rows, (count, segments, SEGMENT),
                                               (rows.strides[0], SEGMENT * rows.itemsize, rows.itemsize),
                                               writeable=False)
    padded = np.zeros((count, segments * SEGMENT), dtype=np.float32)
    padded[:, :keys] = rows
    return padded.reshape(count, segments, SEGMENT)


def _rounded(running: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Q = floor(255 * P + 1/2) of float64 running sums P."""
    out = np.multiply(running, SCALE, out=out)
    out += 0.5
    return np.floor(out, out=out)


def to_float16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to float16 exactly as `astype` does, fast: numpy converts values below 2^-14 (float16
    subnormals, most weights at length) 17x slower than the rest. A subnormal's bits are its multiple of 2^-24,
    rounded half to even, which `rint` computes exactly."""
    values = np.asarray(values, dtype=np.float32)
    subnormal = (values >= 0) & (values < 2.0**-14)
    normal = np.where(subnormal, np.float32(1), values).astype(np.float16).view(np.uint16)
    scaled = np.rint(np.where(subnormal, values, np.float32(0)) * np.float32(2.0**24)).astype(np.uint16)
    return np.where(subnormal, scaled, normal).view(np.float16)


def encode_chunk(positions: np.ndarray, values: np.ndarray) -> bytes:
    """Zero-run code and compress a chunk of uint8 cells given by its non-zero bytes (`values`, at ascending cell
    `positions`): the number of zeros before each non-zero byte as four little-endian byte planes (every low byte,
    then every second byte, ...), then the non-zero bytes; zlib."""
    gaps = np.diff(positions, prepend=-1) - 1
    planes = gaps.astype("<u4").view(np.uint8).reshape(-1, 4).T
    return zlib.compress(planes.tobytes() + np.asarray(values, dtype=np.uint8).tobytes(), ZLIB_LEVEL)


def decode_chunk(chunk: bytes, size: int, where: str) -> np.ndarray:
    """Invert `encode_chunk` into `size` uint8 cells; `where` names the chunk in the error a damaged one raises."""
    try:
        raw = zlib.decompress(chunk)
    except zlib.error as error:
        raise StoreError(f"{where} is not a valid zlib stream ({error}); the capture is damaged, capture it again.")
    count, extra = divmod(len(raw), 5)
    planes = np.frombuffer(raw, dtype=np.uint8, count=4 * count).reshape(4, count)
    gaps = np.ascontiguousarray(planes.T).view("<u4").ravel().astype(np.int64)
    positions = np.cumsum(gaps + 1) - 1
    if extra or (count and positions[-1] >= size):
        raise StoreError(f"{where} does not decode to its {size} weights; the capture is damaged, capture it again.")
    cells = np.zeros(size, dtype=np.uint8)
    cells[positions] = np.frombuffer(raw, dtype=np.uint8, offset=4 * count)
    return cells
