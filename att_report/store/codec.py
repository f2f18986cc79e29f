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

# Measured on diffused chunks at 2,048 and 8,192 tokens: level 1 compresses twice as fast but 5-8% larger, level 4
# 2% larger; zlib takes about a tenth of the writer's time, so the smaller store wins.
ZLIB_LEVEL = 6
SCALE = 255.0


def diffuse(weights: np.ndarray) -> np.ndarray:
    """Quantize (..., keys) float weights along the last axis to error-diffused uint8 bytes (see the module)."""
    if weights.size and (weights.min() < 0 or weights.max() > 1):
        weights = np.clip(weights, 0.0, 1.0)  # never for softmax weights, so no copy in the common case
    running = np.cumsum(weights, axis=-1, dtype=np.float64)
    running *= SCALE
    running += 0.5
    np.floor(running, out=running)  # Q_j
    steps = np.empty(running.shape, dtype=np.uint8)
    steps[..., :1] = running[..., :1]
    between = np.subtract(running[..., 1:], running[..., :-1])
    # A step above 255 needs a weight of 1 plus float64 rounding at a half; never seen, but never wrapped.
    np.minimum(between, SCALE, out=between)
    steps[..., 1:] = between
    return steps


def to_float16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to float16 exactly as `astype` does, fast: numpy converts values below 2^-14 (float16
    subnormals, most weights at length) 17x slower than the rest. A subnormal's bits are its multiple of 2^-24,
    rounded half to even, which `rint` computes exactly."""
    values = np.asarray(values, dtype=np.float32)
    subnormal = (values >= 0) & (values < 2.0**-14)
    normal = np.where(subnormal, np.float32(1), values).astype(np.float16).view(np.uint16)
    scaled = np.rint(np.where(subnormal, values, np.float32(0)) * np.float32(2.0**24)).astype(np.uint16)
    return np.where(subnormal, scaled, normal).view(np.float16)


def encode_chunk(cells: np.ndarray) -> bytes:
    """Zero-run code a flat uint8 array and compress it: the number of zeros before each non-zero byte as four
    little-endian byte planes (every low byte, then every second byte, ...), then the non-zero bytes; zlib."""
    positions = np.flatnonzero(cells != 0)  # numpy finds a bool array's non-zeros 4-6x faster than a uint8's
    gaps = np.diff(positions, prepend=-1) - 1
    planes = gaps.astype("<u4").view(np.uint8).reshape(-1, 4).T
    return zlib.compress(planes.tobytes() + cells[positions].tobytes(), ZLIB_LEVEL)


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
