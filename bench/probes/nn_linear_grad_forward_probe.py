"""A patched Linear(64, 64)'s forward call with grad enabled on the Numba kernel (a 4x64 input,
one torch thread): the median over 7 rounds of timeit minima, in microseconds. Before/after a
change: run it with PYTHONPATH set to a worktree of the older commit, alternated with this one.

    KERNELKIT_CACHE_DIR=$(mktemp -d) python bench/probes/nn_linear_grad_forward_probe.py
"""

from __future__ import annotations

import statistics
import timeit

import torch
from torch import nn

import kernelkit
import kernelkit.nn as knn


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = knn.patch(nn.Sequential(nn.Linear(64, 64))).model
    x = torch.randn(4, 64)
    with kernelkit.use(backend="numba"):
        for _ in range(500):  # (decided and compiled before the timing)
            model(x)
        call = lambda: model(x)
        us = statistics.median(min(timeit.repeat(call, number=2000, repeat=5)) / 2000 * 1e6
                               for _ in range(7))
    print(f"patched Linear(64, 64), grad-enabled forward: {us:.2f} us")


if __name__ == "__main__":
    main()
