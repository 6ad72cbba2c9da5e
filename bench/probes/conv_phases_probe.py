"""Where a Numba conv2d forward's time goes: its packing phase against its convolution, each
launched apart and timed, beside the whole call and torch's F.conv2d.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/conv_phases_probe.py [--batch 8] [--dtype float32|bfloat16]
        [--layers 512,512,7,3,1 ...]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2). The forward is the kernel's own
entry point on numpy data (``conv2d_forward``, the default config), so nothing of the ops layer
is in it. "pack" is phase 0 (the weight's packing, the padded or exact-column copy of x), "conv"
phase 1, each one pool launch; "call" is a whole call, whose one launch runs both phases as
shares that meet at a barrier. Per layer, rounds of (call, torch) with the phases stamped inside
the call; medians over ``--rounds``. Prints GFLOP/s of the convolution phase, torch / call, and
the geometry's blocking (kc: channels per block, pm x pn: thread shares, exact: B packed over
exact output columns, inplace: the weight read where it lies).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from kernelkit import devices
from kernelkit.kernels.numba import _conv
from kernelkit.kernels.numba import conv2d as nconv

# ResNet-50's deep layers, where oneDNN leads most (C_in, C_out, H=W, kernel, stride)
LAYERS = ["512,512,7,3,1", "512,512,14,3,2", "256,256,14,3,1", "2048,512,7,1,1",
          "128,128,56,3,2", "64,64,56,1,1"]


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    dt = getattr(torch, args.dtype)
    stamps: dict = {}

    def launch(fn, tn, pack_tn, *a):  # nconv._launch, the phases apart and stamped
        t0 = time.perf_counter()
        if pack_tn > 0:
            nconv._run(fn, pack_tn, 0, *a, nconv._NO_SYNC)
        t1 = time.perf_counter()
        nconv._run(fn, tn, 1, *a, nconv._NO_SYNC)
        stamps.update(pack=t1 - t0, conv=time.perf_counter() - t1, geo=a[-1].copy())

    print(f"cpu: {devices.cpu_info()['model']}; {args.dtype}, batch {args.batch}, torch "
          f"{torch.__version__}; ms, medians of {args.rounds} rounds")
    print("| layer | call | pack | conv | conv GFLOP/s | torch | torch / call | kc | pm x pn "
          "| exact | inplace |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    real = nconv._launch
    try:
        for spec in args.layers:
            c, k, hw, r, st = (int(v) for v in spec.split(","))
            x = torch.randn(args.batch, c, hw, hw).to(dt)
            w = (torch.randn(k, c, r, r) * 0.05).to(dt)
            xn, wn, p = _bits(x), _bits(w), r // 2
            ours = lambda: nconv.conv2d_forward(xn, wn, None, (st, st), (p, p, p, p), (1, 1),
                                                1, None, "NCHW")
            theirs = lambda: F.conv2d(x, w, padding=p, stride=st)
            times: dict = {key: [] for key in ("call", "pack", "conv", "torch")}
            for _ in range(3):
                ours(), theirs()
            for _ in range(args.rounds):
                nconv._launch = real
                t0 = time.perf_counter()
                ours()
                times["call"].append(time.perf_counter() - t0)
                nconv._launch = launch
                stamps.clear()
                ours()
                if not stamps:  # the implicit GEMM: one launch, nothing packed apart
                    stamps.update(pack=0.0, conv=times["call"][-1], geo=None)
                times["pack"].append(stamps["pack"])
                times["conv"].append(stamps["conv"])
                t0 = time.perf_counter()
                theirs()
                times["torch"].append(time.perf_counter() - t0)
            med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
            ho = (hw + 2 * p - r) // st + 1
            gflop = 2 * args.batch * k * c * r * r * ho * ho / 1e9
            geo = stamps["geo"]
            if geo is None:
                print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {med['call']:.2f} | implicit GEMM, "
                      f"one phase | | | {med['torch']:.2f} | {med['torch'] / med['call']:.2f} "
                      "| | | | |", flush=True)
                continue
            print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {med['call']:.2f} | {med['pack']:.2f} | "
                  f"{med['conv']:.2f} | {gflop / med['conv'] * 1e3:.0f} | {med['torch']:.2f} | "
                  f"{med['torch'] / med['call']:.2f} | {geo[_conv.G_KC]} | "
                  f"{geo[_conv.G_PM]} x {geo[_conv.G_PN]} | {geo[_conv.G_PACKB]} | "
                  f"{geo[_conv.G_AINPL]} |", flush=True)
    finally:
        nconv._launch = real
    return 0


if __name__ == "__main__":
    sys.exit(main())
