"""Depthwise conv on one thread against all threads, per MobileNetV2 layer and batch, with torch.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/dw_threads_probe.py [--batches 1 2 8] [--threads 2]

What `conv2d.DW_PARALLEL_MACS` and `DW_PARALLEL_INPUT` were read from: for each layer of
tests/reference.CONV_MOBILENET_DW (3x3, pad 1, NCHW float32), the Numba depthwise kernel forced
onto one thread (``one``) and onto all (``all``), and torch's F.conv2d with the same thread
count, interleaved in their steady states (``_steady.py``); medians in microseconds, with the
layer's multiply-adds and input elements, and which way the kernel takes by default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_MOBILENET_DW  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

import kernelkit.kernels.numba.conv2d as nc  # noqa: E402


def _forced(x, w, stride, groups, serial: bool):
    """The kernel with the depthwise thread rule forced one way."""
    def run():
        saved = nc.DW_PARALLEL_MACS, nc.DW_PARALLEL_INPUT
        nc.DW_PARALLEL_MACS = nc.DW_PARALLEL_INPUT = (1 << 62) if serial else 0
        try:
            return nc.conv2d_forward(x, w, None, (stride, stride), (1, 1, 1, 1), (1, 1), groups,
                                     None, "NCHW")
        finally:
            nc.DW_PARALLEL_MACS, nc.DW_PARALLEL_INPUT = saved
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 8])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(f"threads {args.threads}, torch {torch.__version__}; medians in us")
    print(f"{'batch':>5} {'C':>4} {'px':>4} {'s':>2} {'MACs':>10} {'inputs':>9} {'one':>8} "
          f"{'all':>8} {'torch':>8}  default")
    for nb in args.batches:
        for c, hw, s in CONV_MOBILENET_DW:
            xt, wt = torch.randn(nb, c, hw, hw), torch.randn(c, 1, 3, 3)
            x, w = xt.numpy(), wt.numpy()
            ref = lambda xt=xt, wt=wt, s=s, c=c: torch.nn.functional.conv2d(xt, wt, None, s, 1,
                                                                           1, c)
            times = steady_times([_forced(x, w, s, c, True), _forced(x, w, s, c, False), ref],
                                 args.blocks, 0.03, args.reps)
            one, all_, tt = (statistics.median(t) * 1e6 for t in times)
            ho = (hw - 1) // s + 1
            macs, inputs = nb * c * ho * ho * 9, nb * c * hw * hw
            big = macs >= nc.DW_PARALLEL_MACS or inputs >= nc.DW_PARALLEL_INPUT
            print(f"{nb:>5} {c:>4} {hw:>4} {s:>2} {macs:>10} {inputs:>9} {one:8.1f} {all_:8.1f} "
                  f"{tt:8.1f}  {'all' if big else 'one'}")


if __name__ == "__main__":
    main()
