"""A torch ResNet-50's call with glibc's default heap and after `kernelkit.keep_heap()`: time,
page faults and RSS, each setting in processes of its own, alternated.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/heap_probe.py [--batches 1 8 32] [--modes infer train] [--runs 2]
        [--mmap-1m]

Per (batch, mode) and run: a child process per setting (default, kept; with ``--mmap-1m`` also
glibc's mmap threshold fixed at 1 MiB, ``MALLOC_MMAP_THRESHOLD_=1048576``, the README's setting
for a server's RSS), in rotating order from run to run; each child builds the model
(bench/resnets.py, random init, float32, 224 px, all threads), calls it ``--warm`` times untimed, then ``--calls`` times timed (infer: eval and
no_grad; train: train mode, forward, cross-entropy, backward, SGD step) and reports the median
call, the minor page faults per call (getrusage) and its RSS and peak RSS. The table gives the
medians over runs and default / kept (> 1: faster with the heap kept).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, resource, statistics, sys, time
sys.path.insert(0, {bench!r})
import torch
import kernelkit
import resnets
batch, mode, kept, warm, calls = {batch}, {mode!r}, {kept}, {warm}, {calls}
applied = kernelkit.keep_heap() if kept else False
torch.manual_seed(0)
model = resnets.resnet50()
x = torch.randn(batch, 3, 224, 224)
y = torch.randint(0, 1000, (batch,))
if mode == "infer":
    model.eval()
    def step():
        with torch.no_grad():
            model(x)
else:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
for _ in range(warm):
    step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
times = []
for _ in range(calls):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
status = open("/proc/self/status").read()
kb = lambda k: int(status.split(k + ":")[1].split()[0])
print(json.dumps(dict(ms=statistics.median(times) * 1e3, faults=(f1 - f0) / calls,
                      rss=kb("VmRSS") >> 10, peak=kb("VmHWM") >> 10, applied=applied)))
"""


def _child(batch: int, mode: str, setting: str, warm: int, calls: int) -> dict:
    code = _CHILD.format(bench=str(Path(__file__).resolve().parents[1]), batch=batch, mode=mode,
                         kept=setting == "kept", warm=warm, calls=calls)
    env = dict(os.environ)
    if setting == "mmap-1m":
        env["MALLOC_MMAP_THRESHOLD_"] = "1048576"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--modes", nargs="+", default=["infer"], choices=["infer", "train"])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--mmap-1m", action="store_true",
                    help="a third setting: MALLOC_MMAP_THRESHOLD_=1048576")
    args = ap.parse_args()
    settings = ["default", "kept"] + (["mmap-1m"] if args.mmap_1m else [])
    import torch

    from kernelkit import devices

    print(f"cpu: {devices.cpu_info()['model']}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; ResNet-50 224 px float32; medians over "
          f"{args.runs} runs of {args.calls} calls")
    extra = " | mmap-1m ms | faults per call, mmap-1m" if args.mmap_1m else ""
    print("| batch | mode | default ms | kept ms | default / kept | faults per call, default "
          f"/ kept | RSS MB, default / kept | peak RSS MB, default / kept{extra} |")
    print("| --- " * (8 + 2 * args.mmap_1m) + "|")
    for batch in args.batches:
        for mode in args.modes:
            rows: dict[str, list[dict]] = {s: [] for s in settings}
            for run in range(args.runs):
                for setting in settings[run % len(settings):] + settings[:run % len(settings)]:
                    rows[setting].append(_child(batch, mode, setting, args.warm, args.calls))
            if not all(r["applied"] for r in rows["kept"]):
                print(f"keep_heap() did not apply here (not glibc): batch {batch} {mode}")
            med = {k: {f: statistics.median(r[f] for r in v) for f in ("ms", "faults", "rss",
                                                                        "peak")}
                   for k, v in rows.items()}
            d, k = med["default"], med["kept"]
            more = (f" | {med['mmap-1m']['ms']:.1f} | {med['mmap-1m']['faults']:.0f}"
                    if args.mmap_1m else "")
            print(f"| {batch} | {mode} | {d['ms']:.1f} | {k['ms']:.1f} | {d['ms'] / k['ms']:.2f} | "
                  f"{d['faults']:.0f} / {k['faults']:.0f} | {d['rss']:.0f} / {k['rss']:.0f} | "
                  f"{d['peak']:.0f} / {k['peak']:.0f}{more} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
