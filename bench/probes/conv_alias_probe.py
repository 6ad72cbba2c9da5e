"""The shifted GEMM's weight rows read through a copy of each sliver (``SHIFT_INPLACE_COPY``)
against the rule before it, in one process, beside torch's F.conv2d.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_alias_probe.py [--batch 1] [--rounds 21] [--layers 2048,512,7,1,1 ...]
        [--copy-all]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2), fp32 NCHW, no bias, 2 threads.
"old" is ``conv2d_forward`` with ``SHIFT_INPLACE_COPY`` off (rows 4 KiB apart read where they
lie over up to two column slivers, else the packed weight), "new" with it on; the module's
geometry memo is keyed by the knob, so both run their own geometry. ``--copy-all``: "new" copies
the rows of every layer read in place (``SHIFT_ALIAS_BYTES`` set to the item size), not only
rows a multiple of 4 KiB apart. Both are checked against a float64 torch reference first. Each
round calls the three rows in a rotated order, each once untimed and then twice timed; medians
over rounds.
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
from kernelkit.kernels.numba import conv2d as nconv

# ResNet-50's 1x1 layers whose weight rows lie 4 or 8 KiB apart, and one that does not
LAYERS = ["2048,512,7,1,1", "1024,2048,14,1,2", "1024,256,14,1,1", "1024,512,14,1,1",
          "512,2048,7,1,1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    ap.add_argument("--copy-all", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"cpu: {devices.cpu_info()['model']}; batch {args.batch}, torch {torch.__version__}; "
          f"ms, medians of {args.rounds} rounds")
    print("| layer | old | new | torch | old / new | torch / old | torch / new |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    alias = nconv.SHIFT_ALIAS_BYTES
    try:
        for spec in args.layers:
            c, k, hw, r, st = (int(v) for v in spec.split(","))
            x = torch.randn(args.batch, c, hw, hw)
            w = torch.randn(k, c, r, r) * 0.05
            xn, wn, p = x.numpy(), w.numpy(), r // 2
            ref = F.conv2d(x.double(), w.double(), padding=p, stride=st).numpy()

            def ours(copy: bool):
                def call():
                    nconv.SHIFT_INPLACE_COPY = copy
                    nconv.SHIFT_ALIAS_BYTES = xn.itemsize if copy and args.copy_all else alias
                    return nconv.conv2d_forward(xn, wn, None, (st, st), (p,) * 4, (1, 1), 1,
                                                None, "NCHW")
                return call

            rows = {"old": ours(False), "new": ours(True),
                    "torch": lambda: F.conv2d(x, w, padding=p, stride=st)}
            for name in ("old", "new"):
                err = float(np.abs(rows[name]() - ref).max())
                assert err < 1e-3 * (1 + np.abs(ref).max()), (spec, name, err)
            times: dict = {name: [] for name in rows}
            for i in range(args.rounds):
                order = list(rows.items())
                for name, fn in order[i % 3:] + order[:i % 3]:
                    fn()
                    t0 = time.perf_counter()
                    fn()
                    fn()
                    times[name].append((time.perf_counter() - t0) / 2)
            m = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {m['old']:.3f} | {m['new']:.3f} | "
                  f"{m['torch']:.3f} | {m['old'] / m['new']:.2f} | {m['torch'] / m['old']:.2f} "
                  f"| {m['torch'] / m['new']:.2f} |", flush=True)
    finally:
        nconv.SHIFT_INPLACE_COPY = True
        nconv.SHIFT_ALIAS_BYTES = alias
    return 0


if __name__ == "__main__":
    sys.exit(main())
