"""The whole GPU suite in one run: correctness of every GPU kernel, then speed against cuBLAS.

    python bench/gpu_check.py OUTDIR            # on a GPU machine (< 8 minutes on an H100)
    python bench/gpu_check.py OUTDIR --dry-run  # no GPU: Triton in the interpreter, tiny shapes

Correctness: every GPU kernel (Triton, CuPy) on every dtype it supports, over aligned, odd,
transposed and batched-broadcast shapes, with bias and each activation, and every shipped config
on one ragged shape, against a float64 reference (normwise bound, as in tests/reference.py).
Then the dispatched `kernelkit.matmul` on CUDA tensors and on host numpy arrays.
Speed: each kernel's best shipped config vs torch.matmul (cuBLAS) on square, LLM-MLP and odd
shapes, timed with CUDA events (triton.testing.do_bench: warm-up, L2 flush, synchronised).
Writes OUTDIR/results.json and OUTDIR/summary.md; prints the short table last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

ACTS = (None, "relu", "gelu", "gelu_tanh", "silu")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--dry-run", action="store_true", help="no GPU: interpreter, tiny shapes")
    p.add_argument("--skip-bench", action="store_true")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop benchmarking after this")
    return p.parse_args()


def main() -> int:
    args = parse()
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run to exercise the script on the CPU")
        return 2
    dev = "cpu" if args.dry_run else "cuda"
    card = "interpreter (CPU)" if args.dry_run else torch.cuda.get_device_name(0)
    t_start = time.perf_counter()
    results: dict = {"card": card, "torch": torch.__version__, "checks": [], "bench": []}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None

    from reference import assert_matmul_close

    import kernelkit
    from kernelkit import devices
    from kernelkit.kernels.torch import matmul as vendor
    from kernelkit.kernels.triton import matmul as tri

    cupy_ok = not args.dry_run and devices.cupy_available()
    if cupy_ok:
        import cupy

        from kernelkit.kernels.cupy import matmul as cpk
        results["cupy"] = cupy.__version__

    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype).to(dev)

    def check(name: str, fn, a, b, bias=None, act=None, acc=None) -> None:
        entry = {"check": name, "ok": False}
        try:
            c = fn(a, b, bias, act)
            if dev == "cuda":
                torch.cuda.synchronize()
            c_t = torch.as_tensor(c) if not hasattr(c, "get") else torch.from_numpy(c.get())
            assert_matmul_close(c_t.cpu(), a.cpu(), b.cpu(), None if bias is None else bias.cpu(),
                                act, acc=acc)
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 - a failing check is reported, the run goes on
            entry["error"] = f"{type(exc).__name__}: {exc}"[:400]
        results["checks"].append(entry)

    # -- correctness -----------------------------------------------------------------------------
    dtypes = [torch.float32, torch.float16] if args.dry_run else \
        [torch.float16, torch.bfloat16, torch.float32]
    shapes = [(1, 1, 1), (13, 17, 19), (64, 64, 64)] if args.dry_run else \
        [(1, 1, 1), (13, 17, 19), (97, 61, 89), (128, 128, 128), (257, 511, 1023), (1, 4096, 11008)]
    kernels = [("triton", lambda a, b, bias, act, cfg=None, tf32=False:
                tri.matmul_forward(a, b, bias, act, cfg, allow_tf32=tf32))]
    if cupy_ok:
        kernels.append(("cupy", lambda a, b, bias, act, cfg=None, tf32=False: cpk.matmul_forward(
            cupy.from_dlpack(a), cupy.from_dlpack(b),
            None if bias is None else cupy.from_dlpack(bias), act, cfg)))
    for kname, kfn in kernels:
        for dt in dtypes:
            if kname == "cupy" and dt == torch.bfloat16:
                continue
            dn = str(dt).removeprefix("torch.")
            for m, k, n in shapes:
                a, b = randn(1, m, k, dtype=dt), randn(1, k, n, dtype=dt)
                check(f"{kname} {dn} {m}x{k}x{n}", kfn, a, b)
            a, b = randn(1, 40, 24, dtype=dt).transpose(1, 2), randn(1, 33, 40, dtype=dt).transpose(1, 2)
            check(f"{kname} {dn} transposed", kfn, a, b)
            a, b = randn(3, 29, 31, dtype=dt), randn(1, 31, 37, dtype=dt).expand(3, 31, 37)
            check(f"{kname} {dn} batch broadcast (stride 0)", kfn, a, b)
            a, b = randn(1, 33, 47, dtype=dt)[:, :, ::2], randn(1, 24, 50, dtype=dt)[:, :, 1::2]
            check(f"{kname} {dn} non-contiguous", kfn, a, b)
            for act in ACTS:
                a, b, bias = randn(1, 37, 29, dtype=dt), randn(1, 29, 43, dtype=dt), randn(43, dtype=dt)
                check(f"{kname} {dn} bias+{act}", kfn, a, b, bias, act)
        # every shipped config, on one ragged shape
        configs = tri.SHIPPED_CONFIGS if kname == "triton" else cpk.SHIPPED_CONFIGS
        m, k, n = (33, 40, 47) if args.dry_run else (300, 520, 260)
        for cfg in configs:
            for dt in dtypes:
                if kname == "cupy" and dt == torch.bfloat16:
                    continue
                a, b = randn(1, m, k, dtype=dt), randn(1, k, n, dtype=dt)
                check(f"{kname} {str(dt)[6:]} config {cfg.to_dict()}",
                      lambda a, b, bias, act, cfg=cfg: kfn(a, b, bias, act, cfg), a, b)
    if not args.dry_run:
        a, b = randn(1, 200, 300), randn(1, 300, 100)
        check("triton fp32 allow_tf32", lambda a, b, bias, act: tri.matmul_forward(
            a, b, allow_tf32=True), a, b, acc="tf32")
        # the dispatched op: data on the GPU, and host data the tuner may move there
        for where in ("cuda", "numpy"):
            for m, k, n in ((64, 64, 64), (512, 1024, 768)):
                a, b = randn(m, k), randn(k, n)
                if where == "numpy":
                    a, b = a.cpu().numpy(), b.cpu().numpy()
                check(f"kernelkit.matmul fp32 {where} {m}x{k}x{n}",
                      lambda a, b, bias, act: kernelkit.matmul(a, b), torch.as_tensor(a),
                      torch.as_tensor(b))
                ex = kernelkit.explain("matmul", a, b)
                results["checks"][-1]["choice"] = ex.choice.to_dict()
        a16, b16 = randn(4, 128, 256, dtype=torch.float16), randn(256, 512, dtype=torch.float16)
        check("kernelkit.matmul fp16 batched cuda", lambda a, b, bias, act: kernelkit.matmul(a, b),
              a16, b16.expand(4, 256, 512))
    n_ok = sum(c["ok"] for c in results["checks"])
    print(f"correctness: {n_ok}/{len(results['checks'])} checks passed "
          f"({time.perf_counter() - t_start:.0f} s)")
    for c in results["checks"]:
        if not c["ok"]:
            print(f"  FAIL {c['check']}: {c.get('error')}")

    # -- speed -----------------------------------------------------------------------------------
    if not args.skip_bench:
        bench(results, args, dev, randn, tri, vendor, cpk if cupy_ok else None, t_start)
    # the other ops: their own correctness checks and benchmarks (bench/gpu_check_<op>.py)
    import gpu_check_conv2d
    import gpu_check_preprocess

    budget_left = lambda: args.budget_s - (time.perf_counter() - t_start)
    for part in (gpu_check_conv2d, gpu_check_preprocess):
        try:
            part.run(results, dev, args.dry_run, make_timer(args.dry_run), budget_left)
        except Exception as exc:  # noqa: BLE001 - one op's failure must not hide the others
            results["checks"].append({"check": f"{part.__name__} crashed", "ok": False,
                                      "error": f"{type(exc).__name__}: {exc}"[:400]})
    n_ok = sum(c["ok"] for c in results["checks"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    summary = render(results)
    (out / "summary.md").write_text(summary)
    print(summary)
    return 0 if n_ok == len(results["checks"]) else 1


def bench(results, args, dev, randn, tri, vendor, cpk, t_start) -> None:
    import torch

    timer = make_timer(args.dry_run)
    if args.dry_run:
        cases = [("square", torch.float32, (64, 64, 64))]
    else:
        cases = [("square", dt, (n, n, n)) for dt in (torch.float16, torch.bfloat16)
                 for n in (512, 1024, 2048, 4096, 8192)]
        cases += [("square", torch.float32, (n, n, n)) for n in (1024, 4096)]
        cases += [("mlp", torch.float16, (m, k, n)) for m in (1, 16, 128, 2048)
                  for k, n in ((4096, 11008), (11008, 4096))]
        cases += [("odd", torch.float16, s) for s in ((1000, 1000, 1000), (4095, 4097, 3001),
                                                      (17, 8192, 8192))]
    for set_name, dt, (m, k, n) in cases:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"benchmark budget spent; stopping before {set_name} {m}x{k}x{n}")
            break
        a, b = randn(1, m, k, dtype=dt), randn(1, k, n, dtype=dt)
        flops = 2.0 * m * n * k
        row = {"set": set_name, "dtype": str(dt)[6:], "mkn": [m, k, n]}
        row["cublas_s"] = timer(lambda: vendor.matmul_forward(a, b))
        best = (math.inf, None)
        for cfg in tri.MatmulConfig.space(dt, m, n, k):
            try:
                best = min(best, (timer(lambda cfg=cfg: tri.matmul_forward(a, b, config=cfg)),
                                  cfg.to_dict()), key=lambda x: x[0])
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory on this card
                row.setdefault("triton_errors", []).append(f"{cfg.to_dict()}: {exc}"[:200])
        row["triton_s"], row["triton_config"] = best
        if cpk is not None and dt in (torch.float16, torch.float32):
            import cupy

            ca, cb = cupy.from_dlpack(a), cupy.from_dlpack(b)
            best = (math.inf, None)
            for cfg in cpk.MatmulConfig.space(ca.dtype, m, n, k):
                try:
                    best = min(best, (timer(lambda cfg=cfg: cpk.matmul_forward(ca, cb, config=cfg)),
                                      cfg.to_dict()), key=lambda x: x[0])
                except Exception as exc:  # noqa: BLE001
                    row.setdefault("cupy_errors", []).append(f"{cfg.to_dict()}: {exc}"[:200])
            row["cupy_s"], row["cupy_config"] = best
        for key in ("cublas", "triton", "cupy"):
            s = row.get(f"{key}_s")
            if s and math.isfinite(s):
                row[f"{key}_tflops"] = flops / s / 1e12
        results["bench"].append(row)


def make_timer(dry_run: bool):
    """seconds per call: CUDA events after synchronisation on a GPU, perf_counter in dry runs."""
    if dry_run:
        return _cpu_time
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e-3


def _cpu_time(fn, reps: int = 3) -> float:
    import statistics

    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def render(results: dict) -> str:
    lines = [f"## GPU check on {results['card']} (torch {results['torch']}, "
             f"triton {results.get('triton')}, cupy {results.get('cupy', '-')})", ""]
    n_ok = sum(c["ok"] for c in results["checks"])
    lines.append(f"correctness: {n_ok}/{len(results['checks'])} checks passed")
    lines += ["", "| shape | dtype | cuBLAS TFLOP/s | triton TFLOP/s (x cuBLAS) | "
              "cupy TFLOP/s (x cuBLAS) |", "| --- | --- | --- | --- | --- |"]
    for r in results["bench"]:
        cells = []
        for key in ("triton", "cupy"):
            s = r.get(f"{key}_s")
            if s and math.isfinite(s):
                cells.append(f"{r[f'{key}_tflops']:.1f} ({r['cublas_s'] / s:.2f}x)")
            else:
                cells.append("-")
        lines.append(f"| {r['set']} {'x'.join(map(str, r['mkn']))} | {r['dtype']} | "
                     f"{r.get('cublas_tflops', 0):.1f} | {cells[0]} | {cells[1]} |")
    for key, rows in results.items():  # the other ops' rows (conv2d, preprocess), as given
        if not key.startswith("bench_") or not rows:
            continue
        cols = [c for c in rows[0] if not isinstance(rows[0][c], (list, dict)) or c in ("mkn", "shape")]
        lines += ["", f"### {key.removeprefix('bench_')}", "",
                  "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(3)
