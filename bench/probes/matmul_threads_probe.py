"""The Numba matmul on one thread, on two through a Numba ``prange`` region, and on two through
kernelkit's Python thread pool (what it runs), in one run.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/matmul_threads_probe.py [--sizes 128 192 256 384 512 1024] [--rounds 5]

Square float32 products (and bfloat16 for the one-thread / pool rows), the default blocking,
direct calls of the jitted shares (no op layer), each row timed in its steady state, rows
interleaved (``_steady.py``), medians. The prange row is a ``parallel=True`` wrapper over the
same share function, on the threading layer kernelkit picks (``workqueue`` without TBB), as
the matmul launched it before it moved to the pool.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import numpy as np
from numba import prange

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import steady_medians  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import _pool  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402


@numba.njit(parallel=True)
def _prange(a3, b3, bias, has_bias, act, out3, mc, kc, nc, ws, share, nthr):
    for t in prange(nthr):
        nm._gemm_part(np.int64(t), nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc, ws,
                      share)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 192, 256, 384, 512, 1024])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    nthr = numba.get_num_threads()
    rng = np.random.default_rng(0)
    f32 = nm._compiled(np.dtype(np.float32))
    cfg = nm._default(np.dtype(np.float32))
    blocks = (cfg.mc, cfg.kc, cfg.nc)
    bf16 = nm._bf16_compiled() if nm._gemm.HAS_BF16_DOT else None
    _prange(*[np.zeros((1, 1, 1), np.float32)] * 2, np.zeros(0, np.float32), False, 0,
            np.zeros((1, 1, 1), np.float32), *blocks, np.zeros(64, np.float32), 64, 1)
    print(f"cpu: {devices.cpu_info()['model']}; {nthr} threads; layer after launch: "
          f"{numba.threading_layer()}")
    cols = ["float32 one thread", "float32 prange", "float32 pool"]
    if bf16 is not None:
        cols += ["bfloat16 one thread", "bfloat16 pool"]
    print("| n | " + " | ".join(cols) + " |\n|" + " --- |" * (len(cols) + 1))
    bias = np.zeros(0, np.float32)
    for n in args.sizes:
        a = rng.standard_normal((1, n, n), dtype=np.float32)
        b = rng.standard_normal((1, n, n), dtype=np.float32)
        out = np.empty((1, n, n), np.float32)
        common = (bias, False, 0, out)
        share = nm.pack_share(n, n, n, *blocks, np.float32)  # packed-panel scratch per share
        ws = np.empty(nthr * share, np.float32)
        blocks_ws = (*blocks, ws, share)
        fns = [lambda: f32.serial(0, 1, a, b, *common, *blocks_ws),
               lambda: _prange(a, b, *common, *blocks_ws, nthr),
               lambda: _pool.run(f32.serial, nthr, a, b, *common, *blocks_ws)]
        if bf16 is not None:
            au = (a.view(np.uint32) >> 16).astype(np.uint16)
            bu = (b.view(np.uint32) >> 16).astype(np.uint16)
            bblocks = (cfg.mc, 2 * cfg.kc, cfg.nc)
            bshare = nm.pack_share(n, n, n, *bblocks, np.uint32)
            bb = (*bblocks, np.empty(nthr * bshare, np.uint32), bshare)
            fns += [lambda: bf16(0, 1, au, bu, *common, *bb),
                    lambda: _pool.run(bf16, nthr, au, bu, *common, *bb)]
        med = steady_medians(fns, args.rounds)
        print(f"| {n} | " + " | ".join(f"{2 * n**3 / m / 1e9:.0f}" for m in med) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
