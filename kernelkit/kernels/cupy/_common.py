"""What the CuPy launchers share: activation codes, dtype tags, the compiled-kernel cache, the
CUDA sources, and stride conversion. Nothing here imports cupy at module import time."""

from __future__ import annotations

import dataclasses
import functools
import re
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
