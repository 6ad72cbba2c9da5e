"""Half precision on the CPU: float16 / bfloat16 matmul and conv2d against torch, side by side.

Rows per problem: torch-cpu (the vendor: oneDNN's half-precision kernels where the CPU has
AVX-512 BF16 / FP16 or AMX, scalar loops where it does not), numba-cpu (kernelkit's Numba kernels
forced: half precision widened to float32, computed, rounded once), kernelkit (the dispatched op,
tuned first), and numba-cpu-fp32 (the same problem in float32: the rate the half-precision path is
measured against). Inputs are torch CPU tensors (numpy has no bfloat16).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_bench_half.py \\
        --benchmark-json half.json && python bench/report.py half.json --baseline torch-cpu
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from conftest import run_rounds

import kernelkit

DTYPES = ["bfloat16", "float16"]
MATMUL = [(256, 256, 256), (1024, 1024, 1024), (2048, 2048, 2048)]
# ResNet-50's stride-1 3x3 layers at batch 1: (C, H=W); K = C
CONV3X3 = [(64, 56), (128, 28), (256, 14), (512, 7)]
ROWS = ["torch-cpu", "numba-cpu", "kernelkit", "numba-cpu-fp32"]


def _time(benchmark, fn, group: str, row: str, flops: float, **info) -> None:
    fn()
    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    benchmark.group = group
    benchmark.extra_info.update(row=row, flops=flops, **info)
    # the scalar torch rows take seconds per call: 5 rounds is the floor, 2 s the budget
    run_rounds(benchmark, fn, est)
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", MATMUL, ids=lambda s: "x".join(map(str, s)))
def test_half_matmul(benchmark, mkn, dtype, row):
    m, k, n = mkn
    g = torch.Generator().manual_seed(m)
    dt = torch.float32 if row == "numba-cpu-fp32" else getattr(torch, dtype)
    a, b = torch.randn(m, k, generator=g).to(dt), torch.randn(k, n, generator=g).to(dt)
    if row == "torch-cpu":
        fn = lambda: torch.matmul(a, b)
    elif row == "kernelkit":
        kernelkit.matmul(a, b)  # tunes this size (measured, verified, cached) before timing
        fn = lambda: kernelkit.matmul(a, b)
    else:
        def fn():
            with kernelkit.use(backend="numba"):
                return kernelkit.matmul(a, b)
    _time(benchmark, fn, f"matmul {dtype} {m}x{k}x{n}", row, 2.0 * m * k * n, dtype=dtype)
    if row == "kernelkit":
        benchmark.extra_info["choice"] = kernelkit.explain("matmul", a, b).choice.to_dict()


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", CONV3X3, ids=lambda s: f"c{s[0]}-{s[1]}px")
def test_half_conv2d_resnet50_3x3(benchmark, layer, dtype, row):
    c, hw = layer
    g = torch.Generator().manual_seed(c)
    dt = torch.float32 if row == "numba-cpu-fp32" else getattr(torch, dtype)
    x = torch.randn(1, c, hw, hw, generator=g).to(dt)
    w = torch.randn(c, c, 3, 3, generator=g).mul(0.05).to(dt)
    if row == "torch-cpu":
        fn = lambda: F.conv2d(x, w, padding=1)
    elif row == "kernelkit":
        kernelkit.conv2d(x, w, padding=1)
        fn = lambda: kernelkit.conv2d(x, w, padding=1)
    else:
        def fn():
            with kernelkit.use(backend="numba"):
                return kernelkit.conv2d(x, w, padding=1)
    _time(benchmark, fn, f"conv2d {dtype} resnet50 3x3 c{c} {hw}px batch 1", row,
          2.0 * c * c * 9 * hw * hw, dtype=dtype)


# A Linear layer's products (x (M, K) by a weight (N, K) stored along K, as F.linear takes it):
# a few rows to a few dozen, as a transformer's MLP sees at decode and small-batch time
LINEAR = [(1, 4096, 4096), (32, 4096, 4096), (32, 4096, 11008)]


@pytest.mark.parametrize("row", ["torch-cpu", "numba-cpu", "kernelkit"])
@pytest.mark.parametrize("mkn", LINEAR, ids=lambda s: "x".join(map(str, s)))
def test_bf16_linear(benchmark, mkn, row):
    m, k, n = mkn
    g = torch.Generator().manual_seed(m + n)
    x = torch.randn(m, k, generator=g).bfloat16()
    w = torch.randn(n, k, generator=g).bfloat16()
    if row == "torch-cpu":
        fn = lambda: F.linear(x, w)
    elif row == "kernelkit":
        kernelkit.explain("matmul", x, w.t())  # measures every candidate, stores the winner
        fn = lambda: kernelkit.matmul(x, w.t())
    else:
        def fn():
            with kernelkit.use(backend="numba"):
                return kernelkit.matmul(x, w.t())
    _time(benchmark, fn, f"linear bfloat16 {m}x{k}x{n}", row, 2.0 * m * k * n, dtype="bfloat16")
    if row == "kernelkit":
        benchmark.extra_info["choice"] = kernelkit.explain("matmul", x, w.t()).choice.to_dict()
