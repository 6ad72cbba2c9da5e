"""A patched nn.Linear(64, 64) on a 4x64 input against torch's, with the vendor forced, for any
checkout (so an old commit and a new one can be run back to back):

    KERNELKIT_CACHE_DIR=/tmp/kk-probe PYTHONPATH=<checkout> python bench/probes/nn_linear_overhead.py NAME [--autocast]

Patches an `nn.Sequential` holding the layer (older `patch` did not patch a bare layer), one
torch thread, 31 interleaved blocks of 300 calls; prints the medians and the median per-block
difference, without and with grad; `--autocast`: every call under bfloat16 autocast.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import kernelkit
import kernelkit.nn as knn


def per_call(fn, n: int = 300) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def main(name: str, autocast: bool) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(64, 64))
    pat = copy.deepcopy(ref)
    knn.patch(pat)
    assert type(pat[0]) is not nn.Linear
    ref, pat = ref[0], pat[0]
    x = torch.randn(4, 64)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), kernelkit.use(backend="torch"), \
                torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            pat(x), ref(x)
            r, p, d = [], [], []
            for _ in range(31):
                a, b = per_call(lambda: ref(x)), per_call(lambda: pat(x))
                r.append(a)
                p.append(b)
                d.append(b - a)
        print(f"{name}{' autocast' * autocast} grad={grad}: torch {statistics.median(r) * 1e6:.2f} us, patched "
              f"{statistics.median(p) * 1e6:.2f} us, overhead {statistics.median(d) * 1e6:+.2f} us")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", nargs="?", default="this checkout")
    ap.add_argument("--autocast", action="store_true")
    args = ap.parse_args()
    main(args.name, args.autocast)
