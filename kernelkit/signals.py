"""The caller's signal handlers around kernelkit's own work (main thread): an exception a handler
raises is the caller's (a request's deadline, KeyboardInterrupt), never a kernel's failure, and it
must not strike in the middle of an import."""

from __future__ import annotations

import contextlib
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
    """Whether `exc` came through a Python signal handler installed now (a request deadline's
    TimeoutError from SIGALRM): the caller's exception, not a failing config's, though it
    surfaces in whatever the tuner was running. Such an exception was swallowed (the call ran on
    past its deadline) and stored in the cache as that config's failure; the tuner now lets it
    propagate, and stores nothing of that measurement."""
    handlers = set()
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            handlers.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Python's handlers of the asynchronous signals held back on the main thread (elsewhere a
    no-op: handlers run there only): each signal that arrives meanwhile is handled once the
    block is done, in order, so its exception is raised there. Blocking the signal itself would
    not do: the OS hands it to another thread, and Python runs the handler on the main one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    saved = {}
    for signum in _DEFERRED:
        handler = signal.getsignal(signum)
        if callable(handler):
            saved[signum] = handler
            signal.signal(signum, lambda s, frame: arrived.append(s))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        for signum in arrived:
            saved[signum](signum, sys._getframe())


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
