"""float16 / bfloat16 matmul against float32 on the Numba backend and against torch's own
half-precision matmul, calls interleaved: the rate of the half-precision path as a share of the
float32 one (issue 13's fp16 bar: at least 0.8x) and of torch's (its bf16 bar: at least 0.8x).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/half_matmul_probe.py [--sizes 256 1024 2048] [--dtype float16]

The first two rows are ``kernelkit.matmul`` on torch CPU tensors with the Numba backend forced
(each size tuned once beforehand: ``kernelkit.explain`` measures every config and stores the
winner, which the timed calls then run; under the default ``auto`` policy a size's first calls
would run the cost model's guess until measuring pays), the third ``torch.matmul`` on the half-precision tensors;
each row timed in its steady state, rows interleaved (``_steady.py``: torch's
spinning OpenMP workers would otherwise slow the call after torch's), medians over the rounds.
The rows in ``bench/test_bench_half.py`` run one after the other, and at 256^3 (about 0.5 ms a
call) this VM's drift between them was larger than the difference being measured (the float32
row alone read 33 to 63 GFLOP/s across runs); here all rows see the same moments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import faults_per_call, steady_medians  # noqa: E402

import kernelkit  # noqa: E402
from kernelkit import devices  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 2048])
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--no-torch", action="store_true",
                    help="leave out torch's row (its float16 runs scalar loops on most CPUs: "
                         "about a minute per 2048^3 call)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"cpu: {devices.cpu_info()['model']}; {args.dtype} vs float32, Numba forced; torch "
          f"{torch.__version__} ({torch.backends.cpu.get_cpu_capability()})")
    print("| n | Numba float32 GFLOP/s | Numba half GFLOP/s | torch half GFLOP/s | half / float32 "
          "| half / torch | half's config | page faults per call (float32, half) |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in args.sizes:
        g = torch.Generator().manual_seed(n)
        a32, b32 = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
        half = getattr(torch, args.dtype)
        a16, b16 = a32.to(half), b32.to(half)

        def numba(a, b):
            with kernelkit.use(backend="numba"):
                return kernelkit.matmul(a, b)

        rows = {"half": lambda: numba(a16, b16), "fp32": lambda: numba(a32, b32)}
        if not args.no_torch:
            rows["torch"] = lambda: torch.matmul(a16, b16)
        with kernelkit.use(backend="numba"):  # tuned once beforehand: measured and stored
            for a, b in ((a16, b16), (a32, b32)):
                kernelkit.explain("matmul", a, b)
        for fn in rows.values():  # compiled and warm
            fn()
            fn()
        med = dict(zip(rows, steady_medians(list(rows.values()), args.rounds)))
        flops = 2.0 * n**3
        gf = {k: flops / v / 1e9 for k, v in med.items()}
        tq = (f"{gf['torch']:.1f}", f"{med['torch'] / med['half']:.2f}x") if "torch" in med \
            else ("-", "-")
        with kernelkit.use(backend="numba"):  # the tuner's choice (cached by explain)
            cfg = kernelkit.explain("matmul", a16, b16).choice.config
        flt = f"{faults_per_call(rows['fp32']):.0f}, {faults_per_call(rows['half']):.0f}"
        print(f"| {n} | {gf['fp32']:.1f} | {gf['half']:.1f} | {tq[0]} | "
              f"{med['fp32'] / med['half']:.2f}x | {tq[1]} | {cfg} | {flt} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
