"""``_gemm.pack_b`` for row-major B: rows dealt out to the slivers (now) against sliver by
sliver (before, kept here as ``_pack_b_by_slivers``), alone and inside the packed product, next
to torch.mm, one thread, in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/pack_b_probe.py [--rounds 8]

Per shape (M x K x N, whole slivers: N a multiple of NR), GFLOP/s of ``_gemm_one``'s loop
(pack B, pack A, macro-kernels; 64-byte aligned panels) with either packer and of torch.mm,
then nanoseconds per element of packing all of B (K blocks of the default kc) with either
packer. Rows are timed in their steady state and interleaved (``_steady.py``); figures are each
row's fastest timed call (this VM's neighbours only ever add time; medians of the same rows moved
by up to 2x between runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402
from kernelkit.kernels.numba._gemm import _JIT, _U, macro_kernel, pack_a, pack_b, tile  # noqa: E402
from kernelkit.kernels.numba._workspace import aligned_empty  # noqa: E402
from kernelkit.kernels.numba.matmul import _cdiv  # noqa: E402

SHAPES = [(512, 4608, 384), (384, 4608, 512), (256, 2304, 192), (1024, 1024, 1024)]


@numba.njit(**_JIT)
def _pack_b_by_slivers(src, off, s_k, s_n, kb, nb, dst, doff, s0, s1):
    """The packer before: row-major B (s_n == 1), whole slivers only, one sliver at a time."""
    _, nr = tile(dst)
    for s in range(s0, s1):
        base = doff + s * nr * kb
        o0 = off + s * nr * s_n
        for p in range(kb):
            o = o0 + p * s_k
            d = base + p * nr
            for c in range(nr):
                dst[_U(d + c)] = src[_U(o + c)]


@numba.njit(nogil=True)
def _product(old, af, bf, m, n, k, c, mc, kc, nc, apack, bpack, ct, bias):
    _, nr = tile(c)
    for jc in range(0, n, nc):
        nb = min(nc, n - jc)
        for pc in range(0, k, kc):
            kb = min(kc, k - pc)
            if old:
                _pack_b_by_slivers(bf, pc * n + jc, n, 1, kb, nb, bpack, 0, 0, _cdiv(nb, nr))
            else:
                pack_b(bf, pc * n + jc, n, 1, kb, nb, bpack, 0, 0, _cdiv(nb, nr))
            for ic in range(0, m, mc):
                mb = min(mc, m - ic)
                pack_a(af, ic * k + pc, k, 1, mb, kb, apack, 0)
                macro_kernel(mb, nb, kb, apack, 0, bpack, 0, c, ic * n + jc, n,
                             pc == 0, pc + kb >= k, ct, 0, bias, False, 0, 0)


@numba.njit(nogil=True)
def _pack_all_b(old, bf, n, k, kc, bpack):
    _, nr = tile(bpack)
    for pc in range(0, k, kc):
        kb = min(kc, k - pc)
        if old:
            _pack_b_by_slivers(bf, pc * n, n, 1, kb, n, bpack, 0, 0, _cdiv(n, nr))
        else:
            pack_b(bf, pc * n, n, 1, kb, n, bpack, 0, 0, _cdiv(n, nr))


def _mins(fns, rounds: int) -> list[float]:
    return [min(ts) for ts in steady_times(fns, rounds, warm=0.02, reps=2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args()
    numba.set_num_threads(1)
    torch.set_num_threads(1)
    cfg = nm._default(np.dtype(np.float32))
    mr, nr = nm.tile_shape(np.float32)
    assert all(n % nr == 0 for _, _, n in SHAPES)  # the old packer took whole slivers only
    print(f"cpu: {devices.cpu_info()['model']}; 1 thread; default {cfg}")
    print("| M x K x N | product, B by slivers | product, B by rows | torch.mm | rows / slivers "
          "| pack B by slivers, ns/el | pack B by rows, ns/el |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        mb, kb, nb = nm._blocks.py_func(m, n, k, cfg.mc, cfg.kc, cfg.nc, mr, nr)
        apack, bpack = aligned_empty(mb * kb, np.float32), aligned_empty(nb * kb, np.float32)
        c0, c1 = np.empty(m * n, np.float32), np.empty(m * n, np.float32)
        ct, bias = np.empty(mr * nr, np.float32), np.zeros(0, np.float32)
        af, bf = a.reshape(-1), b.reshape(-1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        args_ = (af, bf, m, n, k)
        rows = [lambda: _product(True, *args_, c0, mb, kb, nb, apack, bpack, ct, bias),
                lambda: _product(False, *args_, c1, mb, kb, nb, apack, bpack, ct, bias),
                lambda: torch.mm(ta, tb)]
        rows[0](), rows[1]()
        assert np.array_equal(c0, c1)
        whole = aligned_empty(_cdiv(n, nr) * nr * kb, np.float32)
        packs = [lambda: _pack_all_b(True, bf, n, k, kb, whole),
                 lambda: _pack_all_b(False, bf, n, k, kb, whole)]
        t = _mins(rows + packs, args.rounds)
        flops = 2.0 * m * n * k
        g = [flops / x / 1e9 for x in t[:3]]
        print(f"| {m} x {k} x {n} | {g[0]:.0f} | {g[1]:.0f} | {g[2]:.0f} | {t[0] / t[1]:.2f}x | "
              f"{t[3] / (k * n) * 1e9:.2f} | {t[4] / (k * n) * 1e9:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
