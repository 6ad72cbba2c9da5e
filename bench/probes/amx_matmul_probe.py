"""The bfloat16 GEMM on AMX tiles (``kernels/numba/_amx.py``): the tile unit's own rate, then
the kernel's configs against torch's bfloat16 matmul and the VDPBF16PS path, calls interleaved.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/amx_matmul_probe.py [--sizes 512 1024 2048] [--rounds 7]

Part 1 (``peak``): TDPBF16PS on tiles already loaded (4 independent accumulators), on one
thread and on two at once (best of three runs); then with four 1 KiB tile loads per four products from a small
buffer in L1, written and 64-byte aligned, and from one never written (the kernel's page of
zeros). Part 2: each size's rows (torch, the VDPBF16PS GEMM's default, the amx configs the
tuner races) called directly (no op layer, no tuning), each round in turn, medians of
``--rounds`` rounds of a few calls. Needs a CPU with AMX-BF16 (and Linux's permission).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import _amx  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402
from kernelkit.kernels.numba._amx import (  # noqa: E402
    _ldtilecfg,
    _tdpbf16ps,
    _tileload,
    _tilerelease,
    _tilezero,
)

_PRODUCT_FLOPS = 16 * 16 * 32 * 2  # one TDPBF16PS


@numba.njit(nogil=True)
def _products(cfg, buf, iters, load):
    """``iters`` x 4 TDPBF16PS; with ``load``, four tile loads from ``buf`` per four."""
    _ldtilecfg(cfg.ctypes.data)
    p = buf.ctypes.data
    _tilezero(0)
    _tilezero(1)
    _tilezero(2)
    _tilezero(3)
    _tileload(4, p, 64)
    _tileload(5, p + 1024, 64)
    _tileload(6, p + 2048, 64)
    _tileload(7, p + 3072, 64)
    for _ in range(iters):
        if load:
            _tileload(4, p, 64)
            _tileload(6, p + 2048, 64)
        _tdpbf16ps(0, 4, 6)
        if load:
            _tileload(7, p + 3072, 64)
        _tdpbf16ps(1, 4, 7)
        if load:
            _tileload(5, p + 1024, 64)
        _tdpbf16ps(2, 5, 6)
        _tdpbf16ps(3, 5, 7)
    _tilerelease()


def _rate(buf: np.ndarray, load: bool, threads: int, iters: int = 1_000_000) -> float:
    """The best of three runs of about 30 ms (the first AMX instructions after a pause run
    slower while the core changes its power state)."""
    cfg = _amx.tile_config()
    _products(cfg, buf, 10, load)
    best = 0.0
    for _ in range(3):
        runs = [threading.Thread(target=_products, args=(cfg, buf, iters, load))
                for _ in range(threads)]
        t0 = time.perf_counter()
        for r in runs:
            r.start()
        for r in runs:
            r.join()
        best = max(best, threads * iters * 4 * _PRODUCT_FLOPS / (time.perf_counter() - t0) / 1e9)
    return best


def peak() -> None:
    raw = np.ones(1 << 17, np.uint8)
    skip = -raw.ctypes.data % 4096
    written = raw[skip:skip + (1 << 16)]
    untouched = np.zeros(1 << 16, np.uint8)  # calloc'd: the kernel's zero page until written
    print("| TDPBF16PS | GFLOP/s |\n| --- | --- |")
    print(f"| tiles loaded once, 1 thread | {_rate(written, False, 1):.0f} |")
    print(f"| tiles loaded once, 2 threads (total) | {_rate(written, False, 2):.0f} |")
    print(f"| 4 loads per 4 products, L1, written, aligned, 1 thread | {_rate(written, True, 1):.0f} |")
    print(f"| 4 loads per 4 products, never-written buffer, 1 thread | "
          f"{_rate(untouched, True, 1):.0f} |")


def configs(sizes: list[int], rounds: int) -> None:
    torch.set_num_threads(2)
    for n in sizes:
        g = torch.Generator().manual_seed(n)
        ta, tb = torch.randn(n, n, generator=g).bfloat16(), torch.randn(n, n, generator=g).bfloat16()
        a = ta.view(torch.int16).numpy().view(np.uint16)[None]
        b = tb.view(torch.int16).numpy().view(np.uint16)[None]
        rows = {"torch": lambda: torch.matmul(ta, tb),
                "VDPBF16PS": lambda: nm._matmul_bf16(a, b, None, 0, None)}
        for cfg in nm.amx_configs(n):
            rows[f"amx {cfg.mc}/{cfg.kc}/{cfg.nc}"] = (
                lambda cfg=cfg: nm._matmul_bf16(a, b, None, 0, cfg))
        ref = ta.double() @ tb.double()
        for name, fn in rows.items():  # compiled, warm, and right
            out = fn()
            if isinstance(out, np.ndarray):  # float32, or bfloat16 bits (the amx configs)
                out = torch.from_numpy(out[0].copy())
                out = out.view(torch.bfloat16) if out.dtype == torch.uint16 else out
            out = out.double()
            assert (out - ref).abs().max() < 0.05 * n ** 0.5, name
        reps = max(2, int(2e9 / n**3))
        times: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(rounds):
            for name, fn in rows.items():
                fn()
                t0 = time.perf_counter()
                for _ in range(reps):
                    fn()
                times[name].append((time.perf_counter() - t0) / reps)
        gf = {k: 2 * n**3 / float(np.median(v)) / 1e9 for k, v in times.items()}
        cells = "  ".join(f"{k} {v:.0f}" for k, v in gf.items())
        best = max(v for k, v in gf.items() if k.startswith("amx"))
        print(f"| {n} | {cells} | best amx / torch {best / gf['torch']:.2f}x |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if not _amx.available():
        print("no AMX-BF16 here (or Linux refused the tile data): nothing to measure")
        return 1
    print(f"cpu: {devices.cpu_info()['model']}; torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}); 2 threads")
    peak()
    print("\n| n | GFLOP/s (2 threads, direct calls, interleaved) | |\n| --- | --- | --- |")
    configs(args.sizes, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
