"""What dispatch costs on a cache hit: kernelkit.matmul vs the chosen kernel's launcher, 64x64 fp32.

The two are timed interleaved, in blocks, in the same process, and the overhead is the median of
the per-block differences. The issue's bar is at most 10 us.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import kernelkit
from kernelkit import core as registry
from kernelkit.ops import matmul as matmul_op


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def test_dispatch_overhead_64(benchmark):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64), dtype=np.float32)
    b = rng.standard_normal((64, 64), dtype=np.float32)
    kernelkit.matmul(a, b)  # tune and cache this bucket
    choice = kernelkit.explain("matmul", a, b).choice
    cand = registry.get("matmul", choice.candidate)
    call = matmul_op.prepare(a, b)
    launcher = cand.launcher(call.problem, choice.config)
    a3, b3 = a[None], b[None]
    direct = lambda: launcher(a3, b3, None)
    dispatched = lambda: kernelkit.matmul(a, b)
    np.testing.assert_array_equal(direct()[0], dispatched())

    diffs, directs = [], []
    for _ in range(30):
        d = _per_call(direct, 300)
        k = _per_call(dispatched, 300)
        diffs.append(k - d)
        directs.append(d)
    overhead_us = statistics.median(diffs) * 1e6
    benchmark.group = "dispatch overhead, 64x64 fp32, cache hit"
    benchmark.extra_info.update(candidate=choice.candidate, overhead_us=overhead_us,
                                direct_us=statistics.median(directs) * 1e6)
    benchmark.pedantic(dispatched, rounds=200, iterations=20, warmup_rounds=1)
    print(f"\ndispatch overhead on a cache hit: {overhead_us:.2f} us over calling "
          f"{choice.candidate}'s launcher directly ({statistics.median(directs) * 1e6:.2f} us)")
