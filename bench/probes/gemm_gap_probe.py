"""Where the Numba float32 GEMM loses to the vendor: the whole product against its macro-kernel
alone on pre-packed panels, with page faults per call, next to torch (MKL / oneDNN).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/gemm_gap_probe.py [--threads 1] [--rounds 6]

Rows per shape (M x K x N), GFLOP/s, medians of interleaved steady-state calls (``_steady.py``):
``matmul_forward`` with the default blocking (packing, threads, output allocation included);
the packing loops and macro-kernels of the whole product on one thread into buffers allocated
once (``_gemm_one``: the product without the launch, scratch and output allocation);
the macro-kernel alone, one thread, on panels packed once, over the A block and B panel the
default blocking gives a one-thread product (mc x kc by kc x min(nc, N)), i.e. the micro-kernel
with its cache blocking and nothing else; ``torch.mm``. Minor page faults per call of the whole
product are counted over its timed calls (fresh pages of packing scratch or of the output).
A macro-kernel row far above the product's is time lost outside the micro-kernel (packing,
cache misses across blocks, faults); a macro-kernel row near the vendor's says the kernel
itself is not what is slow. Last, ``pack_a`` alone on one A block, from row-major and from
column-major A, in nanoseconds per element.
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_medians  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402
from kernelkit.kernels.numba._gemm import macro_kernel, pack_a  # noqa: E402
from kernelkit.kernels.numba._workspace import aligned_empty  # noqa: E402
from kernelkit.kernels.numba.matmul import _gemm_one  # noqa: E402

SHAPES = [(240, 384, 392), (512, 4608, 392), (392, 4608, 512), (256, 2304, 196),
          (1024, 1024, 1024), (2048, 2048, 2048)]


@numba.njit(nogil=True)
def _packed_one(a, b, m, n, k, c, mc, kc, nc, apack, bpack, ct, bias):
    _gemm_one(a, 0, k, 1, b, 0, n, 1, m, n, k, bias, False, 0, 0, c, 0, n, mc, kc, nc, apack,
              bpack, ct)


@numba.njit(nogil=True)
def _macro(mb, nb, kb, ap, bp, c, ct, bias):
    macro_kernel(mb, nb, kb, ap, 0, bp, 0, c, 0, nb, True, False, ct, 0, bias, False, 0, 0)


@numba.njit(nogil=True)
def _pack_a(src, s_m, s_k, mb, kb, dst, reps):
    for _ in range(reps):
        pack_a(src, 0, s_m, s_k, mb, kb, dst, 0)


def _aligned(values: np.ndarray) -> np.ndarray:
    """A 64-byte aligned copy of 1-D float32 ``values``."""
    out = aligned_empty(values.size, np.float32)
    out[:] = values
    return out


def _faults(fn, calls: int) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="Numba's and torch's threads")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    cfg = nm._default(np.dtype(np.float32))
    mr, nr = nm.tile_shape(np.float32)
    print(f"cpu: {devices.cpu_info()['model']}; {args.threads} threads; default {cfg}")
    print("| M x K x N | matmul_forward | packing + macro-kernels (1 thread) | macro-kernel "
          "alone (1 thread) | torch.mm | faults / call |\n| --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((1, m, k), dtype=np.float32)
        b = rng.standard_normal((1, k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a[0]), torch.from_numpy(b[0])
        mb, kb, nb = nm._blocks.py_func(m, n, k, cfg.mc, cfg.kc, cfg.nc, mr, nr)  # clamped
        # 64-byte aligned, as the product's scratch: numpy's large arrays start 16 bytes into
        # a page, where vector loads split across cache lines and slow the macro-kernel
        apack = _aligned(rng.standard_normal(mb * kb, dtype=np.float32))
        bpack = _aligned(rng.standard_normal(nb * kb, dtype=np.float32))
        c = aligned_empty(mb * nb, np.float32)
        ct, bias = np.empty(mr * nr, np.float32), np.zeros(0, np.float32)
        af, bf, cf = a.reshape(-1), b.reshape(-1), np.empty(m * n, np.float32)
        rows = [lambda: nm.matmul_forward(a, b),
                lambda: _packed_one(af, bf, m, n, k, cf, mb, kb, nb, apack, bpack, ct, bias),
                lambda: _macro(mb, nb, kb, apack, bpack, c, ct, bias),
                lambda: torch.mm(ta, tb)]
        med = steady_medians(rows, args.rounds)
        flops = [2.0 * m * n * k, 2.0 * m * n * k, 2.0 * mb * nb * kb, 2.0 * m * n * k]
        faults = _faults(rows[0], 5)
        print(f"| {m} x {k} x {n} | " + " | ".join(f"{f / t / 1e9:.0f}" for f, t in
                                                  zip(flops, med, strict=True))
              + f" | {faults:.0f} |")
    # packing A alone: a 252 x 1024 block of a 512 x 4608 A stored by rows, and by columns
    mb, kb, reps = 252, 1024, 20
    src = rng.standard_normal(512 * 4608, dtype=np.float32)
    dst = np.empty(mb * kb, np.float32)
    layouts = {"row-major A": (4608, 1), "column-major A": (1, 512)}
    calls = [lambda s=s: _pack_a(src, *s, mb, kb, dst, reps) for s in layouts.values()]
    med = steady_medians(calls, args.rounds)
    print("\npack_a, one 252 x 1024 block: " + ", ".join(
        f"{name} {t / reps / (mb * kb) * 1e9:.2f} ns per element"
        for name, t in zip(layouts, med, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
