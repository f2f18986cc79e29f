"""Keep the recording pass fast and its memory at a few blocks of attention on glibc systems.

Each block of attention, and each temporary the writer makes of it, is a large allocation. Served by mmap, every
one faults fresh zeroed pages in, which once took half the writer's time. Served from the heap, the next block reuses
the pages the last one freed; glibc's heap serves blocks up to 32 MiB when asked to, and trims its top only when
told. So the pass keeps its blocks below that size, and trims the heap after each layer, which hands back what the
layer left free, and whenever the writer has caught up (while generating, every layer ends only at the end).
Elsewhere (not glibc) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
HEAP_BLOCK_BYTES = 32 << 20  # the largest mmap threshold glibc takes on a 64-bit system
TRIM_THRESHOLD_BYTES = 1 << 30  # free heap top kept by free(); return_freed_memory hands it back per layer


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (it has mallopt and malloc_trim); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def keep_blocks_on_heap() -> bool:
    """Ask glibc to serve blocks below HEAP_BLOCK_BYTES from its heap and to keep freed ones for reuse until
    return_freed_memory; False where that is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False where that is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
