"""numpy's own matmul time over a few seconds of back-to-back calls, per 100 ms window: on the
2-vCPU VMs here it runs in one of two rates for whole stretches (256^3: ~0.19 or ~0.30 ms), so
any single comparison against numpy can land on either.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/numpy_modes_probe.py [--sizes 256 512] [--trials 2] [--seconds 1.5]

Each trial sleeps 0.5 s, then calls ``a @ b`` (float32, n x n) for ``--seconds`` and prints the
median per call of each 100 ms window, in ms. No kernelkit code runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--trials", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    limits = threadpool_limits(args.threads)
    print("BLAS:", [(i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
                    for i in threadpool_info() if i.get("user_api") == "blas"])
    rng = np.random.default_rng(0)
    for n in args.sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        for trial in range(args.trials):
            time.sleep(0.5)
            windows: dict[int, list[float]] = {}
            start = time.perf_counter()
            while (now := time.perf_counter()) < start + args.seconds:
                a @ b
                windows.setdefault(int((now - start) * 10), []).append(time.perf_counter() - now)
            medians = [statistics.median(v) * 1e3 for _, v in sorted(windows.items())]
            print(f"{n}^3 trial {trial}: " + " ".join(f"{m:.3f}" for m in medians), flush=True)
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
