"""Freed memory kept in the process's heap, so that a model's calls stop page-faulting.

Why: glibc's malloc serves a block above its mmap threshold (128 KiB at start, raised towards
32 MiB as such blocks are freed) from a new mapping and unmaps it when it is freed, and it
gives the free top of its heap back to the OS past a trim threshold. Every page of a new
mapping, or of heap given back and taken again, faults on its first write (about 1-2 us each on
these VMs). A CNN's activations are blocks of that size, made and freed on every call, by torch's
ops and kernelkit's alike (its kernels' outputs come from torch's allocator): a torch ResNet-50
forward at batch 8 took 60 thousand faults, at batch 32 980 thousand (2-vCPU Zen 4,
``bench/probes/heap_probe.py``). `keep_heap()` tells glibc never to map a block apart and not to
trim, so a freed block's pages serve the next call's. The cost: the process keeps its peak heap
resident instead of returning it between calls.

Process-wide and glibc's (Linux with glibc); elsewhere, or under another malloc preloaded
(jemalloc, tcmalloc), it does nothing and says so. The same holds from the start of a process,
and in every process it starts, with glibc's own environment variables:
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``.
"""

from __future__ import annotations

import ctypes
import functools
import threading

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_KEEP_TRIM = 2**31 - 1  # (an int: mallopt takes one) bytes of free heap top before a trim
# keep_heap(False): where glibc's dynamic thresholds end up once large blocks have been freed
# (the mmap threshold's ceiling on 64-bit, and twice it for the trim); setting any parameter
# turns the dynamic rule off for good, and its 128 KiB starting values would map every
# activation apart (a ResNet-50 forward at batch 8: 891 ms against 505 with the defaults)
_GIVE_MMAP = 32 << 20
_GIVE_TRIM = 64 << 20
_GIVE_MMAP_MAX = 65536  # glibc's default

_lock = threading.Lock()
_kept = [False]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The process's C library where it is glibc and its malloc is the one in use: None under
    musl (whose mallopt does nothing), macOS or Windows, and where another malloc was preloaded
    (jemalloc or tcmalloc through LD_PRELOAD: glibc's mallopt would still answer 1 and change
    nothing that allocates)."""
    try:  # (Windows: CDLL(None) raises TypeError)
        process, libc = ctypes.CDLL(None), ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
            return None
        used = ctypes.cast(process.malloc, ctypes.c_void_p).value
        return libc if used == ctypes.cast(libc.malloc, ctypes.c_void_p).value else None
    except (OSError, AttributeError, TypeError):
        return None


def keep_heap(on: bool = True) -> bool:
    """Keep freed memory in the heap for reuse (``on``), or give large blocks back again.

    With ``on``, glibc serves no block from a mapping of its own and trims its heap only past
    2 GiB of free top: freed blocks are reused page for page, and a model called again and
    again stops faulting new pages. On a 2-vCPU Zen 4 a torch ResNet-50 forward took 505 ms at
    batch 8 and 2.87 s at batch 32 with glibc's defaults, 426 ms and 1.62 s after
    ``keep_heap()`` (medians of three runs, ``bench/probes/heap_probe.py``); at batch 1 it faults
    next to nothing either way. The process then holds its peak heap (RSS 529 MB against 402 at
    batch 8, whose peak was 504).

    What it does not reach: blocks that threads other than the main one allocate come from
    glibc's per-thread arenas, which map a block over 64 MiB apart and unmap a heap that became
    free whatever these settings say; set ``MALLOC_ARENA_MAX=1`` at the process's start where a
    model runs on worker threads. Worker processes started by fork inherit the setting (each
    then keeps its own peak heap); spawned or forkserver ones do not (the environment variables
    in the module's docstring do). Also: a large ``calloc`` (``np.zeros``) is zeroed by hand
    instead of lazily by the OS, and a large ``realloc`` copies instead of remapping.

    ``on=False`` maps blocks above 32 MiB apart again, trims past 64 MiB of free top (where
    glibc's dynamic thresholds end up; the dynamic rule itself cannot be turned back on) and
    trims the heap now.

    Call it early, before other threads allocate: glibc's ``mallopt`` is not safe against
    allocations running in other threads.

    Args:
        on: keep (True) or give back (False).

    Returns:
        Whether it took effect: False where the malloc in use is not glibc's (nothing changes).

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
                    and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM) == 1)
        else:
            done = (libc.mallopt(_M_MMAP_MAX, _GIVE_MMAP_MAX) == 1
                    and libc.mallopt(_M_MMAP_THRESHOLD, _GIVE_MMAP) == 1
                    and libc.mallopt(_M_TRIM_THRESHOLD, _GIVE_TRIM) == 1)
            libc.malloc_trim(ctypes.c_size_t(0))
        _kept[0] = bool(on) and done
    return done


def heap_kept() -> bool:
    """Whether `keep_heap()` is in effect (set by this process through kernelkit)."""
    return _kept[0]
