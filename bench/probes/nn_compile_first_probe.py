"""A patched model compiled before any eager call, against its compiled unpatched twin: NLP-style
inputs (B random in 1..8, L in 1..300, width 64), `torch.compile(dynamic=True)`, one thread,
calls alternated, medians per call after a warm-up.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/nn_compile_first_probe.py --model mlp       # or encoder; --train

Why it exists: a layer that no eager call had decided traced the registered custom op, so a
model compiled at once had every layer dispatching inside the graph (a 13-Linear encoder ran
2.28x slower than compiled torch on a 2-vCPU Zen 4); it now traces torch's op
(`kernelkit/nn/_route.py` `compiled`). Before/after: run it in a worktree of the older commit
with PYTHONPATH set to it, alternated with this checkout, each with a fresh KERNELKIT_CACHE_DIR.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    """A transformer encoder block: 6 Linear layers (q, k, v, o, two feed-forward)."""

    def __init__(self, d: int = 64, heads: int = 4, ff: int = 256):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        y = self.ln1(x)
        q, k, v = (p(y).view(b, n, self.heads, d // self.heads).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.o(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def model(name: str) -> nn.Module:
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64), nn.Linear(64, 100))
    return nn.Sequential(Block(), Block(), nn.Linear(64, 100))  # 13 Linear layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["mlp", "encoder"], default="mlp")
    ap.add_argument("--train", action="store_true", help="forward and backward, grad enabled")
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()

    import kernelkit.nn as knn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    random.seed(0)
    ref = model(args.model)
    patched = copy.deepcopy(ref)
    knn.patch(patched)
    compiled_ref = torch.compile(ref, dynamic=True)
    compiled_patched = torch.compile(patched, dynamic=True)
    times: dict[str, list[float]] = {"torch.compile": [], "patched+compile": []}
    with torch.set_grad_enabled(args.train):
        for i in range(args.calls):
            x = torch.randn(random.randint(1, 8), random.randint(1, 300), 64)
            pairs = [("torch.compile", compiled_ref), ("patched+compile", compiled_patched)]
            outs = []
            for name, fn in (pairs if i % 2 else pairs[::-1]):
                t0 = time.perf_counter()
                y = fn(x)
                if args.train:
                    y.sum().backward()
                times[name].append(time.perf_counter() - t0)
                outs.append(y.detach())
            torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)
    skip = args.calls // 4  # (compiles and recompiles happen in the first calls)
    med = {k: statistics.median(v[skip:]) * 1e3 for k, v in times.items()}
    where = {r for _, _, r in knn.where(patched)}
    print(f"{args.model} {'train' if args.train else 'infer'}: torch.compile "
          f"{med['torch.compile']:.3f} ms, patched+compile {med['patched+compile']:.3f} ms, "
          f"patched/torch {med['patched+compile'] / med['torch.compile']:.3f} "
          f"(eager routes made: {sorted(where) or 'none'})")


if __name__ == "__main__":
    main()
