"""The Numba depthwise 3x3 backward ops against torch's convolution_backward, side by side.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/dw_backward_probe.py [--threads 2]

Per layer (batch, channels, px, stride; pad 1, NCHW float32): the launchers
``conv2d_backward_input`` (dx) and ``conv2d_backward_weight`` (dW) on numpy views, and torch's
``aten.convolution_backward`` for dx alone, dW alone and both in one call (what a torch model's
autograd runs), interleaved in their steady states (``_steady.py``); medians in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numba
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

from kernelkit.kernels.numba.conv2d import (  # noqa: E402
    conv2d_backward_input,
    conv2d_backward_weight,
)

LAYERS = [(1, 960, 7, 1), (1, 192, 28, 1), (1, 144, 56, 2), (8, 192, 28, 1), (8, 576, 14, 2),
          (8, 144, 56, 1)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    print(f"threads {args.threads}, torch {torch.__version__}; medians in us")
    print("| layer (N, C, px, stride) | Numba dx | Numba dW | torch dx | torch dW | torch joint |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, c, hw, s in LAYERS:
        ho = (hw - 1) // s + 1
        x, w, dy = torch.randn(n, c, hw, hw), torch.randn(c, 1, 3, 3), torch.randn(n, c, ho, ho)
        geo = ((s, s), (1, 1, 1, 1), (1, 1), c)

        def aten(mask, x=x, w=w, dy=dy, s=s, c=c):
            return lambda: torch.ops.aten.convolution_backward(
                dy, x, w, None, [s, s], [1, 1], [1, 1], False, [0, 0], c, mask)

        fns = [lambda: conv2d_backward_input(dy.numpy(), w.numpy(), (hw, hw), *geo, "NCHW"),
               lambda: conv2d_backward_weight(x.numpy(), dy.numpy(), (3, 3), *geo, "NCHW"),
               aten([True, False, False]), aten([False, True, False]), aten([True, True, False])]
        med = [statistics.median(t) * 1e6 for t in steady_times(fns, 4, 0.03, 3)]
        print(f"| {n}, {c}, {hw}, {s} | " + " | ".join(f"{m:.0f}" for m in med) + " |")


if __name__ == "__main__":
    main()
