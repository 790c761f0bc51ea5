"""Give the process's freed heap back to the system (glibc's malloc_trim), and
keep Python's cycle collector out of an apply.

Compiling the program (bcc, LLVM) and building Maglev tables free far more
memory than the daemon keeps, but glibc keeps freed heap pages mapped for
reuse, so the daemon's resident memory would stay at its peak: measured at
1,000 VIPs, about 85 MB left behind by the compile alone (bench/control.py's
second_chance_scale, rss_loaded_mb). Called after the compile and after each
apply; costs a walk of the heap's free lists (well under a millisecond here).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc


def _malloc_trim():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to ask
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def give_back() -> None:
    """Return free heap pages to the system (a no-op without glibc)."""
    if _TRIM is not None:
        _TRIM(0)



@contextlib.contextmanager
def collector_paused():
    """Python's cycle collector off inside (as it was, after): an apply
    allocates enough to trigger a full collection, which walks every object
    the daemon keeps (~100,000 at 1,000 VIPs x 100 backends: measured, a 60 ms
    pause inside a health change). Deferred, not skipped: it runs after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
