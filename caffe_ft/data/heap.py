"""glibc's malloc told to keep freed memory, for processes that allocate and
free the same large buffers over and over: the LMDB builder's main process
(LMDB mallocs each transaction's dirty pages, some 16 MB, and frees them at
commit) and the data workers (a decoded photo, its resized copy, a batch).

By default glibc serves blocks over 128 KiB with mmap and gives freed memory
at the top of the heap back to the OS; it raises those limits only after a
large block has been freed, per process. A fresh process, and a worker forked
from one, so faults in every page of every such buffer again: measured on
1000 photos, 130,000 page faults and a third of a second of system time in a
build that needs 15,000 once the limits are up.
"""
from __future__ import annotations

import ctypes
import sys

# malloc.h's mallopt parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to glibc's own ceiling for its raised mmap threshold (32 MiB on
# 64-bit) come from the heap, and up to 64 MiB of free heap top is kept:
# more than one commit's dirty pages or a few chunks of images.
_MMAP_BELOW = 32 << 20
_KEEP_TOP = 64 << 20


def keep_freed_memory() -> bool:
    """Set this process's malloc to reuse freed memory instead of returning
    it; False where the C library is not glibc (nothing is changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False  # musl and other libcs have no mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD,
                                                                          _KEEP_TOP))
