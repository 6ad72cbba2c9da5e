"""The caller's signal handlers around kernelkit's work (kernelkit.signals): an exception a handler
raises is the caller's, and it never strikes in the middle of an import."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from kernelkit import signals

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGALRM"), reason="needs SIGALRM")


class _Deadline(Exception):
    pass


@pytest.fixture
def deadline():
    """A SIGALRM handler that raises _Deadline; yields a function that arms it."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")

    def handler(signum, frame):
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_a_deadline_during_an_import_strikes_after_it_and_the_module_is_whole(
        tmp_path, monkeypatch, deadline):
    """A deadline that struck while a first call imported numba left numba half made: every
    later call raised "partially initialized module 'numba' has no attribute 'core'"."""
    (tmp_path / "kk_slow_import.py").write_text(
        "import time\nfor _ in range(40):\n    time.sleep(0.005)\nWHOLE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "kk_slow_import", raising=False)
    deadline(0.05)
    with pytest.raises(_Deadline) as info:
        signals.import_whole("kk_slow_import")
    assert sys.modules["kk_slow_import"].WHOLE
    assert signals.raised_by_signal_handler(info.value)
    assert signal.getsignal(signal.SIGALRM).__name__ == "handler"  # the caller's, back


def test_a_plain_import_is_what_import_whole_guards_against(tmp_path, monkeypatch, deadline):
    """(The test above would pass with a plain import if the alarm missed the import.)"""
    import importlib

    (tmp_path / "kk_slow_import2.py").write_text(
        "import time\nfor _ in range(40):\n    time.sleep(0.005)\nWHOLE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    deadline(0.05)
    with pytest.raises(_Deadline):
        importlib.import_module("kk_slow_import2")
    assert "kk_slow_import2" not in sys.modules


def test_nothing_arrives_nothing_is_raised(deadline):
    with signals.deferred():
        pass
    assert signal.getsignal(signal.SIGALRM).__name__ == "handler"


def test_a_deadline_during_a_foreground_compile_is_raised_and_the_compile_retried(
        tmp_path, monkeypatch, deadline):
    """It was recorded as the compile's failure: the candidate then failed every later call."""
    from kernelkit import compiling

    (tmp_path / "kk_slow_warm.py").write_text(
        "import time\ndef warm(dtype):\n    for _ in range(40):\n        time.sleep(0.005)\n"
        "    return 'compiled'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    deadline(0.05)
    with pytest.raises(_Deadline):
        compiling.warm_here("kk_slow_warm", "float32")
    assert ("kk_slow_warm", "float32") not in compiling._jobs
    job = compiling.warm_here("kk_slow_warm", "float32")
    assert job.how == "compiled" and job.error is None


class _Handler:
    def __call__(self, signum, frame):
        raise _Deadline


def _partial_handler(signum, frame, budget=None):
    raise _Deadline(budget)


@pytest.mark.parametrize("kind", ["partial", "object"])
def test_handlers_that_are_partials_or_callable_objects_are_recognised(kind):
    """Only a plain function's code was recognised: a deadline from a functools.partial handler
    was swallowed again and stored as a config's failure."""
    import functools

    handler = functools.partial(_partial_handler, budget=0.05) if kind == "partial" else _Handler()
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with pytest.raises(_Deadline) as info:
            handler(signal.SIGUSR1, None)
        assert signals.raised_by_signal_handler(info.value)
        with pytest.raises(RuntimeError) as wrapped:  # (a library wrapping it)
            try:
                handler(signal.SIGUSR1, None)
            except _Deadline as exc:
                raise RuntimeError("wrapped") from exc
        assert signals.raised_by_signal_handler(wrapped.value)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_handler_installed_inside_the_block_stays_and_every_arrival_is_handled(deadline):
    """Leaving the block put back the handlers from before it over one installed inside; a
    replayed handler that raised kept the later arrivals from being handled."""
    import os

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append("usr2"))
    try:
        with pytest.raises(_Deadline), signals.deferred():
            signal.signal(signal.SIGUSR1, lambda s, f: seen.append("usr1"))
            os.kill(os.getpid(), signal.SIGALRM)  # raises _Deadline, after the block
            os.kill(os.getpid(), signal.SIGUSR2)
            assert seen == []
        assert seen == ["usr2"]
        os.kill(os.getpid(), signal.SIGUSR1)
        assert seen == ["usr2", "usr1"]
    finally:
        signal.signal(signal.SIGUSR2, previous)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


def test_a_deadline_never_leaves_the_numba_launch_lock_held(deadline, monkeypatch):
    """Request deadlines (SIGALRM) striking Numba launches at random, for a few seconds: the
    launch lock is never left held. It was taken by acquire() before a try, and a handler that
    raised as acquire() returned left it held: every later launch of the process waited for
    good (a helper's serving run deadlocked in 4 of 17 runs; 5 of 5 runs of this loop leaked it
    within 3312 deadlines)."""
    import time

    import numpy as np

    import kernelkit
    from kernelkit import threads
    from kernelkit.kernels.numba import _pool

    monkeypatch.setattr(threads, "_threadsafe", False)  # (the locked launch, as in a plain process)
    a = np.random.default_rng(0).standard_normal((64, 64), dtype=np.float32)
    want = a.astype(np.float64) @ a
    rng = np.random.default_rng(1)
    struck = 0
    with kernelkit.use(backend="numba"):
        kernelkit.matmul(a, a)  # (compiled or loaded first, outside the deadlines)
        end = time.monotonic() + 6
        while time.monotonic() < end:
            try:
                deadline(float(rng.uniform(1e-5, 5e-4)))
                for _ in range(20):
                    kernelkit.matmul(a, a)
                deadline(0)
            except _Deadline:
                struck += 1
                assert not threads._lock.locked(), f"deadline {struck} left the lock held"
                assert not _pool._sync_busy[0]
        deadline(0)
        np.testing.assert_allclose(kernelkit.matmul(a, a), want, rtol=1e-4, atol=1e-4)
    assert struck > 100  # (deadlines did strike, many times)
