"""How big a store will be, told before the capture starts, and a refusal when the disk cannot hold it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from att_report.errors import StoreError
from att_report.store.format import AUTO, resolve_encoding, row_blocks, stored_shape

# A uint8-diffused row holds at most 255 non-zero bytes (they sum to 255 for a row summing to 1); the projection
# counts min(keys, 255) of them per row at this many bytes each once coded and compressed. Measured: 0.5-0.9 on
# realistic synthetic rows and SmolLM2 (README, "Size at length"), so the projection errs on the large side.
BYTES_PER_NONZERO = 1.0
NPY_HEADER = 128
INDEX_ENTRY = 16  # two int64 per (head, row block)


def projected_store_bytes(num_layers: int, num_heads: int, num_tokens: int, causal: bool, dtype: str = AUTO) -> int:
    """Project the attention files of a store of `num_layers` x `num_heads` stored heads: exact for float16 and
    float32, an estimate on the large side for uint8-diffused (whose size depends on the weights)."""
    encoding = resolve_encoding(dtype, num_tokens)
    if not encoding.chunked:
        cells = int(np.prod(stored_shape(num_heads, num_tokens, causal), dtype=np.int64))
        return num_layers * (NPY_HEADER + cells * np.dtype(encoding.dtype).itemsize)
    keys = np.arange(1, num_tokens + 1) if causal else np.full(num_tokens, num_tokens)
    per_head = float(np.minimum(keys, 255).sum()) * BYTES_PER_NONZERO + row_blocks(num_tokens) * INDEX_ENTRY
    return num_layers * (NPY_HEADER + int(num_heads * per_head))


def check_disk_space(directory: Path, needed: int) -> None:
    """Refuse, naming both numbers, when the file system that will hold `directory` has less than `needed` bytes
    free; the directory itself need not exist yet."""
    existing = Path(directory).absolute()
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < needed:
        raise StoreError(f"the capture needs about {human_bytes(needed)} but {existing} has {human_bytes(free)} free; "
                         "free some space, write it elsewhere (-o), or store fewer layers or heads.")


def human_bytes(size: int) -> str:
    """Say a size in the largest unit that keeps it at least 1, with one decimal."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
