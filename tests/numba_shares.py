"""Jitted shares ``fn(t, nthr, ...)`` that the thread-pool tests launch (tests/kernels/
test_numba_pool.py through Python callbacks, test_numba_native.py through trampolines)."""

from __future__ import annotations

import numba

from kernelkit.kernels.numba import _pool


@numba.njit(nogil=True)
def arrive_then_sum(t, nthr, out, sync):
    """Share t writes its mark, waits at the barrier, then sums every share's mark: only a
    barrier that waits for all makes every sum nthr."""
    out[t] = 1
    if _pool.barrier(sync, nthr):
        s = 0
        for i in range(nthr):
            s += out[i]
        out[nthr + t] = s
