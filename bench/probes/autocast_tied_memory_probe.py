"""Memory an autograd graph holds after one forward of a layer called K times (a tied or looped
layer) under bfloat16 autocast with grad: a patched nn.Linear with its kernel route forced
(``KERNELKIT_BACKEND=numba``) against torch's own layer, each in a process of its own.

    KERNELKIT_CACHE_DIR=$(mktemp -d) python bench/probes/autocast_tied_memory_probe.py \\
        [--features 2048] [--calls 20] [--batch 8]

Prints the resident memory the forward added (RSS after it minus before: what its graph holds
for the backward), for both; torch's autocast casts the float32 weight once per region, so its
graph holds one bfloat16 copy of it. The children run with ``MALLOC_MMAP_THRESHOLD_=65536``:
every large block is mapped anew and unmapped when freed, so RSS follows the live memory (with
glibc's default the warm-up's freed blocks were reused and the forward added nothing). (Not
saved-tensor hooks: inside them a patched layer runs torch's own op, as under checkpointing.)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(kind: str, features: int, calls: int, batch: int) -> None:
    import torch

    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(features, features))
    if kind == "patched":
        import kernelkit.nn as knn

        knn.patch(layer)
        os.environ["KERNELKIT_BACKEND"] = "numba"
    x = torch.randn(batch, features, requires_grad=True)
    for _ in range(3):  # (routes made, kernels compiled, allocator warm)
        with torch.autocast("cpu", torch.bfloat16):
            h = x
            for _ in range(calls):
                h = layer(h)
        h.float().sum().backward()
    before = _rss_mb()
    with torch.autocast("cpu", torch.bfloat16):
        h = x
        for _ in range(calls):
            h = layer(h)
    held = _rss_mb() - before
    h.float().sum().backward()
    print(f"{kind}: {held:.0f} MB held after the forward of {calls} calls "
          f"(one bfloat16 weight: {features * features * 2 / 2**20:.0f} MB)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--child", choices=["torch", "patched"])
    args = ap.parse_args()
    if args.child:
        child(args.child, args.features, args.calls, args.batch)
        return 0
    for kind in ("torch", "patched"):
        subprocess.run([sys.executable, __file__, "--child", kind, "--features",
                        str(args.features), "--calls", str(args.calls), "--batch",
                        str(args.batch)], check=True,
                       env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
