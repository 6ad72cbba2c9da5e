"""What torch.profiler records of a patched model whose layers run kernelkit's Numba kernels,
under inference_mode: the wall time of one forward and the profile's top events by total CPU
time, against the unpatched model, alternated (2 rounds each).

    KERNELKIT_CACHE_DIR=$(mktemp -d) python bench/probes/profiler_events_probe.py
"""

from __future__ import annotations

import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile

import kernelkit


def _profiled(model: torch.nn.Module, x: torch.Tensor) -> str:
    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            model(x)
            wall = time.perf_counter() - t0
    top = sorted(prof.key_averages(), key=lambda e: -e.cpu_time_total)[:4]
    return f"wall {wall * 1e3:6.2f} ms | top: " + ", ".join(
        f"{e.key} {e.cpu_time_total / 1e3:.2f}" for e in top)


def main() -> None:
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(32 * 32 * 32, 64))
    model = copy.deepcopy(ref)
    kernelkit.nn.patch(model)
    x = torch.randn(8, 16, 32, 32)
    for _ in range(2):
        print("torch          ", _profiled(ref, x))
        with kernelkit.use(backend="numba"):
            print("patched, numba ", _profiled(model, x))


if __name__ == "__main__":
    main()
