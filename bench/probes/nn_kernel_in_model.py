"""A Numba-routed conv layer timed inside a patched ResNet-50's own forward at batch 1, where
the in-model trial (kernelkit.nn._route.InContext) judged it: its kernel route and torch's
F.conv2d called from a forward pre-hook on the layer, on the layer's real input, in alternating
order, and then the kernel twice more (on a detached weight, and again).

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_kernel_in_model.py [--layer layer1.0.conv1] [--calls 40]

Tunes the pair into a fresh cache (KERNELKIT_TUNE=measure, as nn_resnets.py), settles the
trials with inference calls, then runs ``--calls`` inference calls with the hook; prints the
trial's verdict and each row's median (ms). The layer must be one whose route the tuner gave
a kernel (the trial may have handed it back to torch since; the kernel is still timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _inmodel.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="layer1.0.conv1")
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-inmodel-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import torch.nn.functional as F
    from _inmodel import settled_trial

    from kernelkit import devices

    pair, layer, trial = settled_trial(args.layer)
    if trial is None:
        print(f"{args.layer}: the tuner gave it no kernel in this run")
        return 1
    rows = ("kernel first", "torch first", "kernel second", "torch second",
            "kernel again, detached weight", "kernel again")
    times: dict[str, list[float]] = {r: [] for r in rows}
    calls = [0]

    def timed(row, fn):
        t0 = time.perf_counter()
        fn()
        times[row].append(time.perf_counter() - t0)

    def pre(mod, inputs):
        x, w = inputs[0], mod.weight
        kernel = lambda w=w: trial.kernel(mod, x, w, None)  # noqa: E731
        conv = lambda: F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation,  # noqa: E731
                                mod.groups)
        order = (("kernel", kernel), ("torch", conv))
        for pos, (name, fn) in zip(("first", "second"), order[::1 - 2 * (calls[0] % 2)]):
            timed(f"{name} {pos}", fn)
        timed("kernel again, detached weight", lambda: kernel(w.detach()))
        timed("kernel again", kernel)
        calls[0] += 1

    hook = layer.register_forward_pre_hook(pre)
    for _ in range(args.calls):
        pair.infer(pair.pat)
    hook.remove()
    verdict = {g: tuple(round(v * 1e3, 3) for v in kt) for g, kt in trial.verdicts.items()}
    print(f"{devices.cpu_info()['model']}, 2 threads; resnet50 batch 1, {args.layer}; trial "
          f"verdict (kernel ms, torch ms) per grad mode: {verdict}")
    for row in rows:
        print(f"{row:30s} {statistics.median(times[row][2:]) * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
