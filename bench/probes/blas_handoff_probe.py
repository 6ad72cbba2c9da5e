"""numpy's BLAS and torch's on the same numpy data, one after the other: what a torch product
costs right after a numpy one, and what kernelkit's plan for torch on numpy data does about it.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/blas_handoff_probe.py [--sizes 160 512] [--seconds 1.0]

Rows per size (M = K = N), each timed for --seconds of back-to-back calls, median per call in us:

- numpy / torch alone: ``a @ b``; ``torch.mm`` on ``torch.from_numpy`` views;
- "numpy, then torch": the two alternating, torch's call timed (OpenBLAS's workers spin for
  about 0.1 s after a call, and torch's OpenMP region waits for a core behind them);
- "user's numpy, then kernelkit's torch plan": ``a @ b`` outside kernelkit, then kernelkit's
  bound plan for the torch candidate (``ops.dispatch._bound``), timed: kernelkit cannot see that
  call (as for its Numba kernels on torch's OpenMP team);
- "kernelkit: numpy plan, then torch plan": kernelkit's plans for the two candidates,
  alternating, the torch plan's call timed: it runs numpy's BLAS while kernelkit's own BLAS
  call may have left the workers spinning;
- Numba alone, and "user's numpy, then Numba": kernelkit's plan for the Numba candidate (its
  first config), whose shares run on torch's OpenMP team once torch is loaded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from kernelkit import core, devices
from kernelkit.ops import dispatch
from kernelkit.ops import matmul as mm


def _median_us(seq, timed: int, seconds: float) -> float:
    """Run the functions of `seq` in turn for `seconds`; the median of `seq[timed]`'s calls."""
    for f in seq:
        f()
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for i, f in enumerate(seq):
            t0 = time.perf_counter()
            f()
            if i == timed:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[160, 512])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {devices.cpu_info()['model']}, torch {torch.__version__}, numpy {np.__version__}")
    print("| n | numpy | torch | numpy, then torch | user's numpy, then kernelkit's torch plan "
          "| kernelkit: numpy plan, then torch plan | Numba | user's numpy, then Numba |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        call = mm.prepare(a, b)
        plans = {name: dispatch._bound(call, core.get("matmul", name), {}, False)
                 for name in ("numpy-cpu", "torch-cpu")}
        numba = core.get("matmul", "numba-cpu")
        plans["numba-cpu"] = dispatch._bound(call, numba, numba.space(call.problem)[0], False)
        for plan in plans.values():
            np.testing.assert_allclose(plan(a, b, None), a @ b, rtol=1e-4, atol=1e-3 * n ** 0.5)

        def user_np():
            return a @ b

        def user_torch():
            return torch.mm(ta, tb).numpy()

        def kk_np():
            return plans["numpy-cpu"](a, b, None)

        def kk_torch():
            return plans["torch-cpu"](a, b, None)

        def kk_numba():
            return plans["numba-cpu"](a, b, None)

        # (in this order: run after the kernelkit row, the last one stalled less or not at all
        # on a 2-vCPU Xeon, 43.6 against 7250 us at 160)
        row = [_median_us([user_np], 0, args.seconds), _median_us([user_torch], 0, args.seconds),
               _median_us([user_np, user_torch], 1, args.seconds),
               _median_us([user_np, kk_torch], 1, args.seconds),
               _median_us([kk_np, kk_torch], 1, args.seconds),
               _median_us([kk_numba], 0, args.seconds),
               _median_us([user_np, kk_numba], 1, args.seconds)]
        print(f"| {n} | " + " | ".join(f"{t:.1f}" for t in row) + " |", flush=True)


if __name__ == "__main__":
    main()
