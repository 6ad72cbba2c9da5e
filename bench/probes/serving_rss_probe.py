"""RSS of a long-running process that serves an MLP on tensors of varying sizes (torch alone,
or with modules imported first: ``--import numba,kernelkit``). Run it with and without
``MALLOC_MMAP_THRESHOLD_=1048576`` to see glibc's share (README, "Serving"), and with
``--keep-heap`` (`kernelkit.keep_heap()` first) for what keeping freed memory costs here.

    python bench/probes/serving_rss_probe.py [--calls 800] [--import numba] [--keep-heap]
"""

from __future__ import annotations

import argparse
import importlib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=800)
    ap.add_argument("--import", dest="imports", default="")
    ap.add_argument("--keep-heap", action="store_true", help="kernelkit.keep_heap() first")
    args = ap.parse_args()
    if args.keep_heap:
        import kernelkit

        print(f"keep_heap: {kernelkit.keep_heap()}")
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
