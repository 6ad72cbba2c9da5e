"""The Numba conv with its packed weights kept across calls, against packing every call, and torch.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_packs_probe.py [--batch 1] [--rounds 6]

Inside `kernelkit.frozen_weights()`, every ResNet-50 conv layer (tests/reference.CONV_RESNET50) at ``--batch``, fp32 NCHW, config
auto, weights in torch tensors (a model in inference: the same weight every call). Three rows
per layer, in their steady state and interleaved (`_steady.py`): the Numba conv launched as the
ops layer launches it for torch tensors, with the packed weight kept (``_packs``) and with
``conv2d.KEEP_PACKS`` off (packed every call), torch's F.conv2d, and torch's own inference path
with prepacked weights (``torch.jit.freeze`` + ``optimize_for_inference`` of an ``nn.Conv2d``:
oneDNN's weight reorder done once). Prints the medians, F.conv2d / ours per layer, and the
geometric means against both torch rows.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from reference import CONV_RESNET50  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _steady import steady_medians  # noqa: E402

import kernelkit  # noqa: E402
from kernelkit import threads  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threads.LOCAL.torch_data = True  # as the ops layer says for torch tensors
    frozen_block = kernelkit.frozen_weights()
    frozen_block.__enter__()
    rng = np.random.default_rng(0)
    ways = ("kept", "per call")
    ratios = {w: [] for w in ways}
    frozen_ratios = []
    print(f"ResNet-50 conv layers, batch {args.batch}, fp32 NCHW, config auto, steady medians, ms")
    print(f"{'C_in':>5} {'C_out':>5} {'HW':>4} k s {'kept':>8} {'per call':>8} {'torch':>8} "
          f"{'frozen':>8} {'t/kept':>7} {'t/call':>7} {'f/kept':>7}")
    for c, k, hw, r, st, pad in CONV_RESNET50:
        xt = torch.from_numpy(rng.standard_normal((args.batch, c, hw, hw), dtype=np.float32))
        wt = torch.from_numpy(rng.standard_normal((k, c, r, r), dtype=np.float32) * 0.05)

        def ours(keep, xt=xt, wt=wt, st=st, pad=pad):
            nconv.KEEP_PACKS = keep
            # numpy views of the tensors, made per call as the ops layer makes them
            return nconv.conv2d_forward(xt.detach().numpy(), wt.detach().numpy(), None,
                                        (st, st), (pad,) * 4, (1, 1), 1, None, "NCHW")

        ref = F.conv2d(xt.double(), wt.double(), stride=st, padding=pad)
        for keep in (True, False, True):
            torch.testing.assert_close(torch.from_numpy(ours(keep)).double(), ref,
                                       rtol=1e-3, atol=1e-3)
        module = torch.nn.Conv2d(c, k, r, st, pad, bias=False).eval()
        with torch.no_grad():
            module.weight.copy_(wt)
            jit = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(module)))
            torch.testing.assert_close(jit(xt).double(), ref, rtol=1e-3, atol=1e-3)

        def torch_frozen(jit=jit, xt=xt):
            with torch.no_grad():
                return jit(xt)

        fns = [lambda: ours(True), lambda: ours(False),
               lambda xt=xt, wt=wt, st=st, pad=pad: F.conv2d(xt, wt, stride=st, padding=pad),
               torch_frozen]
        med = [t * 1e3 for t in steady_medians(fns, args.rounds)]
        for w, m in zip(ways, med):
            ratios[w].append(med[2] / m)
        frozen_ratios.append(med[3] / med[0])
        print(f"{c:5d} {k:5d} {hw:4d} {r} {st} " + " ".join(f"{m:8.3f}" for m in med) + " "
              + " ".join(f"{med[2] / m:7.2f}" for m in med[:2]) + f" {med[3] / med[0]:7.2f}",
              flush=True)
    nconv.KEEP_PACKS = True
    frozen_block.__exit__(None, None, None)
    gm = lambda v: math.exp(statistics.fmean(math.log(x) for x in v))
    print("geomean F.conv2d / ours: " + ", ".join(
        f"{w} {gm(ratios[w]):.3f} (lowest {min(ratios[w]):.3f})" for w in ways))
    print(f"geomean torch frozen / ours kept: {gm(frozen_ratios):.3f} "
          f"(lowest {min(frozen_ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
