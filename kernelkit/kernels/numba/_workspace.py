"""Scratch memory for one kernel call (packed weights, padded inputs), kept for the calling
thread's next calls.

Why: a fresh ``np.empty`` of a few MB per call is served by glibc either from the heap or from a
new ``mmap``, depending on the process's history (its dynamic mmap threshold and where the heap
was last trimmed), and a new mapping page-faults on every 4 KiB page the packing writes. On a
2-core Zen 5 VM, ResNet-50's 512->2048 1x1 conv at 7 px (a 4 MB packed weight) ran in 0.42 ms
with a reused buffer and 1.4-3.7 ms with every call faulting (616 faults per call,
``MALLOC_MMAP_THRESHOLD_=131072``); in between, the same process drifted into 0.65-0.69 ms for
the deep layers after other work (docs/performance.md). A workspace held per thread makes the
time independent of that history. Cost: the largest scratch a thread has used stays allocated
(at most ~10 MB for ResNet-50's layers at batch 1; up to 32 MiB more where the shifted GEMM
packs B over exact columns, ``conv2d.SHIFT_EXACT_MAX_BYTES``); ``release()`` frees it.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from kernelkit import threads
from kernelkit.devices import imported_torch

_LOCAL = threading.local()
_ALIGN = 64  # bytes: a cache line, and the widest vector the micro-kernels load
# Operands widened for one call (`operand`) above this size get a new array each call: a
# float16 model's largest products would otherwise pin hundreds of MB per thread.
OPERAND_MAX_BYTES = 64 << 20


def scratch(size: int, dtype) -> np.ndarray:
    """An uninitialised 1-D array of ``size`` elements of ``dtype``, 64-byte aligned, valid until
    this thread's next ``scratch`` call (one call's scratch at a time per thread)."""
    dtype = np.dtype(dtype)
    nbytes = max(int(size), 0) * dtype.itemsize
    buf = getattr(_LOCAL, "buf", None)
    if buf is None or buf.nbytes < nbytes + _ALIGN:
        # grow by at least half again, so a model whose sizes creep up reallocates a few times
        grown = 0 if buf is None else buf.nbytes + buf.nbytes // 2
        buf = _LOCAL.buf = np.empty(max(nbytes + _ALIGN, grown), np.uint8)
        # its first 64-byte boundary, found once: `.ctypes.data` costs about 1 us a call
        _LOCAL.start = -buf.ctypes.data % _ALIGN
    return _aligned_part(buf, nbytes, dtype, _LOCAL.start)


def operand(size: int, dtype, slot: int) -> np.ndarray:
    """Like ``scratch``, from this thread's operand buffer ``slot`` (0, 1, 2, ...), apart from
    ``scratch``'s: for the float32 copies of a call's half-precision operands (``_half.widen``),
    which live while the kernel they feed takes its own scratch. Valid until this thread's next
    ``operand`` call with the same slot; above OPERAND_MAX_BYTES a new array."""
    dtype = np.dtype(dtype)
    nbytes = max(int(size), 0) * dtype.itemsize
    if nbytes > OPERAND_MAX_BYTES:
        return aligned_empty(size, dtype)
    bufs = getattr(_LOCAL, "operands", None)
    if bufs is None:
        bufs = _LOCAL.operands = {}
    held = bufs.get(slot)
    if held is None or held[0].nbytes < nbytes + _ALIGN:
        grown = 0 if held is None else held[0].nbytes + held[0].nbytes // 2
        buf = np.empty(min(max(nbytes + _ALIGN, grown), OPERAND_MAX_BYTES + _ALIGN), np.uint8)
        held = bufs[slot] = (buf, -buf.ctypes.data % _ALIGN)
    return _aligned_part(held[0], nbytes, dtype, held[1])


def aligned_empty(size: int, dtype) -> np.ndarray:
    """A new uninitialised 1-D array of ``size`` elements of ``dtype``, 64-byte aligned (kept
    beyond the call, unlike ``scratch``).

    While the call's data are torch tensors (``threads.LOCAL.torch_data``) it is torch's
    allocation seen as numpy: inside a torch model numpy's calls run cold (each 10-50 us right
    after torch's ops; ``np.empty`` + ``.ctypes`` + a view took about 50 us there, ``torch.empty``
    3 and ``Tensor.numpy()`` 12-17; docs/performance.md), and torch's allocator aligns to 64
    bytes."""
    if getattr(threads.LOCAL, "torch_data", False):
        out = _torch_empty(size, dtype)
        if out is not None:
            return out
    dtype = np.dtype(dtype)
    nbytes = max(int(size), 0) * dtype.itemsize
    return _aligned_part(np.empty(nbytes + _ALIGN, np.uint8), nbytes, dtype)


def empty_bits16(shape: tuple) -> np.ndarray:
    """``aligned_empty`` as a C-contiguous uint16 array of ``shape``: bfloat16 results as their
    bits (torch's allocation while the call's data are torch tensors: float16 has uint16's size,
    and torch allocates no uint16 of its own here)."""
    return aligned_empty(math.prod(shape), np.float16).view(np.uint16).reshape(shape)


def _torch_empty(size: int, dtype) -> np.ndarray | None:
    """``aligned_empty`` through torch's allocator; None where torch has no such dtype or the
    block is not 64-byte aligned."""
    torch = imported_torch()
    tdtype = None if torch is None else _TORCH_DTYPES.get(np.dtype(dtype).char)
    if tdtype is None:
        return None
    # (device named: a program's default device, `torch.set_default_device` or a `with
    # torch.device(...)` block, put it on meta or CUDA, and `numpy()` raised)
    t = torch.empty(max(int(size), 0), dtype=getattr(torch, tdtype), device="cpu")
    return t.numpy() if t.data_ptr() % _ALIGN == 0 else None


_TORCH_DTYPES = {"f": "float32", "d": "float64", "e": "float16", "B": "uint8"}


def _aligned_part(buf: np.ndarray, nbytes: int, dtype: np.dtype,
                  start: int | None = None) -> np.ndarray:
    """The first ``nbytes`` of byte buffer ``buf`` from a 64-byte boundary (``start`` bytes in,
    found here when not given), as ``dtype``."""
    if start is None:
        start = -buf.ctypes.data % _ALIGN
    return buf[start:start + nbytes].view(dtype)


def release() -> None:
    """Free this thread's scratch and operand buffers (the next call allocates anew)."""
    _LOCAL.buf = None
    _LOCAL.operands = None
