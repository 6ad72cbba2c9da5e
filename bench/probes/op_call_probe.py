"""One op call on a memoised plan: the ops' own cost around tiny kernels, in microseconds.

A 1 x 8 x 8 x 8 3x3 conv2d on numpy data and on torch tensors, and a 32^3 matmul on numpy data,
`tune="off"` (each call runs its default plan), torch on one thread; best of `--repeat` runs of
`--number` calls. Run it against two checkouts in turn to compare them (the probe imports the
kernelkit that PYTHONPATH names):

    PYTHONPATH=<checkout> python bench/probes/op_call_probe.py
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np
import torch

import kernelkit


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--number", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    torch.set_num_threads(1)
    x = np.random.default_rng(0).random((1, 8, 8, 8), np.float32)
    w = np.random.default_rng(1).random((8, 8, 3, 3), np.float32)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    a = np.random.default_rng(2).random((32, 32), np.float32)
    rows = {"conv2d numpy": lambda: kernelkit.conv2d(x, w, None, stride=(1, 1), padding=(1, 1)),
            "conv2d torch": lambda: kernelkit.conv2d(xt, wt, None, stride=(1, 1), padding=(1, 1)),
            "matmul numpy 32^3": lambda: kernelkit.matmul(a, a)}
    out = []
    with kernelkit.use(tune="off"):
        for name, fn in rows.items():
            for _ in range(200):  # the plan memoised, the code warm
                fn()
            best = min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number
            out.append(f"{name} {best * 1e6:.2f} us")
    print(", ".join(out))


if __name__ == "__main__":
    main()
