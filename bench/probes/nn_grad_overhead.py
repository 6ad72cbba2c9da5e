"""What a patched Conv2d's kernel route costs with grad, over its three Numba launchers: one
training call (forward and backward) of a small layer, where the kernels themselves take a few
microseconds.

    KERNELKIT_CACHE_DIR=/tmp/kk-probe flock /tmp/kk-bench.lock \\
        python bench/probes/nn_grad_overhead.py [--shape 1 8 8 8] [--channels 8]

Rows, each forward + ``backward()`` (or the same three products by hand), in microseconds:
the patched layer (`kernelkit.nn.Conv2d`) with the Numba backend forced and its in-model trial
taken out (the kernel route); the three launchers (`kernels.numba.conv2d` forward, backward
input, backward weight) on numpy views of the same tensors, with their default configs;
torch's own `nn.Conv2d`. Steady-state medians, rows interleaved (``_steady.py``), one thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import steady_medians  # noqa: E402

import kernelkit  # noqa: E402
import kernelkit.nn as knn  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402
from kernelkit.nn import _route  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[1, 8, 8, 8], help="N C H W")
    ap.add_argument("--channels", type=int, default=8, help="output channels")
    args = ap.parse_args()
    torch.set_num_threads(1)
    n, c, h, w = args.shape
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.Conv2d(c, args.channels, 3, padding=1, bias=False)
    layer = knn.Conv2d(c, args.channels, 3, padding=1, bias=False)
    layer.weight = torch.nn.Parameter(ref.weight.detach().clone())
    x = torch.randn(n, c, h, w, generator=g, requires_grad=True)
    gy = torch.randn(n, args.channels, h, w, generator=g)

    def train(m):
        m(x).backward(gy)

    with kernelkit.use(backend="numba"):
        for _ in range(3):  # tunes the forward and both backward products once
            train(layer)
        for routes in [layer.__dict__.get("_kk_routes", {})]:  # the kernel route, no trial
            for sig, r in routes.items():
                if isinstance(r, _route.InContext):
                    routes[sig] = r.kernel
        choice = {op: str(kernelkit.explain(op, *a, **kw)).splitlines()[-1] for op, a, kw in [
            ("conv2d", (x.detach(), layer.weight.detach()), {"padding": 1}),
            ("conv2d_backward_input", (gy, layer.weight.detach(), (n, c, h, w)), {"padding": 1}),
            ("conv2d_backward_weight", (x.detach(), gy, tuple(layer.weight.shape)),
             {"padding": 1})]}
        print("\n".join(f"{op}: {line}" for op, line in choice.items()))
        xn, wn, gn = x.detach().numpy(), layer.weight.detach().numpy(), gy.numpy()
        geo = ((1, 1), (1, 1, 1, 1), (1, 1), 1)

        def launchers():
            nconv.conv2d_forward(xn, wn, None, *geo, None, "NCHW")
            nconv.conv2d_backward_input(gn, wn, (h, w), *geo, "NCHW")
            nconv.conv2d_backward_weight(xn, gn, (3, 3), *geo, "NCHW")

        rows = {"patched layer, kernel route": lambda: train(layer),
                "the three launchers": launchers,
                "torch nn.Conv2d": lambda: train(ref)}
        ts = steady_medians(list(rows.values()), rounds=8, warm=0.05, reps=30)
    print("| row | us per forward + backward |\n| --- | --- |")
    for label, t in zip(rows, ts, strict=True):
        print(f"| {label} | {t * 1e6:.1f} |")
    print(f"kernel route over the launchers: {(ts[0] - ts[1]) * 1e6:.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
