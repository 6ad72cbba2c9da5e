"""The caller's signal handlers around kernelkit's own work (main thread): an exception a handler
raises is the caller's (a request's deadline, KeyboardInterrupt), never a kernel's failure, and it
must not strike in the middle of an import."""

from __future__ import annotations

import contextlib
import functools
import importlib
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
    with deferred():
        return importlib.import_module(name)
