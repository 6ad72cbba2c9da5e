"""Why a patched model can lose where the tuner picked a kernelkit kernel: each such conv layer of a
ResNet timed alone (the call repeated, as the tuner times it) and in context (each call preceded
by torch's batch norm + ReLU on a tensor of the layer's input shape, as in the model), the
kernelkit kernel (the layer's eager route) against torch's F.conv2d, interleaved.

    flock /tmp/kk-bench.lock python bench/probes/nn_layer_context.py --model resnet18 --batch 8

Tunes the model once into a fresh cache (KERNELKIT_TUNE=measure, as nn_resnets.py), then prints
one row per layer whose route is a kernelkit kernel: medians (ms) and torch / kernel ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/resnets.py


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--margin", type=float, default=None,
                    help="kernelkit.nn._route.KERNEL_MARGIN (1.0: every measured kernel win)")
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-ctx-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import torch
    import torch.nn.functional as F
    from resnets import Pair

    from kernelkit.nn import _route

    if args.margin is not None:
        _route.KERNEL_MARGIN = args.margin

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    pair = Pair(args.model, args.batch, args.size)
    pair.tune()
    pair.pat.eval()
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0].detach()))
             for n, m in pair.pat.named_modules() if isinstance(m, torch.nn.Conv2d)]
    pair.infer(pair.pat)
    for h in hooks:
        h.remove()
    print(f"{args.model} batch {args.batch} {args.size}px, {args.threads} threads")
    print("| layer | input | torch alone | kernel alone | ratio | torch in context | "
          "kernel in context | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    with torch.no_grad():
        for name, m in pair.pat.named_modules():
            routes = m.__dict__.get("_kk_routes", {})
            if name not in inputs or not any(_route.describe(r) != "torch (aten)"
                                             for r in routes.values()):
                continue
            x = inputs[name]
            # the kernel itself, not the layer: a layer's first calls alternate the kernel with
            # torch's op (kernelkit.nn._route.InContext), which is what this probe looks into
            (route,) = [r for r in routes.values() if _route.describe(r) != "torch (aten)"][:1]
            kernel = getattr(route, "kernel", route)
            c = x.shape[1]
            bn_w, bn_b = torch.ones(c), torch.zeros(c)
            prev = torch.randn_like(x)
            fns = {
                "torch alone": lambda m=m, x=x: F.conv2d(x, m.weight, m.bias, m.stride,
                                                         m.padding, m.dilation, m.groups),
                "kernel alone": lambda m=m, x=x, k=kernel: k(m, x, m.weight, m.bias),
                "torch in context": lambda m=m, x=x: F.conv2d(
                    F.relu(F.batch_norm(prev, None, None, bn_w, bn_b, True)), m.weight, m.bias,
                    m.stride, m.padding, m.dilation, m.groups),
                "kernel in context": lambda m=m, k=kernel: k(
                    m, F.relu(F.batch_norm(prev, None, None, bn_w, bn_b, True)), m.weight,
                    m.bias),
                "bn+relu": lambda: F.relu(F.batch_norm(prev, None, None, bn_w, bn_b, True)),
            }
            times = {k: [] for k in fns}
            for rep in range(args.reps + 1):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    if rep:
                        times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
            bn = med["bn+relu"]
            print(f"| {name} | {tuple(x.shape)} | {med['torch alone']:.2f} | "
                  f"{med['kernel alone']:.2f} | {med['torch alone'] / med['kernel alone']:.2f} | "
                  f"{med['torch in context'] - bn:.2f} | {med['kernel in context'] - bn:.2f} | "
                  f"{(med['torch in context'] - bn) / (med['kernel in context'] - bn):.2f} |",
                  flush=True)
    print("(in context: minus the median of bn+relu alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
