"""A process forked while another of the parent's threads is inside kernelkit (a DataLoader
worker forked while the first call's background thread imports numba, a child forked while a
tuning thread appends to the cache) must not inherit a lock that no thread of its own will ever
release: each case forks at that moment and gives the child a deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import threading
import time

import pytest

from kernelkit import signals

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGALRM"),
                                reason="needs os.fork and SIGALRM")


def _child_exits_in_time(child, seconds: float = 10.0) -> int:
    """Fork; the child runs `child()` and exits 0 (1 if it raised), or is killed by SIGALRM
    after `seconds`. The child's exit code, or -signal."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(seconds))
            child()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def _held_by_another_thread(lock):
    """`lock` held by another thread for the block (as a tuning thread holds it at a fork)."""
    held, release = threading.Event(), threading.Event()

    def holder():
        with lock:
            held.set()
            release.wait(20)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    try:
        yield
    finally:
        release.set()
        t.join()


def test_a_fork_waits_for_an_import_another_thread_makes_through_kernelkit(tmp_path,
                                                                           monkeypatch):
    """The child of a fork made while another thread imports a module (as kernelkit's background
    thread imports numba and the kernel modules) blocked for good at its own import of it: the
    module's import lock is held there by a thread that does not exist. The fork now waits for
    the import."""
    (tmp_path / "kk_slow_import_mod.py").write_text(textwrap.dedent("""
        import time
        time.sleep(1.0)
        VALUE = 42
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("kk_slow_import_mod", None)
    t = threading.Thread(target=signals.import_whole, args=("kk_slow_import_mod",))
    t.start()
    time.sleep(0.3)  # inside the import

    def child():
        import kk_slow_import_mod

        assert kk_slow_import_mod.VALUE == 42

    try:
        assert _child_exits_in_time(child) == 0
    finally:
        t.join()
        sys.modules.pop("kk_slow_import_mod", None)


def test_a_block_that_a_fork_waits_for_is_never_waited_for_by_its_own_thread():
    with signals.fork_waits():
        started = time.monotonic()
        assert _child_exits_in_time(lambda: None) == 0
    assert time.monotonic() - started < signals.FORK_WAIT_S / 2


def test_a_child_forked_while_a_parent_thread_held_the_cache_is_not_blocked(tmp_path):
    """A tuning thread appends an entry under the cache's mutex (an fsync on a network file
    system takes long); a child forked then blocked for good at its first call, in
    `Cache.entries()`."""
    from kernelkit.autotune import cache as cache_mod

    c = cache_mod.cache_for(tmp_path)
    c.entries()
    with _held_by_another_thread(c._mutex):
        assert _child_exits_in_time(lambda: cache_mod.cache_for(tmp_path).entries()) == 0


@pytest.mark.parametrize("module", ["kernelkit.kernels.numba._native",
                                    "kernelkit.kernels.numba._packs"])
def test_a_child_forked_while_a_parent_thread_held_a_kernel_lock_is_not_blocked(module):
    import importlib

    mod = importlib.import_module(module)

    def child():
        with importlib.import_module(module)._LOCK:
            pass

    with _held_by_another_thread(mod._LOCK):
        assert _child_exits_in_time(child, 5) == 0


def test_distributed_half_imported_by_another_thread_is_not_read(monkeypatch):
    """A thread's first tuning imports torch (about a second) in a program that had not: calls
    of other threads meanwhile read torch.distributed half made and raised "partially
    initialized module 'torch.distributed' has no attribute 'is_available'"."""
    import importlib.machinery
    import types

    from kernelkit.autotune import tuner

    half = types.ModuleType("torch.distributed")
    half.__spec__ = importlib.machinery.ModuleSpec("torch.distributed", None)
    half.__spec__._initializing = True
    monkeypatch.setitem(sys.modules, "torch.distributed", half)
    assert tuner.distributed_peers() is None


FORK_AFTER_LOGGING_SCRIPT = r"""
import os, sys, threading, time
import kernelkit
from kernelkit import signals
import logging
signals.FORK_WAIT_S = 5.0

def busy():
    with signals.fork_waits():  # e.g. the compile thread importing a module...
        time.sleep(0.3)
        logging.getLogger("some.module")  # ...whose top level asks logging for its logger

threading.Thread(target=busy).start()
time.sleep(0.1)
t0 = time.time()
pid = os.fork()
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
print(f"{time.time() - t0:.2f}")
"""


def test_a_fork_waits_for_a_block_that_needs_loggings_lock_without_stalling():
    """Python runs fork hooks in the reverse order of registration: logging's hook (registered
    after kernelkit's) took logging's lock first, and the block it waited for needed it, so the
    fork stalled for all of FORK_WAIT_S (5.01 s here)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", FORK_AFTER_LOGGING_SCRIPT], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.split()[-1]) < 2.5
