"""The bfloat16 conv's padded copy of x alone: its packing phase with the weight kept packed
(``frozen_weights``), against its convolution phase, per ResNet-50 3x3 layer at batch 1.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/pairs_copy_probe.py [--batch 1] [--layers 512,7,1 ...]

A layer is C,H=W,stride (K = C, 3x3, padding 1). Each layer runs a few calls through
``kernelkit.conv2d`` on torch tensors inside ``frozen_weights()`` (the weight then packed once),
and the last call's launch arguments are kept; "copy" is its phase 0 alone (the pair-interleaved
zero-padded copy of x: nothing else is left to pack), "conv" its phase 1, each launched apart
on the threads the call gave it, rows alternated, medians over ``--rounds``. To compare two
commits, run it in a checkout of each, alternating the runs: the copy's time moves between
processes (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import kernelkit
from kernelkit import devices
from kernelkit.kernels.numba import _conv
from kernelkit.kernels.numba import conv2d as nconv

LAYERS = ["512,7,1", "512,14,2", "256,14,1", "256,28,2", "128,28,1", "128,56,2", "64,56,1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    launches = []
    real = nconv._launch

    def keep_args(fn, tn, pack_tn, *a):
        launches.append((fn, tn, pack_tn, a))
        return real(fn, tn, pack_tn, *a)

    nconv._launch = keep_args
    print(f"cpu: {devices.cpu_info()['model']}")
    print("| layer | copy threads | copy (ms) | conv (ms) |")
    print("| --- | --- | --- | --- |")
    for spec in args.layers:
        c, h, st = (int(v) for v in spec.split(","))
        x = torch.randn(args.batch, c, h, h).bfloat16()
        w = (torch.randn(c, c, 3, 3) * 0.05).bfloat16()
        with kernelkit.frozen_weights(), kernelkit.use(backend="numba"):
            for _ in range(5):
                kernelkit.conv2d(x, w, stride=st, padding=1)
        fn, tn, pack_tn, a = launches[-1]
        if a[-1][_conv.G_WPACKED] != 1:
            raise SystemExit(f"{spec}: the weight was not kept packed")
        rows = {"copy": lambda: nconv._run(fn, pack_tn, 0, *a, nconv._NO_SYNC),
                "conv": lambda: nconv._run(fn, tn, 1, *a, nconv._NO_SYNC)}
        times = {k: [] for k in rows}
        for _ in range(args.rounds):
            for k, f in rows.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"| {c} ch {h} px stride {st} | {pack_tn} | {med['copy']:.3f} | {med['conv']:.3f} |")


if __name__ == "__main__":
    main()
