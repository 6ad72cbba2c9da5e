"""Every config of the Numba fused preprocess on one batch, interleaved, inputs rotated.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/preprocess_configs_probe.py [--n 3] [--rounds 15] [--threads 2]

N uint8 480x640x3 images -> 224x224 float32 NCHW (bilinear, antialias off, ImageNet mean/std),
three copies of the batch in turn (so that no call finds the last one's input in L3); each round
calls every config of the kernel's space once, in the same order. Prints each config's median,
minimum and maximum milliseconds. To compare two trees, run it with PYTHONPATH set to each.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import numba
import numpy as np

from kernelkit.kernels.numba.preprocess import PreprocessConfig, preprocess_forward

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    n = args.n
    numba.set_num_threads(args.threads)
    batches = itertools.cycle([np.random.default_rng(i).integers(0, 256, (n, 480, 640, 3),
                                                                 dtype=np.uint8)
                               for i in range(3)])
    geometry = (np.tile([0.0, 0.0, 480.0, 640.0], (n, 1)), np.zeros((n, 2), bool),
                np.zeros(n, np.int64), np.zeros(n), np.zeros(n, np.float32), (224, 224), MEAN,
                (1 / STD).astype(np.float32), np.arange(3), "bilinear")
    configs = PreprocessConfig.space(n, 224, 224, 3)
    run = lambda cfg: preprocess_forward(next(batches), *geometry, False, "float32", "NCHW", cfg)
    for cfg in configs:
        run(cfg)  # compile, warm
    times = {cfg: [] for cfg in configs}
    for _ in range(args.rounds):
        for cfg in configs:
            t0 = time.perf_counter()
            run(cfg)
            times[cfg].append((time.perf_counter() - t0) * 1e3)
    for cfg, ts in times.items():
        print(f"{cfg}  median {statistics.median(ts):.2f}  min {min(ts):.2f}  max {max(ts):.2f} ms")


if __name__ == "__main__":
    main()
