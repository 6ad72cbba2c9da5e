"""What the conv2d op adds over its Numba launcher on a cache hit, for float32 and bfloat16
torch tensors, against torch's own F.conv2d (a 1x8x8x8 3x3 conv: the kernel itself is a few us).

    KERNELKIT_CACHE_DIR=/tmp/kk-probe flock /tmp/kk-bench.lock \\
        python bench/probes/conv_op_overhead.py

Rows: ``kernelkit.conv2d`` inside ``kernelkit.use(backend="numba")`` entered per call, the same
with the block entered once, the launcher the op's plan runs (bound by the candidate, with the
tuned config: the thread guard and torch-data flag included) on the numpy views, the bare
launcher (``kernels.numba.conv2d.conv2d_forward``) with that config, and torch. Steady-state
medians, rows interleaved (``_steady.py``), in microseconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _steady import steady_medians  # noqa: E402

import kernelkit  # noqa: E402
from kernelkit import core  # noqa: E402
from kernelkit.arrays import torch_to_numpy  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402
from kernelkit.ops.conv2d import prepare_forward  # noqa: E402
from kernelkit.ops.dispatch import choice_for  # noqa: E402


def main() -> int:
    torch.set_num_threads(2)
    print("| dtype | config | op, use() per call | op | plan's launcher | bare launcher | torch |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for dt in (torch.float32, torch.bfloat16):
        xt, wt = torch.randn(1, 8, 8, 8).to(dt), torch.randn(8, 8, 3, 3).to(dt)
        x, w = torch_to_numpy(xt), torch_to_numpy(wt)  # what the op hands the launcher

        def op_use():
            with kernelkit.use(backend="numba"):
                return kernelkit.conv2d(xt, wt, padding=1)

        op_use()  # tunes the Numba configs once
        with kernelkit.use(backend="numba"):
            call = prepare_forward(xt, wt, padding=1)
            choice = choice_for(call)
            cand = core.get("conv2d", choice.candidate)
            launch = cand.launcher(call.problem, choice.config)
            cfg = nconv.CONFIG.from_dict(choice.config)
            op = lambda: kernelkit.conv2d(xt, wt, padding=1)  # noqa: E731
            ts = steady_medians([
                op_use, op, lambda: launch(x, w, None),
                lambda: nconv.conv2d_forward(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None,
                                             "NCHW", config=cfg),
                lambda: torch.nn.functional.conv2d(xt, wt, padding=1)],
                rounds=6, warm=0.05, reps=20)
        print(f"| {str(dt).split('.')[1]} | {cfg.kernel} | "
              + " | ".join(f"{t * 1e6:.1f}" for t in ts) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
