"""One training step (forward + backward) of a kernelkit layer with a fused activation, the
Numba backend forced: the median over 15 blocks of 3 steps, in ms, after 5 warm-up steps.

    for case in linear_gelu linear_relu conv_relu conv_gelu; do
        env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
            python bench/probes/fused_train_step_probe.py $case
    done

Cases: ``linear_<act>`` is Linear(1024, 1024) on a (512, 1024) input that needs its gradient;
``conv_<act>`` is Conv2d(128, 128, 3, padding=1) on (8, 128, 28, 28). A second argument
``compiled`` runs the layer under ``torch.compile(fullgraph=True)``: the registered op and its
registered backward (the eager Function otherwise). Before/after a change: run it with
PYTHONPATH set to a worktree of the older commit, alternated with this checkout.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import kernelkit
import kernelkit.nn as knn


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    which = sys.argv[1] if len(sys.argv) > 1 else "linear_gelu"
    kind, act = which.split("_", 1)
    if kind == "linear":
        layer = knn.Linear(1024, 1024, activation=act)
        x = torch.randn(512, 1024, requires_grad=True)
    else:
        layer = knn.Conv2d(128, 128, 3, padding=1, activation=act)
        x = torch.randn(8, 128, 28, 28, requires_grad=True)

    run = layer
    if len(sys.argv) > 2 and sys.argv[2] == "compiled":
        run = torch.compile(layer, fullgraph=True)
        which += " compiled"

    def step() -> None:
        run(x).sum().backward()

    with kernelkit.use(backend="numba"):
        if run is not layer:  # (an eager step first: the trace then takes the kernel's op,
            layer(x).sum().backward()  # see nn/_route.compiled)
        for _ in range(5):
            step()
        times = []
        for _ in range(15):
            t0 = time.perf_counter()
            for _ in range(3):
                step()
            times.append((time.perf_counter() - t0) / 3 * 1e3)
    print(f"{which} {statistics.median(times):.2f} ms")


if __name__ == "__main__":
    main()
