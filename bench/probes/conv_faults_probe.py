"""Page faults and time per call of one conv layer, alone and followed by torch's batch norm and
ReLU as in a ResNet block: the Numba conv, its output from numpy's allocator or (as the ops
layer launches it on torch tensors, ``threads.LOCAL.torch_data``) from torch's, against torch's
F.conv2d.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_faults_probe.py [--layer 64,64,56,1,1] [--batch 1] [--calls 50]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2), fp32 NCHW, 2 threads, no grad.
Faults: minor page faults per call after one untimed call (``_steady.faults_per_call``: a new
mapping faults on each 4 KiB page written, about 2 us each on these VMs); time: the median of
``--calls`` calls back to back.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import faults_per_call  # noqa: E402

from kernelkit import devices, threads  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="64,64,56,1,1")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--calls", type=int, default=50)
    args = ap.parse_args()
    torch.set_num_threads(2)
    c, k, hw, r, st = (int(v) for v in args.layer.split(","))
    p = r // 2
    x = torch.randn(args.batch, c, hw, hw)
    w = torch.randn(k, c, r, r) * 0.05
    bn = torch.nn.BatchNorm2d(k).eval()

    def ours():
        return nconv.conv2d_forward(x.numpy(), w.numpy(), None, (st, st), (p,) * 4, (1, 1), 1,
                                    None, "NCHW")

    def ours_torch():
        threads.LOCAL.torch_data = True
        try:
            return ours()
        finally:
            threads.LOCAL.torch_data = False

    def theirs():
        return F.conv2d(x, w, stride=st, padding=p)

    rows = [("numba conv, numpy's output", ours), ("numba conv, torch's output", ours_torch),
            ("torch conv", theirs),
            ("numba conv, numpy's output + bn + relu",
             lambda: torch.relu(bn(torch.from_numpy(ours())))),
            ("numba conv, torch's output + bn + relu",
             lambda: torch.relu(bn(torch.from_numpy(ours_torch())))),
            ("torch conv + bn + relu", lambda: torch.relu(bn(theirs())))]
    print(f"cpu: {devices.cpu_info()['model']}; {c}->{k} {hw}px {r}x{r} s{st}, batch "
          f"{args.batch}, torch {torch.__version__}")
    print("| row | faults / call | median ms |")
    print("| --- | --- | --- |")
    with torch.no_grad():
        for name, fn in rows:
            faults = faults_per_call(fn, 20)
            times = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            print(f"| {name} | {faults:.1f} | {statistics.median(times) * 1e3:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
