"""The Numba conv2d forward under two or more settings of its module knobs, in one process,
beside torch's F.conv2d: an A/B of a kernel change that a knob turns on and off.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_knob_probe.py --set SHIFT_NARROW_TAIL=False \\
        --set SHIFT_NARROW_TAIL=True [--batch 1] [--rounds 21] [--layers 256,256,14,3,1 ...]
        [--dtype bfloat16]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2), fp32 (or bfloat16: the kernel
on the bits, beside torch's own bfloat16 conv) NCHW, no bias, 2 threads.
Each ``--set`` is one row: ``NAME=VALUE ...`` of ``kernelkit.kernels.numba.conv2d``'s knobs
(values are Python literals), set before each call of ``conv2d_forward`` (the module's
geometry memo is keyed by its knobs, so each row runs its own geometry). Every row is checked
against a float64 torch reference first. Each round calls the rows and torch in a rotated
order, each once untimed and then twice timed; medians over rounds. Why one process: on these
VMs the same call differs by up to 2x from one process to the next, so an A/B across
processes measures the processes.
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from kernelkit import devices
from kernelkit.kernels.numba import conv2d as nconv

# ResNet-50's layers whose planes end on a part of a column sliver (7 and 14 px), and 28 px
LAYERS = ["1024,256,14,1,1", "256,1024,14,1,1", "256,256,14,3,1", "256,256,28,3,2",
          "512,512,7,3,1", "512,512,14,3,2", "2048,512,7,1,1", "512,2048,7,1,1",
          "128,128,28,3,1"]


def _setting(items: list[str]) -> dict:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if not hasattr(nconv, name):
            raise SystemExit(f"conv2d has no knob {name!r}")
        out[name] = ast.literal_eval(value)
    return out


def run(settings: list[dict], batch: int = 1, rounds: int = 21,
        layers: list[str] | None = None, dtype: str = "float32") -> None:
    """Print the table for ``settings`` (rows of knob values) on ``layers``, in ``dtype``
    (float32, or bfloat16: the kernel on the bits, torch's own bfloat16 conv beside it)."""
    torch.set_num_threads(2)
    names = [" ".join(f"{k}={v}" for k, v in s.items()) for s in settings]
    saved = {k: getattr(nconv, k) for s in settings for k in s}
    half = dtype == "bfloat16"
    print(f"cpu: {devices.cpu_info()['model']}; {dtype}, batch {batch}, torch {torch.__version__}; "
          f"ms, medians of {rounds} rounds")
    for i, name in enumerate(names):
        print(f"row {i}: {name}")
    heads = [f"row {i}" for i in range(len(names))]
    print("| layer | " + " | ".join(heads) + " | torch | "
          + " | ".join(f"row 0 / {h}" for h in heads[1:]) + " | "
          + " | ".join(f"torch / {h}" for h in heads) + " |")
    print("| --- " * (3 * len(heads) + 1) + "|")
    try:
        for spec in layers or LAYERS:
            c, k, hw, r, st = (int(v) for v in spec.split(","))
            x = torch.randn(batch, c, hw, hw)
            w = torch.randn(k, c, r, r) * 0.05
            if half:
                x, w = x.bfloat16(), w.bfloat16()
            xn, wn = (t.view(torch.uint16).numpy() if half else t.numpy() for t in (x, w))
            p = r // 2
            ref = F.conv2d(x.double(), w.double(), padding=p, stride=st).numpy()
            tol = (2e-2 if half else 1e-3) * (1 + np.abs(ref).max())

            def ours(setting: dict):
                def call():
                    for name, value in saved.items():
                        setattr(nconv, name, setting.get(name, value))
                    return nconv.conv2d_forward(xn, wn, None, (st, st), (p,) * 4, (1, 1), 1,
                                                None, "NCHW")
                return call

            rows = [ours(s) for s in settings]
            for i, fn in enumerate(rows):
                y = fn()
                y = torch.from_numpy(y).view(torch.bfloat16).double().numpy() if half else y
                err = float(np.abs(y - ref).max())
                assert err < tol, (spec, names[i], err)
            rows.append(lambda: F.conv2d(x, w, padding=p, stride=st))
            times: list[list[float]] = [[] for _ in rows]
            for rnd in range(rounds):
                for j in range(len(rows)):
                    i = (rnd + j) % len(rows)
                    rows[i]()
                    t0 = time.perf_counter()
                    rows[i]()
                    rows[i]()
                    times[i].append((time.perf_counter() - t0) / 2)
            m = [statistics.median(t) * 1e3 for t in times]
            print(f"| {c}->{k} {hw}px {r}x{r} s{st} | " + " | ".join(f"{v:.3f}" for v in m)
                  + " | " + " | ".join(f"{m[0] / v:.2f}" for v in m[1:-1]) + " | "
                  + " | ".join(f"{m[-1] / v:.2f}" for v in m[:-1]) + " |", flush=True)
    finally:
        for name, value in saved.items():
            setattr(nconv, name, value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", nargs="+", action="append", required=True, metavar="NAME=VALUE")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    run([_setting(s) for s in args.set], args.batch, args.rounds, args.layers, args.dtype)
    return 0


if __name__ == "__main__":
    sys.exit(main())
