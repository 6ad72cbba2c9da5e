"""What the Python callbacks of a launch cost: Numba conv2d forwards whose shares run on torch's
OpenMP team through their native trampolines (``_native``, the default) against the same calls
with every share a Python callback (``_pool.NATIVE_SHARES = False``), interleaved in one process,
beside torch's F.conv2d.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/native_launch_probe.py [--batch 1] [--dtype float32|bfloat16]
        [--layers 256,256,14,3,1 ...]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2). The call is the kernel's own
entry point on numpy data (``conv2d_forward``, the default config). Checks both ways write the
same output, then prints the medians of ``--rounds`` rounds of 20 calls each way, torch / ours
each way, and their geomeans.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from kernelkit import devices
from kernelkit.kernels.numba import _pool
from kernelkit.kernels.numba import conv2d as nconv

LAYERS = ["256,256,14,3,1", "512,512,7,3,1", "2048,512,7,1,1", "128,128,56,3,2",
          "256,256,28,3,2", "64,64,56,1,1", "1024,256,14,1,1", "64,64,56,3,1"]


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    if not _pool._team():
        print("torch's OpenMP runtime not found: nothing to compare")
        return 1
    dt = getattr(torch, args.dtype)
    print(f"cpu: {devices.cpu_info()['model']}; {args.dtype}, batch {args.batch}; ms, medians "
          f"of {args.rounds} rounds of 20 calls")
    print("| layer | Python callbacks | native | torch | torch / callbacks | torch / native |")
    print("| --- | --- | --- | --- | --- | --- |")
    ratios: dict = {"py": [], "native": []}
    for spec in args.layers:
        c, k, hw, r, st = (int(v) for v in spec.split(","))
        x = torch.randn(args.batch, c, hw, hw).to(dt)
        w = (torch.randn(k, c, r, r) * 0.05).to(dt)
        p = r // 2
        xb, wb = _bits(x), _bits(w)

        def ours(xb=xb, wb=wb, st=st, p=p):  # bfloat16 as its bits (uint16)
            return nconv.conv2d_forward(xb, wb, None, (st, st), (p, p, p, p), (1, 1), 1, None,
                                        "NCHW")

        outs = []
        for native in (False, True):
            _pool.NATIVE_SHARES = native
            outs.append(np.asarray(ours()).copy())
        if not np.array_equal(outs[0], outs[1]):
            print(f"| {spec} | outputs differ | | | | |")
            return 1
        times: dict = {"py": [], "native": [], "torch": []}
        for _ in range(args.rounds):
            for key in times:
                if key == "torch":
                    f = lambda x=x, w=w, p=p, st=st: F.conv2d(x, w, padding=p, stride=st)  # noqa: E731
                else:
                    _pool.NATIVE_SHARES = key == "native"
                    f = ours
                f()
                t0 = time.perf_counter()
                for _ in range(20):
                    f()
                times[key].append((time.perf_counter() - t0) / 20)
        _pool.NATIVE_SHARES = True
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        for key in ratios:
            ratios[key].append(med["torch"] / med[key])
        print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {med['py']:.3f} | {med['native']:.3f} | "
              f"{med['torch']:.3f} | {ratios['py'][-1]:.3f} | {ratios['native'][-1]:.3f} |",
              flush=True)
    gm = {key: math.exp(statistics.fmean(math.log(v) for v in vals)) for key, vals in ratios.items()}
    print(f"geomean torch / ours: callbacks {gm['py']:.3f}, native {gm['native']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
