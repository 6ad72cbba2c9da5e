"""What kernelkit.matmul adds to the data's own library on small products, tuned as a user meets
it: a fresh cache folder, the default policy, many calls per size.

For each size it calls the op until the compiled kernels are ready and a few times more, then
times rounds of N calls of the library's own product (``a @ b`` for numpy, ``torch.matmul`` for
torch) and N of ``kernelkit.matmul``, alternating per round; it prints the medians over rounds,
their ratio and the difference, and the candidate each size ran on (the tuner's last choice for
it: under the default policy a size may be measured in the middle of the timed rounds, once its
calls pay for it).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/probes/small_matmul_overhead.py \
        --lib numpy|torch [--rounds 5]

Run nothing else meanwhile; numbers vary a few microseconds between runs on a shared VM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

SHAPES = [(32, 32, 32), (64, 64, 64), (97, 61, 89), (3, 1000, 3), (256, 256, 256),
          (1, 4096, 4096)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", choices=("numpy", "torch"), default="numpy")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("KERNELKIT_CACHE_DIR", tempfile.mkdtemp(prefix="kk-small-"))
    import numpy as np
    import torch

    import kernelkit
    from kernelkit import compiling, devices
    from kernelkit.autotune import tuner

    rng = np.random.default_rng(0)
    wrap = (lambda x: x) if args.lib == "numpy" else torch.from_numpy
    own = (lambda a, b: a @ b) if args.lib == "numpy" else torch.matmul
    data = {s: (wrap(rng.standard_normal(s[:2], dtype=np.float32)),
                wrap(rng.standard_normal(s[1:], dtype=np.float32))) for s in SHAPES}
    # the last choice the tuner made for each size is what the timed calls ran (a plan is reused
    # until the tuner is asked again)
    last: dict[tuple, object] = {}
    real = tuner.choose
    tuner.choose = lambda p, *x, **kw: last.__setitem__(p.shapes, real(p, *x, **kw)) or last[p.shapes]
    for a, b in data.values():
        kernelkit.matmul(a, b)
    compiling.wait()
    for _ in range(3):
        for a, b in data.values():
            kernelkit.matmul(a, b)

    def per_call(fn, n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    print(f"cpu: {devices.cpu_info()['model']}, {os.cpu_count()} cores; data: {args.lib}")
    print(f"{'M x K x N':>16} {'own us':>9} {'kernelkit us':>13} {'ratio':>6} {'added us':>9}  ran on")
    for s, (a, b) in data.items():
        n = 2000 if s[1] * s[2] < 1_000_000 else 100
        rows = [(per_call(lambda: own(a, b), n), per_call(lambda: kernelkit.matmul(a, b), n))
                for _ in range(args.rounds)]
        v = statistics.median(r[0] for r in rows)
        k = statistics.median(r[1] for r in rows)
        choice = last[((1, *s[:2]), (1, *s[1:]))]
        print(f"{'x'.join(map(str, s)):>16} {v * 1e6:9.1f} {k * 1e6:13.1f} {v / k:6.2f} "
              f"{(k - v) * 1e6:9.1f}  {choice.candidate} ({choice.source})")


if __name__ == "__main__":
    main()
