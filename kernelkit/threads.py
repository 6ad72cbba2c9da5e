"""Numba's threading layer, chosen to survive ``fork`` (DataLoader workers), and launches
serialised where that layer is not threadsafe.

Why: Numba's default layer on Linux without TBB is GNU OpenMP. OpenMP's thread pool does not
survive ``fork``: a forked child (a DataLoader worker) whose parent had entered a parallel region
waits forever for pool threads that do not exist, and Numba's own guard kills such a child with
``fork() called from a process already using GNU OpenMP``. Torch loads its own OpenMP too, so the
order of the parent's work decides which of the two failures a user sees.

What: at import, before any parallel launch, kernelkit asks Numba for the ``forksafe`` layer
(``NUMBA_THREADING_LAYER=forksafe`` unless the user set it; `configure_at_import`): TBB when
it is installed (threadsafe and fork-safe), else ``workqueue`` (fork-safe: it rebuilds its threads
in the child; not threadsafe: two threads launching at once abort the process, so kernelkit's own
launches of Numba kernels take a process-wide lock, which a fork hook replaces in the child so a
lock held by another parent thread at fork time cannot deadlock it). A layer the user chose with
``NUMBA_THREADING_LAYER`` is kept. kernelkit's own Numba kernels no longer enter that layer at
all: they run their shares on torch's OpenMP team or kernelkit's Python pool
(``kernels/numba/_pool.py``), so a layer the parent launched (a user's own ``prange``, even on
OpenMP) does not stop them in a forked child. The same fork hook drops that Python pool in the
child (its threads do not exist there; work submitted to it would wait forever) and turns the
team off there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kernelkit.devices import imported, imported_torch

# kernel packages whose launches are guarded: Numba kernels (which now run their shares on
# `kernels/numba/_pool.py`, not Numba parallel regions; the lock still serialises launches from
# several threads, so that each does not lead a team of its own on the same cores)
GUARDED_PACKAGES = {"kernelkit.kernels.numba"}
BLAS_PACKAGE = "kernelkit.kernels.numpy"  # its launches are noted (`blas_called`)
LAYER_REQUEST = "forksafe"

_lock = threading.Lock()
_forked = False
_threadsafe = False  # the launched layer is threadsafe: no lock needed
_layer_known = False  # the layer has been launched and read (it never changes after that)


def _learn_layer() -> None:
    global _threadsafe, _layer_known
    layer = _numba_launched()
    if layer is not None:
        _threadsafe = layer in ("tbb", "omp")
        _layer_known = True


def _numba_started(unknown: bool = False) -> bool:
    """Numba has launched its threading layer in this process (`unknown`: the answer where this
    Numba does not say, `_is_initialized` being its private flag)."""
    par = sys.modules.get("numba.np.ufunc.parallel")
    return par is not None and bool(getattr(par, "_is_initialized", unknown))


def _numba_launched() -> str | None:
    """The name of the threading layer Numba has launched in this process, or None."""
    if not _numba_started():
        return None
    try:
        return sys.modules["numba.np.ufunc.parallel"].threading_layer()
    except ValueError:
        return None


def configure() -> str | None:
    """Ask Numba for a fork-safe threading layer, if nothing has been launched or chosen yet.

    Returns:
        The layer requested ("forksafe"), the user's own choice, or the layer already launched.
    """
    launched = _numba_launched()
    if launched is not None:
        return launched
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return os.environ["NUMBA_THREADING_LAYER"]  # the user's explicit choice
    import numba  # noqa: F401 - first, whole: see kernels/numba/_cache.py
    from numba.core import config

    if config.THREADING_LAYER == "default":
        config.THREADING_LAYER = LAYER_REQUEST
    return config.THREADING_LAYER


def configure_at_import() -> None:
    """At ``import kernelkit``: request the fork-safe layer before anything launches Numba (a
    ``numba.set_num_threads`` call or the user's own parallel code would launch the default,
    OpenMP). Through ``NUMBA_THREADING_LAYER`` when Numba is not imported yet, so processes
    started from this one (spawned DataLoader workers) make the same choice; a value the user
    set is kept."""
    if os.environ.get("NUMBA_THREADING_LAYER"):
        return
    if "numba.core.config" in sys.modules:
        configure()
    else:
        os.environ["NUMBA_THREADING_LAYER"] = LAYER_REQUEST


# kernel modules that keep a Python thread pool in ``_POOL[0]`` (guarded by ``_POOL_LOCK``): a
# forked child inherits the executor but not its threads, so work submitted to it never runs
POOLED_MODULES = ("kernelkit.kernels.numba._pool",)


# Whether kernelkit ran work on torch's OpenMP team in this process: its Numba kernels' shares
# (kernels/numba/_pool.py) or a torch CPU candidate it timed or planned. GNU OpenMP's team does
# not survive a fork: a forked child's first parallel torch op waits for the parent's threads
# forever. A process that had only imported torch and called kernelkit on numpy data hung its
# forked workers' own torch ops that way (multiprocessing's fork pools, gunicorn-style preloading).
_team_used = [False]


def team_used() -> None:
    """Note that kernelkit has run work on torch's OpenMP team (see `_single_threaded_torch`)."""
    _team_used[0] = True


_OMP_LIB = re.compile(r"lib(gomp|iomp5|omp)\b[^/]*\.so[^/]*$")


def loaded_openmp() -> str | None:
    """The path of the OpenMP runtime mapped into this process by torch, or None."""
    try:
        with open("/proc/self/maps") as f:
            fields = [line.split(None, 5) for line in f]
        paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:  # not Linux
        return None
    libs = sorted(p for p in paths if _OMP_LIB.search(os.path.basename(p)))
    in_torch = [p for p in libs if "/torch" in p]
    if in_torch:
        return in_torch[0]
    return libs[0] if len(libs) == 1 else None


def _single_threaded_torch() -> None:
    """In a forked child of a process where kernelkit used torch's OpenMP team (`team_used`):
    torch on one thread, as torch's DataLoader does in its workers, where that team is GNU
    OpenMP's, which does not survive a fork (LLVM's and Intel's runtimes start a new one). One
    thread enters no OpenMP region, so the parent's team, whose threads do not exist here, is
    never waited for."""
    torch = imported("torch")
    if not _team_used[0] or torch is None or torch.get_num_threads() <= 1:
        return
    runtime = loaded_openmp()
    if runtime is not None and "libgomp" in os.path.basename(runtime):
        torch.set_num_threads(1)


def _after_fork_in_child() -> None:
    global _lock, _forked
    _lock = threading.Lock()  # the parent's may be held by a thread that does not exist here
    _forked = True
    for name in POOLED_MODULES:
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "_POOL"):
            mod._POOL[0] = None  # the next call builds a pool with live threads
            mod._POOL_LOCK = threading.Lock()
            mod._SYNC_GATE = threading.Lock()  # may have been held by a parent thread
            mod._sync_busy[0] = False  # (set by a parent thread's synced run, if one ran)
        if mod is not None and hasattr(mod, "_TEAM"):
            mod._TEAM[0] = False  # the parent's OpenMP team has no threads here either
    # last: the resets above must happen whatever torch does (e.g. a fork while it was half
    # imported)
    with contextlib.suppress(Exception):
        _single_threaded_torch()


os.register_at_fork(after_in_child=_after_fork_in_child)


def forked() -> bool:
    """This process was forked from one that had imported kernelkit."""
    return _forked


def torch_team_forked() -> bool:
    """This process was forked from one that had imported kernelkit, and torch here would run
    its CPU ops as OpenMP regions of more than one thread: GNU OpenMP's team does not survive a
    fork (torch's own product hung in a multiprocessing worker forked after the parent ran one;
    torch's DataLoader workers run one thread, which needs no team)."""
    if not _forked:
        return False
    torch = imported("torch")
    return torch is not None and torch.get_num_threads() > 1


def _omp_num_threads_env() -> int:
    """The first number of OMP_NUM_THREADS (the OpenMP convention for "use this many threads"),
    0 where it is unset or not a number."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0]))
    except ValueError:
        return 0


_OMP_ENV = _omp_num_threads_env()


class _Limit(threading.local):
    n = 0  # (0: none set in this thread)


_LIMIT = _Limit()


def limit_kernel_threads(n: int) -> None:
    """Run the kernelkit Numba kernels that this thread launches on at most `n` threads (the
    data loaders' producer and workers, `kernelkit tune`'s pin): kernelkit's own per-thread
    limit, where these called ``numba.set_num_threads``, which launches Numba's threading layer
    (see `numba_threads`)."""
    _LIMIT.n = max(1, int(n))


def numba_threads() -> int:
    """Numba's thread count as a user set it (``numba.set_num_threads``, for this thread), else
    NUMBA_NUM_THREADS, without launching Numba's threading layer: ``numba.get_num_threads()``
    launches it, and kernelkit's kernels never run on it (they run on torch's OpenMP team or
    kernelkit's pool), so every process that ran a multi-threaded kernel started
    NUMBA_NUM_THREADS idle workqueue threads (one per core on a big host, in each DataLoader
    worker) and a semaphore that a forkserver pool's resource tracker reported as leaked (found
    by a user hunt). ``set_num_threads`` itself launches the layer, so a user's setting is read
    where it can exist."""
    import numba

    # (a Numba that does not say: its own count, as before, whatever that launches)
    if _numba_started(unknown=True):
        return numba.get_num_threads()
    return numba.config.NUMBA_NUM_THREADS


def kernel_threads() -> int:
    """Threads a kernelkit Numba kernel runs on: Numba's number (`numba_threads`:
    ``numba.set_num_threads``, NUMBA_NUM_THREADS), at most this thread's `limit_kernel_threads`,
    at most torch's where torch is imported (``torch.set_num_threads``, OMP_NUM_THREADS,
    threadpoolctl's ``threadpool_limits`` on torch's OpenMP, and the one thread torch's
    DataLoader gives each worker all set it), else at most OMP_NUM_THREADS.

    Why: the kernels took Numba's number alone, so a DataLoader's workers each ran 2 compute
    threads where torch had set 1 (2 workers, 4 threads on 2 cores), and a user's thread
    limits were ignored."""
    n = numba_threads()
    if _LIMIT.n:
        n = min(n, _LIMIT.n)
    torch = imported_torch()
    if torch is not None:
        n = min(n, torch.get_num_threads())
    elif _OMP_ENV:
        n = min(n, _OMP_ENV)
    return max(1, n)


# kernelkit's own numpy BLAS calls (the numpy backend) leave OpenBLAS's workers spinning for about
# 0.1 s (its default thread timeout, 2^28 cycles). A Numba kernel launched meanwhile runs its shares
# on kernelkit's own thread pool, not torch's OpenMP team: the team's region waits for all its
# threads, and on two cores one of them shares a core with a spinning OpenBLAS worker (a 256^3
# Numba matmul took 7.9 ms instead of 0.2). Otherwise the team, whatever the data: right after a
# torch op its workers are the ones spinning (kernels/numba/_pool.py).
BLAS_SPIN_S = 0.1
_blas_until = [0.0]


def blas_called() -> None:
    """Note that OpenBLAS's workers may spin for the next BLAS_SPIN_S seconds."""
    _blas_until[0] = time.monotonic() + BLAS_SPIN_S


def blas_spinning() -> bool:
    """Whether kernelkit called numpy's BLAS within the last BLAS_SPIN_S seconds."""
    return time.monotonic() < _blas_until[0]


def blas_mark() -> float:
    """Changes with every `blas_called` (the autotuner's timer tells BLAS callers by it)."""
    return _blas_until[0]


def blas_spin_left() -> float:
    """Seconds left of the window `blas_spinning` reports (0 outside it)."""
    return max(0.0, _blas_until[0] - time.monotonic())


# Per thread: the launch in progress got torch tensors from the ops layer, so what a kernel
# derives from an argument may be kept while the tensor's version counter says it is unchanged
# (the Numba conv's packed weights: kernels/numba/_packs.py). Never for numpy data: a numpy
# array has no such counter.
LOCAL = threading.local()


def guard(package: str, fn: Callable[..., Any], torch_data: bool = False) -> Callable[..., Any]:
    """`fn` (a kernel launcher from `package`), run under the rules above if `package` runs Numba
    parallel regions or numpy's BLAS; `fn` itself otherwise.

    Args:
        package: the backend's kernel package, e.g. "kernelkit.kernels.numba".
        fn: the bound launcher.
        torch_data: the call's arguments are torch tensors (`LOCAL.torch_data` while it runs).

    Returns:
        A callable with `fn`'s signature.
    """
    if package == BLAS_PACKAGE:
        return _noting_blas(fn)
    if package not in GUARDED_PACKAGES:
        return fn
    configure()
    if torch_data:
        fn = _on_torch_data(fn)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        # the hot path: a global read and an uncontended lock, about 0.45 us per launch over
        # the bare launcher on the 2-core CI machine. `with`, not acquire() then try: a signal
        # handler runs when acquire() returns, before the try, and one that raised (a request
        # deadline, SIGALRM) left the lock held: every later Numba launch of the process then
        # waited for good. `with` enters its cleanup's scope as the lock is taken.
        if _threadsafe:
            return fn(*args, **kwargs)
        with _lock:  # workqueue, or not launched yet (this call launches it)
            out = fn(*args, **kwargs)
        if not _layer_known:
            _learn_layer()
        return out

    return run


def _on_torch_data(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args, **kwargs):
        prev = getattr(LOCAL, "torch_data", False)
        LOCAL.torch_data = True
        try:
            return fn(*args, **kwargs)
        finally:
            LOCAL.torch_data = prev

    return run


def _noting_blas(fn: Callable[..., Any]) -> Callable[..., Any]:
    # noted after the call (a call that raised is not noted: it may not have reached BLAS), with
    # no try/finally and positional arguments only: this wraps every numpy-backend call, whose
    # whole cost on a small product is about 2 us
    @functools.wraps(fn)
    def run(*args):
        out = fn(*args)
        blas_called()
        return out

    return run
