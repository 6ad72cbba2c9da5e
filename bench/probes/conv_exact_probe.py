"""The shifted GEMM over exact output columns across a batch (``_conv._shift_exact_unit``)
against its per-image grid, next to torch (oneDNN), in one process; and each forward's packing
phase alone.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/conv_exact_probe.py [--batch 8] [--rounds 6] [--dtype float32] [--pack]

Rows per layer (the ResNet-50 layers whose outputs are 7x7 or 14x14: tests/reference
.CONV_RESNET50), NCHW, no bias, config "auto": the per-image grid (SHIFT_EXACT_WASTE made
huge), what runs now (exact columns where the grids waste 20% of the slivers or more), torch's
F.conv2d. ``--dtype bfloat16`` runs the AVX-512 BF16 pairs against torch's bfloat16 conv. Rows
are timed in their steady state and interleaved, each round starting at the next row
(``_steady.py``); the table gives torch / ours from the fastest timed call of each row (this
VM's neighbours only ever add time) and, in brackets, from the medians. ``--pack``: also the
packing phase of what runs now, launched alone (weight, and the padded copy or the exact
columns' B), timeit minimum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

import numba
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.arrays import torch_to_numpy  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402


def _pack_ms(call) -> float:
    """The packing phase of ``call``'s launch, alone: timeit minimum, ms (0 when none)."""
    seen = []
    real = nconv._launch
    nconv._launch = lambda fn, tn, ptn, *a: seen.append((fn, ptn, a)) or real(fn, tn, ptn, *a)
    try:
        call()
    finally:
        nconv._launch = real
    fn, ptn, args = seen[-1]
    if ptn == 0:
        return 0.0
    t = timeit.repeat(lambda: nconv._run(fn, ptn, 0, *args, nconv._NO_SYNC), number=5, repeat=7)
    return min(t) / 5 * 1e3


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--pack", action="store_true", help="time the packing phase alone too")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    print(f"{devices.cpu_info()['model']}, batch {args.batch}, {args.dtype}, "
          f"{args.threads} threads, torch {torch.__version__}")
    print(f"{'C_in':>5} {'C_out':>5} {'HW':>3} k s {'grid ms':>8} {'exact ms':>8} {'torch ms':>8}"
          f"  t/grid  t/now" + ("   pack grid / now ms" if args.pack else ""))
    gen = torch.Generator().manual_seed(0)
    tdt = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    for c, k, hw, r, st, pad in CONV_RESNET50:
        ho = (hw + 2 * pad - r) // st + 1
        if ho > 14:
            continue
        xt = torch.randn(args.batch, c, hw, hw, generator=gen).to(tdt)
        wt = torch.randn(k, c, r, r, generator=gen).to(tdt)
        x, w = torch_to_numpy(xt), torch_to_numpy(wt)

        def ours(waste, x=x, w=w, st=st, pad=pad):
            nconv.SHIFT_EXACT_WASTE = waste
            return nconv.conv2d_forward(x, w, None, (st, st), (pad,) * 4, (1, 1), 1, None,
                                        "NCHW")

        default = nconv.SHIFT_EXACT_WASTE
        rows = [lambda: ours(float("inf")), lambda: ours(default),
                lambda xt=xt, wt=wt, st=st, pad=pad: F.conv2d(xt, wt, stride=st, padding=pad)]
        times = steady_times(rows, args.rounds, 0.05, 3)
        nconv.SHIFT_EXACT_WASTE = default
        mins = [min(t) * 1e3 for t in times]
        meds = [statistics.median(t) * 1e3 for t in times]
        line = (f"{c:5d} {k:5d} {hw:3d} {r} {st} {mins[0]:8.2f} {mins[1]:8.2f} {mins[2]:8.2f}"
                f"  {mins[2] / mins[0]:.2f} ({meds[2] / meds[0]:.2f})"
                f" {mins[2] / mins[1]:.2f} ({meds[2] / meds[1]:.2f})")
        if args.pack:
            line += f"   {_pack_ms(rows[0]):.3f} / {_pack_ms(rows[1]):.3f}"
            nconv.SHIFT_EXACT_WASTE = default
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
