"""What the CuPy launchers share: activation codes, dtype tags, the compiled-kernel cache, the
CUDA sources, and stride conversion. Nothing here imports cupy at module import time."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kernelkit.kernels import ACT_CODES  # noqa: F401  (kk_epilogue.cuh's Act enum)
from kernelkit.kernels.config import KernelConfig

# dtype name -> (kernel-name tag, CUDA element type) of the matmul and conv2d kernels.
DTYPES: dict[str, tuple[str, str]] = {"float32": ("f32", "float"), "float16": ("f16", "__half")}

INT32_MAX = 2**31 - 1
SMEM_PAD = 4  # PAD in matmul.cu and conv2d.cu
STATIC_SMEM_LIMIT = 48 * 1024


def dtype_name(dtype) -> str:
    """'float32' / 'float16' from a numpy/cupy dtype, a type, or a string."""
    name = getattr(dtype, "name", None)
    if name is None:
        try:
            import numpy as np

            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    return str(name).replace("torch.", "")


def check_dtype(op: str, dtype) -> str:
    """The dtype's name, which must be one the kernels are built for."""
    name = dtype_name(dtype)
    if name not in DTYPES:
        raise TypeError(f"cupy {op}: dtype must be float32 or float16, got {name}")
    return name


def elem_strides(op: str, strides, itemsize: int) -> tuple[int, ...]:
    """Byte strides (any sign) -> element strides."""
    if any(s % itemsize for s in strides):
        raise ValueError(f"cupy {op}: strides {strides} are not multiples of the item size")
    return tuple(s // itemsize for s in strides)


_LOCAL_INCLUDE = re.compile(r'^#include "(\w+\.cuh)"$', re.M)


@functools.cache
def source(path: Path) -> str:
    """The text of a .cu file beside a launcher (read once), its local ``#include "x.cuh"``
    lines replaced by the headers' text: NVRTC gets one self-contained string, and cupy's binary
    cache (keyed on that string) sees a change to a header too."""
    text = path.read_text(encoding="utf-8")
    return _LOCAL_INCLUDE.sub(
        lambda m: (path.parent / m.group(1)).read_text(encoding="utf-8"), text)


def fp16_include_dir(candidates) -> Path | None:
    """The first of `candidates` (folders) whose ``include/`` has cuda_fp16.h, as that include
    folder; None if none has."""
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file():
            return Path(c) / "include"
    return None


def header_candidates() -> list[str]:
    """Where a CUDA toolkit's headers may be: CUDA_PATH, CUDA_HOME, /usr/local/cuda(-*), the pip
    wheels' ``nvidia/*`` folders (nvidia-cuda-runtime ships cuda_fp16.h), Triton's bundled CUDA."""
    cands = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda",
             *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))]
    for site in sys.path:
        if site and Path(site).is_dir():
            cands += sorted(str(p) for p in Path(site).glob("nvidia/*"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin:
        cands.append(str(Path(spec.origin).parent / "backends" / "nvidia"))
    return cands


@functools.cache
def header_options() -> tuple[str, ...]:
    """NVRTC has no built-in cuda_fp16.h (NVRTC 13 and older): CuPy adds the toolkit's include
    folder it finds (CUDA_PATH or its wheels). Where it finds none (a machine with the driver and
    pip wheels only), point NVRTC at a folder that has the header; else add nothing."""
    import cupy

    try:
        from cupy import _environment as cenv

        own = [cenv.get_cuda_path()] if cenv.get_cuda_path() else []
        wheel = cenv._get_include_dir_from_conda_or_wheel(*cupy.cuda.nvrtc.getVersion())
        if fp16_include_dir(own) or any((Path(d) / "cuda_fp16.h").is_file() for d in wheel):
            return ()
    except Exception:  # noqa: BLE001 - cupy internals moved: fall back to our own search
        pass
    found = fp16_include_dir(header_candidates())
    return (f"-I{found}",) if found is not None else ()


class KernelCache:
    """Compiled kernels (or modules) by key: each built once, under a lock, on first use."""

    def __init__(self) -> None:
        self._items: dict = {}
        self._lock = threading.Lock()

    def get(self, key, build: Callable[[], object]):
        item = self._items.get(key)
        if item is None:
            with self._lock:
                item = self._items.get(key)
                if item is None:
                    item = self._items[key] = build()
        return item


@dataclass(frozen=True)
class RegisterTileConfig(KernelConfig):
    """A SIMT GEMM tile: BM x BN outputs per block, reduction step BK, TM x TN outputs per thread;
    threads per block = (BM / TM) * (BN / TN). Subclasses give ``smem_bytes`` and may add rules
    of their kernel in ``_kernel_problems``."""

    BM: int
    BN: int
    BK: int
    TM: int
    TN: int

    _label = "cupy config"  # how errors name the config

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{self._label}: {f.name} must be a positive int, got {v!r}")
        problems = []
        if self.BM % self.TM or self.BN % self.TN:
            problems.append("BM must be a multiple of TM and BN of TN")
        else:
            nt = self.threads
            if not 32 <= nt <= 1024:
                problems.append(f"threads per block (BM/TM)*(BN/TN) = {nt} must be in [32, 1024]")
            else:
                problems += self._kernel_problems(nt)
        if self.smem_bytes > STATIC_SMEM_LIMIT:
            problems.append(f"shared memory {self.smem_bytes} B > {STATIC_SMEM_LIMIT} B")
        if problems:
            raise ValueError(f"{self._label} {self}: " + "; ".join(problems))

    def _kernel_problems(self, nt: int) -> list[str]:
        return []

    @property
    def threads(self) -> int:
        return (self.BM // self.TM) * (self.BN // self.TN)

    @property
    def smem_bytes(self) -> int:
        raise NotImplementedError
