"""The Numba kernels' threads: torch's OpenMP team against kernelkit's Python pool, in one process.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/openmp_team_probe.py [--batch 1] [--layers all|none] [--rounds 6]

Three measurements, each way (``_pool._TEAM`` switched between torch's OpenMP entry points and
False) interleaved with the other in the same process:

1. a launch: ``_pool.run`` of a two-share no-op entry point (median of 2000 calls per block, 9
   blocks), alone and right after a small torch conv (300 calls), on the team through its native
   trampoline (``_native``), on the team through Python callbacks, and on the Python pool;
2. a conv after a torch op (ResNet-18's layer3.0.conv1, 8x128x28x28 3x3 stride 2): the numba
   conv timed right after a torch batch norm + ReLU and right after itself, torch's conv after
   itself; medians of 15 rounds (what a layer inside a model sees);
3. with ``--layers all``: every ResNet-50 conv layer (tests/reference.CONV_RESNET50) at
   ``--batch``, config "auto", both ways and torch's F.conv2d, in their steady state
   (``_steady.py``), torch / ours per layer and the geometric means.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import types
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_medians  # noqa: E402

from kernelkit.kernels.numba import _pool  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402
from kernelkit.kernels.numba._gemm import entry_point  # noqa: E402

WAYS = ("team", "pool")


@numba.njit(nogil=True)
def _noop(t, nthr, out):
    out[t] += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", choices=["all", "none"], default="all")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    team = _pool._find_team()
    if not team:
        print("no OpenMP runtime loaded by torch here: nothing to compare")
        return 1

    def way(name):
        _pool._TEAM[0] = team if name == "team" else False

    pools = [(i["internal_api"], i.get("architecture"), i.get("filepath", "").split("/")[-1])
             for i in threadpool_info()]
    print(f"threads {args.threads}, torch {torch.__version__}, pools {pools}")

    out = np.zeros(args.threads, np.int64)
    noop = entry_point(_noop, types.void(types.int64, types.int64,
                                         types.Array(types.int64, 1, "C")))
    launch_ways = {"team, native": (team, True), "team, callbacks": (team, False),
                   "pool": (False, True)}
    xa, wa = torch.randn(1, 64, 28, 28), torch.randn(64, 64, 3, 3)
    for after, label in ((None, "alone"), (lambda: F.conv2d(xa, wa, padding=1),
                                           "right after a torch conv")):
        launch = {w: [] for w in launch_ways}
        for _ in range(9):
            for w, (t, native) in launch_ways.items():
                _pool._TEAM[0], _pool.NATIVE_SHARES = t, native
                for _ in range(100):
                    _pool.run(noop, args.threads, out)
                ts = []
                for _ in range(300 if after else 2000):
                    if after:
                        after()
                    t0 = time.perf_counter()
                    _pool.run(noop, args.threads, out)
                    ts.append(time.perf_counter() - t0)
                launch[w].append(statistics.median(ts))
        _pool.NATIVE_SHARES = True
        print(f"launch of a {args.threads}-share no-op, {label}, us: " + ", ".join(
            f"{w} {statistics.median(v) * 1e6:.1f}" for w, v in launch.items()))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 128, 28, 28, generator=g)
    w = torch.randn(256, 128, 3, 3, generator=g) * 0.05
    prev = torch.randn(8, 128, 28, 28, generator=g)
    cfg = nconv.Conv2dConfig.default(np.float32)
    xn, wn = x.numpy(), w.numpy()
    ref = F.conv2d(x, w, None, 2, 1)

    def numba_conv():
        return nconv.conv2d_forward(xn, wn, None, (2, 2), (1, 1, 1, 1), (1, 1), 1, None,
                                    "NCHW", cfg)

    def torch_conv():
        return F.conv2d(x, w, None, 2, 1)

    def torch_op():
        return F.relu(F.batch_norm(prev, None, None, torch.ones(128), torch.zeros(128), True))

    for w_ in WAYS:
        way(w_)
        torch.testing.assert_close(torch.from_numpy(numba_conv()), ref, rtol=1e-3, atol=1e-3)
    rows = {"numba after numba": (numba_conv, numba_conv),
            "numba after a torch op": (torch_op, numba_conv),
            "torch after torch": (torch_conv, torch_conv)}
    times = {(w_, k): [] for w_ in WAYS for k in rows}
    for rep in range(16):
        for w_ in WAYS:
            way(w_)
            for label, (before, timed) in rows.items():
                before()
                t0 = time.perf_counter()
                timed()
                if rep:
                    times[(w_, label)].append(time.perf_counter() - t0)
    print("8x128x28x28 3x3 stride 2 conv, medians of 15 rounds, ms:")
    for label in rows:
        print(f"  {label:<24} " + ", ".join(
            f"{w_} {statistics.median(times[(w_, label)]) * 1e3:.2f}" for w_ in WAYS))

    if args.layers == "none":
        return 0
    rng = np.random.default_rng(0)
    ratios = {w_: [] for w_ in WAYS}
    print(f"ResNet-50 conv layers, batch {args.batch}, fp32 NCHW, config auto, steady medians, ms")
    print(f"{'C_in':>5} {'C_out':>5} {'HW':>4} k s {'team':>8} {'pool':>8} {'torch':>8} "
          f"{'t/team':>7} {'t/pool':>7}")
    for c, k, hw, r, st, pad in CONV_RESNET50:
        xl = rng.standard_normal((args.batch, c, hw, hw), dtype=np.float32)
        wl = rng.standard_normal((k, c, r, r), dtype=np.float32)
        xt, wt = torch.from_numpy(xl), torch.from_numpy(wl)

        def ours(name, xl=xl, wl=wl, st=st, pad=pad):
            way(name)
            return nconv.conv2d_forward(xl, wl, None, (st, st), (pad,) * 4, (1, 1), 1, None,
                                        "NCHW", cfg)

        fns = [lambda n=n: ours(n) for n in WAYS]
        fns.append(lambda xt=xt, wt=wt, st=st, pad=pad: F.conv2d(xt, wt, stride=st, padding=pad))
        med = [t * 1e3 for t in steady_medians(fns, args.rounds)]
        for n, m in zip(WAYS, med):
            ratios[n].append(med[-1] / m)
        print(f"{c:5d} {k:5d} {hw:4d} {r} {st} " + " ".join(f"{m:8.3f}" for m in med) + " "
              + " ".join(f"{med[-1] / m:7.2f}" for m in med[:-1]), flush=True)
    print("geomean torch / ours: " + ", ".join(
        f"{n} {math.exp(statistics.fmean(math.log(v) for v in ratios[n])):.3f}" for n in WAYS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
