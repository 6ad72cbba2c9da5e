"""Epilogue activation accuracy per backend on a dense sweep (K = 1: C = a @ b is exact).

    PYTHONPATH=. python bench/probes/activation_accuracy.py [--backends torch,numba,triton]

For each backend (float32) and activation: the largest |y - y_ref| / max(|y_ref|, 1e-3) and the
largest error in float32 ulps where |y_ref| > 1e-3, against float64 references of the same
inputs (tests/reference.py: activation_grid, activation_errors), over +-[2^-10, 32) at 4096
points per octave. Torch's float32 functions are the yardstick. Triton runs in the interpreter
when there is no GPU (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
os.environ.setdefault("TRITON_INTERPRET", "1")

from reference import activation_errors, activation_grid  # noqa: E402

ACTS = ("relu", "gelu", "gelu_tanh", "silu")


def numba_act(a, b, act):
    from kernelkit.kernels.numba.matmul import matmul_forward

    return matmul_forward(a[None], b[None], None, act)[0]


def _torch_run(fn, a, b, act, **kw):
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ta, tb = torch.from_numpy(a)[None].to(dev), torch.from_numpy(b)[None].to(dev)
    return fn(ta, tb, None, act, **kw)[0].cpu().numpy()


def torch_act(a, b, act):
    from kernelkit.kernels.torch.matmul import matmul_forward

    return _torch_run(matmul_forward, a, b, act)


def triton_act(a, b, act):
    from kernelkit.kernels.triton.matmul import MatmulConfig, matmul_forward

    cfg = MatmulConfig(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2)
    return _torch_run(matmul_forward, a, b, act, config=cfg)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", default="torch,numba,triton")
    p.add_argument("--mantissas", type=int, default=4096)
    args = p.parse_args()
    a, b = activation_grid(np.float32, args.mantissas)
    x = a @ b
    runs = {"torch": torch_act, "numba": numba_act, "triton": triton_act}
    print(f"{'backend':8} {'activation':10} {'max err/max(|y|,1e-3)':>22} {'max ulp (|y|>1e-3)':>19}")
    for name in args.backends.split(","):
        for act in ACTS:
            rel, ulp = activation_errors(x, runs[name](a, b, act), act)
            print(f"{name:8} {act:10} {rel:22.3g} {ulp:19.1f}")


if __name__ == "__main__":
    main()
