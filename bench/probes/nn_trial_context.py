"""One depthwise layer of a patched MobileNetV2, timed in the model under three fixed route sets:
why kernelkit.nn's in-model trials run one layer at a time.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_trial_context.py [--batch 1] [--layer features.17.conv.1.0]

The patched model (bench/resnets.py, random init, eval, fp32) is tuned once; then every
depthwise layer the tuner gave a kernel gets a fixed route (no trial): "all": every such layer
runs the kernel; "alone": only `--layer` does, the others torch's op; "none": all torch's op.
The three sets alternate per round (one model call each, `--rounds` rounds after one untimed
round), with forward hooks timing `--layer` and the whole call; medians per set. In the
trials that ran side by side (all layers flipped together) every kernel was timed as in "all";
once some layers went back to torch, the rest ran as in "alone".

``--parts``: before each call of the layer, a hook times the steps of a Numba depthwise call
one by one on the layer's own input (torch to numpy, the output's allocation, numpy's
isfinite and the jitted check, the geometry array, the kernel twice), so each step's cost
right after torch's ops ("alone", "none") can be set against the same step in the "all" set.
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
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layer", default="features.17.conv.1.0",
                    help="the layer timed; the deepest depthwise layer with a kernel route if "
                         "this one got none (the tuner's choices vary between runs)")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--parts", action="store_true", help="time a depthwise call's steps")
    args = ap.parse_args()

    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-context-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import torch
    from resnets import Pair

    import kernelkit
    from kernelkit import devices
    from kernelkit.autotune import tuner
    from kernelkit.nn import _route

    torch.set_num_threads(2)
    pair = Pair("mobilenet_v2", args.batch, 224)
    with kernelkit.use(tune="measure"):
        pair.pat.eval()
        pair.infer(pair.pat)
    tuner.clear_memo()
    pair.infer(pair.pat)  # the routes under the default policy
    kernel_layers = []  # (name, module, signature, InContext) of depthwise layers given a kernel
    for name, m, sig, r in _route.current_routes(pair.pat):
        trial = _route._trial_of(r)
        if trial is not None and getattr(m, "groups", 1) > 1:
            kernel_layers.append((name, m, sig, trial))
    if not kernel_layers:
        print("no depthwise layer got a kernel route in this run")
        return 1
    if args.layer not in [n for n, *_ in kernel_layers]:
        print(f"{args.layer} got no kernel route in this run; timing {kernel_layers[-1][0]} "
              f"(kernel layers: {[n for n, *_ in kernel_layers]})")
        args.layer = kernel_layers[-1][0]
    sets = {"all": lambda n: True, "alone": lambda n: n == args.layer, "none": lambda n: False}

    layer_s: list[float] = []
    target = dict(pair.pat.named_modules())[args.layer]
    target.register_forward_pre_hook(lambda *a: layer_s.append(-time.perf_counter()))

    def done(*a):
        layer_s[-1] += time.perf_counter()

    target.register_forward_hook(done)
    parts: list[list[float]] = []
    if args.parts:
        target.register_forward_pre_hook(_parts_hook(parts), prepend=True)
    times = {k: ([], []) for k in sets}  # set -> (layer s, call s)
    with torch.no_grad():
        for rnd in range(args.rounds + 1):
            for label, on_kernel in sets.items():
                for name, m, sig, trial in kernel_layers:
                    m._kk_routes[sig] = trial.kernel if on_kernel(name) else trial.aten
                t0 = time.perf_counter()
                pair.infer(pair.pat)
                if rnd:
                    times[label][0].append(layer_s[-1])
                    times[label][1].append(time.perf_counter() - t0)
    print(f"{devices.cpu_info()['model']}, torch {torch.__version__}, MobileNetV2 batch "
          f"{args.batch}, depthwise layers with a kernel route: "
          f"{[n for n, *_ in kernel_layers]}, {args.rounds} rounds")
    print(f"| route set ({len(kernel_layers)} layers) | {args.layer} ms | model call ms |")
    print("| --- | --- | --- |")
    for label, (lay, call) in times.items():
        print(f"| {label} | {statistics.median(lay) * 1e3:.3f} | "
              f"{statistics.median(call) * 1e3:.2f} |")
    if parts:
        print("\nsteps of a depthwise call just before the layer's, us (medians):")
        print("| route set | " + " | ".join(_PART_NAMES) + " |")
        print("|" + " --- |" * (len(_PART_NAMES) + 1))
        for i, label in enumerate(sets):
            rows = parts[len(sets) + i::len(sets)]  # the first round is untimed
            print(f"| {label} | " + " | ".join(f"{statistics.median(c) * 1e6:.1f}"
                                               for c in zip(*rows)) + " |")
    return 0


_PART_NAMES = ("to numpy", "aligned_empty", "np.isfinite", "jitted check", "geometry",
               "kernel", "kernel again")


def _parts_hook(parts: list):
    """A forward pre-hook timing a Numba depthwise call's steps on the layer's input."""
    import numpy as np

    from kernelkit.kernels.numba import conv2d as nc

    def hook(mod, inp):
        clock = time.perf_counter
        t = [clock()]
        x, w = inp[0].detach().numpy(), mod.weight.detach().numpy()
        t.append(clock())
        n, c, h, wd = x.shape
        out = nc.aligned_empty(x.size, x.dtype)
        t.append(clock())
        np.isfinite(w).all()
        t.append(clock())
        fns = nc._compiled(x.dtype)
        fns.all_finite(w)
        t.append(clock())
        geo = nc._geo(n, c, h, wd, c, 3, 3, h, wd, (1, 1), (1, 1, 1, 1), (1, 1), c)
        t.append(clock())
        for _ in range(2):
            fns.dw(0, 1, x, w.reshape(-1), fns.empty, out, geo)
            t.append(clock())
        parts.append([b - a for a, b in zip(t, t[1:])])

    return hook


if __name__ == "__main__":
    sys.exit(main())
