"""The CuPy/NVRTC preflight of bench/gpu_check.py, in a child process (so a header that NVRTC
cannot find can be retried with another CUDA_PATH, and so it runs alongside the Triton compiles).

Compiles each CuPy kernel family through kernelkit's own launchers (cupy.RawModule, NVRTC, the
launchers' real options), launches each once on a tiny problem, compares with numpy, and prints
one JSON line: {"ok", "error", "nvrtc", "cuda_path", "wheel_include_dirs", "families": {...}}.
The compiled binaries land in CuPy's disk cache, so the main process does not compile them again.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def main() -> int:
    out: dict = {"ok": False, "families": {}}
    try:
        import cupy
        import numpy as np

        out["cupy"] = cupy.__version__
        try:
            out["nvrtc"] = list(cupy.cuda.nvrtc.getVersion())
            from cupy import _environment as cenv

            out["cuda_path"] = cenv.get_cuda_path()
            out["wheel_include_dirs"] = list(cenv._get_include_dir_from_conda_or_wheel(
                *cupy.cuda.nvrtc.getVersion()))
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            out["env_error"] = f"{type(exc).__name__}: {exc}"[:300]

        from kernelkit.kernels.cupy import conv2d as cc
        from kernelkit.kernels.cupy import matmul as cm
        from kernelkit.kernels.cupy import preprocess as cp

        rng = np.random.default_rng(0)

        def fam(name, fn):
            t0 = time.perf_counter()
            try:
                fn()
                out["families"][name] = {"ok": True, "s": round(time.perf_counter() - t0, 2)}
            except Exception as exc:  # noqa: BLE001
                out["families"][name] = {"ok": False, "s": round(time.perf_counter() - t0, 2),
                                         "error": f"{type(exc).__name__}: {exc}"[-1500:]}

        def matmul():
            a = rng.standard_normal((1, 70, 50)).astype(np.float16)
            b = rng.standard_normal((1, 50, 30)).astype(np.float16)
            c = cm.matmul_forward(cupy.asarray(a), cupy.asarray(b)).get().astype(np.float64)
            ref = a.astype(np.float64) @ b.astype(np.float64)
            assert np.abs(c - ref).max() < 0.05 * np.sqrt(50), float(np.abs(c - ref).max())

        def conv():
            x = rng.standard_normal((1, 8, 9, 9)).astype(np.float16)
            w = rng.standard_normal((16, 8, 3, 3)).astype(np.float16)
            y = cc.conv2d_forward(cupy.asarray(x), cupy.asarray(w), padding=(1, 1, 1, 1)).get()
            go = cupy.asarray(np.ones(y.shape, np.float16))
            cc.conv2d_backward_weight(cupy.asarray(x), go, (3, 3), padding=(1, 1, 1, 1))
            cc.conv2d_backward_input(go, cupy.asarray(w), (9, 9), padding=(1, 1, 1, 1))
            cupy.cuda.Device().synchronize()
            # the centre pixel of output channel 0, against numpy in float64
            ref = (x[0, :, 3:6, 3:6].astype(np.float64) * w[0].astype(np.float64)).sum()
            assert abs(float(y[0, 0, 4, 4]) - ref) < 0.05 * max(1.0, abs(ref)), (y[0, 0, 4, 4], ref)

        def preprocess():
            sys.path.insert(0, "tests")
            from reference import preprocess_args

            imgs = rng.integers(0, 256, (2, 20, 30, 3), dtype=np.uint8)
            a = preprocess_args(2, 3, [(0, 0, 20, 30)] * 2, (20, 30))
            y = cp.preprocess_forward(cupy.asarray(imgs), *a, "bilinear", False, "uint8",
                                      "NHWC").get()
            assert np.abs(y.astype(int) - imgs.astype(int)).max() <= 1  # identity size

        fam("matmul", matmul)
        fam("conv2d", conv)
        fam("preprocess", preprocess)
        bad = {k: v for k, v in out["families"].items() if not v["ok"]}
        out["ok"] = not bad
        if bad:
            out["error"] = "; ".join(f"{k}: {v['error'][-400:]}" for k, v in bad.items())
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"[:600]
        out["traceback"] = traceback.format_exc()[-1500:]
    print(json.dumps(out, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
