"""What `kernelkit.conv2d` and `kernelkit.matmul` add over their memoised plan on a cache hit,
for torch tensors, measured as a user's loop meets it: each call right after the other rows'
kernels ran (so Python's caches are as cold as between a model's layers), not in a tight loop
of the same statement, whose warm caches make each check look 2-4x cheaper.

    KERNELKIT_CACHE_DIR=/tmp/kk-probe PYTHONPATH=<checkout> \\
        python bench/probes/op_hit_overhead.py float32|bfloat16 [LABEL]

Numba forced (`kernelkit.use(backend="numba")`), 2 threads; a 1 x 8 x 8 x 8 3x3 conv and a
16 x 16 x 16 product, each called 300 times first (tuned, compiled, memoised). Then 20000
rounds, each calling the conv op, the conv's plan, the matmul op and the matmul's plan once
(timed one call at a time, perf_counter_ns); prints the 10th, 50th and 90th percentiles. The
op's cost is the op row minus its plan row. Run nothing else meanwhile.
"""

from __future__ import annotations

import sys
import time

import torch

import kernelkit
from kernelkit.ops import conv2d as C
from kernelkit.ops import matmul as M
from kernelkit.ops.dispatch import signature3


def main() -> int:
    dtype = getattr(torch, sys.argv[1] if len(sys.argv) > 1 else "float32")
    label = sys.argv[2] if len(sys.argv) > 2 else ""
    torch.set_num_threads(2)
    x, w = torch.randn(1, 8, 8, 8).to(dtype), torch.randn(8, 8, 3, 3).to(dtype)
    a, b = torch.randn(16, 16).to(dtype), torch.randn(16, 16).to(dtype)
    with kernelkit.use(backend="numba"):
        for _ in range(300):
            kernelkit.conv2d(x, w, padding=1)
            kernelkit.matmul(a, b)
        conv_plan = C._FORWARD[signature3(x, w, None, (1, 1, 1, 1, None, None, False))]
        matmul_plan = M._PLANS[signature3(a, b, None, (None, False))]
        rows = {"conv2d op": lambda: kernelkit.conv2d(x, w, padding=1),
                "conv2d plan": lambda: conv_plan(x, w, None),
                "matmul op": lambda: kernelkit.matmul(a, b),
                "matmul plan": lambda: matmul_plan(a, b, None)}
        times: dict[str, list[int]] = {k: [] for k in rows}
        clock = time.perf_counter_ns
        for _ in range(20000):
            for name, fn in rows.items():
                t0 = clock()
                fn()
                times[name].append(clock() - t0)
    for name, ts in times.items():
        ts.sort()
        p10, p50, p90 = (ts[len(ts) * q // 10] / 1e3 for q in (1, 5, 9))
        print(f"{label} {sys.argv[1] if len(sys.argv) > 1 else 'float32'} {name:12s} "
              f"p10 {p10:6.1f} p50 {p50:6.1f} p90 {p90:6.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
