"""How the tuner's timer sees a Numba matmul beside numpy's BLAS, against each one's steady state.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \
        python bench/probes/tuner_blas_probe.py [--threads 2] [--sizes 512x512x512 ...]

For each (M, K, N) float32 product on numpy data, two plans (the tuned Numba config, forced, and
the numpy backend) are timed three ways, in one process:
- "round-robin": the timer as it was before blocks (one untimed then one timed call of each
  function per round): after every numpy call OpenBLAS's workers spin for ~0.1 s, so the Numba
  call that follows shares the cores with them;
- "timer": `kernelkit.autotune.timing.measure_interleaved`, what the tuner runs now (BLAS callers
  timed in blocks apart from the others, `_measure_in_blocks`);
- "alone": each plan by itself after 0.2 s of untimed calls (`timing.measure`), twice for Numba
  (before and after numpy's block): the steady state a user repeating the op sees.
Medians in ms, and numba / numpy per way (below 1: Numba faster).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

SIZES = ("256x256x256", "512x512x512", "1024x1024x1024", "128x768x3072", "8x4096x4096",
         "1x4096x4096")


def _round_robin(fns, reps: int = 9) -> list[float]:
    """The timer before blocks: one untimed and one timed call of each function per round."""
    for fn in fns:
        fn()
    samples = [[] for _ in fns]
    for rep in range(reps):
        for i in range(rep, rep + len(fns)):
            fn = fns[i % len(fns)]
            fn()
            t0 = time.perf_counter()
            fn()
            samples[i % len(fns)].append(time.perf_counter() - t0)
    return [float(np.median(s)) for s in samples]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=list(SIZES))
    args = p.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-tuner-blas-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    import kernelkit
    from kernelkit import core, devices
    from kernelkit.autotune import timing
    from kernelkit.ops import matmul as matmul_op

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    limits = threadpool_limits(args.threads)
    blas = [(i.get("internal_api"), i.get("architecture"), i.get("num_threads"))
            for i in threadpool_info() if i.get("user_api") == "blas"]
    print(f"CPU: {devices.cpu_info()['model']}, {args.threads} threads; BLAS: {blas}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')}")
    print()
    print("| M x K x N | Numba config | round-robin numba / numpy ms | timer numba / numpy ms "
          "| alone numba, numpy, numba ms | numba/numpy: round-robin | timer | alone |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        m, k, n = (int(v) for v in size.split("x"))
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        with kernelkit.use(backend="numba"):
            kernelkit.matmul(a, b)  # tunes the Numba configs of this size
            choice = kernelkit.explain("matmul", a, b).choice
        call = matmul_op.prepare(a, b)
        numba_plan = call.bind(core.get("matmul", choice.candidate), choice.config)
        numpy_plan = call.bind(core.get("matmul", "numpy-cpu"), {})
        fns = [lambda: numba_plan(a, b, None), lambda: numpy_plan(a, b, None)]
        rr = _round_robin(fns)
        timer = [t.median for t in timing.measure_interleaved(fns, min_reps=9, budget_s=1.0)]
        alone = []
        for fn in (fns[0], fns[1], fns[0]):
            end = time.monotonic() + 0.2  # untimed calls until the other library went quiet
            while time.monotonic() < end:
                fn()
            alone.append(timing.measure(fn, warmup=1, budget_s=0.5).median)
        steady = min(alone[0], alone[2])
        print(f"| {m}x{k}x{n} | {choice.config.get('kernel', 'packed')} | "
              f"{rr[0] * 1e3:.3f} / {rr[1] * 1e3:.3f} | {timer[0] * 1e3:.3f} / {timer[1] * 1e3:.3f} "
              f"| {alone[0] * 1e3:.3f}, {alone[1] * 1e3:.3f}, {alone[2] * 1e3:.3f} | "
              f"{rr[0] / rr[1]:.2f} | {timer[0] / timer[1]:.2f} | {steady / alone[1]:.2f} |",
              flush=True)
    limits.restore_original_limits()


if __name__ == "__main__":
    main()
