"""The Numba kernels' thread pool: shares that meet at a barrier in one launch (``run_synced``),
the fallback when another synced run holds the pool, and a failing share that must not leave
the others spinning."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest

from kernelkit.kernels.numba import _pool
from kernelkit.kernels.numba import conv2d as nc


@numba.njit(nogil=True)
def _arrive_then_sum(t, nthr, out, sync):
    """Share t writes its mark, waits at the barrier, then sums every share's mark: only a
    barrier that waits for all makes every sum nthr."""
    out[t] = 1
    if _pool.barrier(sync, nthr):
        s = 0
        for i in range(nthr):
            s += out[i]
        out[nthr + t] = s


@pytest.mark.parametrize("nthr", [2, 3, 4])
def test_synced_shares_meet_at_the_barrier(nthr):
    for _ in range(20):
        out = np.zeros(2 * nthr, np.int64)
        assert _pool.run_synced(_arrive_then_sum, nthr, out)
        assert (out[:nthr] == 1).all() and (out[nthr:] == nthr).all()


def test_a_failing_share_releases_the_others():
    """Share 1 raises before the barrier: share 0 leaves it (no hang) and the error surfaces."""
    waited = []

    def share(t, nthr, sync):
        if t == 1:
            raise ValueError("share 1 failed")
        waited.append(_pool.barrier(sync, nthr))

    result = []

    def call():
        try:
            _pool.run_synced(share, 2)
        except ValueError as e:
            result.append(str(e))

    th = threading.Thread(target=call, daemon=True)
    th.start()
    th.join(timeout=30)
    assert not th.is_alive(), "a share stayed at the barrier"
    assert result == ["share 1 failed"] and waited == [False]
    assert not _pool._SYNC_LOCK.locked()


def test_one_synced_run_at_a_time_the_others_fall_back():
    """While a synced run holds the pool, run_synced declines (nothing runs) and the conv takes
    its two launches: the same result either way."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 16, 20, 20), dtype=np.float32)
    w = rng.standard_normal((24, 16, 3, 3), dtype=np.float32)
    cfg = nc.Conv2dConfig(24, 16, 64, "shift")

    def conv():
        return nc.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None, "NCHW", cfg)

    synced = conv()
    with _pool._SYNC_LOCK:
        out = np.zeros(4, np.int64)
        assert not _pool.run_synced(_arrive_then_sum, 2, out)
        assert not out.any()
        apart = conv()
    np.testing.assert_array_equal(synced, apart)


def test_convs_from_many_threads_at_once():
    """Four Python threads convolving at once (synced runs and fallbacks interleaved): every
    result matches the one computed alone."""
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((2, 12, 18, 18), dtype=np.float32) for _ in range(4)]
    w = rng.standard_normal((20, 12, 3, 3), dtype=np.float32)
    cfg = nc.Conv2dConfig(24, 16, 64, "shift")

    def conv(x):
        return nc.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", "NCHW",
                                 cfg)

    alone = [conv(x) for x in xs]
    got: dict = {}

    def worker(i):
        got[i] = [conv(xs[i]) for _ in range(10)]

    ths = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in ths), "a conv hung"
    for i in range(4):
        for y in got[i]:
            np.testing.assert_array_equal(y, alone[i])
