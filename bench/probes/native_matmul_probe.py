"""What the Python callbacks of a launch cost a Numba matmul: ``kernelkit.matmul`` forced to
the Numba backend, its shares on torch's OpenMP team through their native trampolines
(``_native``, the default) against the same calls with every share a Python callback
(``_pool.NATIVE_SHARES = False``), interleaved in one process, beside numpy's ``a @ b``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/native_matmul_probe.py [--sizes 128 256 512] [--rounds 11]

Square float32 products on numpy data, tuned once beforehand (``kernelkit.explain`` with the
Numba backend forced measures its configs and stores the winner). Prints medians of
``--rounds`` rounds of back-to-back calls (about 20 ms a row per round; 0.2 s of rest after
numpy's row, whose OpenBLAS workers spin after it) and numpy / ours each way.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch  # noqa: F401 - loads the OpenMP runtime whose team the shares run on

import kernelkit
from kernelkit import devices
from kernelkit.kernels.numba import _pool


def _per_call(fn, budget_s: float = 0.02) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        el = time.perf_counter() - t0
        if el >= budget_s:
            return el / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--rounds", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not _pool._team():
        print("torch's OpenMP runtime not found: nothing to compare")
        return 1
    print(f"cpu: {devices.cpu_info()['model']}; float32 square matmul, us, medians of "
          f"{args.rounds} rounds")
    print("| size | Python callbacks | native | numpy | numpy / callbacks | numpy / native |")
    print("| --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        with kernelkit.use(backend="numba"):
            kernelkit.explain("matmul", a, b)

        def ours(a=a, b=b):
            with kernelkit.use(backend="numba"):
                return kernelkit.matmul(a, b)

        outs = []
        for native in (False, True):
            _pool.NATIVE_SHARES = native
            outs.append(ours())
        if not np.array_equal(outs[0], outs[1]):
            print(f"| {n} | outputs differ | | | | |")
            return 1
        times: dict = {"py": [], "native": [], "numpy": []}
        for _ in range(args.rounds):
            for key in times:
                _pool.NATIVE_SHARES = key != "py"
                times[key].append(_per_call((lambda a=a, b=b: a @ b) if key == "numpy" else ours))
                if key == "numpy":
                    time.sleep(0.2)  # OpenBLAS's workers spin after its calls: let them stop
        _pool.NATIVE_SHARES = True
        med = {key: statistics.median(v) * 1e6 for key, v in times.items()}
        print(f"| {n}^3 | {med['py']:.1f} | {med['native']:.1f} | {med['numpy']:.1f} | "
              f"{med['numpy'] / med['py']:.3f} | {med['numpy'] / med['native']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
