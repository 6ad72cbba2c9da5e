"""What dispatch costs on a cache hit: the op against the chosen kernel's launcher.

Cases: matmul 64x64 fp32 and conv2d 1x8x8x8 3x3 (padding 1) fp32, each on numpy arrays and on
torch tensors. The launcher is the chosen candidate's (``cand.launcher``, thread guard included)
called on the arrays the op hands it (numpy for a Numba or numpy candidate, tensors for torch's),
so a torch row on a Numba kernel includes the zero-copy views into numpy and back. The two are
timed interleaved, in blocks, in the same process, and the overhead is the median of the
per-block differences. The issue's bar (numpy, matmul) is at most
10 us; the conv op's target is the matmul op's.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

import kernelkit
from kernelkit import core as registry
from kernelkit.ops import conv2d as conv2d_op
from kernelkit.ops import matmul as matmul_op


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _matmul_case(rng):
    a = rng.standard_normal((64, 64), dtype=np.float32)
    b = rng.standard_normal((64, 64), dtype=np.float32)
    # the launcher takes the batched (1, M, K) views the op makes of 2-D operands
    return (a, b), (a[None], b[None], None), kernelkit.matmul, matmul_op.prepare, {}, \
        lambda out: out[0]


def _conv2d_case(rng):
    x = rng.standard_normal((1, 8, 8, 8), dtype=np.float32)
    w = rng.standard_normal((8, 8, 3, 3), dtype=np.float32)
    return (x, w), (x, w, None), kernelkit.conv2d, conv2d_op.prepare_forward, {"padding": 1}, \
        lambda out: out


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("case", [_matmul_case, _conv2d_case], ids=["matmul", "conv2d"])
def test_dispatch_overhead(benchmark, case, lib):
    (a, b), native, op, prepare, kw, unbatch = case(np.random.default_rng(0))
    if lib == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
    op(a, b, **kw)  # tune and cache this bucket
    call = prepare(a, b, **kw)
    op_name = call.problem.op
    choice = kernelkit.explain(op_name, a, b, **kw).choice
    cand = registry.get(op_name, choice.candidate)
    if cand.native == "torch":  # torch's own op won: its launcher takes the tensors
        native = tuple(None if v is None else torch.from_numpy(v) for v in native)
    elif cand.native != "numpy":
        pytest.skip(f"{op_name} chose {choice.candidate}, whose launcher takes {cand.native}")
    launcher = cand.launcher(call.problem, choice.config)
    direct = lambda: launcher(*native)  # noqa: E731
    dispatched = lambda: op(a, b, **kw)  # noqa: E731
    np.testing.assert_array_equal(unbatch(direct()), np.asarray(dispatched()))

    diffs, directs = [], []
    for _ in range(30):
        d = _per_call(direct, 300)
        k = _per_call(dispatched, 300)
        diffs.append(k - d)
        directs.append(d)
    overhead_us = statistics.median(diffs) * 1e6
    benchmark.group = f"dispatch overhead, {op_name} on {lib}, cache hit"
    benchmark.extra_info.update(op=op_name, lib=lib, candidate=choice.candidate,
                                overhead_us=overhead_us,
                                direct_us=statistics.median(directs) * 1e6)
    benchmark.pedantic(dispatched, rounds=200, iterations=20, warmup_rounds=1)
    print(f"\n{op_name} on {lib}: dispatch overhead on a cache hit {overhead_us:.2f} us over "
          f"calling {choice.candidate}'s launcher directly "
          f"({statistics.median(directs) * 1e6:.2f} us)")
