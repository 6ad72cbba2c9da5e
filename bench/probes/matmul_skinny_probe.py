"""Small, skinny, odd and square CPU matmuls: dispatched kernelkit against numpy, torch and forced
Numba, side by side in one run, as a markdown table of ratios to the best of the three.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \
        python bench/probes/matmul_skinny_probe.py [--threads 2] [--sets skinny odd square]
        [--dtype float32] [--blocks 5] [--block-s 0.05]

Rows per shape:
- numpy: ``a @ b`` (OpenBLAS; the kernel threadpoolctl reports is printed first),
- torch: ``torch.matmul`` on the same memory (``torch.from_numpy``),
- numba: ``kernelkit.matmul`` forced to the Numba backend (``kernelkit.use(backend="numba")``),
  i.e. the best Numba config the tuner measured for this size (packed or unpacked kernel),
- kernelkit: the dispatched ``kernelkit.matmul`` after tuning (KERNELKIT_TUNE=measure into a fresh
  cache), which may pick numpy's BLAS, torch or Numba.

Each row is timed in blocks of back-to-back calls (about --block-s seconds each), rows alternating
block by block, each block after --pause seconds of the row's own untimed calls, and reports the
median per call over its blocks: OpenBLAS's and OpenMP's idle workers spin after a call, and
single interleaved calls would charge that to the next row. ``vs best`` is best-of(numpy, torch, numba) median / kernelkit median (1.0 = as fast
as the best; the issue's bar is >= 0.95); ``numba/numpy`` is numpy median / numba median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

SETS = {
    "skinny": [(1, 4096, 4096), (8, 4096, 4096), (32, 4096, 11008)],
    "odd": [(64, 64, 64), (97, 61, 89), (3, 1000, 3)],
    "square": [(n, n, n) for n in (32, 64, 128, 256, 512, 1024, 2048)],
}


def _time_rows(fns: dict, blocks: int, block_s: float, pause: float) -> dict[str, float]:
    """Median seconds per call of each fn, timed in alternating blocks of back-to-back calls."""
    per_block = {}
    for name, fn in fns.items():  # calls per block, from a warm call
        fn()
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        per_block[name] = max(1, min(10_000, int(block_s / one)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            # untimed calls of this row first, until the previous row's pool went quiet: calls
            # rather than a sleep, after which the vCPUs are slow to wake (the tuner's timer
            # learnt the same, kernelkit/autotune/timing.py)
            end = time.perf_counter() + pause
            while time.perf_counter() < end:
                fn()
            n = per_block[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--blocks", type=int, default=5)
    p.add_argument("--block-s", type=float, default=0.1)
    # OpenBLAS's idle threads spin for about 2^28 cycles (~0.1 s) after a call: on 2 cores they
    # would take the cores from the next row's pool (the row's own untimed calls meanwhile)
    p.add_argument("--pause", type=float, default=0.3)
    args = p.parse_args()

    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-skinny-"))
    os.environ["KERNELKIT_TUNE"] = "measure"
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    import kernelkit
    from kernelkit import core, devices
    from kernelkit.ops import matmul as matmul_op

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    limits = threadpool_limits(args.threads)
    blas = [(i.get("internal_api"), i.get("version"), i.get("architecture"), i.get("num_threads"))
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"CPU: {devices.cpu_info()['model']}, {args.threads} threads; BLAS: {blas}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} "
          f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}; numpy {np.__version__}, "
          f"torch {torch.__version__}, numba {numba.__version__}; dtype {args.dtype}",
          flush=True)
    print()
    print("| shape (MxKxN) | numpy us | torch us | numba us (config) | kernelkit us (choice) "
          "| vs best | numba/numpy |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    worst = 1e9
    for name in args.sets:
        for m, k, n in SETS[name]:
            a = rng.standard_normal((m, k), dtype=np.float32).astype(args.dtype)
            b = rng.standard_normal((k, n), dtype=np.float32).astype(args.dtype)
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            with kernelkit.use(backend="numba"):
                kernelkit.matmul(a, b)  # tunes the Numba configs of this size
                numba_choice = kernelkit.explain("matmul", a, b).choice
            kernelkit.matmul(a, b)  # tunes the dispatched choice
            choice = kernelkit.explain("matmul", a, b).choice

            # the plan the forced backend binds, without the context manager's cost per call
            call = matmul_op.prepare(a, b)
            plan = call.bind(core.get("matmul", numba_choice.candidate), numba_choice.config)
            forced_numba = lambda a=a, b=b, plan=plan: plan(a, b, None)
            fns = {"numpy": lambda a=a, b=b: a @ b,
                   "torch": lambda ta=ta, tb=tb: torch.matmul(ta, tb),
                   "numba": forced_numba,
                   "kernelkit": lambda a=a, b=b: kernelkit.matmul(a, b)}
            t = _time_rows(fns, args.blocks, args.block_s, args.pause)
            best = min(t["numpy"], t["torch"], t["numba"])
            ratio = best / t["kernelkit"]
            worst = min(worst, ratio)
            cfg = numba_choice.config.get("kernel", "packed")
            print(f"| {m}x{k}x{n} | {t['numpy'] * 1e6:.1f} | {t['torch'] * 1e6:.1f} | "
                  f"{t['numba'] * 1e6:.1f} ({cfg}) | {t['kernelkit'] * 1e6:.1f} "
                  f"({choice.candidate}{'/' + choice.config['kernel'] if 'kernel' in choice.config else ''}) | "
                  f"{ratio:.2f} | {t['numpy'] / t['numba']:.2f} |", flush=True)
    limits.restore_original_limits()
    print(f"\nworst dispatched vs best-of: {worst:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
