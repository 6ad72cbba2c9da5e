"""Quick side-by-side probe of the Numba conv2d against torch (oneDNN) on the CPU, in one run.

    python bench/probes/numba_conv_probe.py [--batch 8] [--threads 2] [--reps 5] [--blocks 2]
        [--sets resnet fused dw] [--layouts NCHW NHWC] [--dtype float32] [--keep-heap]

Sets (the issue's bars):
  resnet  every ResNet-50 3x3 and 1x1 conv (tests/reference.CONV_RESNET50 less the 7x7 stem):
          ours vs F.conv2d, NCHW (torch contiguous) and NHWC (torch channels_last);
  fused   the same layers, ours conv + bias + relu fused vs torch F.conv2d(x, w), then
          ``+ bias[:, None, None]``, then relu (unfused, as a model without fusion runs it);
  dw      MobileNetV2's depthwise 3x3 convs (CONV_MOBILENET_DW), pad 1, ours vs F.conv2d.

Both sides use the same thread count (numba.set_num_threads, torch.set_num_threads,
threadpoolctl). Each case is timed in its steady state, the two sides interleaved (``--blocks``
rounds of ``--warm`` seconds of untimed calls, then ``--reps`` timed ones: ``_steady.py``); the
table gives each side's median time and the ratio torch / ours (> 1: ours
is faster) of the medians and of the best times (less sensitive to other load on a shared
machine), and the geometric means of the ratios per set and layout.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_MOBILENET_DW, CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_times  # noqa: E402

from kernelkit.kernels.numba.conv2d import conv2d_forward  # noqa: E402


def _time(fns, reps, blocks, warm):
    """(median, best) seconds per call of each of ``fns``, in their steady state (``_steady``)."""
    return [(statistics.median(t), min(t)) for t in steady_times(fns, blocks, warm, reps)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--warm", type=float, default=0.03)
    p.add_argument("--sets", nargs="+", default=["resnet", "fused", "dw"])
    p.add_argument("--layouts", nargs="+", default=["NCHW", "NHWC"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--layers", type=int, nargs="*", help="indices into the set (default all)")
    p.add_argument("--keep-heap", action="store_true",
                   help="kernelkit.keep_heap() first: neither side's output faults its pages anew")
    args = p.parse_args()
    if args.keep_heap:
        import kernelkit

        print(f"keep_heap: {kernelkit.keep_heap()}")
    numba.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, batch {args.batch}, dtype {dtype.name}, torch "
          f"{torch.__version__}, mkldnn {torch.backends.mkldnn.is_available()}")
    summary = []
    with threadpool_limits(args.threads), torch.no_grad():
        for set_name in args.sets:
            if set_name == "dw":
                layers = [(c, c, h, 3, s, 1, c) for c, h, s in CONV_MOBILENET_DW]
            else:
                layers = [(ci, co, h, k, s, pd, 1) for ci, co, h, k, s, pd in CONV_RESNET50 if k != 7]
            if args.layers:
                layers = [layers[i] for i in args.layers]
            for layout in args.layouts:
                ratios, bests = [], []
                print(f"\n[{set_name} {layout}]  {'C_in':>5} {'C_out':>5} {'HW':>4} {'k':>2} {'s':>2}"
                      f"   ours ms  torch ms  GFLOP/s ours  torch/ours  (best/best)")
                for ci, co, hw, kk, st, pd, g in layers:
                    n = args.batch
                    x = rng.standard_normal((n, ci, hw, hw)).astype(dtype)
                    w = (rng.standard_normal((co, ci // g, kk, kk)) / math.sqrt(ci // g * kk * kk)
                         ).astype(dtype)
                    b = rng.standard_normal(co).astype(dtype)
                    xt, wt, bt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
                    if layout == "NHWC":
                        xt = xt.contiguous(memory_format=torch.channels_last)
                        wt = wt.contiguous(memory_format=torch.channels_last)
                        xn = xt.permute(0, 2, 3, 1).numpy()  # a view: NHWC contiguous memory
                    else:
                        xn = x
                    pad = (pd, pd, pd, pd)
                    fused = set_name == "fused"

                    def ours(xn=xn, w=w, b=b, st=st, pad=pad, g=g, fused=fused, layout=layout):
                        return conv2d_forward(xn, w, b if fused else None, (st, st), pad, (1, 1),
                                              g, "relu" if fused else None, layout)

                    if fused:
                        def ref(xt=xt, wt=wt, bt=bt, st=st, pd=pd):
                            y = F.conv2d(xt, wt, None, st, pd)
                            y = y + bt[:, None, None]
                            return torch.relu(y)
                    else:
                        def ref(xt=xt, wt=wt, st=st, pd=pd, g=g):
                            return F.conv2d(xt, wt, None, st, pd, 1, g)
                    got = ours()
                    want = ref()
                    want = want.permute(0, 2, 3, 1) if layout == "NHWC" else want
                    err = np.max(np.abs(got - want.numpy())) / (np.max(np.abs(want.numpy())) + 1e-30)
                    assert err < 1e-3, f"mismatch {err}"
                    (to, bo), (tt, bt) = _time([ours, ref], args.reps, args.blocks, args.warm)
                    ho = (hw + 2 * pd - kk) // st + 1
                    flop = 2.0 * n * co * ho * ho * (ci // g) * kk * kk
                    ratios.append(tt / to)
                    bests.append(bt / bo)
                    print(f"{'':{len(set_name) + len(layout) + 4}}{ci:5d} {co:5d} {hw:4d} {kk:2d} {st:2d}"
                          f"  {to * 1e3:8.3f}  {tt * 1e3:8.3f}  {flop / to / 1e9:12.1f}  {tt / to:9.2f}"
                          f"  {bt / bo:9.2f}")
                gm = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
                gb = math.exp(sum(math.log(r) for r in bests) / len(bests))
                summary.append((set_name, layout, gm, gb))
                print(f"geomean torch/ours [{set_name} {layout}]: medians {gm:.3f}, best {gb:.3f}")
    print("\nsummary (geomean of torch time / ours; >= 1 means ours is at least as fast):")
    for set_name, layout, gm, gb in summary:
        print(f"  {set_name:7s} {layout}: medians {gm:.3f}   best times {gb:.3f}")


if __name__ == "__main__":
    main()
