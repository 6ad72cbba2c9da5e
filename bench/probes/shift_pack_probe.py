"""The shifted GEMM's weight packing (``_conv._pack_taps``), one thread: nanoseconds per packed
word for 1x1 and 3x3 weights, float32 and bfloat16 (channel pairs).

    flock /tmp/kk-bench.lock python bench/probes/shift_pack_probe.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernelkit.kernels.numba import _conv  # noqa: E402
from kernelkit.kernels.numba.conv2d import _geo, _shift_wsize, tile_shape  # noqa: E402


@numba.njit
def _pack(ws, wp, geo):
    _conv._pack_taps(0, 1, ws, wp, geo)


def main() -> int:
    mr, _ = tile_shape(np.float32)
    rng = np.random.default_rng(0)
    print("| K x C x R x S | dtype | ms | ns per word |\n| --- | --- | --- | --- |")
    for k, c, r in ((2048, 512, 1), (512, 512, 3), (1024, 1024, 1), (256, 256, 3)):
        for pairs in (False, True):
            cq = c // 2 if pairs else c
            geo = _geo(1, cq, 7, 7, k, r, r, 7, 7, (1, 1), (0, 0, 0, 0), (1, 1), 1)
            geo[_conv.G_PAIRS] = c if pairs else 0
            geo[_conv.G_KC] = min(256, cq)
            geo[_conv.G_TAPW] = cq
            ws = (rng.integers(0, 1 << 15, k * c * r * r).astype(np.uint16) if pairs
                  else rng.standard_normal(k * c * r * r).astype(np.float32))
            wp = np.empty(_shift_wsize(1, k, cq, r * r, mr), np.uint32 if pairs else np.float32)
            _pack(ws, wp, geo)
            ts = []
            for _ in range(9):
                t0 = time.perf_counter()
                _pack(ws, wp, geo)
                ts.append(time.perf_counter() - t0)
            t = float(np.median(ts))
            print(f"| {k}x{c}x{r}x{r} | {'bfloat16' if pairs else 'float32'} | {t * 1e3:.3f} | "
                  f"{t * 1e9 / wp.size:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
