"""What patching costs when every layer runs torch's op: a model, its deep copy, and a patched
deep copy with the backend forced to torch, inference calls interleaved in one process.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_patched_torch_only.py [--model mobilenet_v2] [--batch 1]

The copy shows this VM's own spread between two identical models; the patched copy adds only
kernelkit.nn's route per layer (a forced backend means no tuning and no trial). Medians over
`--rounds` rounds (after one warm-up round; each round starts at the next model) and
model / variant ratios (< 1: slower).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/resnets.py


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-torch-only-"))
    import torch
    from resnets import MODELS, interleaved

    import kernelkit
    import kernelkit.nn as knn
    from kernelkit import devices

    torch.set_num_threads(2)
    torch.manual_seed(0)
    ref = MODELS[args.model]().eval()
    copied = copy.deepcopy(ref)
    patched = copy.deepcopy(ref)
    report = knn.patch(patched)
    x = torch.randn(args.batch, 3, 224, 224)
    models = {"model": ref, "deep copy": copied, "patched, backend torch": patched}
    with torch.no_grad(), kernelkit.use(backend="torch"):
        # each round starts at the next model: in a fixed order the patched copy always ran
        # last, and read 0.969 against the copy's 0.986 (ResNet-50, batch 1, Zen 4); rotated,
        # 0.982-0.989 against two copies' 0.973-0.992 (docs/performance.md)
        med = interleaved({k: (lambda m=m: m(x)) for k, m in models.items()}, args.rounds)
    print(f"{devices.cpu_info()['model']}, torch {torch.__version__}, {args.model} batch "
          f"{args.batch}, {len(report.swapped)} layers patched, {args.rounds} rounds")
    for label, t in med.items():
        print(f"  {label:24s} {t * 1e3:7.2f} ms  model / this {med['model'] / t:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
