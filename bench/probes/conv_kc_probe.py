"""The shifted GEMM's channel block (``kernels.numba.conv2d._shift_kc``) against the fixed
SHIFT_KC it replaced, on the ResNet-50 3x3 layers, next to torch (oneDNN), in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/conv_kc_probe.py [--batch 1 8] [--rounds 6] [--kernel auto]

Rows per layer, fp32 NCHW, no bias, the default blocking with config kernel ``--kernel``: the
channel block SHIFT_KC (256, the old rule: ``_l1_bytes`` made huge so the L1 fit never binds),
the L1-fit rule (what runs now), torch's F.conv2d. Rows are timed in their steady state and
interleaved, each round starting at the next row (``_steady.py``); the table gives torch / ours
from the fastest timed call of each row (this VM's neighbours only ever add time) and, in
brackets, from the medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

from kernelkit import devices  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402
from kernelkit.kernels.numba.conv2d import Conv2dConfig  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kernel", default="auto", choices=["auto", "shift"])
    args = p.parse_args()
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    d = Conv2dConfig.default("float32")
    cfg = Conv2dConfig(d.mc, d.kc, d.nc, args.kernel)
    l1 = nconv._l1_bytes
    print(f"cpu: {devices.cpu_info()['model']}; {args.threads} threads; {cfg}; L1d {l1()} B")
    print("| batch | C -> K, px, stride | kc now | torch ms | old (kc 256) | now |\n"
          "| --- | --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for n in args.batch:
        for c, k, hw, r, st, pad in CONV_RESNET50:
            if r != 3:
                continue
            x = rng.standard_normal((n, c, hw, hw), dtype=np.float32)
            w = rng.standard_normal((k, c, r, r), dtype=np.float32)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)

            def ours(old: bool):
                nconv._l1_bytes = (lambda: 1 << 40) if old else l1
                try:
                    return nconv.conv2d_forward(x, w, None, (st, st), (pad,) * 4, (1, 1), 1, None,
                                                "NCHW", config=cfg)
                finally:
                    nconv._l1_bytes = l1

            rows = [lambda: ours(True), lambda: ours(False),
                    lambda: F.conv2d(xt, wt, stride=st, padding=pad)]
            times = steady_times(rows, args.rounds, warm=0.02, reps=2)
            mins = [min(ts) for ts in times]
            meds = [statistics.median(ts) for ts in times]
            kc = nconv._shift_kc(c, cfg.kc, r, r, 1, 4, nconv.tile_shape(np.float32)[1])
            print(f"| {n} | {c} -> {k}, {hw}, {st} | {kc} | {mins[2] * 1e3:.2f} | "
                  f"{mins[2] / mins[0]:.2f} ({meds[2] / meds[0]:.2f}) | "
                  f"{mins[2] / mins[1]:.2f} ({meds[2] / meds[1]:.2f}) |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
