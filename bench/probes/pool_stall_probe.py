"""Two CPU libraries' thread pools against each other: numpy (OpenBLAS) and torch (OpenMP) matmuls
alone, alternating call by call, and alternating with untimed settling calls in between.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/probes/pool_stall_probe.py \\
        [--shapes 97x61x89 160x160x160 300x500x100] [--rounds 100]

Why it exists: on 2 cores, each library's first call after the other's waits about a scheduler
tick (4 ms) for a core that the other's idle threads are spinning on (OpenBLAS spins ~0.1 s after
each call; `OPENBLAS_THREAD_TIMEOUT=4`, set before numpy is imported, stops it). This is why a CPU
matmul stays with the BLAS of its data's library (`Backend.own_data_only`) and why the tuner's
interleaved timer settles each function with an untimed call. Medians in microseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from threadpoolctl import threadpool_info


def _rounds(fns, rounds: int, settle: int = 0) -> list[float]:
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(settle):
                fn()
            t0 = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e6 for t in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", default=["97x61x89", "160x160x160", "300x500x100"])
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(2)
    blas = [(i["internal_api"], i.get("architecture"), i["num_threads"]) for i in threadpool_info()]
    print(f"threads: {blas}; OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT')}")
    print("| shape | numpy alone | torch alone | numpy / torch alternating | "
          "with 1 settling call |\n| --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for shape in args.shapes:
        m, k, n = (int(v) for v in shape.split("x"))
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        numpy_mm, torch_mm = (lambda: a @ b), (lambda: torch.matmul(ta, tb))
        numpy_mm(), torch_mm()
        alone = _rounds([numpy_mm], args.rounds) + _rounds([torch_mm], args.rounds)
        mixed = _rounds([numpy_mm, torch_mm], args.rounds)
        settled = _rounds([numpy_mm, torch_mm], args.rounds, settle=1)
        print(f"| {shape} | {alone[0]:.1f} | {alone[1]:.1f} | {mixed[0]:.1f} / {mixed[1]:.1f} | "
              f"{settled[0]:.1f} / {settled[1]:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
