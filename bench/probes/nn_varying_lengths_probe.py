"""A patched nn.Linear(64, 64) and its unpatched twin fed NLP-style inputs: 2000 inputs (L, 64)
with L random in 1..512 (`--max-length`; a new length on most calls), no grad, one thread. One
untimed pass after the compile jobs finished, then 7 alternated passes each; prints the medians
per call, and the median of the passes' differences. `--autocast`: every call under bfloat16
autocast; `--features IN OUT`: the layer's size.

Before/after a change, alternate two checkouts (the numbers in docs/performance.md, "Zen 4,
fifteenth session"):

    git worktree add /tmp/before ea07ff5
    for i in 1 2 3; do for v in /tmp/before .; do
        (cd $v && KERNELKIT_CACHE_DIR=$(mktemp -d) PYTHONPATH=$v \\
         python $OLDPWD/bench/probes/nn_varying_lengths_probe.py); done; done
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch

import kernelkit
import kernelkit.nn as knn
from kernelkit import compiling


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-length", type=int, default=512, help="lengths L random in 1..this")
    p.add_argument("--inputs", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--features", type=int, nargs=2, default=(64, 64), metavar=("IN", "OUT"))
    p.add_argument("--autocast", action="store_true", help="under bfloat16 autocast")
    args = p.parse_args()
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(1)
    k, n = args.features
    layer = torch.nn.Linear(k, n)
    ref = copy.deepcopy(layer)
    knn.patch(layer)
    xs = [torch.randn(random.randint(1, args.max_length), k) for _ in range(args.inputs)]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=args.autocast):
        layer(xs[0])
        compiling.wait()
        for x in xs:
            layer(x)
        res: dict[str, list[float]] = {"patched": [], "torch": []}
        for _ in range(args.rounds):
            for name, m in (("patched", layer), ("torch", ref)):
                t = time.perf_counter()
                for x in xs:
                    m(x)
                res[name].append((time.perf_counter() - t) / len(xs) * 1e6)
    k, t = statistics.median(res["patched"]), statistics.median(res["torch"])
    over = statistics.median(a - b for a, b in zip(res["patched"], res["torch"]))
    print(f"patched {k:.1f} us, torch {t:.1f} us per call, {k / t:.2f}x; over torch {over:.2f} us "
          f"(median of the rounds' differences); {kernelkit.__file__.split('/kernelkit/')[0]}")


if __name__ == "__main__":
    main()
