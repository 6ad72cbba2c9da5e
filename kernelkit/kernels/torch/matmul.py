"""The vendor matmul: MKL/OpenBLAS/oneDNN on the CPU and cuBLAS on the GPU, through torch.

It is one more candidate, so the tuner can never do worse than the vendor library.
"""

from __future__ import annotations

import torch

from kernelkit.kernels import torch_activations
from kernelkit.kernels.config import VendorConfig
from kernelkit.kernels.config import vendor_space as space  # noqa: F401 - the module surface

from ._tf32 import with_tf32

CONFIG = VendorConfig

ACTIVATION_FNS = torch_activations()


def matmul_forward(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    allow_tf32: bool = False,
    config: VendorConfig | None = None,
) -> torch.Tensor:
    """act(a @ b + bias) for (B, M, K) @ (B, K, N) tensors on one device (or 2-D ones).

    TF32 is switched per float32 CUDA call where it differs (and restored), so it is never on by
    surprise.
    """
    if a.is_cuda:
        c = with_tf32(torch.backends.cuda.matmul, a, allow_tf32, lambda: _matmul(a, b, bias))
    else:
        c = _matmul(a, b, bias)
    if activation is not None:
        c = ACTIVATION_FNS[activation](c)
    return c


# The same function for the 2-D case, (M, K) @ (K, N) -> (M, N) (the op calls it for 2-D tensors:
# torch's batched call on a (1, M, K) view costs about 5 us more than its 2-D one, and each
# unsqueeze/squeeze 2 us, on a 2-core Zen 3).
matmul_forward_2d = matmul_forward


def _bind_forward(p, device: str):
    """`matmul_forward` for one problem as one closure over `torch.matmul`, where nothing of
    its general path applies: run on the CPU (the candidate's `device`: its data is on the CPU
    by then), no bias; None elsewhere. Why: three Python calls and the device check around
    torch's product were about 0.4 us of the op's ~2.8 us over `torch.matmul` on a cache hit
    (1x64 @ 64x64, 2-vCPU Zen 4); the data's device, asked at every call before, 0.06 us more.
    On the GPU the general path runs (float32 needs the TF32 switch)."""
    activation = p.options.activation
    if p.options.bias or device != "cpu":
        return None
    mm, act = torch.matmul, None if activation is None else ACTIVATION_FNS[activation]

    def plan(a, b, bias):
        c = mm(a, b)
        return c if act is None else act(c)

    return plan


matmul_forward.bind = _bind_forward  # (see kernelkit/core.py `bound`)


def _matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if bias is None:
        return torch.matmul(a, b)
    if a.dim() == 2:
        return torch.addmm(bias, a, b)
    if a.shape[0] == 1:  # addmm fuses the bias into the GEMM for the common 2-D case
        return torch.addmm(bias, a[0], b[0]).unsqueeze(0)
    return torch.baddbmm(bias, a, b)
