"""A bfloat16 conv block as a model runs it (``kernelkit.conv2d`` with the Numba backend forced,
then torch's batch norm and ReLU), with the conv's output rounded inside its launch
(``conv2d.PAIRS_ROUND_IN_LAUNCH``, now) or after it, in one process, alternated.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/bf16_block_probe.py [--layers 8,64,56 1,256,14] [--rounds 30]

A layer is N,C,H=W (a C -> C 3x3 conv, padding 1, torch bfloat16 tensors, 2 threads, no
grad). Per round each setting runs the block once, the first setting alternating from round to
round; the table gives the medians after three rounds, the ratio and the minor page faults per
block (getrusage).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", nargs="+", default=["8,64,56", "8,128,28", "8,256,14",
                                                    "8,512,7", "1,256,14"])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    import torch

    import kernelkit
    from kernelkit import devices
    from kernelkit.kernels.numba import conv2d as nconv

    torch.set_num_threads(2)
    print(f"cpu: {devices.cpu_info()['model']}; torch {torch.__version__}; bfloat16 conv "
          "(Numba) + batch norm + ReLU, ms")
    print("| layer | rounded after | rounded inside | after / inside | faults per block |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.layers:
        n, c, hw = (int(v) for v in spec.split(","))
        x = torch.randn(n, c, hw, hw).bfloat16()
        w = (torch.randn(c, c, 3, 3) * 0.05).bfloat16()
        bn = torch.nn.BatchNorm2d(c).eval().bfloat16()

        def block():
            with kernelkit.use(backend="numba"):
                y = kernelkit.conv2d(x, w, padding=1)
            return torch.relu(bn(y))

        times: dict[bool, list[float]] = {False: [], True: []}
        faults: dict[bool, list[int]] = {False: [], True: []}
        with torch.no_grad():
            for _ in range(3):
                block()
            for r in range(args.rounds):
                for inside in ((False, True) if r % 2 == 0 else (True, False)):
                    nconv.PAIRS_ROUND_IN_LAUNCH = inside
                    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    t0 = time.perf_counter()
                    block()
                    times[inside].append(time.perf_counter() - t0)
                    faults[inside].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        nconv.PAIRS_ROUND_IN_LAUNCH = True
        med = {k: statistics.median(v[3:]) * 1e3 for k, v in times.items()}
        flt = {k: statistics.median(v[3:]) for k, v in faults.items()}
        print(f"| {n} x {c} ch {hw} px | {med[False]:.3f} | {med[True]:.3f} | "
              f"{med[False] / med[True]:.2f} | {flt[False]:.0f} / {flt[True]:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
