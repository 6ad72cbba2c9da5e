"""Patched ResNet-18 / ResNet-50 against torch, eager and under torch.compile, inference and one
training step, side by side in one process; prints a ratio table.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_resnets.py --models resnet18 resnet50 --batches 1 8 --size 224

Per (model, batch): the model (bench/resnets.py, random init, fp32) and a deep copy patched with
`kernelkit.nn.patch`. A fresh cache folder (unless KERNELKIT_CACHE_DIR is set), then one tuning
pass with `KERNELKIT_TUNE=measure` and kernels compiled in the foreground: one inference call and
one training step of the patched model measure every forward and backward size it runs. Then,
under the default policy (cache hits), for inference (eval, no_grad) and then for one training
step (train mode: zero_grad, forward, cross-entropy, backward, SGD step), the four variants
torch / patched / torch.compile(torch) / torch.compile(patched) run interleaved, one call each per
round, `--reps` rounds after a warm-up round; the table gives each median and the speed ratio
torch time / patched time (above 1.0: the patched model is faster). It also prints where each
patched layer ran (`kernelkit.nn.where`) and which candidate won each backward product.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/resnets.py


def cpu_name() -> str:
    from kernelkit import devices

    return devices.cpu_info()["model"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    ap.add_argument("--no-compile", action="store_true", help="eager rows only")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: models, inputs and timings on the GPU (each call synchronises)")
    ap.add_argument("--channels-last", action="store_true", help="models and input channels_last")
    ap.add_argument("--no-tune-pass", action="store_true",
                    help="skip the measuring pass: the default policy from a cold cache, as a "
                         "new user's first run (the in-model trials still settle each layer)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                    help="the models' parameters and input (bfloat16: both models run it "
                         "natively, torch through oneDNN)")
    ap.add_argument("--control", action="store_true",
                    help="also time an unpatched copy of the model ('torch twin'): torch "
                         "against itself, the band two identical models differ by in this run")
    ap.add_argument("--json", type=Path, help="write every median and route here")
    ap.add_argument("--margin", type=float, default=None,
                    help="kernelkit.nn._route.KERNEL_MARGIN for this run (1.0: every measured "
                         "kernel win goes to the in-model trial)")
    ap.add_argument("--keep-heap", action="store_true",
                    help="kernelkit.keep_heap() first: neither model page-faults its "
                         "activations anew on each call (bench/probes/heap_probe.py)")
    args = ap.parse_args()

    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-resnets-"))
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    import numba
    import torch
    from resnets import Pair, interleaved_times, paired_ratio
    from threadpoolctl import threadpool_info, threadpool_limits

    from kernelkit.autotune import tuner
    from kernelkit.nn import _route

    if args.margin is not None:
        _route.KERNEL_MARGIN = args.margin
    if args.keep_heap:
        import kernelkit

        print(f"keep_heap: {kernelkit.keep_heap()}", flush=True)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(args.threads)
    blas = [(p["internal_api"], p.get("architecture")) for p in threadpool_info()]
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; torch "
          f"{torch.__version__}; pools {blas}; cache {os.environ['KERNELKIT_CACHE_DIR']}",
          flush=True)
    if args.device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)

    results = []
    for name in args.models:
        for batch in args.batches:
            pair = Pair(name, batch, args.size, dtype=getattr(torch, args.dtype),
                        control=args.control, device=args.device,
                        channels_last=args.channels_last)
            tuner.clear_memo()
            tune_s = 0.0 if args.no_tune_pass else pair.tune(tuple(args.modes))
            tuner.clear_memo()  # what the timed calls choose, from the cache the pass filled
            for m in (pair.ref, pair.pat):
                m.eval()
            ref = pair.infer(pair.ref).float()
            # bfloat16 (8 bits of mantissa) differs in its roundings through 50 layers: 0.5% of
            # the logits' scale measured on ResNet-50; float32 as tight as before
            rtol, atol = (1e-3, 1e-3) if args.dtype == "float32" else (
                0.0, 0.01 * ref.abs().max().item())
            torch.testing.assert_close(pair.infer(pair.pat).float(), ref, rtol=rtol, atol=atol)
            print(f"\n{name} batch {batch} {args.size}px: {len(pair.report.swapped)} layers "
                  f"patched, tuning pass {tune_s:.1f} s", flush=True)
            for mode in args.modes:
                fns = pair.fns(mode, compiled=not args.no_compile)
                # each kernel-routed layer's first calls alternate its kernel with torch's op,
                # one layer at a time (kernelkit.nn._route.InContext): settled before anything
                # is timed or traced
                settle, settle_s = pair.settle(mode, fns)
                print(f"  {mode}: in-model trials settled after {settle} calls "
                      f"({settle_s:.1f} s)", flush=True)
                for label, fn in fns.items():  # routes for this mode (cache hits); compiles
                    t0 = time.perf_counter()
                    fn()
                    if "compile" in label:
                        print(f"  {mode} {label}: first call (compiles) "
                              f"{time.perf_counter() - t0:.1f} s", flush=True)
                times = interleaved_times(fns, args.reps)
                med = {k: statistics.median(v) for k, v in times.items()}
                row = {"model": name, "batch": batch, "size": args.size, "mode": mode,
                       "median_ms": {k: v * 1e3 for k, v in med.items()},
                       "eager_ratio": med["torch"] / med["patched"],
                       "eager_paired": paired_ratio(times["torch"], times["patched"])}
                if not args.no_compile:
                    row["compile_ratio"] = med["torch.compile"] / med["patched+compile"]
                    row["compile_paired"] = paired_ratio(times["torch.compile"],
                                                         times["patched+compile"])
                if args.control:
                    row["control_paired"] = paired_ratio(times["torch"], times["torch twin"])
                results.append(row)
                line = (f"  {mode}: torch {med['torch'] * 1e3:.1f} ms, patched "
                        f"{med['patched'] * 1e3:.1f} ms ({row['eager_ratio']:.3f}x; paired "
                        f"{_interval(row['eager_paired'])})")
                if args.control:
                    line += (f"; torch / its unpatched twin: paired "
                             f"{_interval(row['control_paired'])}")
                if not args.no_compile:
                    line += (f"; torch.compile {med['torch.compile'] * 1e3:.1f} ms, "
                             f"patched+compile {med['patched+compile'] * 1e3:.1f} ms "
                             f"({row['compile_ratio']:.3f}x; paired "
                             f"{_interval(row['compile_paired'])})")
                print(line, flush=True)

            # the routes of the timed calls, not the tuning pass's
            seen = sorted({(n, tuple(sig[0]), _route.describe(r))
                           for n, _, sig, r in _route.current_routes(pair.pat)})
            routes = collections.Counter(r for _, _, r in seen)
            kernel_layers = [(n, s, r) for n, s, r in seen if r != "torch (aten)"]
            choices = collections.Counter((str(k[1]).split("|")[0], c.candidate)
                                          for k, c in tuner._memo.items())
            print(f"  forward routes: {dict(routes)}; kernelkit layers: {kernel_layers}")
            trials = [(n, tuple(sig[0]), {("train" if grad else "infer"):
                                          [round(t * 1e3, 2) for t in v]
                                          for grad, v in r.verdicts.items()})
                      for n, m in pair.pat.named_modules()
                      for sig, r in m.__dict__.get("_kk_routes", {}).items()
                      if getattr(r, "verdicts", None)]
            print(f"  in-model trials (layer, input, per grad mode [kernel ms, torch ms]; "
                  f"train: forward + backward): {trials}")
            print(f"  tuner choices (op, candidate): {dict(choices)}", flush=True)
            results[-1]["routes"] = dict(routes)
            results[-1]["kernel_layers"] = kernel_layers
            results[-1]["in_model_trials"] = trials
            results[-1]["choices"] = {f"{op} {c}": n for (op, c), n in choices.items()}

    print(f"\nspeed ratio = torch median / patched median (>1: patched faster); {args.reps} "
          f"interleaved rounds; {cpu_name()}, {args.threads} threads, {args.size} px, "
          f"{args.dtype}")
    print("paired: the median of the per-round ratios [95% bootstrap interval of it]")
    head = "| model | batch | mode | torch ms | patched ms | eager ratio | paired |"
    if args.control:
        head += " torch / twin, paired |"
    if not args.no_compile:
        head += " torch.compile ms | patched+compile ms | compile ratio | paired |"
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for r in results:
        m = r["median_ms"]
        line = (f"| {r['model']} | {r['batch']} | {r['mode']} | {m['torch']:.1f} | "
                f"{m['patched']:.1f} | {r['eager_ratio']:.3f} | {_interval(r['eager_paired'])} |")
        if args.control:
            line += f" {_interval(r['control_paired'])} |"
        if not args.no_compile:
            line += (f" {m['torch.compile']:.1f} | {m['patched+compile']:.1f} | "
                     f"{r['compile_ratio']:.3f} | {_interval(r['compile_paired'])} |")
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads,
                                         "results": results}, indent=1, default=str))
    return 0


def _interval(paired: tuple[float, float, float]) -> str:
    return f"{paired[0]:.3f} [{paired[1]:.3f}, {paired[2]:.3f}]"


if __name__ == "__main__":
    sys.exit(main())
