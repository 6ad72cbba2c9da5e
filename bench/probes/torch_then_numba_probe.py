"""What a torch op costs the Numba kernel that runs right after it (and the other way round).

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/torch_then_numba_probe.py            # add e.g. GOMP_SPINCOUNT=10000

One conv layer (ResNet-18 layer3.0.conv1: 8x128x28x28, 3x3, stride 2, 256 filters), the numba
kernel's bound plan and torch's F.conv2d, each timed right after a call of its own kind (as the
tuner's settling call has it) and right after the other's kind (a torch batch norm + ReLU before
numba, as inside a model). Medians of 14 interleaved rounds, ms. Run it with nothing else on the
machine; GOMP_SPINCOUNT / OMP_WAIT_POLICY must be set in the environment (torch's OpenMP reads
them when it loads).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import torch
    import torch.nn.functional as F

    from kernelkit import core
    from kernelkit.ops import conv2d

    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 128, 28, 28, generator=g)
    w = torch.randn(256, 128, 3, 3, generator=g) * 0.05
    prev = torch.randn(8, 128, 28, 28, generator=g)
    call = conv2d.prepare_forward(x, w, None, stride=(2, 2), padding=(1, 1, 1, 1))
    cand = core.get("conv2d", "numba-cpu")
    plan = call.bind(cand, cand.space(call.problem)[0])
    torch.testing.assert_close(plan(x, w, None), F.conv2d(x, w, None, 2, 1), rtol=1e-3, atol=1e-3)
    numba_conv = lambda: plan(x, w, None)
    torch_conv = lambda: F.conv2d(x, w, None, 2, 1)
    torch_op = lambda: F.relu(F.batch_norm(prev, None, None, torch.ones(128), torch.zeros(128),
                                           True))
    rows = {"numba after numba": (numba_conv, numba_conv),
            "numba after a torch op": (torch_op, numba_conv),
            "torch after torch": (torch_conv, torch_conv),
            "torch after numba": (numba_conv, torch_conv)}
    times = {k: [] for k in rows}
    for rep in range(15):
        for label, (before, timed) in rows.items():
            before()
            t0 = time.perf_counter()
            timed()
            if rep:
                times[label].append(time.perf_counter() - t0)
    env = {k: os.environ[k] for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ}
    print(f"numba threading layer {numba.threading_layer()}; {env or 'OpenMP defaults'}")
    for label, v in times.items():
        print(f"{label:<24} {statistics.median(v) * 1e3:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
