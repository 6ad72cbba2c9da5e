"""One launch or two per conv2d forward: the packing and the convolution as shares that meet at
a barrier (``_pool.run_synced``) against two thread-pool launches, float32 and bfloat16
(channel pairs), interleaved.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/conv_launch_probe.py [--batch 1]

"two" holds ``_pool._SYNC_LOCK`` around the call, which makes the launcher take its two-launch
way. Steady-state medians (``_steady.py``), ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import steady_times  # noqa: E402

from kernelkit.arrays import torch_to_numpy  # noqa: E402
from kernelkit.kernels.numba import _pool  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402

LAYERS = [(64, 64, 56, 3), (128, 128, 28, 3), (256, 256, 14, 3), (512, 512, 7, 3),
          (256, 1024, 14, 1), (64, 64, 56, 1), (512, 2048, 7, 1)]


def _bits(a: np.ndarray) -> np.ndarray:
    return torch_to_numpy(torch.from_numpy(a).bfloat16())  # bfloat16 bits, as the op passes them


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    n = ap.parse_args().batch
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    print("| layer (C, K, px, k) | float32 one / two ms | two / one | bfloat16 one / two ms "
          "| two / one |\n| --- | --- | --- | --- | --- |")
    for c, k, hw, r in LAYERS:
        xf = rng.standard_normal((n, c, hw, hw)).astype(np.float32)
        wf = (0.05 * rng.standard_normal((k, c, r, r))).astype(np.float32)
        pad = (r // 2,) * 4

        def conv(x, w, synced):
            def fn():
                if synced:
                    return nconv.conv2d_forward(x, w, None, (1, 1), pad, (1, 1), 1, None, "NCHW")
                with _pool._SYNC_LOCK:
                    return nconv.conv2d_forward(x, w, None, (1, 1), pad, (1, 1), 1, None, "NCHW")
            return fn

        fns = [conv(xf, wf, True), conv(xf, wf, False), conv(_bits(xf), _bits(wf), True),
               conv(_bits(xf), _bits(wf), False)]
        for fn in fns:
            fn()
        t = [statistics.median(v) * 1e3 for v in steady_times(fns, rounds=6, warm=0.05)]
        print(f"| {c}, {k}, {hw}, {r} | {t[0]:.3f} / {t[1]:.3f} | {t[1] / t[0]:.2f} | "
              f"{t[2]:.3f} / {t[3]:.3f} | {t[3] / t[2]:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
