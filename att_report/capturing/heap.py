"""Keep the recording pass's memory at about one block of attention on glibc systems.

Each block of attention is a large temporary. glibc serves blocks of that size from its heap once its adaptive
threshold has grown, and a freed heap block rarely goes back to the system, so the resident size would climb over
a pass. Serving every block of 1 MiB or more by mmap hands each one back as soon as it is freed, and trimming the
heap after each layer returns what smaller frees left. Elsewhere (not glibc) both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


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


def return_large_blocks_to_system() -> bool:
    """Ask glibc to mmap (and so release on free) every block of 1 MiB or more; False where that is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim); False where that is not glibc."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
