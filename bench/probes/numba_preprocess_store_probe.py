"""A/B of the Numba preprocess kernel's two float32 store paths, interleaved in one process.

Plain stores straight into the output planes (``PreprocessConfig(stream=False)``, the default)
against a row buffer written out with non-temporal stores (``stream=True``), on the bench's batch
(32 uint8 480x640x3 -> 224x224, float32 NCHW), 2-tap and antialias. Rounds alternate between the
configs so that drift hits both alike; prints the median microseconds per image.

    python bench/probes/numba_preprocess_store_probe.py [rounds] [threads]
"""

from __future__ import annotations

import sys
import time

import numba
import numpy as np

from kernelkit.kernels.numba.preprocess import PreprocessConfig, preprocess_forward

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def main(rounds: int = 15, threads: int = 2) -> None:
    numba.set_num_threads(threads)
    n = 32
    imgs = np.random.default_rng(0).integers(0, 256, (n, 480, 640, 3), dtype=np.uint8)
    boxes = np.tile([0.0, 0.0, 480.0, 640.0], (n, 1))
    args = (boxes, np.zeros((n, 2), bool), np.zeros(n, np.int64), np.zeros(n),
            np.zeros(n, np.float32), (224, 224), MEAN, (1 / STD).astype(np.float32), np.arange(3),
            "bilinear")
    cfgs = [PreprocessConfig(224, 0, False), PreprocessConfig(224, 0, True)]
    for aa in (False, True):
        run = lambda cfg: preprocess_forward(imgs, *args, aa, "float32", "NCHW", cfg)
        outs = [run(c) for c in cfgs]
        assert np.array_equal(outs[0], outs[1])
        times = {c: [] for c in cfgs}
        for _ in range(rounds):
            for c in cfgs:
                t0 = time.perf_counter()
                run(c)
                times[c].append(time.perf_counter() - t0)
        for c in cfgs:
            print(f"{'antialias' if aa else '2-tap':9s} stream={c.stream!s:5s} "
                  f"{np.median(times[c]) / n * 1e6:7.1f} us/image")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
