"""bfloat16 Linear layers on AMX against torch's: the skinny products of a transformer's MLP
(a few to a few hundred tokens by a 4096 x 4096 or 4096 x 11008 weight), and a patched
LLaMA-style feed-forward block.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE KERNELKIT_CACHE_DIR=<fresh> flock /tmp/kk-bench.lock \\
        python bench/probes/amx_linear_probe.py [--shapes 1x4096x4096 32x4096x11008] [--ffn 16 32]

Products (M x K x N: x (M, K) by a weight (N, K), as F.linear): torch's ``F.linear``;
``kernelkit.matmul(x, w.t())`` tuned first (``kernelkit.explain`` measures every candidate and
stores the winner; the column gives it); and the Numba launcher forced to each AMX kernel,
"amx" (both operands packed) and "amx_w" (the weight's rows read in place as tiles). Rows
interleaved in their steady state (``_steady.py``), medians. Every output is checked against
float32 first. ``--ffn``: down(silu(gate(x)) * up(x)) with bias-free 4096 -> 11008 -> 4096
layers, patched with ``kernelkit.nn.patch`` after one tuning call per token count (kernels
compiled in the foreground) and in-model trials settled, against the unpatched model, 15
rounds in alternating order, medians. Needs a CPU with AMX for the AMX rows.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERNELKIT_COMPILE", "foreground")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import steady_medians  # noqa: E402

import kernelkit  # noqa: E402
import kernelkit.nn as knn  # noqa: E402
from kernelkit import devices  # noqa: E402
from kernelkit.arrays import torch_to_numpy, with_dtype  # noqa: E402
from kernelkit.kernels.numba import _amx  # noqa: E402
from kernelkit.kernels.numba import matmul as nm  # noqa: E402
from kernelkit.nn import _route  # noqa: E402


def products(shapes: list[str], rounds: int) -> None:
    print("| M x K x N | torch ms | kernelkit.matmul ms (chosen) | amx ms | amx_w ms | "
          "torch / kernelkit | torch / amx_w |\n| --- | --- | --- | --- | --- | --- | --- |")
    for shape in shapes:
        m, k, n = (int(v) for v in shape.split("x"))
        g = torch.Generator().manual_seed(m * 7 + n)
        x = torch.randn(m, k, generator=g).bfloat16()
        w = torch.randn(n, k, generator=g).bfloat16()
        a3, b3 = torch_to_numpy(x)[None], torch_to_numpy(w.t())[None]
        amx = nm.amx_configs(k)[0]
        chosen = kernelkit.explain("matmul", x, w.t()).choice
        rows = {"torch": lambda: F.linear(x, w),
                "kernelkit": lambda: kernelkit.matmul(x, w.t()),
                "amx": lambda: nm.matmul_forward(a3, b3, None, None, amx),
                "amx_w": lambda: nm.matmul_forward(a3, b3, None, None, nm.AMX_W)}
        ref = F.linear(x.float(), w.float())
        for label, fn in rows.items():
            y = fn()
            y = (with_dtype(y, "bfloat16") if isinstance(y, np.ndarray) else y).float()
            err = ((y.reshape(ref.shape) - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-2, f"{label} {shape}: relative error {err:.2e}"
        t = dict(zip(rows, steady_medians(list(rows.values()), rounds=rounds, warm=0.05,
                                          reps=3), strict=True))
        what = f"{chosen.candidate} {chosen.config.get('kernel', '') if chosen.config else ''}"
        print(f"| {shape} | {t['torch'] * 1e3:.3f} | {t['kernelkit'] * 1e3:.3f} ({what.strip()}) "
              f"| {t['amx'] * 1e3:.3f} | {t['amx_w'] * 1e3:.3f} | "
              f"{t['torch'] / t['kernelkit']:.2f} | {t['torch'] / t['amx_w']:.2f} |", flush=True)


class FFN(torch.nn.Module):
    """A LLaMA-style feed-forward block: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, d: int = 4096, hidden: int = 11008):
        super().__init__()
        self.up = torch.nn.Linear(d, hidden, bias=False)
        self.gate = torch.nn.Linear(d, hidden, bias=False)
        self.down = torch.nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def ffn(tokens: list[int], rounds: int) -> None:
    torch.manual_seed(0)
    ref = FFN().bfloat16().eval()
    pat = copy.deepcopy(ref)
    knn.patch(pat)
    print("\n| tokens | torch ms | patched ms | torch / patched | layers on kernelkit | "
          "max difference / max |y| |\n| --- | --- | --- | --- | --- | --- |")
    for t in tokens:
        x = torch.randn(t, 4096).bfloat16()
        with torch.no_grad():
            with kernelkit.use(tune="measure"):
                pat(x)
            calls = 0
            while knn.pending(pat) and calls < 200:  # the in-model trials
                pat(x)
                calls += 1
            y0, y1 = ref(x).float(), pat(x).float()
            diff = ((y0 - y1).abs().max() / y0.abs().max()).item()
            fns = {"torch": lambda: ref(x), "patched": lambda: pat(x)}
            times: dict[str, list[float]] = {k: [] for k in fns}
            for r in range(rounds + 1):
                for label in (list(fns) if r % 2 else list(fns)[::-1]):
                    t0 = time.perf_counter()
                    fns[label]()
                    if r:
                        times[label].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        kernel = sorted({name for name, _, sig, route in _route.current_routes(pat)
                         if sig[0][0] == t and _route.describe(route) != "torch (aten)"})
        print(f"| {t} | {med['torch']:.2f} | {med['patched']:.2f} | "
              f"{med['torch'] / med['patched']:.3f} | {', '.join(kernel) or 'none'} | "
              f"{diff:.1e} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", default=[
        "1x4096x4096", "8x4096x4096", "32x4096x4096", "128x4096x4096", "32x4096x11008",
        "32x11008x4096"])
    ap.add_argument("--ffn", nargs="*", type=int, default=[16, 32, 128])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if not _amx.available():
        print("no AMX-BF16 on this CPU (or Linux refused the tile data): nothing to compare")
        return 0
    torch.set_num_threads(2)
    print(f"cpu: {devices.cpu_info()['model']}; torch {torch.__version__}; bfloat16")
    products(args.shapes, args.rounds)
    if args.ffn:
        ffn(args.ffn, 15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
