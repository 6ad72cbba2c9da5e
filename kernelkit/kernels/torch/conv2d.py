"""The vendor conv2d: oneDNN on the CPU and cuDNN on the GPU, through torch.

Same contract as the hand-written kernels: x in the given layout ("NCHW" dims, or "NHWC" dims),
padding as (top, bottom, left, right), result in x's layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernelkit.kernels.config import VendorConfig
from kernelkit.kernels.config import vendor_space as space  # noqa: F401 - the module surface
from kernelkit.kernels.convgeom import out_size

from ._tf32 import with_tf32
from .matmul import ACTIVATION_FNS

CONFIG = VendorConfig


def _nchw(x: torch.Tensor, layout: str) -> torch.Tensor:
    # An NHWC array seen as NCHW dims is exactly torch's channels_last: no copy.
    return x.permute(0, 3, 1, 2) if layout == "NHWC" else x


def _back(y: torch.Tensor, layout: str) -> torch.Tensor:
    return y.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else y.contiguous()


def _pad(x: torch.Tensor, padding) -> tuple[torch.Tensor, tuple[int, int]]:
    """Symmetric padding goes to the conv itself; asymmetric ('same' with an even kernel) is
    applied first with F.pad, as torch does internally."""
    top, bottom, left, right = padding
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


def _with_tf32(x: torch.Tensor, allow_tf32: bool, fn):
    return with_tf32(torch.backends.cudnn, x, allow_tf32, fn)


def _empty_reduction(weight: torch.Tensor) -> bool:
    """No output channels, or none of the input's in each sum: torch's own conv raises for the
    first and returns an input-shaped empty tensor for the second (not (N, K, Ho, Wo)), where
    the hand-written kernels give the empty output and act(bias); these answers are the
    kernels', so the result never depends on which candidate ran."""
    return weight.shape[0] == 0 or weight.shape[1] == 0


def conv2d_forward(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                   allow_tf32: bool = False, config: VendorConfig | None = None) -> torch.Tensor:
    if _empty_reduction(weight):  # zero sums: act(bias) at every output position
        n, _, h, w = _nchw(x, layout).shape
        k, _, r, s = weight.shape
        ho, wo = out_size(h, w, r, s, stride, padding, dilation)
        y = torch.zeros((n, k, ho, wo), dtype=x.dtype, device=x.device)
        if bias is not None:
            y += bias.view(1, k, 1, 1)
        return _back(y if activation is None else ACTIVATION_FNS[activation](y), layout)
    xn, pad = _pad(_nchw(x, layout), padding)
    y = _with_tf32(x, allow_tf32,
                   lambda: F.conv2d(xn, weight, bias, tuple(stride), pad, tuple(dilation), groups))
    if activation is not None:
        y = ACTIVATION_FNS[activation](y)
    return _back(y, layout)


def _bind_forward(p, device: str):
    """`conv2d_forward` for one problem as a single closure over torch's conv, where nothing
    of the general path applies to it: run on the CPU (the candidate's `device`: its data is on
    the CPU by then), NCHW, symmetric padding and a non-empty reduction; None elsewhere (the
    general path; on the GPU float32 needs its TF32 switch).

    Why: the op's plan for torch's candidate went through five Python calls around torch's conv
    (the layout, padding, empty-reduction and TF32 checks), about 2 us of the op's ~6 us over
    `F.conv2d` on a cache hit (1x8x8x8, 3x3, a 2-vCPU Zen 4); issue 13 asks for the matmul op's
    2.4 us. The data's device, asked at every call before, was 0.06 us more."""
    o, layout = p.options, p.layout
    (stride, padding, dilation, groups), activation = o.geometry_args, o.activation
    top, bottom, left, right = padding
    k, c_per_group = p.shapes[1][:2]
    if device != "cpu" or layout != "NCHW" or top != bottom or left != right or k == 0 \
            or c_per_group == 0:
        return None
    conv = torch.conv2d
    # square pairs as one int: torch's argument parser takes an int about 0.5 us faster than a
    # tuple for the three of them (1x8x8x8 3x3 conv, a 2-vCPU Zen 4)
    stride, pad, dilation = (_square(v) for v in (stride, (top, left), dilation))
    act = None if activation is None else ACTIVATION_FNS[activation]
    # torch's defaults left out where they hold: two arguments fewer to parse, 0.2 us
    short = dilation == 1 and groups == 1

    def plan(x, w, b):
        y = conv(x, w, b, stride, pad) if short else conv(x, w, b, stride, pad, dilation, groups)
        if act is not None:
            y = act(y)
        # (asked first: contiguous() on a contiguous result costs 0.15 us more than the question)
        return y if y.is_contiguous() else y.contiguous()

    return plan


conv2d_forward.bind = _bind_forward  # (see kernelkit/core.py `bound`)


def _square(pair) -> int | tuple[int, int]:
    h, w = pair
    return h if h == w else (h, w)


def conv2d_backward_input(grad_out, weight, input_hw, stride, padding, dilation, groups, layout,
                          allow_tf32: bool = False, config: VendorConfig | None = None
                          ) -> torch.Tensor:
    top, bottom, left, right = padding
    g = _nchw(grad_out, layout)
    n, c = g.shape[0], weight.shape[1] * groups
    if _empty_reduction(weight):
        return _back(torch.zeros((n, c, *input_hw), dtype=g.dtype, device=g.device), layout)
    padded = (n, c, input_hw[0] + top + bottom, input_hw[1] + left + right)
    dx = _with_tf32(g, allow_tf32, lambda: torch.nn.grad.conv2d_input(
        padded, weight, g, tuple(stride), 0, tuple(dilation), groups))
    dx = dx[:, :, top:top + input_hw[0], left:left + input_hw[1]]
    return _back(dx, layout)


def conv2d_backward_weight(x, grad_out, kernel_hw, stride, padding, dilation, groups, layout,
                           allow_tf32: bool = False, config: VendorConfig | None = None
                           ) -> torch.Tensor:
    xn, pad = _pad(_nchw(x, layout), padding)
    g = _nchw(grad_out, layout)
    k = g.shape[1]
    shape = (k, xn.shape[1] // groups, *kernel_hw)
    if 0 in shape:
        return torch.zeros(shape, dtype=g.dtype, device=g.device)
    return _with_tf32(x, allow_tf32, lambda: torch.nn.grad.conv2d_weight(
        xn, shape, g, tuple(stride), pad, tuple(dilation), groups)).contiguous()
