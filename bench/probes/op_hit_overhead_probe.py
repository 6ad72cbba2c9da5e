"""What `kernelkit.conv2d` and `kernelkit.matmul` on torch tensors add over torch's own call on a
cache hit where the tuner chose torch's candidate: a 1x8x8x8 3x3 conv (padding 1) against
`F.conv2d` (called positionally, and as kernelkit's call is written, with `padding=1`), a
1x64 @ 64x64 product against `torch.matmul`. One thread; after the compile jobs
finished; 9 rounds of 3000 calls each way, kernelkit's loop then torch's; the median of the
per-round differences, in microseconds.

    KERNELKIT_CACHE_DIR=$(mktemp -d) flock /tmp/kk-bench.lock \\
        python bench/probes/op_hit_overhead_probe.py

Before/after a change: run it in a worktree of the older commit (PYTHONPATH set to it),
alternated with this checkout.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

import kernelkit
from kernelkit import compiling


def _over(ours, theirs, calls: int = 3000, rounds: int = 9) -> float:
    diffs = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            ours()
        t1 = time.perf_counter()
        for _ in range(calls):
            theirs()
        t2 = time.perf_counter()
        diffs.append(((t1 - t0) - (t2 - t1)) / calls * 1e6)
    return statistics.median(diffs)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x, w = torch.randn(1, 8, 8, 8), torch.randn(8, 8, 3, 3)
    a, b = torch.randn(1, 64), torch.randn(64, 64)
    with kernelkit.use(tune="measure"):  # (queues the compile jobs; memos apart from the default's)
        kernelkit.conv2d(x, w, padding=1)
        kernelkit.matmul(a, b)
    compiling.wait()
    # explain measures both sizes and caches the choices first, so the loops below run the
    # plan of a cache hit (before, they ran the cost model's interim plan, which counts its
    # calls down to a re-decision: about 0.2 us more a call)
    chosen = [str(kernelkit.explain(*args, **kw)).splitlines()[-1]
              for args, kw in ((("conv2d", x, w), {"padding": 1}), (("matmul", a, b), {}))]
    for _ in range(1000):
        kernelkit.conv2d(x, w, padding=1)
        kernelkit.matmul(a, b)
    conv = _over(lambda: kernelkit.conv2d(x, w, padding=1), lambda: F.conv2d(x, w, None, 1, 1))
    # (the same call written the same way: torch's parser takes a keyword about 0.2 us slower)
    conv_kw = _over(lambda: kernelkit.conv2d(x, w, padding=1), lambda: F.conv2d(x, w, padding=1))
    mm = _over(lambda: kernelkit.matmul(a, b), lambda: torch.matmul(a, b))
    print(f"over torch's own call: conv2d {conv:.2f} us ({chosen[0]}; {conv_kw:.2f} us over "
          f"F.conv2d(x, w, padding=1)), matmul {mm:.2f} us ({chosen[1]})")


if __name__ == "__main__":
    main()
