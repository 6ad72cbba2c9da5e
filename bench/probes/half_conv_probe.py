"""bfloat16 / float16 conv2d on ResNet-50's 3x3 layers against torch's own half-precision conv
(oneDNN) and against the Numba float32 conv, calls interleaved (issue 13's bar: bfloat16 conv on
the ResNet-50 3x3 layers at least 0.8x torch).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/half_conv_probe.py [--batch 1 8] [--dtype bfloat16]

Rows per layer: ``kernelkit.conv2d`` on torch CPU tensors with the Numba backend forced, in the
half dtype and in float32, and ``torch.nn.functional.conv2d`` in the half dtype; each row timed
in its steady state, rows interleaved (``_steady.py``), medians over the rounds. Layers are
(C, H=W, stride) with K = C (the bottleneck's 3x3 conv, padding 1). Prints the geomean of
half / torch over the layers. Each size is tuned once beforehand (``kernelkit.explain``
measures every config and stores the winner): under the default ``auto`` policy the first calls
of a size run the cost model's guess until measuring pays, which a steady-state timing would
mix in. ``--frozen`` runs kernelkit's calls inside
``kernelkit.frozen_weights()`` (weights packed once).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import faults_per_call, steady_medians  # noqa: E402

import kernelkit  # noqa: E402
from kernelkit import devices  # noqa: E402

# ResNet-50's 3x3 convs: (C, input H=W, stride); K = C
LAYERS = [(64, 56, 1), (128, 56, 2), (128, 28, 1), (256, 28, 2), (256, 14, 1), (512, 14, 2),
          (512, 7, 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--frozen", action="store_true",
                    help="kernelkit's calls inside kernelkit.frozen_weights(): packed weights "
                         "kept across calls (inference with weights that do not change)")
    ap.add_argument("--no-float32", action="store_true",
                    help="leave out the Numba float32 row (its deep layers take 5-9 ms a call "
                         "at batch 1; the torch bar needs only the half and torch rows)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    dt = getattr(torch, args.dtype)
    print(f"cpu: {devices.cpu_info()['model']}; {args.dtype} conv2d, Numba forced vs torch "
          f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
          f"{'; frozen weights' if args.frozen else ''}")
    print(f"| batch | layer | Numba float32 GFLOP/s | Numba {args.dtype} GFLOP/s | torch "
          f"{args.dtype} GFLOP/s | half / float32 | half / torch | half's kernel | "
          f"page faults per call (half, torch) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.batch:
        ratios = []
        for c, hw, st in LAYERS:
            g = torch.Generator().manual_seed(c * hw)
            x32 = torch.randn(n, c, hw, hw, generator=g)
            w32 = torch.randn(c, c, 3, 3, generator=g).mul(0.05)
            xh, wh = x32.to(dt), w32.to(dt)
            ho = (hw + 2 - 3) // st + 1
            flops = 2.0 * n * c * c * 9 * ho * ho

            def ours(x, w):
                def fn():
                    with kernelkit.use(backend="numba"), kernelkit.frozen_weights(args.frozen):
                        return kernelkit.conv2d(x, w, stride=st, padding=1)
                return fn

            fns = [ours(xh, wh), lambda: F.conv2d(xh, wh, stride=st, padding=1)]
            if not args.no_float32:
                fns.append(ours(x32, w32))
            with kernelkit.use(backend="numba"):  # tuned once beforehand: measured, stored
                for x, w in ((x32, w32),) if not args.no_float32 else ():
                    kernelkit.explain("conv2d", x, w, stride=st, padding=1)
                chosen = kernelkit.explain("conv2d", xh, wh, stride=st, padding=1).choice.config
            for fn in fns:
                fn()  # compiled and warm before timing
            th, tt, *t32 = steady_medians(fns, rounds=args.rounds, warm=0.05)
            ratios.append(tt / th)
            f32 = (f"{flops / t32[0] / 1e9:.0f}", f"{t32[0] / th:.2f}") if t32 else ("-", "-")
            flt = f"{faults_per_call(fns[0], 3):.0f}, {faults_per_call(fns[1], 3):.0f}"
            print(f"| {n} | {c}ch {hw}px s{st} | {f32[0]} | {flops / th / 1e9:.0f} "
                  f"| {flops / tt / 1e9:.0f} | {f32[1]} | {tt / th:.2f} | {chosen['kernel']} "
                  f"| {flt} |", flush=True)
        geo = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(f"batch {n}: {args.dtype} / torch geomean {geo:.3f}, lowest {min(ratios):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
