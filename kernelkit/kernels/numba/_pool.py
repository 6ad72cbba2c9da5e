"""The Python thread pool the Numba kernels' shares run on.

Each kernel is written as ``fn(t, nthr, ...)``: thread t's share of the work, disjoint outputs,
no synchronisation, the GIL released (``nogil``). ``run`` calls share 0 on the calling thread
and the others on this pool. Not a Numba ``prange`` region: on the fork-safe ``workqueue``
threading layer (kernelkit's choice: `kernelkit.threads`) a region's launch took 50-100 us on a
2-core Zen 5 VM, and the 256^3 matmul ran slower on two threads (118 GFLOP/s) than on one
(200); through this pool 230 (`docs/performance.md`). ``threads`` rebuilds the pool in a forked
child (its threads do not exist there).
"""

from __future__ import annotations

import platform
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_POOL: list = [None]
_POOL_LOCK = threading.Lock()
# Held by a run whose shares meet at a barrier (``run_synced``): all its shares must run at once,
# so only one such run at a time; another caller meanwhile takes the unsynced way.
_SYNC_LOCK = threading.Lock()
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


def run(fn, nthr: int, *args) -> None:
    """fn(t, nthr, *args) for t < nthr: t = 0 on the calling thread, the rest on the pool."""
    if nthr <= 1:
        fn(0, 1, *args)
        return
    futs = [pool(nthr - 1).submit(fn, t, nthr, *args) for t in range(1, nthr)]
    fn(0, nthr, *args)
    for f in futs:
        f.result()


def run_synced(fn, nthr: int, *args) -> bool:
    """fn(t, nthr, *args, sync) for t < nthr, all at once, with a fresh ``sync`` (int64[2]) for
    ``barrier``: False (nothing run) when another synced run holds the pool; the caller then runs
    its phases apart. A share that raises marks ``sync`` so the others leave the barrier."""
    if nthr <= 1 or not _SYNC_LOCK.acquire(blocking=False):
        return False
    try:
        sync = np.zeros(2, np.int64)

        def share(t, n, *a):
            try:
                fn(t, n, *a, sync)
            except BaseException:
                sync[1] = 1
                raise

        run(share, nthr, *args)
    finally:
        _SYNC_LOCK.release()
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
