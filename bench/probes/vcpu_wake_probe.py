"""When does the second thread of a two-share kernel start, and how fast does each share run,
after the process was idle for a while? (This VM's idle vCPUs wake slowly.)

    flock /tmp/kk-bench.lock python bench/probes/vcpu_wake_probe.py [--kind mem|comp] [--idle S]

A two-share Numba kernel on kernelkit's Python pool (`_pool.run_pool`, fixed shares), 40 calls
with ``--idle`` seconds of sleep before each; every share stamps its start and end. Prints every
8th call sorted by total time: the total, share 0's time (the calling thread), when share 1
started after the launch, and share 1's time. ``mem``: a 2-pass scale-and-add over 8 MB per
share (memory-bound); ``comp``: a dependent multiply-add chain (compute-bound).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from kernelkit.kernels.numba import _pool


@numba.njit(nogil=True)
def _stream(t, nthr, src, dst):
    n = src.size // nthr
    for _ in range(2):
        for i in range(t * n, (t + 1) * n):
            dst[i] = src[i] * 1.5 + 2.0


@numba.njit(nogil=True)
def _chain(t, nthr, src, dst):
    acc = 0.0
    for _ in range(400000):
        acc = acc * 0.999 + 1.0
    dst[t] = acc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("mem", "comp"), default="mem")
    p.add_argument("--idle", type=float, default=0.05)
    args = p.parse_args()
    kernel = _stream if args.kind == "mem" else _chain
    stamps = np.zeros((2, 2))

    def share(t, nthr, src, dst):
        stamps[t, 0] = time.perf_counter()
        kernel(t, nthr, src, dst)
        stamps[t, 1] = time.perf_counter()

    src = np.random.default_rng(0).random(2_000_000).astype(np.float32)
    dst = np.empty_like(src)
    for _ in range(3):
        _pool.run_pool(share, 2, src, dst, claim=False)
    rows = []
    for _ in range(40):
        time.sleep(args.idle)
        t0 = time.perf_counter()
        _pool.run_pool(share, 2, src, dst, claim=False)
        t1 = time.perf_counter()
        rows.append(((t1 - t0) * 1e3, (stamps[0, 1] - stamps[0, 0]) * 1e3,
                     (stamps[1, 0] - t0) * 1e3, (stamps[1, 1] - stamps[1, 0]) * 1e3))
    for total, first, start, second in sorted(rows)[::8]:
        print(f"total {total:.2f} ms  share 0 {first:.2f} ms  share 1 started at {start:.3f} ms, "
              f"ran {second:.2f} ms")


if __name__ == "__main__":
    main()
