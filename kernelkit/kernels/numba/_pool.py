"""The threads the Numba kernels' shares run on: torch's OpenMP team where torch is loaded,
else a Python thread pool.

Each kernel is written as ``fn(t, nthr, ...)``: thread t's share of the work, disjoint outputs,
no synchronisation, the GIL released (``nogil``). ``run`` calls share 0 on the calling thread
and the others on other threads. Not a Numba ``prange`` region: on the fork-safe ``workqueue``
threading layer (kernelkit's choice: `kernelkit.threads`) a region's launch took 50-100 us on a
2-core Zen 5 VM, and the 256^3 matmul ran slower on two threads (118 GFLOP/s) than on one
(200); through the Python pool 230 (`docs/performance.md`).

Why torch's OpenMP team: after each of its ops torch's OpenMP workers spin, waiting for the next
parallel region (GNU OpenMP: about 300,000 PAUSEs, several ms). A kernel whose shares run on
other threads right after a torch op (inside a model: after a batch norm) shares the cores with
those spinning workers: a stride-2 3x3 conv ran 2.2-3x slower than alone on a 2-core Zen 5
(`docs/performance.md`). Run as an OpenMP parallel region of torch's own runtime, the shares land
on those very workers, which were waiting for work. The region is started through
``GOMP_parallel`` (exported by GNU OpenMP and by LLVM's and Intel's runtimes for gcc-built code),
with a ctypes callback that calls the share; a launch costs about 23 us here against the
Python pool's 52 us. A compiled entry point (``_gemm.entry_point``) starts the region through its
native trampoline instead (``_native``): no thread of the region takes the GIL, and an empty
two-share launch took 1.4 us against the callbacks' 29.6 (4.2 against 77.8 right after a torch
conv; Zen 4, `bench/probes/openmp_team_probe.py --layers none`, `docs/performance.md`). Python threads that launch at once each lead a team of their own, as
torch's own ops from several threads do, whatever the data (numpy arrays in a process that
runs torch ops meet the same spinning workers). For 0.1 s after kernelkit called numpy's BLAS
(``kernelkit.threads.blas_spinning``) launches take the Python pool instead: the team's region
waits for all its threads, and OpenBLAS's workers spin then too (a 256^3 matmul took 7.9 ms
instead of 0.2 ms). ``KERNELKIT_OPENMP_TEAM=0`` turns the team off. In a forked child the team is
never used (its threads do not exist there) and ``threads`` rebuilds the Python pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernelkit import threads as _threads
from kernelkit.devices import imported
from kernelkit.envvars import env_flag
from kernelkit.kernels.numba import _native
from kernelkit.signals import raised_by_signal_handler

_POOL: list = [None]
_POOL_LOCK = threading.Lock()
# Set by a run whose shares meet at a barrier (``run_synced``): all its shares must run at once,
# so only one such run at a time; another caller meanwhile takes the unsynced way. Read and set
# under the gate.
_SYNC_GATE = threading.Lock()
_sync_busy = [False]
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def pool(workers: int) -> ThreadPoolExecutor:
    """The shared pool, with at least ``workers`` threads."""
    p = _POOL[0]
    if p is None or p._max_workers < workers:
        with _POOL_LOCK:
            p = _POOL[0]
            if p is None or p._max_workers < workers:
                p = _POOL[0] = ThreadPoolExecutor(workers, thread_name_prefix="kk-numba")
    return p


# ------------------------------------------------------------------ torch's OpenMP team

# (GOMP_parallel, omp_get_thread_num, omp_get_num_threads, (their addresses)) of the OpenMP
# runtime torch loaded; None: not looked for yet (torch not imported); False: none, turned off,
# or a forked child.
_TEAM: list = [None]
_TEAM_ENV = "KERNELKIT_OPENMP_TEAM"
_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_JOBS: dict = {}  # key (the region's data pointer) -> _Job
_JOB_KEYS = itertools.count(1)


class _Job(NamedTuple):
    fn: Callable
    nthr: int
    args: tuple
    errors: list  # what shares raised; None: a synced job that did not get nthr threads
    done: list  # the shares that returned
    synced: bool
    team: tuple  # (GOMP_parallel, omp_get_thread_num, omp_get_num_threads, their addresses)


def _find_team():
    """Look for torch's OpenMP runtime once torch is imported: its entry points, or False."""
    if imported("torch") is None:  # (or another thread is still importing it)
        return None  # no spinning workers to reuse (yet): look again on a later call
    if not env_flag(_TEAM_ENV, True) or _threads.forked():
        return False  # (a forked child: the parent's OpenMP threads do not exist here)
    path = _threads.loaded_openmp()
    try:
        lib = ctypes.CDLL(path) if path else None  # already mapped: the same library
        parallel = lib.GOMP_parallel
        thread_num, num_threads = lib.omp_get_thread_num, lib.omp_get_num_threads
    except (OSError, AttributeError, TypeError):
        return False
    addrs = tuple(ctypes.cast(f, ctypes.c_void_p).value for f in (parallel, thread_num,
                                                                   num_threads))
    parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    thread_num.restype = num_threads.restype = ctypes.c_int
    return parallel, thread_num, num_threads, addrs


def _team():
    """The team's entry points, or a falsy value: none here, or kernelkit called numpy's BLAS
    moments ago (``kernelkit.threads.blas_spinning``: OpenBLAS's workers may be spinning)."""
    if _threads.blas_spinning():
        return False
    team = _TEAM[0]
    if team is None:
        team = _TEAM[0] = _find_team()
        if team:
            _threads.team_used()  # (a forked child then runs torch on one thread)
    return team


def _team_body(key) -> None:
    """One OpenMP thread's part of a ``_run_on_team`` job: the shares t, t + n, ... (n the team's
    size; it equals nthr unless the runtime gave fewer threads), each counted in ``done`` once
    it returned. A synced job needs every share at once: with a smaller team it runs nothing and
    says so. Whatever a share raises goes to ``errors`` (an exception leaving a ctypes callback
    would only be printed)."""
    job = _JOBS[key]
    try:
        t, n = job.team[1](), job.team[2]()
        if n < job.nthr and job.synced:
            job.errors.append(None)
            return
        for share in range(t, job.nthr, n):
            try:
                job.fn(share, job.nthr, *job.args)
                job.done.append(share)
            except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
                job.errors.append(e)
    except BaseException as e:  # noqa: BLE001 - e.g. a KeyboardInterrupt between the shares
        job.errors.append(e)


_TEAM_BODY = _CALLBACK(_team_body)


def _run_on_team(team, fn, nthr: int, args: tuple, synced: bool = False) -> bool:
    """fn's shares as one parallel region of torch's OpenMP runtime; False if a synced job did
    not get nthr threads (nothing ran). Raises what a share raised, and RuntimeError if a share
    did not run at all (its part of the output would be left unwritten)."""
    errors: list = []
    done: list = []
    key = next(_JOB_KEYS)
    _JOBS[key] = _Job(fn, nthr, args, errors, done, synced, team)
    try:
        team[0](_TEAM_BODY, key, nthr, 0)  # GOMP_parallel(fn, data, num_threads, flags)
    finally:
        del _JOBS[key]
    if None in errors:
        return False
    if errors:
        raise errors[0]
    if len(done) != nthr:
        raise RuntimeError(
            f"kernelkit: {nthr - len(done)} of a Numba kernel's {nthr} shares did not run on "
            f"torch's OpenMP team (interrupted?); its output would be incomplete")
    return True


_RUNNERS: dict = {}  # id(fn) -> (fn, its native runner or None): see _run_native
# Shares through their native trampoline where the entry point has one; a switch for probes
# (KERNELKIT_NATIVE_SHARES=0 keeps trampolines from being compiled at all)
NATIVE_SHARES = True


def _run_native(team, fn, nthr: int, args: tuple, synced: bool) -> bool | None:
    """fn's shares as one parallel region of torch's OpenMP team started by fn's native
    trampoline (``_native``: no thread touches Python); None where fn has none (the caller then
    takes the Python callbacks), False where a synced job did not get nthr threads (nothing
    ran). Raises RuntimeError where a share raised or did not run."""
    if not NATIVE_SHARES:
        return None
    got = _RUNNERS.get(id(fn))
    if got is None or got[0] is not fn:
        got = _RUNNERS[id(fn)] = (fn, _native.runner(fn, team))
    runner = got[1]
    if runner is None:
        return None
    launcher, head = runner
    outcome = launcher(head, nthr, synced, args)
    if outcome == _native.OK:
        return True
    if outcome == _native.REFUSED:
        return False
    raise RuntimeError(
        f"kernelkit: {'a share' if outcome == _native.FAILED else 'some shares'} of a Numba "
        f"kernel's {nthr} did not complete on torch's OpenMP team; its output would be "
        f"incomplete ({_native.ENV}=0 runs the shares through Python, which shows a share's "
        f"own error)")


def run(fn, nthr: int, *args) -> None:
    """fn(t, nthr, *args) for t < nthr: t = 0 on the calling thread, the rest on torch's OpenMP
    team where torch is loaded (natively where fn has a trampoline), else on the Python pool."""
    if nthr <= 1:
        fn(0, 1, *args)
        return
    team = _team()
    if not team:
        run_pool(fn, nthr, *args)
    elif _run_native(team, fn, nthr, args, False) is None:
        _run_on_team(team, fn, nthr, args)


def run_pool(fn, nthr: int, *args, claim: bool = True, abandon=None) -> None:
    """``run`` on the Python pool. With ``claim`` (the default) every thread, the calling one
    included, claims the next unclaimed share until none is left, and the call returns once
    every share has returned: a pool thread that starts late (its core busy with another
    library's spinning workers, or its vCPU slow to wake) leaves its share to the caller instead
    of holding the call up, so the call never takes much longer than one thread doing it all.
    Measured on a 2-core Zen 5 VM (`bench/probes/pool_claim_probe.py`): right after a torch op
    a 2-share memory-bound kernel ran 4.7-4.9 ms with fixed shares, 3.4-3.8 claiming, 3.5-3.9
    on one thread. Without ``claim`` share t runs on thread t (``run_synced``: its shares must
    all run at once). ``abandon``: called first where the caller is interrupted."""
    # `state`: [abandoned, shares running on the pool's threads], under `gate`: a pool thread
    # starts a share only while the call stands, so an abandoned call (below) knows which to
    # wait for, wherever the caller's exception struck (even inside `submit`)
    gate = threading.Lock()
    state = [False, 0]
    errors: list = []
    done: list = []
    finished = threading.Event()

    def started() -> bool:
        with gate:
            if state[0]:
                return False
            state[1] += 1
            return True

    def run_share(t):
        try:
            fn(t, nthr, *args)
        except BaseException as e:  # noqa: BLE001 - raised again on the calling thread
            errors.append(e)
        done.append(t)
        if len(done) == nthr:
            finished.set()

    def on_pool(t) -> bool:
        """Share t on a pool thread, while the call stands (False once it is abandoned)."""
        if not started():
            return False
        try:
            run_share(t)
        finally:
            with gate:
                state[1] -= 1
        return True

    shares = itertools.count()

    def claim_shares():
        while (t := next(shares)) < nthr and on_pool(t):
            pass

    try:
        p = pool(nthr - 1)
        if not claim:
            for t in range(1, nthr):
                p.submit(on_pool, t)
            run_share(0)
        else:
            for _ in range(nthr - 1):
                p.submit(claim_shares)
            while (t := next(shares)) < nthr:
                run_share(t)
        if len(done) < nthr:
            finished.wait()
    except BaseException:
        # the caller was interrupted (a signal handler's exception: KeyboardInterrupt, a
        # request's deadline): the shares not started are skipped and the call returns once
        # the running ones have. Returning at once left a share computing into this call's
        # per-thread scratch, which the next call packs into: a next 1024^3 matmul was 152 off.
        if abandon is not None:
            abandon()  # (run_synced: shares waiting at the barrier for the caller's leave it)
        _outlast(gate, state)
        raise
    if errors:
        # the caller's own exception first (a signal handler's, struck inside its share: a
        # deadline), before a share's failure
        raise next((e for e in errors if not isinstance(e, Exception)
                    or raised_by_signal_handler(e)), errors[0])


def _outlast(gate, state) -> None:
    """Mark the call abandoned and wait until no pool thread runs one of its shares, through
    any exception raised meanwhile (a second interrupt waits for one share, not the call)."""
    while True:
        with contextlib.suppress(BaseException):
            with gate:
                state[0] = True
                if state[1] == 0:
                    return
            time.sleep(0.0002)


def run_synced(fn, nthr: int, *args) -> bool:
    """fn(t, nthr, *args, sync) for t < nthr, all at once, with a fresh ``sync`` (int64[2]) for
    ``barrier``: False (nothing run) when another synced run holds the pool; the caller then runs
    its phases apart. A share that raises marks ``sync`` so the others leave the barrier."""
    if nthr <= 1:
        return False
    # claimed under a lock taken by `with`, never by acquire(blocking=False): a signal handler
    # that raised when that returned (a request deadline) left the pool claimed for good, and
    # every later synced run ran its phases apart. The flag and `claimed` are set in one step a
    # handler cannot come between; the finally clears the flag whenever it was set.
    claimed = False
    try:
        with _SYNC_GATE:
            if _sync_busy[0]:
                return False
            _sync_busy[0] = claimed = True
        sync = np.zeros(2, np.int64)

        def share(t, n, *a):
            try:
                fn(t, n, *a, sync)
            except BaseException:
                sync[1] = 1
                raise

        team = _team()
        ran = _run_native(team, fn, nthr, (*args, sync), True) if team else False
        if ran is None:
            ran = _run_on_team(team, share, nthr, args, synced=True)
        if not ran:
            run_pool(share, nthr, *args, claim=False, abandon=lambda: sync.__setitem__(1, 1))
    finally:
        if claimed:
            _sync_busy[0] = False
    return True


# ------------------------------------------------------------------ a barrier inside jitted code

@intrinsic
def _atomic_add(typingctx, arr, idx, val):
    """arr[idx] += val atomically (sequentially consistent) on an int64 array; the old value."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, idx, val)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        v = context.cast(builder, args[2], sig.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, v, "seq_cst")

    return sig, codegen


@intrinsic
def _load_acquire(typingctx, arr, idx):
    """arr[idx] of an int64 array, loaded atomically (acquire): read anew on every call."""
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64):
        return None
    sig = types.int64(arr, idx)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)])
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _pause(typingctx):
    """The spin-wait hint (x86 PAUSE); nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, sig, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(inline="always", nogil=True)
def barrier(sync, nthr):
    """Wait in a spin until ``nthr`` shares have arrived (``sync[0]``) or one failed
    (``sync[1]``); whether all arrived. ``run_synced`` starts every share at once, so the wait is
    the other shares' remaining work, not a launch."""
    _atomic_add(sync, 0, 1)
    while _load_acquire(sync, 0) < nthr:
        if _load_acquire(sync, 1) != 0:
            return False
        _pause()
    return True
