"""Small cases for compute-sanitizer (racecheck, memcheck), run by bench/gpu_check.py as

    compute-sanitizer --tool racecheck python3 bench/gpu_check_sanitize.py CASE...

Each case launches one kernel a few times on a small problem that still exercises what the serial
host emulation of the CUDA tests hides: several K tiles through the double-buffered shared memory
of the CuPy GEMM, the CuPy backward-weight reduction, and the ragged list of strided views of the
preprocess kernels (Triton and CuPy). Kernels come from the disk caches the main run filled.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]


def _ragged(rng):
    import numpy as np
    from reference import preprocess_args

    big = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    views = [big[3:50, 5:80], big[::2, ::3], big[10:60:2, 20:]]
    a = preprocess_args(3, 3, [(0, 0, *v.shape[:2]) for v in views], (33, 29), rot90=[0, 1, 0],
                        angles=[0, 0, 12.0])
    return big, views, a


def cupy_gemm_multi_k():
    import cupy

    from kernelkit.kernels.cupy import matmul as cpk

    a = cupy.random.standard_normal((2, 130, 200), dtype=cupy.float32)  # K = 200: 25 BK=8 tiles
    b = cupy.random.standard_normal((2, 200, 70), dtype=cupy.float32)
    bias = cupy.random.standard_normal((70,), dtype=cupy.float32)
    for cfg in (None, *cpk.SHIPPED_CONFIGS[1:3]):
        c = cpk.matmul_forward(a, b, bias, "gelu", cfg)
    cupy.cuda.Device().synchronize()
    assert float(abs(c).max()) > 0


def cupy_conv_bwd_weight():
    import cupy

    from kernelkit.kernels.cupy import conv2d as cpk

    x = cupy.random.standard_normal((2, 9, 11, 24), dtype=cupy.float32)  # NHWC
    go = cupy.random.standard_normal((2, 9, 11, 40), dtype=cupy.float32)
    cpk.conv2d_backward_weight(x, go, (3, 3), padding=(1, 1, 1, 1), layout="NHWC")
    cupy.cuda.Device().synchronize()


def triton_preprocess_ragged():
    import numpy as np
    import torch
    from gpu_check_preprocess import _views_like

    from kernelkit.kernels.triton import preprocess as tp

    _, views, a = _ragged(np.random.default_rng(0))
    t_views = _views_like(views, "cuda")
    tp.preprocess_forward(t_views, *a, "bilinear", True, "float32", "NCHW")
    torch.cuda.synchronize()


def cupy_preprocess_ragged():
    import cupy
    import numpy as np

    from kernelkit.kernels.cupy import preprocess as cpp

    big, views, a = _ragged(np.random.default_rng(0))
    base = cupy.asarray(big)
    # the same views, on the device, without copies
    c_views = [base[3:50, 5:80], base[::2, ::3], base[10:60:2, 20:]]
    assert all(v.shape == w.shape for v, w in zip(c_views, views))
    cpp.preprocess_forward(c_views, *a, "bilinear", True, "float32", "NCHW")
    cupy.cuda.Device().synchronize()


CASES = {f.__name__: f for f in (cupy_gemm_multi_k, cupy_conv_bwd_weight,
                                 triton_preprocess_ragged, cupy_preprocess_ragged)}


def main(names: list[str]) -> int:
    try:
        import cupy

        cupy.cuda.set_allocator(None)  # no pool: memcheck sees each allocation's real bounds
    except ImportError:
        pass
    bad = 0
    for name in names or list(CASES):
        try:
            CASES[name]()
            print(f"case {name}: ran", flush=True)
        except Exception as exc:  # noqa: BLE001
            bad += 1
            print(f"case {name}: {type(exc).__name__}: {exc}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
