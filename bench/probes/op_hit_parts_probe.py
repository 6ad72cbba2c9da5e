"""Where a `kernelkit.conv2d` cache hit's time goes, piece by piece (the companion of
`op_hit_overhead_probe.py`): timeit minima of torch's own call, the op, its bound plan, and each
part of the plan key, on a 1x8x8x8 3x3 conv (padding 1) whose choice is torch's candidate,
measured first with `kernelkit.explain`. One thread.

    KERNELKIT_CACHE_DIR=$(mktemp -d) flock /tmp/kk-bench.lock python bench/probes/op_hit_parts_probe.py
"""

from __future__ import annotations

import timeit

import torch
import torch.nn.functional as F

import kernelkit
from kernelkit import compiling
from kernelkit import settings as _settings
from kernelkit.ops import conv2d as _conv2d
from kernelkit.ops import dispatch


def _us(fn, number: int = 20000, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    torch.set_num_threads(1)
    x, w = torch.randn(1, 8, 8, 8), torch.randn(8, 8, 3, 3)
    with kernelkit.use(tune="measure"):  # (queues the compile jobs; memos apart from the default's)
        kernelkit.conv2d(x, w, padding=1)
    compiling.wait()
    print(str(kernelkit.explain("conv2d", x, w, padding=1)).splitlines()[-1])
    for _ in range(500):
        kernelkit.conv2d(x, w, padding=1)
    extras = (1, 1, 1, 1, None, None, dispatch.FALSE_KEY)  # (the op's key parts for this call)
    sig = dispatch.plain_signature3(x, w, None, extras)
    plan = _conv2d._FORWARD.find(sig)
    conv = torch.conv2d
    rows = {
        "F.conv2d(x, w, None, 1, 1)": lambda: F.conv2d(x, w, None, 1, 1),
        "torch.conv2d, 7 arguments": lambda: conv(x, w, None, 1, 1, 1, 1),
        "kernelkit.conv2d (a hit)": lambda: kernelkit.conv2d(x, w, padding=1),
        "its bound plan": lambda: plan(x, w, None),
        "plain_signature3 (the key)": lambda: dispatch.plain_signature3(x, w, None, extras),
        "  the knobs' token": _settings.token,
        "  one tensor's dtype, shape, strides, device": lambda: (x.dtype, x.shape, x.stride(),
                                                                 x.device),
        "the memo's lookup": lambda: _conv2d._FORWARD.find(sig),
        "  hash of the key": lambda: hash(sig),
        "the seven key parts through key_part": lambda: (
            dispatch.key_part(1), dispatch.key_part(1), dispatch.key_part(1),
            dispatch.flag_key(1), None, None, dispatch.flag_key(False)),
    }
    print(f"plan: {type(plan).__name__}")
    for name, fn in rows.items():
        print(f"{name:46s} {_us(fn):7.3f} us")


if __name__ == "__main__":
    main()
