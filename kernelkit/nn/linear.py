"""`kernelkit.nn.Linear`: torch.nn.Linear computed by kernelkit, with an optional fused activation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..autotune.key import bucket
from ..kernels import check_activation, torch_activations
from ..ops import dispatch
from ..ops import matmul as _matmul
from ..ops.torch_ops import eager_matmul, linear_op, rows, split_activation
from . import _route


class Linear(nn.Linear):
    """`torch.nn.Linear` computed by kernelkit, with an optional fused activation.

    Where torch's own kernel won the tuning for a call's size, the layer calls torch's
    F.linear directly (no custom-op cost); elsewhere it runs the chosen kernelkit kernel, through
    an autograd Function when autograd records, and through the registered op
    `torch.ops.kernelkit.linear` (bias and activation fused) under torch.compile, torch.export
    and autocast.

    Args:
        in_features, out_features, bias, device, dtype: as for `torch.nn.Linear`.
        activation: None, "relu", "gelu", "gelu_tanh" or "silu", fused into the matmul epilogue.

    Shape:
        (*, in_features) -> (*, out_features), as `torch.nn.Linear` (a 1-D input included).

    Example:
        >>> layer = kernelkit.nn.Linear(768, 3072, activation="gelu")  # doctest: +SKIP
        >>> y = layer(torch.randn(8, 128, 768))  # doctest: +SKIP
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, activation: str | None = None):
        super().__init__(in_features, out_features, bias, device, dtype)
        check_activation("Linear", activation)
        self.activation = activation

    # what torch.compile traces, set per layer by its eager calls; None: no eager call decided
    _kk_aten_only = None  # (see _route.compiled)
    _kk_aten_only_grad = None  # (the same, in grad mode)
    __jit_ignored_attributes__ = _route.STATE  # (the calls' memos: TorchScript cannot type them)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # (`input`, as torch's layer names it: callers pass it by keyword, and export's
        # dynamic_shapes and jit.trace's example_kwarg_inputs key on it)
        if torch.jit.is_scripting():  # TorchScript: torch's own op (kernelkit's dispatch is Python)
            return _route.scripted_activation(F.linear(input, self.weight, self.bias),
                                              self.activation)
        # (TorchScript compiles the branch above only)
        return _route.forward(self, input, _aten, _through_op, _make_route)

    def __getstate__(self) -> dict:
        return _route.getstate(self)

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        _route.forget_routes(self, name, _ROUTES_MADE_FROM)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"


_ROUTES_MADE_FROM = frozenset({"activation", "in_features"})


def _make_route(m: Linear, x: torch.Tensor, weight: torch.Tensor, bias) -> _route.Route:
    if x.ndim == 0 or x.shape[-1] != m.in_features or x.dtype != weight.dtype:
        return _aten  # torch raises its own error
    w, b = weight.detach(), None if bias is None else bias.detach()
    call = _matmul.prepare(rows(x.detach(), x.shape[-1]), w.t(), bias=b,
                           activation=m.activation)
    cand, config = _route.chosen(call)
    if _route.runs_aten(cand, call):
        return _aten
    plan = dispatch.profiled(call.bind(cand, config), "matmul", cand)  # (torch.profiler sees it)

    def kernel(m: Linear, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        if x.ndim == 2:  # (a torch reshape costs 1-3 us even when it is a no-op)
            return plan(x, w.t(), b)
        y = plan(rows(x, x.shape[-1]), w.t(), b)
        return y.reshape(*x.shape[:-1], w.shape[0])  # (not out_features: a weight swapped since)

    autograd = eager_matmul()

    def with_grad(m: Linear, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
        if x.ndim == 2:
            return autograd(x, w.t(), b, m.activation, False)
        y = autograd(rows(x, x.shape[-1]), w.t(), b, m.activation, False)
        return y.reshape(*x.shape[:-1], w.shape[0])

    return _route.kernel_route(kernel, with_grad, _aten, cand.name, w, b)


def _bucket_dims(x: torch.Tensor) -> tuple[int, ...]:
    # the op's problem is (M, K) with M the batch dims' product: bucketed as the tuner keys it,
    # K exact (an input of other features is torch's error, not this bucket's choice)
    return (bucket(math.prod(x.shape[:-1])), x.shape[-1]) if x.ndim else ()


_make_route.bucket_dims = _bucket_dims  # (see _route._bucket_key)


def _aten(m: Linear, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    y = F.linear(x, w, b)
    return y if m.activation is None else torch_activations()[m.activation](y)


def _through_op(m: Linear, x: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:
    # the op flattens (*, K) to (M, K): every batch shape shares one problem (and one tuning
    # run); torch.ops.* rather than linear_op(): dynamo traces it
    fused, after = split_activation(m.activation, _route.grad_on(x, w, b))
    y = torch.ops.kernelkit.linear(x, w, b, fused, False)
    return y if after is None else torch_activations()[after](y)


linear_op()  # register torch.ops.kernelkit.linear (and matmul) before any forward is traced
