"""The Numba preprocess kernel on uint8 and on float32 input: ms per batch.

The float32 rows carry the kernel's check for non-finite results (a row whose result is not
finite is redone reading only the taps of nonzero weight); uint8 input has no such check. Run it
against two checkouts, in turn, to compare them (the probe imports the kernelkit that PYTHONPATH
names):

    PYTHONPATH=<checkout> python bench/probes/preprocess_input_probe.py --images 16

Prints one line: the median over `--rounds` calls for each input dtype (antialiased bilinear,
N x 480 x 640 x 3 -> 224 x 224, float32 NCHW, every thread Numba has).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from kernelkit.kernels.numba import preprocess as npp


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    n = args.images
    rng = np.random.default_rng(0)
    spec = (np.array([[0, 0, 480, 640]] * n, np.float64), np.zeros((n, 2), bool),
            np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.float32), (224, 224),
            np.zeros(3, np.float32), np.ones(3, np.float32), np.arange(3), "bilinear", True,
            "float32", "NCHW")
    row = []
    for dtype in ("uint8", "float32"):
        imgs = rng.integers(0, 256, (n, 480, 640, 3), dtype=np.uint8).astype(dtype)
        npp.preprocess_forward(imgs, *spec)  # compile or load, and warm
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            npp.preprocess_forward(imgs, *spec)
            times.append(time.perf_counter() - t)
        row.append(f"{dtype} {np.median(times) * 1e3:.2f} ms")
    print(f"{n}x480x640x3 -> 224x224: " + ", ".join(row))


if __name__ == "__main__":
    main()
