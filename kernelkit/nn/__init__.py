"""Drop-in modules: `Linear` (nn.Linear with a fused activation) and `patch(model)`.

The module and the functional op share one stem: `Linear.forward` is `kernelkit.matmul` through
the registered custom op, so it works under autograd and torch.compile.
"""

from __future__ import annotations

import torch
from torch import nn

from ..kernels import check_activation
from ..kernels.convgeom import resolve_padding
from ..ops.torch_ops import conv2d_op, matmul_op


class Linear(nn.Linear):
    """`torch.nn.Linear` computed by kernelkit, with an optional fused activation.

    Args:
        in_features, out_features, bias, device, dtype: as for `torch.nn.Linear`.
        activation: None, "relu", "gelu", "gelu_tanh" or "silu", fused into the matmul epilogue.

    Shape:
        (*, in_features) -> (*, out_features)

    Example:
        >>> layer = kernelkit.nn.Linear(768, 3072, activation="gelu")  # doctest: +SKIP
        >>> y = layer(torch.randn(8, 128, 768))  # doctest: +SKIP
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device=None, dtype=None, activation: str | None = None):
        super().__init__(in_features, out_features, bias, device, dtype)
        matmul_op()
        check_activation("Linear", activation)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2:  # nn.Linear accepts (in_features,); matmul needs a row
            return self.forward(x.unsqueeze(0)).squeeze(0)
        # torch.ops.* (registered in __init__) rather than matmul_op(): dynamo can trace it.
        return torch.ops.kernelkit.matmul(x, self.weight.t(), self.bias, self.activation, False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"

    @classmethod
    def from_linear(cls, layer: nn.Linear) -> Linear:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = layer.in_features, layer.out_features
        new.weight, new.bias = layer.weight, layer.bias  # shared, not copied
        new.activation = None
        matmul_op()
        return new


class Conv2d(nn.Conv2d):
    """`torch.nn.Conv2d` computed by kernelkit, with an optional fused activation.

    Args:
        as for `torch.nn.Conv2d` (padding_mode "zeros" only), plus
        activation: None, "relu", "gelu", "gelu_tanh" or "silu", fused into the epilogue.

    Shape:
        (N, C, H, W) -> (N, K, Ho, Wo); channels_last inputs give channels_last outputs.

    Example:
        >>> conv = kernelkit.nn.Conv2d(64, 64, 3, padding=1, activation="relu")  # doctest: +SKIP
    """

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode must be 'zeros', got {self.padding_mode!r}")
        check_activation("Conv2d", activation)
        self.activation = activation
        conv2d_op()

    def _padding4(self) -> list[int]:
        return list(resolve_padding("Conv2d", self.padding, self.kernel_size, self.dilation,
                                    tuple(self.stride)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.kernelkit.conv2d(x, self.weight, self.bias, list(self.stride),
                                          self._padding4(), list(self.dilation), self.groups,
                                          self.activation, None, False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}"

    @classmethod
    def from_conv(cls, layer: nn.Conv2d) -> Conv2d:
        new = cls.__new__(cls)
        new.__dict__.update(layer.__dict__)  # same parameters, hooks and attributes
        new.activation = None
        conv2d_op()
        return new


def patch(model: nn.Module) -> nn.Module:
    """Replace every `torch.nn.Linear` and zero-padded `torch.nn.Conv2d` in `model` (in place) by
    the kernelkit module sharing its parameters. Returns the model."""
    for name, child in model.named_children():
        if type(child) is nn.Linear:
            setattr(model, name, Linear.from_linear(child))
        elif type(child) is nn.Conv2d and child.padding_mode == "zeros":
            setattr(model, name, Conv2d.from_conv(child))
        else:
            patch(child)
    return model
