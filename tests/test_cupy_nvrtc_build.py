"""The CuPy kernels through NVRTC, as cupy.RawModule builds them (the launchers' own option tuples,
one self-contained source string), without a GPU: the tests under tests/kernels build with nvcc,
which finds cuda_fp16.h by itself; NVRTC needs an include folder for it (CuPy passes
CUDA_PATH/include or the CUDA runtime wheel's include folder).

Needs libnvrtc (a CUDA toolkit, or the ``nvidia-cuda-nvrtc`` wheel; point ``KERNELKIT_NVRTC_LIB``
at libnvrtc.so.N) and a folder with cuda_fp16.h (CUDA_PATH, /usr/local/cuda*, or Triton's bundled
headers); skips with the reason otherwise. The GPU check's preflight proves the same path on a GPU.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def _find_nvrtc() -> str | None:
    cands = [os.environ.get("KERNELKIT_NVRTC_LIB", "")]
    for base in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda",
                 *glob.glob("/usr/local/cuda-*")):
        if base:
            cands += sorted(glob.glob(f"{base}/lib64/libnvrtc.so*"))
    for site in sys.path:
        cands += sorted(glob.glob(f"{site}/nvidia/*/lib/libnvrtc.so*"))
    return next((c for c in cands if c and Path(c).is_file() and "builtins" not in c), None)


def _load(path: str):
    # libnvrtc dlopens libnvrtc-builtins by soname: load it first from the same folder
    for b in sorted(glob.glob(str(Path(path).parent / "libnvrtc-builtins.so*"))):
        if ".alt." not in b:
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            break
    return ctypes.CDLL(path)


def _compile(lib, src: str, options: tuple[str, ...]) -> tuple[int, str, bytes]:
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), b"kernelkit.cu", 0, None,
                                  None) == 0
    opts = [o.encode() for o in options]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    ptx = b""
    if rc == 0:
        lib.nvrtcGetPTXSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        lib.nvrtcGetPTX(prog, buf)
        ptx = buf.raw
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx


@pytest.fixture(scope="module")
def nvrtc():
    path = _find_nvrtc()
    if path is None:
        pytest.skip("libnvrtc not found (set KERNELKIT_NVRTC_LIB, or install a CUDA toolkit or "
                    "the nvidia-cuda-nvrtc wheel)")
    from gpu_check import fp16_header_dirs

    dirs = fp16_header_dirs()
    if not dirs:
        pytest.skip("no folder with include/cuda_fp16.h (CUDA_PATH, /usr/local/cuda*, triton)")
    return _load(path), [f"-I{d}/include" for d in dirs[:1]]


def _jobs():
    from kernelkit.kernels.cupy import conv2d as cc
    from kernelkit.kernels.cupy import matmul as cm
    from kernelkit.kernels.cupy import preprocess as cp

    jobs = []
    for dt in ("float16", "float32"):
        for cfg in cm.SHIPPED_CONFIGS:
            jobs.append((cm.source(), cm.compile_options(dt, cfg), [cm.kernel_name(dt, cfg)]))
        for cfg in cc.SHIPPED_CONFIGS:
            jobs.append((cc.source(), cc.compile_options(dt, cfg), [cc.kernel_name(dt, cfg)]))
        jobs.append((cc.source(), cc.compile_options(dt), [cc.kernel_name(dt, None, "bwd_input"), cc.kernel_name(dt, None, "fwd_direct"),
                                                          cc.kernel_name(dt, None, "bwd_weight")]))
    jobs.append((cp.source(), cp.COMPILE_OPTIONS, list(cp.KERNEL_NAMES)))
    return jobs


@pytest.mark.slow
def test_every_cupy_module_compiles_with_nvrtc(nvrtc):
    lib, include = nvrtc
    for src, options, names in _jobs():
        rc, log, ptx = _compile(lib, src, (*options, "--gpu-architecture=compute_90", *include))
        assert rc == 0, f"NVRTC {options}:\n{log}"
        for name in names:
            assert f".entry {name}(".encode() in ptx, (name, options)


def test_cuda_fp16_needs_an_include_folder(nvrtc):
    """Why the preflight records CuPy's include folders: without one, NVRTC cannot build."""
    lib, include = nvrtc
    from kernelkit.kernels.cupy import preprocess as cp

    rc, log, _ = _compile(lib, cp.source(), (*cp.COMPILE_OPTIONS, "--gpu-architecture=sm_90"))
    assert rc != 0 and "cuda_fp16.h" in log
    rc, log, _ = _compile(lib, cp.source(), (*cp.COMPILE_OPTIONS, "--gpu-architecture=sm_90",
                                             "-pch", *include))
    assert rc == 0, log  # and NVRTC's automatic precompiled headers do not get in the way
