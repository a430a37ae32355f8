"""Keep freed memory inside the process (glibc malloc settings), for training on the CPU.

An outer iteration allocates and frees hundreds of activation tensors of 1-30 MB. With glibc's
defaults, memory freed at the top of the heap beyond the trim threshold, and blocks above the
mmap threshold, go back to the operating system, so the next iteration faults the same pages in
again. The settings below keep them in the process (page faults, system time and the speed-up:
benchmarks/RESULTS.md#cpu). torch has no caching allocator for CPU tensors (its caching
allocator is CUDA's), and jemalloc or tcmalloc would need LD_PRELOAD and a system package;
glibc's own `mallopt` needs neither. The price: the process keeps its peak heap until it exits.

`MAMLPP_MALLOC=default` leaves glibc's settings alone (to measure the difference).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameter numbers, from glibc's <malloc.h>
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {
    M_MMAP_THRESHOLD: 1 << 30,  # blocks up to 1 GiB come from the heap, not from fresh mmaps
    M_TRIM_THRESHOLD: (1 << 31) - 1,  # never hand the heap's free top back to the kernel
    M_TOP_PAD: 256 << 20,  # grow the heap in 256 MiB steps
}
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply SETTINGS once per process; True if glibc accepted them. A no-op returning False
    off glibc (macOS, musl) or with MAMLPP_MALLOC=default."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def _apply() -> bool:
    if os.environ.get("MAMLPP_MALLOC", "").strip().lower() == "default":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
