"""The caller's signal handlers and forks around kernelkit's own work: an exception a handler
raises (main thread) is the caller's (a request's deadline, KeyboardInterrupt), never a kernel's
failure, and it must not strike in the middle of an import; nor may a fork happen while another
thread of kernelkit's imports or loads kernels (`fork_waits`)."""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

# The asynchronous signals a handler may be installed for (synchronous ones, SIGSEGV and the
# like, are never held back)
_DEFERRED = tuple(getattr(signal, name) for name in (
    "SIGINT", "SIGTERM", "SIGHUP", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGUSR1", "SIGUSR2")
    if hasattr(signal, name))


def raised_by_signal_handler(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from or during) came through a Python signal
    handler installed now (a request deadline's TimeoutError from SIGALRM): the caller's
    exception, not a failing config's, though it surfaces in whatever the tuner was running.
    Such an exception was swallowed (the call ran on past its deadline) and stored in the cache
    as that config's failure; the tuner now lets it propagate, and stores nothing of it."""
    handlers = set()
    for signum in signal.valid_signals():
        try:
            code = _code(signal.getsignal(signum))
        except (OSError, ValueError):
            continue
        if code is not None:
            handlers.add(code)
    if not handlers:
        return False
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        tb = e.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code in handlers:
                return True
            tb = tb.tb_next
        todo += [e.__cause__, e.__context__]
    return False


def _code(handler):
    """The code object a signal handler runs first, through partials, bound methods and callable
    objects; None for a builtin (SIG_DFL, SIG_IGN, Python's KeyboardInterrupt handler)."""
    for _ in range(8):
        if isinstance(handler, functools.partial):
            handler = handler.func
            continue
        code = getattr(handler, "__code__", None)
        if code is not None:
            return code
        func = getattr(handler, "__func__", None)
        if func is None and callable(handler) and not isinstance(handler, type):
            func = type(handler).__call__  # (a callable object: its class's method)
        if func is None or func is handler:
            return None
        handler = func
    return None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Python's handlers of the asynchronous signals held back on the main thread (elsewhere a
    no-op: handlers run there only): each signal that arrives meanwhile is handled once the
    block is done, in order, and the first exception a handler raises is raised there. Blocking
    the signal itself would not do: the OS hands it to another thread, and Python runs the
    handler on the main one. A handler installed inside the block stays."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    saved: dict = {}

    def note(signum, frame):
        arrived.append(signum)

    try:
        for signum in _DEFERRED:
            handler = signal.getsignal(signum)
            if callable(handler):
                saved[signum] = handler
                signal.signal(signum, note)
        yield
    finally:
        first = None
        restore = list(saved.items())
        while restore:  # (a real signal's handler may raise anywhere in here: go on after it)
            try:
                while restore:
                    signum, handler = restore[-1]
                    if signal.getsignal(signum) is note:
                        signal.signal(signum, handler)
                    restore.pop()
            except BaseException as exc:  # noqa: BLE001 - raised below, after the rest
                first = first or exc
        for signum in arrived:
            try:
                saved[signum](signum, sys._getframe())
            except BaseException as exc:  # noqa: BLE001 - the first is raised below
                first = first or exc
        if first is not None:
            raise first


def import_whole(name: str):
    """``importlib.import_module(name)``, the caller's signal handlers held back until it is
    done. A handler's exception inside an import leaves the package half made for the rest of
    the process: a deadline that struck while a first call imported numba left every later call
    raising "partially initialized module 'numba' has no attribute 'core'"."""
    module = sys.modules.get(name)
    if module is not None:
        return importlib.import_module(name)
    with deferred(), fork_waits():
        return importlib.import_module(name)


# -- forks wait for kernelkit's imports and kernel loads on other threads -------------------------
# Why: a process forked while another thread imports a module (numba, torch, a kernel module, on
# kernelkit's background compile thread or in a first call's tuning) or loads compiled kernels
# (numba's compiler lock) inherits that module's import lock, or numba's lock, held by a thread
# that does not exist in the child: the child blocks for good at its first `import numba` or
# kernel call. DataLoader workers forked about a second after the parent's first kernelkit call
# hung 3 of 3 times that way; a child's first call met a half-imported torch.distributed.
#
# The wait runs in a before-fork hook. Python runs those in the reverse order of registration,
# and other modules' hooks take locks (logging's module lock, concurrent.futures' shutdown
# lock) that the waited-for import may need: a hook of theirs that ran before this one stalled
# the fork for the whole wait. So this hook is registered at the first block, after importing
# those modules, and runs before theirs.
FORK_WAIT_S = 30.0  # at most, then the fork goes on (e.g. an import that waits on the forker)
_busy: dict[int, int] = {}  # thread ident -> depth of its fork_waits blocks
_idle = threading.Condition(threading.Lock())
_hooked = [False]


@contextlib.contextmanager
def fork_waits() -> Iterator[None]:
    """A block (an import, a kernel load) that a fork from another thread waits for; a thread
    that enters one while a fork is under way waits for the fork."""
    me = threading.get_ident()
    if not _hooked[0]:
        _hook_forks()
    with _idle:
        _busy[me] = _busy.get(me, 0) + 1
    try:
        yield
    finally:
        with _idle:
            if _busy.get(me, 0) <= 1:
                _busy.pop(me, None)
                _idle.notify_all()
            else:
                _busy[me] -= 1


def _before_fork() -> None:
    me = threading.get_ident()
    _idle.acquire()  # held across the fork: no block starts meanwhile (released after it)
    _idle.wait_for(lambda: not any(t != me for t in _busy), FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    _idle.release()


def _after_fork_in_child() -> None:
    global _idle
    _busy.clear()  # (their threads do not exist here)
    _idle = threading.Condition(threading.Lock())


def _hook_forks() -> None:
    import concurrent.futures.thread  # noqa: F401 - their fork hooks first, so they run after ours
    import logging  # noqa: F401

    with _idle:
        if _hooked[0] or not hasattr(os, "register_at_fork"):
            _hooked[0] = True
            return
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
        _hooked[0] = True
