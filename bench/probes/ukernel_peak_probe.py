"""The float32 micro-kernel's own peak: ``_gemm.ukernel`` called in a loop on L1-resident
slivers, on one core and on every core at once, for the register tile in use or ``--tile``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/ukernel_peak_probe.py [--tile 24x16] [--kc 128]

What no kernel built on the micro-kernel can beat on this CPU: a conv or GEMM that reaches it
loses nothing to packing, blocking or memory. ``--tile`` sets ``_gemm.TILE["float32"]`` before
anything compiles (a probe of the tile choice only: the real kernels' packed layouts follow the
tile in use); one tile per process, since Numba keeps the micro-kernel compiled for the first
tile it typed. Prints GFLOP/s, the best of five timed runs of ``--reps`` calls each.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from kernelkit import devices
from kernelkit.kernels.numba import _gemm


def _runner(mr: int, nr: int, nthr: int):
    ukernel, jit = _gemm.ukernel, {k: v for k, v in _gemm._JIT.items() if k != "cache"}

    @numba.njit(parallel=nthr > 1, **jit)
    def run(reps, kc, a, b, c):
        for t in numba.prange(nthr):
            for _ in range(reps):
                ukernel(kc, a, t * mr * kc, b, t * kc * nr, c, t * mr * nr, nr, 1)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", help="MRxNR instead of the tile in use")
    p.add_argument("--kc", type=int, default=128)
    p.add_argument("--reps", type=int, default=20000)
    args = p.parse_args()
    cores = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(cores)
    print(f"{devices.cpu_info()['model']}, float32, kc {args.kc}, {cores} cores")
    if args.tile:
        _gemm.TILE["float32"] = tuple(int(v) for v in args.tile.split("x"))
        _gemm._TILE_OF.clear()
    for mr, nr in [_gemm.TILE["float32"]]:
        row = []
        for nthr in sorted({1, cores}):
            run = _runner(mr, nr, nthr)
            rng = np.random.default_rng(0)
            a = rng.random(nthr * mr * args.kc, dtype=np.float32)
            b = rng.random(nthr * args.kc * nr, dtype=np.float32)
            c = np.zeros(nthr * mr * nr, np.float32)
            run(10, args.kc, a, b, c)  # compiles
            best = 0.0
            for _ in range(5):
                t0 = time.perf_counter()
                run(args.reps, args.kc, a, b, c)
                dt = time.perf_counter() - t0
                best = max(best, 2 * mr * nr * args.kc * args.reps * nthr / dt / 1e9)
            row.append(f"{nthr} core{'s' if nthr > 1 else ''} {best:6.1f} GFLOP/s")
        print(f"tile {mr}x{nr}: " + ", ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
