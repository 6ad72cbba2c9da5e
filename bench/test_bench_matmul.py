"""matmul on the CPU: every kernelkit candidate, the dispatched op and the vendor, side by side.

Rows per shape: numpy (OpenBLAS, ``a @ b``), numpy-cpu (the same through kernelkit's numpy
candidate), torch-cpu (the torch vendor candidate), numba-cpu (default config), numba-cpu-tuned
(the best config the tuner measured, packed or unpacked) and kernelkit (the dispatched op).
Compare against numpy with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`` (see
docs/performance.md); bench/probes/matmul_skinny_probe.py prints the best-of ratios.
Read a row as a ratio to `numpy` / `torch-cpu` in the same group: `bench/report.py` prints them.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import run_rounds

import kernelkit
from kernelkit.kernels.numba import matmul as numba_mm
from kernelkit.kernels.numpy import matmul as numpy_mm
from kernelkit.kernels.torch import matmul as torch_mm
from kernelkit.ops import matmul as matmul_op

SHAPES = {  # (M, K, N), named by intent
    "square": [(n, n, n) for n in (32, 64, 128, 256, 512, 1024, 2048)],
    "mlp": [(128, 768, 3072), (128, 3072, 768)],
    # GEMV and small-M products (issue 13): B is streamed once
    "skinny": [(1, 4096, 4096), (8, 4096, 4096), (32, 4096, 11008)],
    "odd": [(64, 64, 64), (97, 61, 89), (255, 257, 129), (1000, 3, 1000), (3, 1000, 3)],
}
CASES = [(name, s) for name, shapes in SHAPES.items() for s in shapes]
# numpy-cpu is kernelkit's numpy/OpenBLAS candidate through its launcher (the vendor row `numpy`
# plus the launcher's cost); numba-cpu-tuned is Numba forced, with the config (packed or
# unpacked kernel) the tuner measured best
ROWS = ["numpy", "numpy-cpu", "torch-cpu", "numba-cpu", "numba-cpu-tuned", "kernelkit"]


def _inputs(m, k, n, dtype=np.float32):
    rng = np.random.default_rng(m + k + n)
    return rng.standard_normal((m, k), dtype=np.float32).astype(dtype), \
        rng.standard_normal((k, n), dtype=np.float32).astype(dtype)


def _tuned_numba_config(a, b):
    """The config the tuner measured best for numba-cpu on this problem (tuning it if needed)."""
    call = matmul_op.prepare(a, b)
    ex = kernelkit.explain("matmul", a, b)
    timed = [t for t in ex.trials if t["candidate"] == "numba-cpu" and "median" in t]
    best = min(timed, key=lambda t: t["median"])["config"] if timed else None
    return numba_mm.MatmulConfig.from_dict(best) if best else numba_mm.MatmulConfig.default(
        np.dtype(call.problem.dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("shape_set,mkn", CASES, ids=[f"{n}-{'x'.join(map(str, s))}" for n, s in CASES])
def test_matmul(benchmark, shape_set, mkn, row, dtype):
    if dtype == "float64" and shape_set != "square":
        pytest.skip("float64 rows only for the square set (keeps the run short)")
    m, k, n = mkn
    a, b = _inputs(m, k, n, np.dtype(dtype))
    a3, b3 = a[None], b[None]
    if row == "numpy":
        fn = lambda: a @ b
    elif row == "numpy-cpu":
        fn = lambda: numpy_mm.matmul_forward(a3, b3)
    elif row == "torch-cpu":
        ta, tb = torch.from_numpy(a3), torch.from_numpy(b3)
        fn = lambda: torch_mm.matmul_forward(ta, tb)
    elif row == "numba-cpu":
        cfg = numba_mm.MatmulConfig.default(np.dtype(dtype))
        fn = lambda: numba_mm.matmul_forward(a3, b3, None, None, cfg)
    elif row == "numba-cpu-tuned":
        cfg = _tuned_numba_config(a, b)
        fn = lambda: numba_mm.matmul_forward(a3, b3, None, None, cfg)
    else:
        kernelkit.matmul(a, b)  # tunes this bucket (measured, verified, cached) before timing
        fn = lambda: kernelkit.matmul(a, b)
    fn()
    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    benchmark.group = f"matmul {dtype} {shape_set} {m}x{k}x{n}"
    benchmark.extra_info.update(row=row, flops=2.0 * m * k * n, shape_set=shape_set,
                                mkn=[m, k, n], dtype=dtype)
    run_rounds(benchmark, fn, est)
    benchmark.extra_info["gflops"] = 2.0 * m * k * n / benchmark.stats.stats.median / 1e9
    if row == "kernelkit":
        benchmark.extra_info["choice"] = kernelkit.explain("matmul", a, b).choice.to_dict()
