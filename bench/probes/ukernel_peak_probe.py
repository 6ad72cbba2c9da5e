"""The float32 micro-kernel's own peak: ``_gemm.ukernel`` called in a loop on L1-resident
slivers, on one core and on every core at once, for the register tile in use or ``--tile``.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/ukernel_peak_probe.py [--tile 24x16] [--kc 128] [--dtype bfloat16]

``--dtype bfloat16``: the bfloat16-pairs micro-kernel (VDPBF16PS, AVX-512 BF16 only; ``kc``
pairs deep, each K pair two multiply-adds a lane), beside torch's own bfloat16 and float32
2048^3 matmuls on as many threads: what oneDNN reaches on this CPU.

What no kernel built on the micro-kernel can beat on this CPU: a conv or GEMM that reaches it
loses nothing to packing, blocking or memory. ``--tile`` sets ``_gemm.TILE["float32"]`` before
anything compiles (a probe of the tile choice only: the real kernels' packed layouts follow the
tile in use); one tile per process, since Numba keeps the micro-kernel compiled for the first
tile it typed. Prints GFLOP/s, the best of five timed runs of ``--reps`` calls each.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from kernelkit import devices
from kernelkit.kernels.numba import _gemm


def _operands(bf16: bool, nthr: int, mr: int, nr: int, kc: int):
    """A, B, C slivers per thread: float32, or bfloat16 pairs (uint32 words of two finite
    bfloat16 values, 0.5-1 in magnitude) into float32."""
    rng = np.random.default_rng(0)
    if bf16:
        def words(n):
            return rng.integers(0, 1 << 31, n, dtype=np.uint32) & np.uint32(0x3F7F3F7F)
        a, b = words(nthr * mr * kc), words(nthr * kc * nr)
    else:
        a = rng.random(nthr * mr * kc, dtype=np.float32)
        b = rng.random(nthr * kc * nr, dtype=np.float32)
    return a, b, np.zeros(nthr * mr * nr, np.float32)


def _torch_rates(nthr: int) -> str:
    import torch

    torch.set_num_threads(nthr)
    out = []
    for dt in (torch.bfloat16, torch.float32):
        x, y = torch.randn(2048, 2048).to(dt), torch.randn(2048, 2048).to(dt)
        for _ in range(3):
            x @ y
        best = 0.0
        for _ in range(5):
            t0 = time.perf_counter()
            x @ y
            best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t0) / 1e9)
        out.append(f"{str(dt).split('.')[1]} {best:.1f}")
    return f"torch 2048^3 matmul, {nthr} thread{'s' if nthr > 1 else ''}: " + ", ".join(out) \
        + " GFLOP/s"


def _runner(mr: int, nr: int, nthr: int):
    ukernel, jit = _gemm.ukernel, {k: v for k, v in _gemm._JIT.items() if k != "cache"}

    @numba.njit(parallel=nthr > 1, **jit)
    def run(reps, kc, a, b, c):
        for t in numba.prange(nthr):
            for _ in range(reps):
                ukernel(kc, a, t * mr * kc, b, t * kc * nr, c, t * mr * nr, nr, 1)

    return run


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", help="MRxNR instead of the tile in use")
    p.add_argument("--kc", type=int, default=128)
    p.add_argument("--reps", type=int, default=20000)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()
    bf16 = args.dtype == "bfloat16"
    if bf16 and not _gemm.HAS_BF16_DOT:
        raise SystemExit("bfloat16: this CPU (or LLVM) has no AVX-512 BF16")
    cores = numba.config.NUMBA_NUM_THREADS
    numba.set_num_threads(cores)
    print(f"{devices.cpu_info()['model']}, {args.dtype}, kc {args.kc}, {cores} cores")
    if args.tile:
        _gemm.TILE["float32"] = tuple(int(v) for v in args.tile.split("x"))
        _gemm.TILE["uint32"] = _gemm.TILE["float32"]
        _gemm._TILE_OF.clear()
    flops_per_k = 4 if bf16 else 2  # (a bfloat16 K step is a pair)
    for mr, nr in [_gemm.TILE["float32"]]:
        row = []
        for nthr in sorted({1, cores}):
            run = _runner(mr, nr, nthr)
            a, b, c = _operands(bf16, nthr, mr, nr, args.kc)
            run(10, args.kc, a, b, c)  # compiles
            best = 0.0
            for _ in range(5):
                t0 = time.perf_counter()
                run(args.reps, args.kc, a, b, c)
                dt = time.perf_counter() - t0
                best = max(best, flops_per_k * mr * nr * args.kc * args.reps * nthr / dt / 1e9)
            row.append(f"{nthr} core{'s' if nthr > 1 else ''} {best:6.1f} GFLOP/s")
        print(f"tile {mr}x{nr}: " + ", ".join(row), flush=True)
    if bf16:
        for nthr in sorted({1, cores}):
            print(_torch_rates(nthr), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
