"""The Numba float16 matmul against float32 at the kernel (numpy arrays, one config), with the
float32 copies of the operands made three ways, rows interleaved in their steady state:

- ``float16``: ``matmul_forward`` as it runs (operands widened into the thread's operand buffers,
  or, with the tile kernel, by each thread for its own share);
- ``new copies``: the operands widened into new arrays every call, then the float32 kernel and
  the rounding (what ``matmul_forward`` did before the operand buffers);
- ``float32``: the float32 product on float32 operands (the rate the float16 bar is set against).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/half_widen_probe.py [--sizes 256 512 1024] [--kernel packed]

Each row's minor page faults per call are printed beside it: a new mapping faults on every
4 KiB page written (about 2 us each on these VMs), so a new array per call can cost more than the
arithmetic, depending on where glibc serves it from.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import faults_per_call, steady_medians  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import _half  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--kernel", default="packed", choices=["packed", "tile"])
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    cfg = nm.MatmulConfig.default(np.float32)
    cfg = nm.MatmulConfig(cfg.mc, cfg.kc, cfg.nc, args.kernel)
    print(f"cpu: {devices.cpu_info()['model']}; {numba.get_num_threads()} threads; {cfg}")
    print("| n | float32 us | float16 us | new copies us | float16 / float32 rate | "
          "new copies / float32 rate | page faults per call (float32, float16, new copies) |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        rng = np.random.default_rng(n)
        a32 = rng.standard_normal((1, n, n), dtype=np.float32)
        b32 = rng.standard_normal((1, n, n), dtype=np.float32)
        a16, b16 = a32.astype(np.float16), b32.astype(np.float16)

        def new_copies():
            out = nm.matmul_forward(_half.widen(a16), _half.widen(b16), config=cfg)
            return _half.narrow(out, "e")

        rows = {"fp32": lambda: nm.matmul_forward(a32, b32, config=cfg),
                "fp16": lambda: nm.matmul_forward(a16, b16, config=cfg),
                "copies": new_copies}
        for fn in rows.values():  # compiled and warm
            fn()
        med = dict(zip(rows, steady_medians(list(rows.values()), args.rounds)))
        flt = ", ".join(f"{faults_per_call(fn):.0f}" for fn in rows.values())
        us = {k: v * 1e6 for k, v in med.items()}
        print(f"| {n} | {us['fp32']:.0f} | {us['fp16']:.0f} | {us['copies']:.0f} | "
              f"{med['fp32'] / med['fp16']:.2f}x | {med['fp32'] / med['copies']:.2f}x | {flt} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
