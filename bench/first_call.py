"""First-call latency of each op in a fresh process: kernelkit cold and warm against the vendor.

Each row is a fresh Python process that imports numpy, torch (and kernelkit), builds its inputs,
and times its first call of one op, then its steady state. Variants, interleaved per repetition:

- ``vendor``: the call a user makes instead, in a process that never imports kernelkit: numpy's
  ``a @ b`` for numpy data (``matmul``), ``torch.matmul`` for tensors (``matmul_torch``),
  ``F.conv2d``; for preprocess kernelkit's torch backend, forced (torch has no fused preprocess);
  for ``resnet18_step`` one training step of a plain torch ResNet-18 (batch 8, 112 px).
- ``cold``: kernelkit with an empty cache folder (no compiled kernels, no tuning).
- ``warm``: kernelkit after ``kernelkit warmup`` into that folder (compiled, not tuned).

In the kernelkit processes it also records the choice the first call ran on, the time until the
compiled kernels were ready (``compiling.wait``), the call that decides with them (the second
after that: the first still runs the plan chosen while they compiled), and the steady state. The
bar (issue 14), per op (not the ResNet-18 step): cold first call <= 2x the vendor's first call;
warm first call <= 2x (steady state + the vendor's first call).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/first_call.py --reps 3 [--json F]

Threads are not pinned: a first call is measured as a user meets it. Run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

INPUTS = {
    # numpy data: the vendor is numpy's own `a @ b` (OpenBLAS; its first call starts the BLAS
    # thread pool, as kernelkit's does when it runs numpy's BLAS)
    "matmul": """
        a = rng.standard_normal((256, 256), dtype=np.float32)
        b = rng.standard_normal((256, 256), dtype=np.float32)
        args = (a, b)
        vendor = lambda: a @ b
    """,
    # torch data: the vendor is torch.matmul
    "matmul_torch": """
        a = torch.from_numpy(rng.standard_normal((256, 256), dtype=np.float32))
        b = torch.from_numpy(rng.standard_normal((256, 256), dtype=np.float32))
        args = (a, b)
        vendor = lambda: torch.matmul(a, b)
    """,
    "conv2d": """
        x = torch.randn(8, 64, 28, 28)
        w = torch.randn(64, 64, 3, 3)
        args = (x, w)
        kwargs = dict(padding=1)
        vendor = lambda: F.conv2d(x, w, padding=1)
    """,
    "preprocess": """
        imgs = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
        args = (imgs,)
        kwargs = dict(size=224, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
        def vendor():
            with kernelkit.use(backend="torch"):
                return kernelkit.preprocess(imgs, **kwargs)
    """,
    # one training step (forward, loss, backward) of a ResNet-18, batch 8 at 112 px; kernelkit:
    # the same model after kernelkit.nn.patch
    "resnet18_step": """
        torch.manual_seed(0)
        model = resnet18()
        x, target = torch.randn(8, 3, 112, 112), torch.randint(0, 1000, (8,))
        def vendor():
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
        if VARIANT != "vendor":
            kernelkit.nn.patch(model)
            kk = vendor
    """,
}

# Issue 14's bars are on each op's first call; the training step's time to a first batch is
# measured beside them (its first step also pays torch's own first calls of every layer while the
# kernels compile on the other core).
OPS_WITH_A_BAR = ("matmul", "matmul_torch", "conv2d", "preprocess")

RESNET18 = """
from torch import nn

def _block(c_in, c_out, stride):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(c_out)
            self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(c_out)
            self.down = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                       nn.BatchNorm2d(c_out))
                         if stride != 1 or c_in != c_out else nn.Identity())
        def forward(self, x):
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.down(x))
    return Block()

def resnet18(classes=1000):
    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
              nn.MaxPool2d(3, 2, 1)]
    c = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_block(c, c_out, stride), _block(c_out, c_out, 1)]
        c = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)
"""

CHILD = """
import json, statistics, sys, time
t0 = time.perf_counter()
import numpy as np, torch
import torch.nn.functional as F
VARIANT, OP = sys.argv[1], sys.argv[2]
if VARIANT != "vendor" or OP == "preprocess":
    import kernelkit
    import kernelkit.nn
    from kernelkit import compiling
    from kernelkit.autotune import tuner
t_import = time.perf_counter() - t0
rng = np.random.default_rng(0)
kwargs = {}
kk = None
RESNET18
INPUTS

def steady(fn, n=15):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)

out = {"import_s": t_import}
if VARIANT == "vendor":
    t = time.perf_counter(); vendor(); out["first_s"] = time.perf_counter() - t
    out["steady_s"] = steady(vendor)
else:
    seen = []
    real = tuner.choose
    tuner.choose = lambda *a, **k: seen.append(real(*a, **k)) or seen[-1]
    call = kk or (lambda: getattr(kernelkit, OP.split("_")[0])(*args, **kwargs))
    t = time.perf_counter(); call(); out["first_s"] = time.perf_counter() - t
    out["first_choice"] = f"{seen[0].candidate} ({seen[0].source})" if seen else "memo"
    t = time.perf_counter(); compiling.wait(); out["ready_after_s"] = time.perf_counter() - t
    call()  # the warming plan's last call: it sees the compile done and makes way for a decision
    t = time.perf_counter(); call(); out["tuning_call_s"] = time.perf_counter() - t
    out["steady_s"] = steady(call)
    out["steady_choice"] = f"{seen[-1].candidate} ({seen[-1].source})"
    out["jobs"] = [(j.module.rsplit(".", 1)[-1], j.dtype, j.how, round(j.seconds, 2))
                   for j in compiling.jobs()]
print(json.dumps(out))
"""


def child_code(op: str) -> str:
    return CHILD.replace("RESNET18", RESNET18).replace("INPUTS", textwrap.dedent(INPUTS[op]))


def run_child(variant: str, op: str, cache: Path) -> dict:
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("KERNELKIT_COMPILE", None)
    env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)  # the compiled kernels live in `cache` too
    env.pop("KERNELKIT_TUNE", None)
    res = subprocess.run([sys.executable, "-c", child_code(op), variant, op], env=env,
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{variant} {op}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def byte_compile() -> None:
    """Write kernelkit's .pyc files first: an installed package has them (pip compiles at install
    time), torch's are there, and a workplace that sets PYTHONDONTWRITEBYTECODE would otherwise
    have every kernelkit process compile kernelkit's sources again (5-7 ms per first call)."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "kernelkit")],
                   check=True, env={k: v for k, v in os.environ.items()
                                    if k != "PYTHONDONTWRITEBYTECODE"})


def warmup(cache: Path) -> None:
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)
    subprocess.run([sys.executable, "-m", "kernelkit", "warmup", "--quiet"], env=env, check=True,
                   timeout=3600)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ops", nargs="+", default=list(INPUTS), choices=list(INPUTS))
    ap.add_argument("--json", help="write every row here")
    args = ap.parse_args()
    from kernelkit import devices

    print(f"cpu: {devices.cpu_info()['model']}, {os.cpu_count()} cores")
    rows = []
    byte_compile()
    with tempfile.TemporaryDirectory(prefix="kk-first-call-") as tmp:
        warm = Path(tmp) / "warm"
        warmup(warm)
        for rep in range(args.reps):
            for op in args.ops:
                cold = Path(tmp) / f"cold-{rep}-{op}"
                for variant, cache in (("vendor", cold), ("cold", cold), ("warm", warm)):
                    row = {"rep": rep, "op": op, "variant": variant,
                           **run_child(variant, op, cache)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    med = lambda op, v, f: statistics.median(r[f] for r in rows if r["op"] == op
                                             and r["variant"] == v)
    print(f"\n{'op':<11}{'vendor 1st':>11}{'cold 1st':>10}{'ratio':>7}{'warm 1st':>10}"
          f"{'bar':>9}{'steady':>10}{'ready cold':>11}{'ready warm':>11}   (medians, ms; s)")
    ok = True
    for op in args.ops:
        v1 = med(op, "vendor", "first_s")
        c1, w1 = med(op, "cold", "first_s"), med(op, "warm", "first_s")
        st = med(op, "warm", "steady_s")
        bar = 2 * (st + v1)
        if op in OPS_WITH_A_BAR:
            ok &= c1 <= 2 * v1 and w1 <= bar
        print(f"{op:<11}{v1 * 1e3:11.1f}{c1 * 1e3:10.1f}{c1 / v1:7.2f}{w1 * 1e3:10.1f}"
              f"{bar * 1e3:9.1f}{st * 1e3:10.2f}{med(op, 'cold', 'ready_after_s'):10.1f}s"
              f"{med(op, 'warm', 'ready_after_s'):10.1f}s")
    print(("bar met" if ok else "bar NOT met") + " (issue 14's bars are per op: "
          f"{', '.join(o for o in args.ops if o in OPS_WITH_A_BAR)}; the ResNet-18 step is "
          "measured, without a bar)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
