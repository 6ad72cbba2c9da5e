"""Where a Numba-routed conv layer's extra time inside a patched ResNet-50 goes: its kernel route
timed from a forward pre-hook on the layer's real input (batch 1) after different things ran
just before it, with the call split at the kernel's launch (``conv2d._launch`` / ``_run``) into
the Python before it, the launch (the shares on the threads) and the Python after it.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_kernel_cold_parts.py [--layer layer1.0.conv1] [--calls 20]

Each model call times one row, in rotation, so every row runs in the model's own context (the
other layers ran since the row's last call). Rows (what ran right before the timed call):

* cold: nothing (the model's previous layers: batch norm, ReLU, the other convs);
* second in a row: the same kernel route on the same input;
* after the kernel on a clone: the route on a copy of the input (the kernel's code, threads,
  weight and output memory warm; not this input);
* after x.sum / after torch's conv: the input read by torch (warm data, cold kernel);
* after a no-op region: an empty Numba share run on the kernel's threads (warm threads);
* one thread cold / one thread second: numba.set_num_threads(1) for the call(s).

Prints the median ms of each row and of its three parts. Tunes into a fresh cache as
nn_kernel_in_model.py does; the layer must be one the tuner gave a kernel.
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

ROWS = ("cold", "second in a row", "after the kernel on a clone", "after x.sum",
        "after torch's conv", "after a no-op region", "one thread cold", "one thread second")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="layer1.0.conv1")
    ap.add_argument("--calls", type=int, default=20, help="timed calls per row")
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-coldparts-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import numpy as np
    import torch.nn.functional as F
    from _inmodel import settled_trial

    from kernelkit import devices
    from kernelkit.kernels.numba import _pool
    from kernelkit.kernels.numba import conv2d as numba_conv

    pair, layer, trial = settled_trial(args.layer)
    if trial is None:
        print(f"{args.layer}: the tuner gave it no kernel in this run")
        return 1

    marks: dict[str, float] = {"depth": 0}
    for name in ("_launch", "_run"):  # the kernel's launch, whichever way the forward takes
        real = getattr(numba_conv, name)

        def timed_launch(*a, _real=real):  # (the outermost: _launch calls _run)
            marks["depth"] += 1
            if marks["depth"] == 1:
                marks["enter"] = time.perf_counter()
            try:
                return _real(*a)
            finally:
                marks["depth"] -= 1
                if marks["depth"] == 0:
                    marks["exit"] = time.perf_counter()

        setattr(numba_conv, name, timed_launch)

    @numba.njit(nogil=True)
    def noop(t, n, a):
        a[t] += 1.0

    scratch = np.zeros(8)
    noop(0, 1, scratch)
    parts: dict[str, list[tuple[float, float, float, float]]] = {r: [] for r in ROWS}
    calls = [0]

    def pre(mod, inputs):
        x, w = inputs[0], mod.weight
        row = ROWS[calls[0] % len(ROWS)]
        calls[0] += 1
        clone = x.clone()
        one = row.startswith("one thread")
        if one:
            numba.set_num_threads(1)
        try:
            if row in ("second in a row", "one thread second"):
                trial.kernel(mod, x, w, None)
            elif row == "after the kernel on a clone":
                trial.kernel(mod, clone, w, None)
            elif row == "after x.sum":
                x.sum()
            elif row == "after torch's conv":
                F.conv2d(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups)
            elif row == "after a no-op region":
                _pool.run(noop, 2, scratch)
            t0 = time.perf_counter()
            trial.kernel(mod, x, w, None)
            t1 = time.perf_counter()
        finally:
            if one:
                numba.set_num_threads(2)
        parts[row].append((t1 - t0, marks["enter"] - t0, marks["exit"] - marks["enter"],
                           t1 - marks["exit"]))

    hook = layer.register_forward_pre_hook(pre)
    for _ in range(args.calls * len(ROWS)):
        pair.infer(pair.pat)
    hook.remove()
    verdict = {g: tuple(round(v * 1e3, 3) for v in kt) for g, kt in trial.verdicts.items()}
    print(f"{devices.cpu_info()['model']}, 2 threads; resnet50 batch 1, {args.layer}; trial "
          f"verdict (kernel ms, torch ms) per grad mode: {verdict}")
    print(f"{'row':30s} {'total':>7s} {'before':>7s} {'launch':>7s} {'after':>7s}  (ms, medians)")
    for row in ROWS:
        got = parts[row][1:]
        med = [statistics.median(p[i] for p in got) * 1e3 for i in range(4)]
        print(f"{row:30s} " + " ".join(f"{v:7.3f}" for v in med))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
