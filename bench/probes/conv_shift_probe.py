"""The Numba conv2d's two forward algorithms against torch (oneDNN), interleaved in one run.

    python bench/probes/conv_shift_probe.py [--batch 8] [--threads 2] [--rounds 6] [--warm 0.03] [--reps 3]
        [--all] [--fused] [--frozen] [--keep-heap] [--kernels gemm shift auto]

For every stride-1 ResNet-50 layer (tests/reference.CONV_RESNET50; ``--all`` adds the strided
ones, the 7x7 stem included, where "shift" falls back to the implicit GEMM), fp32, NCHW, no bias: the implicit GEMM
(config kernel "gemm", im2col panels packed block by block), the shifted GEMM (kernel "shift",
one GEMM per kernel tap on the input read in place or from one padded copy), what the default
config runs ("auto"), and torch's F.conv2d, each with the default blocking. Each round calls
every row in its steady state: untimed calls for at least ``--warm`` seconds, then ``--reps``
timed calls back to back; each round starts at the next row (``_steady.py`` says why). The table gives medians over all timed calls and torch / ours (> 1: ours faster), and
the geometric means. ``--frozen``: the weights are views of torch tensors, launched as the ops
layer launches torch data, inside `kernelkit.frozen_weights()` (packed weights kept).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_medians  # noqa: E402

from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402

KERNELS = ("gemm", "shift", "auto")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warm", type=float, default=0.03, help="untimed calls per row first (s)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per row and round")
    p.add_argument("--all", action="store_true", help="the strided layers too")
    p.add_argument("--fused", action="store_true",
                   help="with a bias and relu: ours fused, torch's the chain a user writes "
                        "(relu(conv(x, w) + b)), issue 13's fused bar")
    p.add_argument("--frozen", action="store_true",
                   help="weights in torch tensors, packed once (kernelkit.frozen_weights)")
    p.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=nconv.CONV_KERNELS,
                   help="the config kernels to time (\"rows\": the pixel-rows conv, _rows)")
    p.add_argument("--keep-heap", action="store_true",
                   help="kernelkit.keep_heap() first: no row's output faults its pages anew")
    args = p.parse_args()
    kernels = tuple(args.kernels)
    if args.keep_heap:
        import kernelkit

        print(f"keep_heap: {kernelkit.keep_heap()}")
    if args.frozen:
        import kernelkit
        from kernelkit import threads

        threads.LOCAL.torch_data = True  # as the ops layer says for torch tensors
        frozen_block = kernelkit.frozen_weights()
        frozen_block.__enter__()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    blas = [(i["internal_api"], i.get("architecture")) for i in threadpool_info()]
    print(f"threads {args.threads}, batch {args.batch}, torch {torch.__version__}, "
          f"pools {blas}{', bias + relu' if args.fused else ''}")
    rng = np.random.default_rng(0)
    d = nconv.Conv2dConfig.default(np.float32)
    ratios: dict[str, list[float]] = {k: [] for k in kernels}
    print(f"{'C_in':>5} {'C_out':>5} {'HW':>4} k s " + " ".join(f"{k + ' ms':>9}" for k in kernels)
          + f" {'torch ms':>9} " + " ".join(f"{'t/' + k:>7}" for k in kernels))
    for c, k, hw, r, st, pad in CONV_RESNET50:
        if st != 1 and not args.all:
            continue
        x = rng.standard_normal((args.batch, c, hw, hw), dtype=np.float32)
        w = rng.standard_normal((k, c, r, r), dtype=np.float32)
        b = rng.standard_normal(k, dtype=np.float32) if args.fused else None
        act = "relu" if args.fused else None
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)

        def ours(kernel, x=x, w=w, b=b, st=st, pad=pad, wt=wt):
            cfg = nconv.Conv2dConfig(d.mc, d.kc, d.nc, kernel)
            if args.frozen:
                w = wt.detach().numpy()  # a view of the tensor, as the ops layer makes it
            return nconv.conv2d_forward(x, w, b, (st, st), (pad,) * 4, (1, 1), 1, act,
                                        "NCHW", config=cfg)

        fns = [lambda kern=kern: ours(kern) for kern in kernels]
        if args.fused:
            bt = torch.from_numpy(b)[:, None, None]
            fns.append(lambda xt=xt, wt=wt, bt=bt, st=st, pad=pad:
                       torch.relu(F.conv2d(xt, wt, stride=st, padding=pad) + bt))
        else:
            fns.append(lambda xt=xt, wt=wt, st=st, pad=pad: F.conv2d(xt, wt, stride=st,
                                                                     padding=pad))
        med = [t * 1e3 for t in steady_medians(fns, args.rounds, args.warm, args.reps)]
        for kern, m in zip(kernels, med):
            ratios[kern].append(med[-1] / m)
        print(f"{c:5d} {k:5d} {hw:4d} {r} {st} " + " ".join(f"{m:9.3f}" for m in med) + " "
              + " ".join(f"{med[-1] / m:7.2f}" for m in med[:-1]), flush=True)
    print("geomean torch / ours: " + ", ".join(
        f"{kern} {math.exp(statistics.fmean(math.log(v) for v in ratios[kern])):.3f}"
        for kern in kernels))


if __name__ == "__main__":
    main()
