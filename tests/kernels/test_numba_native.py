"""Native trampolines (``_native``): a compiled entry point's shares run on torch's OpenMP team
without Python - every share written, array strides and scalars as the kernel expects them,
a share that raises is an error (never a partial output, never a hang at a barrier), a smaller
team falls back, and the trampoline comes back from numba's on-disk cache."""

from __future__ import annotations

import ctypes
import threading

import numba
import numpy as np
import pytest
from numba import types
from numba_shares import arrive_then_sum as _arrive_then_sum

from kernelkit.kernels.numba import _native, _pool
from kernelkit.kernels.numba._gemm import entry_point

torch = pytest.importorskip("torch")

I64 = types.int64
ARR1 = types.Array(types.int64, 1, "C")


@pytest.fixture(autouse=True)
def team(monkeypatch):
    found = _pool._find_team()
    if not found:
        pytest.skip("no OpenMP runtime loaded by torch in this process")
    monkeypatch.setattr(_pool, "_TEAM", [found])

    def no_callbacks(*a, **k):
        raise AssertionError("a share went through a Python callback")

    monkeypatch.setattr(_pool, "_run_on_team", no_callbacks)
    return found


@numba.njit(nogil=True)
def _mark(t, nthr, out):
    out[t] = t + 1


@numba.njit(nogil=True)
def _strided_sum(t, nthr, x, scale, flag, out):
    """Share t sums its rows of the (maybe transposed) 2-D x, times scale, plus flag."""
    for i in range(t, x.shape[0], nthr):
        s = 0.0
        for j in range(x.shape[1]):
            s += x[i, j]
        out[i] = s * scale + flag


@numba.njit(nogil=True)
def _fail_one(t, nthr, out):
    if t == nthr - 1:
        raise ValueError("the last share fails")
    out[t] = 1


@numba.njit(nogil=True)
def _fail_before_barrier(t, nthr, out, sync):
    if t == 1:
        raise ValueError("share 1 fails before the barrier")
    if _pool.barrier(sync, nthr):
        out[t] = 1


def _entry(fn, *argtys):
    ep = entry_point(fn, types.void(I64, I64, *argtys))
    assert _native.runner(ep, _pool._team()) is not None, "no trampoline for a share entry point"
    return ep


def _in_thread(fn, timeout=60.0):
    """fn() on a daemon thread: (finished, what it raised)."""
    box: list = []

    def go():
        try:
            fn()
            box.append(None)
        except BaseException as e:  # noqa: BLE001
            box.append(e)

    th = threading.Thread(target=go, daemon=True)
    th.start()
    th.join(timeout)
    return not th.is_alive(), (box[0] if box else None)


@pytest.mark.parametrize("nthr", [2, 3, 5])
def test_every_share_runs_natively(nthr):
    ep = _entry(_mark, ARR1)
    for _ in range(20):
        out = np.zeros(nthr, np.int64)
        _pool.run(ep, nthr, out)
        assert out.tolist() == list(range(1, nthr + 1))


@pytest.mark.parametrize("transposed", [False, True])
def test_strided_arrays_and_scalars_reach_the_kernel_as_they_are(transposed):
    ep = _entry(_strided_sum, types.Array(types.float64, 2, "A", readonly=True), I64,
                types.boolean, types.Array(types.float64, 1, "C"))
    rng = np.random.default_rng(3)
    base = rng.standard_normal((37, 29))
    x = base.T if transposed else base[:, ::2]  # neither C-contiguous
    out = np.full(x.shape[0], np.nan)
    _pool.run(ep, 2, x, 3, True, out)
    np.testing.assert_allclose(out, x.sum(axis=1) * 3 + 1, rtol=1e-12)


def test_a_share_that_raises_is_an_error_not_a_partial_result():
    ep = _entry(_fail_one, ARR1)
    out = np.zeros(2, np.int64)
    done, err = _in_thread(lambda: _pool.run(ep, 2, out))
    assert done and isinstance(err, RuntimeError) and "did not complete" in str(err)
    assert _native.ENV in str(err)


def test_synced_shares_meet_at_the_barrier_natively():
    ep = _entry(_arrive_then_sum, ARR1, ARR1)
    for nthr in (2, 3):
        out = np.zeros(2 * nthr, np.int64)
        assert _pool.run_synced(ep, nthr, out)
        assert (out[:nthr] == 1).all() and (out[nthr:] == nthr).all()


def test_a_synced_share_that_raises_releases_the_others():
    ep = _entry(_fail_before_barrier, ARR1, ARR1)
    out = np.zeros(2, np.int64)
    done, err = _in_thread(lambda: _pool.run_synced(ep, 2, out))
    assert done, "a share waited at the barrier forever"
    assert isinstance(err, RuntimeError)
    assert out.tolist() == [0, 0]  # share 0 left the barrier without its work


def test_a_smaller_team_runs_a_synced_job_on_the_pool(monkeypatch, team):
    """A runtime that gives fewer threads than a synced job's shares: the trampoline runs none
    (they would wait at the barrier forever) and the job goes to the Python pool."""
    one = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: 1)
    addrs = (*team[3][:2], ctypes.cast(one, ctypes.c_void_p).value)
    monkeypatch.setattr(_pool, "_TEAM", [(*team[:3], addrs)])
    monkeypatch.setattr(_pool, "_RUNNERS", {})
    ep = _entry(_arrive_then_sum, ARR1, ARR1)
    out = np.zeros(4, np.int64)
    pooled = []
    real = _pool.run_pool
    monkeypatch.setattr(_pool, "run_pool", lambda *a, **k: pooled.append(1) or real(*a, **k))
    assert _pool.run_synced(ep, 2, out)
    assert pooled and out.tolist() == [1, 1, 2, 2]


def test_the_trampoline_comes_back_from_the_on_disk_cache(monkeypatch):
    sig = types.void(I64, I64, ARR1)
    _native._trampoline(sig)
    monkeypatch.setattr(_native, "_TRAMPOLINES", {})
    _native._trampoline(sig)
    assert _native._TRAMPOLINES[tuple(sig.args)]._cache_hits == 1


def test_turned_off_no_entry_point_gets_a_trampoline(monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")

    @numba.njit(nogil=True)
    def share(t, nthr, out):
        out[t] = 7

    ep = entry_point(share, types.void(I64, I64, ARR1))
    assert _native.runner(ep, _pool._team()) is None
