"""Quick GFLOP/s probe of the Numba matmul against numpy/OpenBLAS, side by side in one run.

    python bench/probes/numba_gemm_probe.py [--sizes 1024 2048] [--dtype float32] [--threads 2]
        [--reps 3] [--blocks 3] [--mc M --kc K --nc N] [--activation gelu]

Both libraries use the same thread count (threadpoolctl for OpenBLAS, numba.set_num_threads).
Each library is timed in blocks of back-to-back calls, alternating blocks, with a pause between
blocks: OpenBLAS's idle workers spin for a while after each call (as GNU OpenMP's do), and
interleaving single calls would charge that spinning to whichever library runs next.
Each size reports the best and median over all calls.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from kernelkit.kernels.numba.matmul import MatmulConfig, matmul_forward


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="calls per block")
    p.add_argument("--blocks", type=int, default=3, help="blocks per library")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between blocks")
    p.add_argument("--mc", type=int)
    p.add_argument("--kc", type=int)
    p.add_argument("--nc", type=int)
    p.add_argument("--activation", default=None)
    args = p.parse_args()
    dtype = np.dtype(args.dtype)
    d = MatmulConfig.default(dtype)
    cfg = MatmulConfig(args.mc or d.mc, args.kc or d.kc, args.nc or d.nc)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"config {cfg}, threads {args.threads}, dtype {dtype.name}")
    with threadpool_limits(args.threads):
        for n in args.sizes:
            a = rng.standard_normal((1, n, n)).astype(dtype)
            b = rng.standard_normal((1, n, n)).astype(dtype)
            matmul_forward(a, b, config=cfg, activation=args.activation)  # compile / warm up
            np.matmul(a, b)
            tk, tn = [], []
            for _ in range(args.blocks):
                for times, fn in ((tk, lambda: matmul_forward(a, b, config=cfg,
                                                              activation=args.activation)),
                                  (tn, lambda: np.matmul(a, b))):
                    time.sleep(args.pause)
                    for _ in range(args.reps):
                        t = time.perf_counter()
                        fn()
                        times.append(time.perf_counter() - t)
            flop = 2.0 * n**3
            gk, gn = flop / min(tk) / 1e9, flop / min(tn) / 1e9
            mk, mn = flop / statistics.median(tk) / 1e9, flop / statistics.median(tn) / 1e9
            print(f"n={n:5d}  numba {gk:7.1f} GFLOP/s (median {mk:6.1f})  numpy {gn:7.1f} "
                  f"(median {mn:6.1f})  ratio best {gk / gn:.2f}  median {mk / mn:.2f}")


if __name__ == "__main__":
    main()
