"""The dispatched matmul against numpy's own call on one shape (default the GEMV 1x4096x4096),
timed in paired blocks: each pair runs the two rows back to back, the order alternating pair by
pair, each block after 0.2 s of its row's own untimed calls. Prints each row's median and the
median (and quartiles) of the per-pair ratios numpy / dispatched.

Why paired: a memory-bound GEMV's time moves by 10-20% from second to second on a shared VM, and
`matmul_skinny_probe.py`, which times four rows in turn and compares medians, read the dispatched
GEMV at 0.86-0.93 of numpy's with numpy's own call chosen (the same call).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/gemv_paired_probe.py [--shape 1 4096 4096] [--pairs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def _block(fn, calls: int, warm_s: float = 0.2) -> float:
    end = time.perf_counter() + warm_s  # (the row's own calls until the other row's pool is quiet)
    while time.perf_counter() < end:
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=(1, 4096, 4096), metavar=("M", "K", "N"))
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--calls", type=int, default=60, help="calls per timed block")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-gemv-"))
    os.environ["KERNELKIT_TUNE"] = "measure"
    import numba
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    import kernelkit
    from kernelkit import devices

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    blas = [i.get("architecture") for i in threadpool_info() if i.get("user_api") == "blas"]
    m, k, n = args.shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    kernelkit.matmul(a, b)  # tunes the size (measures every candidate)
    print(f"CPU: {devices.cpu_info()['model']}; OpenBLAS kernel {blas}; {m}x{k}x{n} float32; "
          f"chosen: {kernelkit.explain('matmul', a, b).choice}", flush=True)
    rows = {"numpy": lambda: a @ b, "dispatched": lambda: kernelkit.matmul(a, b)}
    times: dict[str, list[float]] = {name: [] for name in rows}
    ratios = []
    for i in range(args.pairs):
        order = ("numpy", "dispatched") if i % 2 == 0 else ("dispatched", "numpy")
        pair = {name: _block(rows[name], args.calls) for name in order}
        for name, t in pair.items():
            times[name].append(t)
        ratios.append(pair["numpy"] / pair["dispatched"])
    q1, med, q3 = statistics.quantiles(ratios, n=4)
    print(f"numpy {statistics.median(times['numpy']) * 1e6:.0f} us, dispatched "
          f"{statistics.median(times['dispatched']) * 1e6:.0f} us (medians of {args.pairs} "
          f"blocks); numpy / dispatched per pair: median {med:.3f} [quartiles {q1:.3f}, {q3:.3f}]")


if __name__ == "__main__":
    main()
