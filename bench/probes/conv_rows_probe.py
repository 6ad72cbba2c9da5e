"""The Numba conv2d's pixel-rows conv (config kernel "rows", ``_rows``) against its shifted GEMM
("shift") and torch's F.conv2d, paired in one process.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_rows_probe.py [--batch 8] [--rounds 15] [--per-call]
        [--layers 512,512,7,3,1 ...]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2), float32 NCHW, no bias, 2
threads, `kernelkit.keep_heap()` first. The weights are views of torch tensors launched as the
ops layer launches torch data, inside `kernelkit.frozen_weights()`: each kernel's packed weight
is kept across calls, as "auto" requires before it runs the pixel rows; ``--per-call`` runs
outside it (each call packs: the pixel rows' shares a sliver at a time). Each round calls the
three in a rotated order, each once untimed and then twice timed; medians over the rounds.
Every result is checked against float64 first. Prints a markdown table: ms, torch / each, and
shift / rows (> 1: the pixel rows faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import kernelkit
from kernelkit import devices, threads
from kernelkit.kernels.numba import conv2d as nconv

LAYERS = ["256,256,14,3,1", "256,256,28,3,2", "512,512,7,3,1", "512,512,14,3,2",
          "128,128,28,3,1", "2048,512,7,1,1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--per-call", action="store_true",
                   help="outside frozen_weights(): every call packs its weight")
    p.add_argument("--layers", nargs="+", default=LAYERS)
    args = p.parse_args()
    kernelkit.keep_heap()
    torch.set_num_threads(2)
    threads.LOCAL.torch_data = True  # as the ops layer says for torch tensors
    frozen = kernelkit.frozen_weights(not args.per_call)
    frozen.__enter__()
    d = nconv.Conv2dConfig.default(np.float32)
    cfgs = {kern: dataclasses.replace(d, kernel=kern) for kern in ("shift", "rows")}
    print(f"cpu: {devices.cpu_info()['model']}; batch {args.batch}, torch {torch.__version__}; "
          f"{'packed every call' if args.per_call else 'frozen weights (packs kept)'}; "
          f"ms, medians of {args.rounds} rounds")
    print("| layer | shift | rows | torch | torch / shift | torch / rows | shift / rows |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in args.layers:
        c, k, hw, r, st = (int(v) for v in spec.split(","))
        pad = r // 2
        x = torch.randn(args.batch, c, hw, hw)
        w = torch.randn(k, c, r, r) * 0.05
        xn = x.numpy()
        ref = F.conv2d(x.double(), w.double(), padding=pad, stride=st).numpy()

        def ours(cfg, st=st, pad=pad, w=w):
            return nconv.conv2d_forward(xn, w.detach().numpy(), None, (st, st), (pad,) * 4,
                                        (1, 1), 1, None, "NCHW", cfg)

        fns = {kern: (lambda cfg=cfg: ours(cfg)) for kern, cfg in cfgs.items()}
        for kern, fn in fns.items():
            err = float(np.abs(fn() - ref).max())
            assert err < 1e-3 * (1 + np.abs(ref).max()), (spec, kern, err)
        fns["torch"] = lambda x=x, w=w, st=st, pad=pad: F.conv2d(x, w, padding=pad, stride=st)
        names = list(fns)
        times: dict[str, list[float]] = {n: [] for n in names}
        for rnd in range(args.rounds):
            for n in names[rnd % 3:] + names[:rnd % 3]:
                fns[n]()
                t0 = time.perf_counter()
                fns[n]()
                fns[n]()
                times[n].append((time.perf_counter() - t0) / 2)
        m = {n: statistics.median(v) * 1e3 for n, v in times.items()}
        print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {m['shift']:.3f} | {m['rows']:.3f} | "
              f"{m['torch']:.3f} | {m['torch'] / m['shift']:.2f} | {m['torch'] / m['rows']:.2f} | "
              f"{m['shift'] / m['rows']:.2f} |", flush=True)
    frozen.__exit__(None, None, None)


if __name__ == "__main__":
    main()
