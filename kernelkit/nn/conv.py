"""`kernelkit.nn.Conv2d`: torch.nn.Conv2d computed by kernelkit, with an optional fused activation."""

from __future__ import annotations

import torch
from torch import nn

from ..autotune.key import bucket
from ..kernels import check_activation, torch_activations
from ..kernels.convgeom import resolve_padding
from ..ops import conv2d as _conv2d
from ..ops import dispatch
from ..ops.torch_ops import conv2d_op, eager_conv2d, split_activation
from . import _route


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` computed by kernelkit, with an optional fused activation.

    Where torch's own kernel won the tuning for a call's size, the layer runs torch's own
    convolution (no custom-op cost); elsewhere the chosen kernelkit kernel, through the registered
    op `torch.ops.kernelkit.conv2d` when autograd records, under torch.compile and under autocast.

    Args:
        as for `torch.nn.Conv2d` (padding_mode "zeros" only: `patch` leaves other padding modes to
        torch), plus
        activation: None, "relu", "gelu", "gelu_tanh" or "silu", fused into the epilogue.

    Shape:
        (N, C, H, W) -> (N, K, Ho, Wo), or unbatched (C, H, W) -> (K, Ho, Wo), as torch;
        channels_last inputs give channels_last outputs.

    Example:
        >>> conv = kernelkit.nn.Conv2d(64, 64, 3, padding=1, activation="relu")  # doctest: +SKIP
        >>> y = conv(torch.randn(8, 64, 56, 56))  # doctest: +SKIP
    """

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2d: 'padding_mode' must be 'zeros', got {self.padding_mode!r} "
                             "(kernelkit.nn.patch leaves such layers to torch)")
        check_activation("Conv2d", activation)
        self.activation = activation

    def padding4(self) -> list[int]:
        """The padding as (top, bottom, left, right), "same" and "valid" resolved as torch does."""
        return list(resolve_padding("Conv2d", self.padding, self.kernel_size, self.dilation,
                                    tuple(self.stride)))

    # what torch.compile traces, set per layer by its eager calls; None: no eager call decided
    _kk_aten_only = None  # (see _route.compiled)
    _kk_aten_only_grad = None  # (the same, in grad mode)
    __jit_ignored_attributes__ = _route.STATE  # (the calls' memos: TorchScript cannot type them)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # (`input`, as torch's layer names it: callers pass it by keyword)
        if torch.jit.is_scripting():  # TorchScript: torch's own op (kernelkit's dispatch is Python)
            return _route.scripted_activation(self._conv_forward(input, self.weight, self.bias),
                                              self.activation)
        # (TorchScript compiles the branch above only)
        if isinstance(input, torch.Tensor) and input.ndim != 4:  # (a torch.fx Proxy: see forward)
            if input.ndim == 3:  # unbatched (C, H, W), as torch accepts
                return self.forward(input.unsqueeze(0)).squeeze(0)
            return _aten(self, input, self.weight, self.bias)  # torch raises its own error
        return _route.forward(self, input, _aten, _through_op, _make_route)

    def __getstate__(self) -> dict:
        return _route.getstate(self)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        _route.forget_routes(self, name, _ROUTES_MADE_FROM)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"


_ROUTES_MADE_FROM = frozenset({"stride", "padding", "dilation", "groups", "padding_mode",
                               "activation"})


def _make_route(m: Conv2d, x: torch.Tensor, weight: torch.Tensor, bias) -> _route.Route:
    w, b = weight.detach(), None if bias is None else bias.detach()
    if m.padding_mode != "zeros":  # set after construction or patch (a pass over a model's
        return _aten               # convs): kernelkit's kernels pad with zeros only
    if x.shape[1] != w.shape[1] * m.groups or x.dtype != w.dtype:
        return _aten  # torch raises its own error
    stride, pad, dilation = list(m.stride), m.padding4(), list(m.dilation)
    try:
        call = _conv2d.prepare_forward(x.detach(), w, b, stride=tuple(stride),
                                       padding=tuple(pad), dilation=tuple(dilation),
                                       groups=m.groups, activation=m.activation)
    except ValueError:  # an input the layer's geometry does not fit (smaller than the kernel):
        return _aten  # torch raises its own error (a RuntimeError, which callers may catch)
    cand, config = _route.chosen(call)
    if _route.runs_aten(cand, call):
        return _aten
    plan = dispatch.profiled(call.bind(cand, config), "conv2d", cand)  # (torch.profiler sees it)
    autograd = eager_conv2d()
    plans = _conv2d.ConvPlans(stride, pad, dilation, m.groups, m.activation, None, False,
                              forward=plan)
    with_grad = lambda m, x, w, b: autograd(x, w, b, plans)
    return _route.kernel_route(lambda m, x, w, b: plan(x, w, b), with_grad, _aten, cand.name,
                               w, b)


def _bucket_dims(x: torch.Tensor) -> tuple[int, ...]:
    # each dim bucketed as the tuner keys them, but the channels exact (an input of other
    # channels is torch's error, not this bucket's choice)
    return tuple(d if i == x.ndim - 3 else bucket(d) for i, d in enumerate(x.shape))


_make_route.bucket_dims = _bucket_dims  # (see _route._bucket_key)


def _aten(m: Conv2d, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    y = m._conv_forward(x, w, b)  # torch's own (padding modes, "same" included)
    return y if m.activation is None else torch_activations()[m.activation](y)


def _through_op(m: Conv2d, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    if m.padding_mode != "zeros":  # (as in _make_route: the op pads with zeros)
        return _aten(m, x, w, b)
    # torch.ops.* rather than conv2d_op(): dynamo traces it
    fused, after = split_activation(m.activation, _route.grad_on(x, w, b))
    y = torch.ops.kernelkit.conv2d(x, w, b, list(m.stride), m.padding4(), list(m.dilation),
                                   m.groups, fused, None, False)
    return y if after is None else torch_activations()[after](y)


conv2d_op()  # register torch.ops.kernelkit.conv2d (and its backward ops) before any trace
