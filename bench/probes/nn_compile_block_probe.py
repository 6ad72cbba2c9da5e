"""What one custom-op conv costs inside a torch.compile graph on the CPU: a conv-BN-ReLU block
(128 -> 128 3x3, 128 -> 512 1x1, 512 -> 128 1x1, each with batch norm and ReLU; batch 8, 28 px),
eager torch, torch.compile of it, and torch.compile of a patched copy whose 128 -> 512 1x1 conv
traces the kernelkit custom op (the others torch's op), calls interleaved (`bench/resnets.py`:
each round starts at the next row), medians.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_compile_block_probe.py infer   # or train

Why it exists: the in-model trial (kernelkit/nn/_route.py) times a layer's kernel against
torch's eager op, and Inductor's graph around torch's conv is faster than that; this measures by
how much a custom op in the graph costs, which sets `_route.COMPILE_MARGIN`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/resnets.py

from resnets import interleaved  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["infer", "train"])
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    import torch
    import torch.nn as nn

    import kernelkit.nn as knn
    from kernelkit import devices

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
        nn.Conv2d(128, 512, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU(),
        nn.Conv2d(512, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU())
    patched = copy.deepcopy(model)
    knn.patch(patched)
    for name, layer in patched.named_modules():  # what compiled() reads at trace time
        if hasattr(layer, "_kk_aten_only"):
            layer._kk_aten_only = layer._kk_aten_only_grad = name != "3"
    x = torch.randn(8, 128, 28, 28)
    if args.mode == "infer":
        model.eval()
        patched.eval()

    def step(m):
        def call():
            if args.mode == "train":
                m.zero_grad(set_to_none=True)
                m(x).sum().backward()
            else:
                with torch.no_grad():
                    m(x)
        return call

    rows = {"torch": step(model), "torch.compile": step(torch.compile(model)),
            "patched+compile (one custom-op conv)": step(torch.compile(patched))}
    for fn in rows.values():  # compiled and warm
        fn()
    med = interleaved(rows, args.rounds)
    print(f"cpu: {devices.cpu_info()['model']}; torch {torch.__version__}; {args.mode}, "
          f"medians of {args.rounds} interleaved rounds")
    for k, v in med.items():
        print(f"{k}: {v * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
