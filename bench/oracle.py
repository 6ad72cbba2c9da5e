"""How good is each tuning policy on sizes it has never seen, and what does it cost?

    python bench/oracle.py [--threads 2] [--out results/oracle.json] [--quick]

1. Training: a spread of sizes per problem family (matmul, conv2d, preprocess; fp32/uint8, data
   in numpy) is measured into a fresh cache, as `kernelkit tune` would.
2. Held out: other sizes of the same families, odd ones included, never in that cache.
3. The oracle: every candidate and every config of each held-out size verified, then timed in
   its steady state, as a user who calls the op again and again sees it: in each round every
   (candidate, config) first runs untimed for ORACLE_WARM_S (the other libraries' spinning
   workers go quiet, its own wake up), then ORACLE_REPS timed calls; the median over
   ORACLE_ROUNDS rounds (`bench/probes/_steady.py`).
4. Each policy (auto, model, measure, off) starts from a copy of the training cache and decides
   every held-out size; the time its decisions took is its tuning cost. Its choice is scored by
   the oracle's time for that (candidate, config): within 10% of the oracle's best, or not.

It prints, per policy, the fraction of held-out sizes within 10% of the oracle and the tuning
time, with the ratio to measuring everything. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "probes"))
from _steady import steady_medians  # noqa: E402

TRAIN = {
    "matmul": [(n, n, n) for n in (16, 32, 64, 128, 256, 512, 1024)]
    + [(64, 1024, 64), (512, 64, 512), (1, 2048, 2048), (256, 2048, 64)],
    "conv2d": [(1, c, hw, c, 3, 1, 1, 1) for c, hw in ((16, 56), (32, 28), (64, 28), (128, 14),
                                                       (256, 7), (64, 56))]
    + [(1, c, hw, 4 * c, 1, 1, 0, 1) for c, hw in ((64, 56), (128, 28), (256, 14))],
    "preprocess": [(n, 480, 640, 224) for n in (1, 2, 4, 8, 16, 32)],
}
HELD_OUT = {
    "matmul": [(97, 61, 89), (160, 160, 160), (300, 500, 100), (700, 700, 700), (1, 1500, 1500),
               (48, 48, 48), (1000, 3, 1000), (384, 384, 384), (130, 257, 129)],
    "conv2d": [(1, 24, 40, 24, 3, 1, 1, 1), (1, 96, 20, 96, 3, 1, 1, 1), (2, 48, 28, 48, 3, 1, 1, 1),
               (1, 192, 10, 192, 3, 1, 1, 1), (1, 96, 28, 384, 1, 1, 0, 1)],
    "preprocess": [(3, 480, 640, 224), (12, 480, 640, 224), (24, 480, 640, 224)],
}
QUICK = {"matmul": ([(16, 16, 16), (64, 64, 64), (256, 256, 256)], [(97, 61, 89), (130, 130, 130)])}
POLICIES = ("auto", "model", "measure", "off")
ORACLE_TRIES = 3
# The oracle's timing (step 3). Before, it took each config's best median of two tuner-style
# measurements (round-robin, one untimed call before each timed one): on this VM that put
# numpy's 1000x3x1000 at 0.07 ms in some runs and 0.23 ms in others (OpenBLAS's second thread
# sharing its core with torch's OpenMP workers, which spin for milliseconds after the torch
# candidate's call), and a 24-image preprocess config at 4.9 ms that runs in 1.6 ms on its own.
ORACLE_WARM_S = 0.03
ORACLE_REPS = 3
ORACLE_ROUNDS = 5


def _measure_quietly(op: str, dims, cache_dir: Path, busy: list):
    """Measure every candidate and config; again while other processes loaded the machine (a
    provisional entry is measured again by the next measuring decision), up to ORACLE_TRIES;
    sizes still provisional then go to `busy`."""
    from kernelkit.autotune.cache import cache_for
    from kernelkit.settings import Settings

    for _ in range(ORACLE_TRIES):
        d, _ = _decide(op, dims, Settings(cache_dir=str(cache_dir)), "measure")
        if not (cache_for(cache_dir).get(d.key) or {}).get("provisional"):
            return d
    busy.append((op, dims))
    return d


def _decide(op: str, dims, settings, mode):
    """One decision the way an op call makes it (the cache first): (the Decision, the seconds
    the decision took; making the inputs is not tuning and is not counted)."""
    from kernelkit import core
    from kernelkit.autotune import tuner

    spec = core.op_spec(op)
    args, kwargs = spec.make_inputs(dims, "uint8" if op == "preprocess" else "float32", "numpy")
    call = spec.prepare(*args, **kwargs)
    t0 = time.perf_counter()
    d = tuner.decide(call.problem, core.candidates(op), call.runner, call.verify, settings,
                     mode=mode)
    return d, time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--quick", action="store_true", help="two matmul sizes: a smoke run")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="keep the training cache and the oracle's times in DIR")
    p.add_argument("--reuse", default=None, metavar="DIR",
                   help="take the training cache and the oracle's times from a --keep DIR "
                        "(steps 1 and 3 skipped: for working on a policy, not for figures)")
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    p.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                   help="set a constant of kernelkit.autotune.tuner for this run (e.g. "
                        "FITTED_CONFIGS=2): for exploring the policy's knobs")
    args = p.parse_args(argv)
    from kernelkit.autotune import tuner

    for knob in args.knob:
        name, _, value = knob.partition("=")
        if not hasattr(tuner, name):
            p.error(f"--knob: kernelkit.autotune.tuner has no {name}")
        setattr(tuner, name, type(getattr(tuner, name))(value))
    os.environ["KERNELKIT_COMPILE"] = "foreground"  # policies are scored on compiled kernels

    from kernelkit import devices
    from kernelkit.autotune.generate import pin_threads
    from kernelkit.settings import Settings

    if args.threads:
        pin_threads(args.threads)
    sets = {op: (TRAIN[op], HELD_OUT[op]) for op in TRAIN} if not args.quick else QUICK
    work = Path(tempfile.mkdtemp(prefix="kk-oracle-"))
    try:
        train_dir = work / "train"
        if args.reuse:
            shutil.copytree(Path(args.reuse) / "train", train_dir)
            oracle = {(r["op"], tuple(r["dims"])): {(c, cfg): t for c, cfg, t in r["times"]}
                      for r in json.loads((Path(args.reuse) / "oracle.json").read_text())}
        else:
            t0 = time.perf_counter()
            busy = []
            for op, (train, _) in sets.items():
                for dims in train:
                    _measure_quietly(op, dims, train_dir, busy)
            print(f"training: {sum(len(t) for t, _ in sets.values())} sizes measured in "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
            oracle = {}
            for op, (_, held) in sets.items():
                for dims in held:
                    # the truth: every candidate and config that verifies, in its steady state
                    # (its cost is not any policy's)
                    d = _measure_quietly(op, dims, work / "oracle", busy)
                    runs = [t for t in d.trials if t.run is not None and t.timing is not None]
                    medians = steady_medians([t.run for t in runs], rounds=ORACLE_ROUNDS,
                                             warm=ORACLE_WARM_S, reps=ORACLE_REPS)
                    oracle[(op, dims)] = {(t.candidate, json.dumps(t.config, sort_keys=True)): m
                                          for t, m in zip(runs, medians)}
            if busy:
                print(f"{len(busy)} training or oracle sizes were measured on a busy machine: "
                      f"{busy}")
        if args.keep:
            keep = Path(args.keep)
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(train_dir, keep / "train")
            (keep / "oracle.json").write_text(json.dumps(
                [{"op": op, "dims": list(dims), "times": [[c, cfg, t] for (c, cfg), t in times.items()]}
                 for (op, dims), times in oracle.items()]))
        results = {}
        for policy in args.policies:
            pdir = work / policy
            shutil.copytree(train_dir, pdir)
            spent, hits, rows = 0.0, 0, []
            for (op, dims), times in oracle.items():
                d, took = _decide(op, dims, Settings(cache_dir=str(pdir), tune=policy), None)
                spent += took
                chosen = times.get((d.choice.candidate, json.dumps(d.choice.config, sort_keys=True)))
                best = min(times.values())
                ok = chosen is not None and chosen <= 1.1 * best
                hits += ok
                rows.append({"op": op, "dims": list(dims), "choice": d.choice.candidate,
                             "config": d.choice.config, "source": d.choice.source,
                             "chosen_s": chosen, "oracle_s": best, "within_10pct": ok,
                             "decide_s": took, "measured": len(d.trials)})
            results[policy] = {"within_10pct": hits / len(oracle), "tuning_s": spent,
                               "rows": rows}
        cpu = devices.cpu_info()["model"]
        print(f"\nheld-out sizes: {len(oracle)} ({', '.join(sets)}); CPU: {cpu}; "
              f"threads {args.threads or 'all'}")
        print(f"{'policy':<9} {'within 10% of oracle':>21} {'tuning time':>12} {'vs measure':>11}")
        full = results.get("measure", {}).get("tuning_s") or float("nan")
        for policy in args.policies:
            r = results[policy]
            print(f"{policy:<9} {r['within_10pct']:>20.0%} {r['tuning_s']:>11.2f}s "
                  f"{r['tuning_s'] / full:>10.2f}x")
        for policy in args.policies:  # where each policy went wrong, and what it measured
            for row in results[policy]["rows"]:
                if not row["within_10pct"] or (policy == "auto" and row["measured"]):
                    ratio = (row["chosen_s"] or float("nan")) / row["oracle_s"]
                    print(f"  {policy:<8} {row['op']:<11} {'x'.join(map(str, row['dims'])):<20} "
                          f"{row['choice']:<10} {row['source']:<9} {ratio:5.2f}x the oracle, "
                          f"{row['measured']} timed in {row['decide_s']:.2f} s")
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"cpu": cpu, "threads": args.threads,
                                                  "loadavg_end": os.getloadavg(),
                                                  "results": results}, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
