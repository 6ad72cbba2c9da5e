"""RSS of a long-running process that serves an MLP on tensors of varying sizes (torch alone,
or with modules imported first: ``--import numba,kernelkit``). Run it with and without
``MALLOC_MMAP_THRESHOLD_=1048576`` to see glibc's share (README, "Serving").

    python bench/probes/serving_rss_probe.py [--calls 800] [--import numba]
"""

from __future__ import annotations

import argparse
import importlib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=800)
    ap.add_argument("--import", dest="imports", default="")
    args = ap.parse_args()
    import numpy as np
    import torch

    for name in filter(None, args.imports.split(",")):
        importlib.import_module(name)
    hidden = 256
    model = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU(),
                                torch.nn.Linear(4 * hidden, hidden))
    rng = np.random.default_rng(0)

    def rss_mb() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 >> 20

    with torch.inference_mode():
        for i in range(args.calls + 1):
            batch, seq = int(rng.integers(1, 34)), int(rng.integers(1, 301))
            model(torch.randn(batch, seq, hidden))
            if i % 200 == 0:
                print(f"call {i}: RSS {rss_mb()} MB", flush=True)


if __name__ == "__main__":
    main()
