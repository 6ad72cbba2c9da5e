"""The Numba conv (packed weights kept / packed per call) against torch with cold caches, as a
layer inside a model sees them (every other layer's weights and activations pass through the
caches between two calls of one layer).

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_cold_probe.py [--rounds 15]

Three ResNet-50 layers at batch 1, weights in torch tensors, inside `kernelkit.frozen_weights()`.
Per round and row: stream 64 MB through the caches, one untimed call (thread pools awake), stream
64 MB again, one timed call. Prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import kernelkit
from kernelkit import threads
from kernelkit.kernels.numba import conv2d as nconv

LAYERS = [(512, 7, 512, 3, 1, 1), (512, 7, 2048, 1, 1, 0), (64, 56, 64, 3, 1, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(2)
    threads.LOCAL.torch_data = True  # as the ops layer says for torch tensors
    big = np.ones((64 << 20) // 4, np.float32)
    with kernelkit.frozen_weights():
        for c, hw, k, r, st, pad in LAYERS:
            x = torch.randn(1, c, hw, hw)
            w = torch.randn(k, c, r, r) * 0.05

            def ours(keep, x=x, w=w, st=st, pad=pad):
                nconv.KEEP_PACKS = keep
                return nconv.conv2d_forward(x.numpy(), w.detach().numpy(), None, (st, st),
                                            (pad,) * 4, (1, 1), 1, None, "NCHW")

            rows = {"kept": lambda: ours(True), "per call": lambda: ours(False),
                    "torch": lambda x=x, w=w, st=st, pad=pad: F.conv2d(x, w, stride=st,
                                                                       padding=pad)}
            times = {name: [] for name in rows}
            for _ in range(args.rounds):
                for name, fn in rows.items():
                    big.sum()
                    fn()
                    big.sum()
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
            nconv.KEEP_PACKS = True
            print(f"{c}->{k} {r}x{r} {hw} px, cold caches: " + "  ".join(
                f"{n} {statistics.median(v) * 1e3:.3f}" for n, v in times.items()) + " ms")


if __name__ == "__main__":
    main()
