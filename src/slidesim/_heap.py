"""Keep freed memory in the process heap between calls (floor L1), on Linux with glibc.

A call allocates a few megabytes of temporaries (spectra, window statistics, score maps) and frees them before it
returns. glibc's malloc serves blocks from 128 KiB upward with fresh ``mmap`` pages, and gives the top of its heap
back to the system once more than twice that threshold lies free there; it raises both limits only after it sees a
large block freed. Until then every call takes its temporaries from fresh pages, and the kernel zeroes each page on
its first touch: a zncc call on a 512² uint8 picture took 2,264 page faults and 6.5 ms, 3.0 ms once the heap was
kept (0 faults); ccorr 1.3 → 1.15 ms. OpenCV's matchTemplate, which works in small tiles, takes none.

:func:`keep_freed_memory` sets, once per process, the limits glibc's own rule reaches after its first large block
(``M_MMAP_THRESHOLD`` 32 MiB, its maximum on 64-bit systems, and ``M_TRIM_THRESHOLD`` twice that), so calls reuse
the pages the previous one freed. The cost is bounded: up to 64 MiB of freed memory may stay with the process
instead of returning to the system. It is not done where the user has chosen: with ``SLIDESIM_KEEP_HEAP=0``, or
when any of glibc's own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_`` or
``GLIBC_TUNABLES`` is set; nor on other C libraries and systems.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

from .errors import SlidesimValueError

ENV_VARIABLE = "SLIDESIM_KEEP_HEAP"
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD  # what glibc sets beside it when it raises the threshold itself

_state: bool | None = None  # whether the limits are set; None until the first call decides
_lock = threading.Lock()


def wanted() -> bool:
    """Whether slidesim may set the heap's limits: ``SLIDESIM_KEEP_HEAP`` is not 0 and the user has set none of
    glibc's own malloc settings. Raises SlidesimValueError naming the variable for a value other than 0 or 1."""
    text = os.environ.get(ENV_VARIABLE, "").strip()
    if text not in ("", "0", "1"):
        raise SlidesimValueError(
            f"`{ENV_VARIABLE}` must be 1 (keep freed memory in the heap between calls, the default) or 0 (leave "
            f"malloc's settings alone), got {os.environ[ENV_VARIABLE]!r}"
        )
    return text != "0" and not any(os.environ.get(name) for name in _USER_SETTINGS)


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl and others have no such symbol
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory(libc: ctypes.CDLL | None = None) -> bool:
    """Set glibc's mmap and trim thresholds, on the first call of the process (see the module docstring); returns
    whether they were set. ``libc`` stands for the process's C library (for tests)."""
    global _state
    if _state is not None:
        return _state
    with _lock:
        if _state is None:
            _state = _apply(libc)
        return _state


def _apply(libc: ctypes.CDLL | None) -> bool:
    if not wanted():
        return False
    libc = _glibc() if libc is None else libc
    if libc is None:
        return False
    # the trim threshold first: glibc stops adapting both once either is set, and the mmap threshold alone would
    # leave trimming at its 128 KiB default
    return bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
