"""Freed memory kept in the process's heap, so that a model's calls stop page-faulting.

Why: glibc's malloc serves a block above its mmap threshold (128 KiB at start, raised towards
32 MiB as such blocks are freed) from a new mapping and unmaps it when it is freed, and it
gives the free top of its heap back to the OS past a trim threshold. Every page of a new
mapping, or of heap given back and taken again, faults on its first write (about 1-2 us each on
these VMs). A CNN's activations are blocks of that size, made and freed on every call, by torch's
ops and kernelkit's alike (its kernels' outputs come from torch's allocator): a torch ResNet-50
forward at batch 8 took 60 thousand faults, at batch 32 980 thousand (2-vCPU Zen 4,
``bench/probes/heap_probe.py``). `keep_heap()` tells glibc never to map a block apart and never
to trim, so a freed block's pages serve the next call's. The cost: the process keeps its peak
heap resident instead of returning it between calls.

Process-wide and glibc's (Linux with glibc); elsewhere it does nothing and says so. The same
holds from the start of a process, and in processes it starts, with glibc's own environment
variables: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import functools
import threading

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
# glibc's fixed defaults, which keep_heap(False) restores (its dynamic mmap threshold, which
# follows the blocks freed, cannot be turned back on once a parameter was set)
_DEFAULT_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
_NEVER = 2**31 - 1  # (an int: mallopt takes one) bytes of free heap top before a trim

_lock = threading.Lock()
_kept = [False]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc (it has mallopt and says its version)."""
    try:  # (Windows: CDLL(None) raises TypeError)
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has a mallopt that does nothing)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError, TypeError):
        return None


def keep_heap(on: bool = True) -> bool:
    """Keep freed memory in the heap (``on``), or give it back to the OS as glibc does by default.

    With ``on``, glibc never serves a block from a mapping of its own and never trims its heap:
    freed blocks are reused page for page, and a model called again and again stops faulting
    new pages. On a 2-vCPU Zen 4 a torch ResNet-50 forward took 505 ms at batch 8 and 2.87 s
    at batch 32 with glibc's defaults, 426 ms and 1.62 s after ``keep_heap()`` (medians of three
    runs, ``bench/probes/heap_probe.py``); at batch 1 it faults next to nothing either way. The
    process then holds its peak heap (RSS 529 MB against 402 at batch 8, whose peak was 504).

    ``on=False`` sets glibc's fixed defaults back (a 128 KiB mmap and trim threshold; not its
    dynamic threshold, which glibc cannot turn back on) and trims the heap now.

    Args:
        on: keep (True) or give back (False).

    Returns:
        Whether it took effect: False where the C library is not glibc (nothing changes).

    Example:
        >>> import kernelkit
        >>> kernelkit.keep_heap()  # doctest: +SKIP
        True
    """
    libc = _glibc()
    if libc is None:
        return False
    with _lock:
        if on:
            done = (libc.mallopt(_M_MMAP_MAX, 0) == 1
                    and libc.mallopt(_M_TRIM_THRESHOLD, _NEVER) == 1)
        else:
            done = (libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX) == 1
                    and libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_THRESHOLD) == 1
                    and libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_THRESHOLD) == 1)
            libc.malloc_trim(ctypes.c_size_t(0))
        _kept[0] = bool(on) and done
    return done


def heap_kept() -> bool:
    """Whether `keep_heap()` is in effect (set by this process through kernelkit)."""
    return _kept[0]
