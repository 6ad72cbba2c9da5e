"""One Numba-routed conv layer of a patched ResNet-50 at batch 1 (``layer1.0.conv1``: 64 -> 64
1x1 at 56 px, float32 NCHW), the kernel's plan against torch's F.conv2d, after what comes before
it in a model: why the in-model trials see the kernel 1.7-2.4x slower than torch on layers
where the tuner (which times each candidate called back to back) saw a tie.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_cold_context_probe.py [--reps 40]

Contexts, each run right before the timed call (untimed): the same call (back to back, as the
tuner times a candidate); none (the same input again, after the previous row's call); the
input produced by a max pool (as in the model); by the stem (conv, batch norm, ReLU, max pool);
a fresh copy of it; the same input after writing a 64 MiB buffer (its lines evicted from the
caches, as the rest of a model's weights and activations do); a max pool's output after that
sweep. Rows interleaved, one call each per round; medians (ms) of ``--reps`` rounds after two.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-cold-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import torch
    import torch.nn.functional as F

    import kernelkit
    from kernelkit import devices
    from kernelkit.ops import conv2d as ops_conv2d
    from kernelkit.ops.dispatch import signature3

    torch.set_num_threads(2)
    torch.set_grad_enabled(False)
    x0, w = torch.randn(1, 64, 56, 56), torch.randn(64, 64, 1, 1) * 0.1
    pooled_in = torch.randn(1, 64, 112, 112)
    img, w_stem = torch.randn(1, 3, 224, 224), torch.randn(64, 3, 7, 7) * 0.1
    ones, zeros = torch.ones(64), torch.zeros(64)
    junk = torch.randn(16 * 1024 * 1024)  # 64 MiB
    with kernelkit.use(backend="numba"):
        for _ in range(20):
            kernelkit.conv2d(x0, w)
        plan = ops_conv2d._FORWARD[signature3(x0, w, None, (1, 0, 1, 1, None, None, False))]

    def stem():
        y = F.conv2d(img, w_stem, stride=2, padding=3)
        return F.max_pool2d(F.relu(F.batch_norm(y, None, None, ones, zeros, True)), 3, 2, 1)

    contexts = {
        "the same call just before": None,  # as the tuner times: back to back
        "none (same input)": lambda: x0,
        "input from a max pool": lambda: F.max_pool2d(pooled_in, 3, 2, 1),
        "input from the stem": stem,
        "a fresh copy": lambda: x0.clone(),
        "after a 64 MiB sweep": lambda: (junk.add_(1.0), x0)[1],
        "max pool after the sweep": lambda: (junk.add_(1.0), F.max_pool2d(pooled_in, 3, 2, 1))[1],
    }
    kernels = {"torch": lambda x: F.conv2d(x, w), "numba": lambda x: plan(x, w, None)}
    times = {(c, k): [] for c in contexts for k in kernels}
    for rep in range(args.reps + 2):
        for (c, k) in times:
            if contexts[c] is None:
                x = x0
                kernels[k](x)
            else:
                x = contexts[c]()
            t0 = time.perf_counter()
            kernels[k](x)
            if rep >= 2:
                times[(c, k)].append(time.perf_counter() - t0)
    print(f"{devices.cpu_info()['model']}, 2 threads; 1 x 64 x 56 x 56, 1x1 64 -> 64, medians ms")
    print("| context | torch | numba | torch / numba |\n| --- | --- | --- | --- |")
    for c in contexts:
        t, n = (statistics.median(times[(c, k)]) * 1e3 for k in kernels)
        print(f"| {c} | {t:.3f} | {n:.3f} | {t / n:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
