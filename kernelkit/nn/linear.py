"""`kernelkit.nn.Linear`: torch.nn.Linear computed by kernelkit, with an optional fused activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import check_activation, torch_activations
from ..ops import matmul as _matmul
from ..ops.torch_ops import matmul_op
from . import _route


class Linear(nn.Linear):
    """`torch.nn.Linear` computed by kernelkit, with an optional fused activation.

    Where torch's own kernel won the tuning for a call's size, the layer calls torch's
    F.linear directly (no custom-op cost); elsewhere it runs the chosen kernelkit kernel, through
    the registered op `torch.ops.kernelkit.matmul` when autograd records, under torch.compile
    and under autocast.

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if _route.routes_through_op():
            return _through_op(self, x)
        sig = _route.signature(x, w, b)
        route = _route.lookup(self, sig)
        if route is None:
            route = _route.store(self, sig, self._route_for(x, sig[5]))
        return route(self, x)

    def _route_for(self, x: torch.Tensor, grad: bool) -> _route.Route:
        x2 = x.detach().reshape(-1, x.shape[-1]) if x.ndim else x
        if x.ndim == 0 or x.shape[-1] != self.in_features:  # let torch raise its own error
            return _aten
        b = None if self.bias is None else self.bias.detach()
        call = _matmul.prepare(x2, self.weight.detach().t(), bias=b, activation=self.activation)
        cand, config = _route.chosen(call)
        if _route.runs_aten(cand, call):
            return _aten
        if grad:
            return _through_op
        plan = call.bind(cand, config)
        n = self.out_features

        def kernel(m: Linear, x: torch.Tensor) -> torch.Tensor:
            y = plan(x.reshape(-1, x.shape[-1]), m.weight.t(), m.bias)
            return y.reshape(*x.shape[:-1], n)

        return kernel

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"


def _aten(m: Linear, x: torch.Tensor) -> torch.Tensor:
    y = F.linear(x, m.weight, m.bias)
    return y if m.activation is None else torch_activations()[m.activation](y)


def _through_op(m: Linear, x: torch.Tensor) -> torch.Tensor:
    # (*, K) -> (M, K): batch dims only scale the work, so every batch shape shares one problem
    # (and one tuning run); torch.ops.* rather than matmul_op(): dynamo traces it
    y = torch.ops.kernelkit.matmul(x.reshape(-1, x.shape[-1]), m.weight.t(), m.bias,
                                   m.activation, False)
    return y.reshape(*x.shape[:-1], m.out_features)


matmul_op()  # register torch.ops.kernelkit.matmul before any forward is traced
