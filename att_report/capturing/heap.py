"""Keep the recording pass's memory at about one layer's attention on glibc systems.

Each layer's attention is a large temporary. glibc serves blocks of that size from its heap once its adaptive
threshold has grown, and a freed heap block rarely goes back to the system, so the resident size would climb by
many layers over a pass. Serving every block of 1 MiB or more by mmap hands each one back as soon as it is freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_blocks_to_system() -> bool:
    """Ask glibc to mmap (and so release on free) every block of 1 MiB or more; False where that is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
