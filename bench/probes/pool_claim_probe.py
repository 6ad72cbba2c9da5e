"""The Python pool's shares, fixed against claimed, after another library's threads ran.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/pool_claim_probe.py [--rounds 15]

Numpy data run the Numba kernels' shares on kernelkit's Python pool (`_pool.run_pool`). Four
ways of running the same shares, interleaved in one process (each round starts at the next way):

* ``fixed``: share t on thread t (``run_pool(claim=False)``, the pool before claiming);
* ``claim``: every thread claims the next unclaimed share (``run_pool``, the default);
* ``team``: torch's OpenMP team (``_pool._run_on_team``: what torch tensors get);
* ``one``: every share in turn on the calling thread (the same split, one thread).

Each kernel (a ResNet-18 conv, 8x128x28x28 3x3 stride 2, and a 512^3 matmul, float32 numpy) is
timed in three conditions: right after itself ("quiet"), right after a torch op (a torch conv,
whose OpenMP workers then spin), right after a numpy BLAS call (a 256^3 matmul, whose OpenBLAS
workers then spin). Prints the median milliseconds per (kernel, condition, way).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_info

from kernelkit.kernels.numba import _pool
from kernelkit.kernels.numba import conv2d as nconv
from kernelkit.kernels.numba import matmul as nmatmul


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(2)
    numba.set_num_threads(2)
    team = _pool._find_team()
    ways = {
        "fixed": lambda fn, n, *a: _pool.run_pool(fn, n, *a, claim=False),
        "claim": lambda fn, n, *a: _pool.run_pool(fn, n, *a),
        "team": lambda fn, n, *a: _pool._run_on_team(team, fn, n, a),
        "one": lambda fn, n, *a: [fn(t, n, *a) for t in range(n)],
    }
    # every way runs the conv's two phases apart (a synced run would need its own threads)
    nconv._run_synced = lambda *a: False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 128, 28, 28), np.float32)
    w = rng.standard_normal((256, 128, 3, 3), np.float32) * 0.05
    a = rng.standard_normal((1, 512, 512), np.float32)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    blas = rng.standard_normal((256, 256))
    kernels = {
        "conv 8x128x28 s2": lambda: nconv.conv2d_forward(x, w, None, (2, 2), (1, 1, 1, 1), (1, 1),
                                                         1, None, "NCHW"),
        "matmul 512^3": lambda: nmatmul.matmul_forward(a, a),
    }
    before = {
        "quiet": None,
        "after torch": lambda: F.conv2d(tx, tw, stride=2, padding=1),
        "after BLAS": lambda: blas @ blas,
    }
    for kname, kernel in kernels.items():
        for way in ways.values():  # compile, warm the workspace
            nconv._run = nmatmul._run = way
            kernel()
        for cond, pre in before.items():
            times = {w: [] for w in ways}
            names = list(ways)
            for rnd in range(args.rounds):
                for j in range(len(names)):
                    wname = names[(rnd + j) % len(names)]
                    nconv._run = nmatmul._run = ways[wname]
                    (pre or kernel)()
                    t0 = time.perf_counter()
                    kernel()
                    times[wname].append(time.perf_counter() - t0)
            print(f"{kname:18s} {cond:12s} " + "  ".join(
                f"{w} {statistics.median(t) * 1e3:6.2f}" for w, t in times.items()), flush=True)
    print("OpenBLAS:", [(i.get("internal_api"), i.get("architecture"))
                        for i in threadpool_info() if i.get("internal_api") == "openblas"])


if __name__ == "__main__":
    main()
