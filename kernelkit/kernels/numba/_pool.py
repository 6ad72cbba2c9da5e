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

import threading
from concurrent.futures import ThreadPoolExecutor

_POOL: list = [None]
_POOL_LOCK = threading.Lock()


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
