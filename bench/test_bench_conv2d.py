"""conv2d on the CPU: numba (direct), the dispatched op and torch/oneDNN, side by side.

Groups: ResNet-50 3x3 and 1x1 layers at batch 8 (NCHW), the same with a fused bias + relu
against torch's conv followed by bias and relu, and MobileNetV2 depthwise 3x3 at batch 8.
`bench/report.py --baseline torch-cpu` prints ratios and geometric means.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import run_rounds
from reference import CONV_MOBILENET_DW, CONV_RESNET50

import kernelkit

BATCH = 8
LAYERS = [l for l in CONV_RESNET50 if l[3] in (1, 3)]
ROWS = ["torch-cpu", "numba-cpu", "kernelkit"]


def _time_once(fn) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _bench(benchmark, group, row, fn, flops):
    est = _time_once(fn)
    benchmark.group = group
    benchmark.extra_info.update(row=row, flops=flops)
    run_rounds(benchmark, fn, est, budget_s=1.5)
    benchmark.extra_info["gflops"] = flops / benchmark.stats.stats.median / 1e9


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "bias-relu"])
@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda l: f"c{l[0]}-k{l[1]}-{l[2]}px-{l[3]}x{l[3]}-s{l[4]}")
def test_resnet50(benchmark, layer, row, fused):
    from kernelkit.kernels.numba import conv2d as numba_conv

    c, k, hw, r, stride, pad = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, c, hw, hw), dtype=np.float32)
    w = (rng.standard_normal((k, c, r, r), dtype=np.float32) * 0.05)
    b = rng.standard_normal(k, dtype=np.float32) if fused else None
    act = "relu" if fused else None
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    bt = None if b is None else torch.from_numpy(b)
    if row == "torch-cpu":  # what a user writes: conv, then bias and relu as separate ops
        fn = (lambda: torch.relu(F.conv2d(xt, wt, None, stride, pad) + bt[:, None, None])) if fused \
            else (lambda: F.conv2d(xt, wt, None, stride, pad))
    elif row == "numba-cpu":
        cfg = numba_conv.Conv2dConfig.default(np.dtype(np.float32))
        fn = lambda: numba_conv.conv2d_forward(x, w, b, (stride, stride), (pad,) * 4, (1, 1), 1,
                                               act, "NCHW", cfg)
    else:
        kernelkit.conv2d(x, w, b, stride=stride, padding=pad, activation=act)  # tune first
        fn = lambda: kernelkit.conv2d(x, w, b, stride=stride, padding=pad, activation=act)
    ho = (hw + 2 * pad - r) // stride + 1
    _bench(benchmark, f"conv2d resnet50 {'bias-relu' if fused else 'plain'} {layer}", row, fn,
           2.0 * BATCH * k * ho * ho * c * r * r)


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("layer", CONV_MOBILENET_DW, ids=lambda l: f"c{l[0]}-{l[1]}px-s{l[2]}")
def test_mobilenet_depthwise(benchmark, layer, row):
    from kernelkit.kernels.numba import conv2d as numba_conv

    c, hw, stride = layer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, c, hw, hw), dtype=np.float32)
    w = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if row == "torch-cpu":
        fn = lambda: F.conv2d(xt, wt, None, stride, 1, 1, c)
    elif row == "numba-cpu":
        cfg = numba_conv.Conv2dConfig.default(np.dtype(np.float32))
        fn = lambda: numba_conv.conv2d_forward(x, w, None, (stride, stride), (1, 1, 1, 1), (1, 1),
                                               c, None, "NCHW", cfg)
    else:
        kernelkit.conv2d(x, w, stride=stride, padding=1, groups=c)
        fn = lambda: kernelkit.conv2d(x, w, stride=stride, padding=1, groups=c)
    ho = (hw + 2 - 3) // stride + 1
    _bench(benchmark, f"conv2d depthwise {layer}", row, fn, 2.0 * BATCH * c * ho * ho * 9)
