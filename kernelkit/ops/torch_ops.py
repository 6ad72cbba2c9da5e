"""torch.library custom ops: kernelkit inside torch.compile graphs and autograd.

`torch.ops.kernelkit.matmul` runs the dispatched op; its fake (meta) kernel gives torch.compile the
output shape without running anything, and its autograd formula runs the backward products
through kernelkit.matmul as well. Registration happens on first use (`matmul_op()`), not at import,
so importing kernelkit never imports torch.
"""

from __future__ import annotations

import functools


@functools.cache
def matmul_op():
    """Register (once) and return `torch.ops.kernelkit.matmul`."""
    import torch
    import torch.nn.functional as F

    from .matmul import matmul

    @torch.library.custom_op(
        "kernelkit::matmul", mutates_args=(),
        schema="(Tensor a, Tensor b, Tensor? bias, str? activation, bool allow_tf32) -> Tensor")
    def kk_matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                  activation: str | None, allow_tf32: bool) -> torch.Tensor:
        return matmul(a.detach(), b.detach(), bias=None if bias is None else bias.detach(),
                      activation=activation, allow_tf32=allow_tf32)

    @kk_matmul.register_fake
    def _(a, b, bias, activation, allow_tf32):
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return a.new_empty((*batch, a.shape[-2], b.shape[-1]))

    def setup_context(ctx, inputs, output):
        a, b, bias, activation, allow_tf32 = inputs
        ctx.save_for_backward(a, b, bias)
        ctx.activation, ctx.allow_tf32 = activation, allow_tf32

    def backward(ctx, grad):
        a, b, bias = ctx.saved_tensors
        act, tf32 = ctx.activation, ctx.allow_tf32
        if act is not None:  # recompute the pre-activation instead of storing it
            z = kk_matmul(a, b, bias, None, tf32).requires_grad_(True)
            with torch.enable_grad():
                y = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
                     "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}[act](z)
            (grad,) = torch.autograd.grad(y, z, grad)
        ga = gb = gbias = None
        if ctx.needs_input_grad[0]:
            ga = _sum_to(kk_matmul(grad, b.mT, None, None, tf32), a.shape)
        if ctx.needs_input_grad[1]:
            gb = _sum_to(kk_matmul(a.mT, grad, None, None, tf32), b.shape)
        if bias is not None and ctx.needs_input_grad[2]:
            gbias = grad.reshape(-1, grad.shape[-1]).sum(0)
        return ga, gb, gbias, None, None

    kk_matmul.register_autograd(backward, setup_context=setup_context)
    return kk_matmul


def _sum_to(x, shape):
    """Reduce broadcast batch dims of a gradient back to the operand's shape."""
    lead = x.ndim - len(shape)
    if lead:
        x = x.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, (n, s) in enumerate(zip(x.shape, shape)) if s == 1 and n != 1)
    return x.sum(dim=dims, keepdim=True) if dims else x
