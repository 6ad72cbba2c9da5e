"""The Numba kernels' threads: shares that meet at a barrier in one launch (``run_synced``),
the fallback when another synced run holds the pool, a failing share that must not leave the
others spinning; each on the Python pool and on torch's OpenMP team (``way``), and the team's
own cases (fewer threads than shares, a forked child, turned off)."""

from __future__ import annotations

import multiprocessing
import os
import threading

import numba
import numpy as np
import pytest
from numba_shares import arrive_then_sum as _arrive_then_sum

from kernelkit.kernels.numba import _pool
from kernelkit.kernels.numba import conv2d as nc


@pytest.fixture(params=["pool", "team"], autouse=True)
def way(request, monkeypatch):
    """Every test here runs on the Python pool and again on torch's OpenMP team."""
    if request.param == "team":
        pytest.importorskip("torch")
        team = _pool._find_team()
        if not team:
            pytest.skip("no OpenMP runtime loaded by torch in this process")
    else:
        team = False
    monkeypatch.setattr(_pool, "_TEAM", [team])
    return request.param


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
    assert not _pool._sync_busy[0] and not _pool._SYNC_GATE.locked()


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
    _pool._sync_busy[0] = True  # (another synced run holds the pool)
    try:
        out = np.zeros(4, np.int64)
        assert not _pool.run_synced(_arrive_then_sum, 2, out)
        assert not out.any()
        apart = conv()
    finally:
        _pool._sync_busy[0] = False
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


@numba.njit(nogil=True)
def _mark(t, nthr, out):
    out[t] += t + 1


def test_run_covers_every_share_once():
    for nthr in (1, 2, 3, 5):
        out = np.zeros(nthr, np.int64)
        _pool.run(_mark, nthr, out)
        np.testing.assert_array_equal(out, np.arange(1, nthr + 1))


def test_an_error_in_a_share_reaches_the_caller():
    def share(t, nthr):
        if t == nthr - 1:
            raise KeyError(f"share {t}")

    with pytest.raises(KeyError, match="share 1"):
        _pool.run(share, 2)


def _one_thread_team():
    """A stand-in runtime that gives a region one thread, whatever was asked."""
    return (lambda body, key, nthr, flags: body(key), lambda: 0, lambda: 1)


def test_a_smaller_team_still_runs_every_share(monkeypatch, way):
    """Unsynced shares loop over the threads the runtime gave; synced ones, which must all run
    at once, fall back to the Python pool instead of waiting at a barrier forever."""
    monkeypatch.setattr(_pool, "_TEAM", [_one_thread_team()])
    out = np.zeros(3, np.int64)
    _pool.run(_mark, 3, out)
    np.testing.assert_array_equal(out, [1, 2, 3])
    out = np.zeros(4, np.int64)
    assert _pool.run_synced(_arrive_then_sum, 2, out)
    np.testing.assert_array_equal(out, [1, 1, 2, 2])


def test_a_share_that_never_ran_is_an_error_not_a_partial_result(monkeypatch, way):
    """A runtime that says it has two threads but calls the body on one (as when an interrupt
    ends a thread's callback before its share): the launch raises instead of returning an
    output with one share's part unwritten."""
    team = (lambda body, key, nthr, flags: body(key), lambda: 0, lambda: 2)
    monkeypatch.setattr(_pool, "_TEAM", [team])
    out = np.zeros(2, np.int64)
    with pytest.raises(RuntimeError, match="1 of a Numba kernel's 2 shares did not run"):
        _pool.run(_mark, 2, out)
    assert out.tolist() == [1, 0]


def test_team_is_off_without_torch_or_when_turned_off(monkeypatch, way):
    pytest.importorskip("torch")
    monkeypatch.setenv("KERNELKIT_OPENMP_TEAM", "0")
    assert _pool._find_team() is False
    monkeypatch.delenv("KERNELKIT_OPENMP_TEAM")
    monkeypatch.delitem(__import__("sys").modules, "torch", raising=False)
    assert _pool._find_team() is None  # looked for again once torch is imported


def _conv_in_child(queue):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 20, 20), dtype=np.float32)
    w = rng.standard_normal((24, 16, 3, 3), dtype=np.float32)
    y = nc.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None, "NCHW",
                          nc.Conv2dConfig(24, 16, 64, "shift"))
    out = np.zeros(2, np.int64)
    _pool.run(_mark, 2, out)
    queue.put((bool(_pool._TEAM[0]), y.sum(dtype=np.float64), out.tolist()))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_runs_on_its_own_threads(way):
    """The parent ran shares on its threads (the team or the pool); a forked child (a DataLoader
    worker) has neither, and must run on new ones instead of waiting for them forever."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    _conv_in_child(queue)  # in this process first: its threads exist when it forks
    _, expected, _ = queue.get()
    child = ctx.Process(target=_conv_in_child, args=(queue,))
    child.start()
    child.join(timeout=120)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung")
    assert child.exitcode == 0
    team, got, marks = queue.get()
    assert team is False  # never the parent's OpenMP team
    assert got == pytest.approx(expected, rel=1e-6) and marks == [1, 2]


def test_numpy_blas_moments_ago_means_the_pool_else_the_team(monkeypatch, way):
    """Through the ops layer: a Numba launch takes torch's OpenMP team whatever the data, except
    within BLAS_SPIN_S of kernelkit's own numpy BLAS call (OpenBLAS's workers may be spinning),
    when it takes kernelkit's own pool; results the same either way."""
    torch = pytest.importorskip("torch")
    import kernelkit
    from kernelkit import threads

    team = _pool._find_team()
    if not team:
        pytest.skip("no OpenMP runtime loaded by torch in this process")
    monkeypatch.setattr(_pool, "_TEAM", [team])
    used = []  # launches on the team, natively (a trampoline) or through Python callbacks
    on_team, native = _pool._run_on_team, _pool._run_native
    monkeypatch.setattr(_pool, "_run_on_team", lambda *a, **k: used.append(1) or on_team(*a, **k))

    def spy_native(*a, **k):
        ran = native(*a, **k)
        if ran is not None:
            used.append(1)
        return ran

    monkeypatch.setattr(_pool, "_run_native", spy_native)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((320, 256), dtype=np.float32)  # past the one-thread size
    b = rng.standard_normal((256, 300), dtype=np.float32)
    monkeypatch.setattr(threads, "_blas_until", [0.0])
    with kernelkit.use(backend="numba"):
        got_np = kernelkit.matmul(a, b)
        assert used and not threads.blas_spinning()
        got_t = kernelkit.matmul(torch.from_numpy(a), torch.from_numpy(b))
    with kernelkit.use(backend="numpy"):
        kernelkit.matmul(a, b)
    assert threads.blas_spinning()
    used.clear()
    with kernelkit.use(backend="numba"):
        got_after_blas = kernelkit.matmul(a, b)
    assert not used
    monkeypatch.setattr(threads, "_blas_until", [0.0])  # BLAS_SPIN_S later
    with kernelkit.use(backend="numba"):
        kernelkit.matmul(torch.from_numpy(a), torch.from_numpy(b))
    assert used
    np.testing.assert_allclose(got_np, a.astype(np.float64) @ b, rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(got_t.numpy(), got_np)
    np.testing.assert_array_equal(got_after_blas, got_np)


def test_the_caller_claims_a_share_a_late_pool_thread_has_not_started(monkeypatch):
    """Claiming shares (the pool's default): while the pool's thread is held up, the calling
    thread runs every share itself and returns; the late thread then finds nothing to do. With
    fixed shares the call waits for that thread."""
    gate = threading.Event()
    p = _pool.pool(2)
    for _ in range(p._max_workers):
        p.submit(gate.wait)  # every pool thread is busy until the gate opens
    try:
        for nthr in (2, 3):
            ran = []
            _pool.run_pool(lambda t, n: ran.append((t, threading.get_ident())), nthr)
            assert sorted(t for t, _ in ran) == list(range(nthr))
            assert {tid for _, tid in ran} == {threading.get_ident()}
        fixed = threading.Thread(target=_pool.run_pool, args=(lambda t, n: None, 2),
                                 kwargs={"claim": False})
        fixed.start()
        fixed.join(0.2)
        assert fixed.is_alive()  # waiting for the held-up thread's share
    finally:
        gate.set()
    fixed.join(5)
    assert not fixed.is_alive()


def test_claimed_shares_are_each_run_once_and_errors_surface():
    """Many launches with the pool's threads free: every share exactly once, and a share's error
    reaches the caller whichever thread ran it."""
    for _ in range(200):
        out = np.zeros(3, np.int64)
        _pool.run_pool(_mark, 3, out)
        np.testing.assert_array_equal(out, [1, 2, 3])

    def share(t, nthr):
        if t == 1:
            raise KeyError("share 1")

    for _ in range(20):
        with pytest.raises(KeyError, match="share 1"):
            _pool.run_pool(share, 2)


class _Deadline(Exception):
    pass


@pytest.mark.parametrize("claim", [True, False])
def test_an_interrupted_call_returns_only_after_the_shares_it_started(claim):
    """A signal handler's exception (a request's deadline, KeyboardInterrupt) while the caller
    waits for a pool thread's share: the call raises it once that share has returned. It used to
    return at once, the share still computing into the caller's per-thread scratch, which the
    next call packs into (a next 1024^3 matmul was 152 off)."""
    import signal
    import time

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    main = threading.get_ident()
    started, returned = threading.Event(), []

    def share(t, nthr):
        if threading.get_ident() == main:
            started.wait(2.0)  # (the pool thread has its share: the caller then waits for it)
            return
        started.set()
        time.sleep(0.4)
        returned.append(time.monotonic())

    def deadline(signum, frame):
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, deadline)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.15)
        with pytest.raises(_Deadline):
            _pool.run_pool(share, 2, claim=claim)
        raised = time.monotonic()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert returned and returned[0] <= raised


def test_the_callers_deadline_outranks_a_shares_failure():
    """A deadline struck inside the caller's own share was recorded beside the shares' errors,
    and a pool share's failure listed before it was raised instead."""
    import signal

    def deadline(signum, frame):
        raise _Deadline

    def share(t, nthr):
        if t == 0:
            threading.Event().wait(0.1)  # (the pool thread's failure comes first)
            deadline(signal.SIGUSR1, None)  # as a handler striking in this share would
        raise KeyError("share failed")

    previous = signal.signal(signal.SIGUSR1, deadline)
    try:
        with pytest.raises(_Deadline):
            _pool.run_pool(share, 2, claim=False)
    finally:
        signal.signal(signal.SIGUSR1, previous)
