"""The vendor matmul through numpy: ``np.matmul`` (OpenBLAS gemm / gemv), epilogue in place.

numpy hands a product to BLAS only when each matrix has one unit stride and the other at least
its extent (``is_blasable2d`` in numpy's matmul loop); any other layout runs numpy's naive triple
loop, so such an operand is copied first (the copy is O(size), the loop would be O(M*N*K)).
"""

from __future__ import annotations

import numpy as np

from kernelkit.arrays import strided_like_torch
from kernelkit.kernels import numpy_activation, torch_activations
from kernelkit.kernels.config import VendorConfig
from kernelkit.kernels.config import vendor_space as space  # noqa: F401 - the module surface

CONFIG = VendorConfig


def _blasable(x: np.ndarray) -> bool:
    """numpy's matmul can pass every (rows, cols) matrix of ``x`` (2-D or 3-D) to BLAS as it is."""
    rows, cols = x.shape[-2:]
    s_r, s_c = x.strides[-2:]
    item = x.itemsize
    return (s_c == item and s_r >= max(cols, 1) * item) or \
        (s_r == item and s_c >= max(rows, 1) * item)


def _blas_ready(x: np.ndarray) -> np.ndarray:
    if x.flags.c_contiguous or _blasable(x):  # (the flag first: the common case, cheaply)
        return x
    if x.ndim == 3 and x.shape[0] > 1 and x.strides[0] == 0:  # a broadcast batch: copy one
        # matrix, not them all
        return np.broadcast_to(np.ascontiguousarray(x[:1]), x.shape)
    return np.ascontiguousarray(x)


def matmul_forward(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None,
                   activation: str | None = None, config: VendorConfig | None = None,
                   allow_tf32: bool = False) -> np.ndarray:
    """act(a @ b + bias) for a (B, M, K) and b (B, K, N) of float32 / float64; new (B, M, N).

    Any strides (negative, stride-0 batch). ``allow_tf32`` is a permission the CPU has no use for.
    """
    a, b = _blas_ready(a), _blas_ready(b)
    if a.shape[0] == 1 and b.shape[0] == 1:
        # the 2-D product (BLAS gemm/gemv straight away), seen as a (1, M, N) batch
        c = (a[0] @ b[0])[None]
    else:
        c = np.matmul(a, b)
    return _epilogue(c, bias, activation)


def matmul_forward_2d(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None,
                      activation: str | None = None, config: VendorConfig | None = None,
                      allow_tf32: bool = False) -> np.ndarray:
    """`matmul_forward` for 2-D arrays, (M, K) @ (K, N) -> new (M, N): what the op calls for 2-D
    inputs, without the (1, M, K) views around the product (about 2 us of a 5 us call)."""
    # the operator, not np.matmul: the same ufunc without its argument parsing (1.6 against
    # 2.1 us for a 32^3 product on Zen 4)
    c = _blas_ready(a) @ _blas_ready(b)
    if bias is None and activation is None:
        return c if c.size else strided_like_torch(c)
    return _epilogue(c, bias, activation)


def _epilogue(c: np.ndarray, bias: np.ndarray | None, activation: str | None) -> np.ndarray:
    if c.size == 0:
        return strided_like_torch(c)
    if bias is not None:
        c += bias
    if activation is not None:
        # torch's own activations on the same memory (torch.from_numpy: no copy), so the
        # epilogue matches the torch vendor's numerics; the result is viewed back as numpy
        try:
            import torch
        except ImportError:  # (a dependency; without it, the definitions in numpy)
            return numpy_activation(c, activation)
        c = torch_activations()[activation](torch.from_numpy(c)).numpy()
    return c
