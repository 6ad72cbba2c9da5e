"""torch.library custom ops: kernelkit inside torch.compile graphs and autograd.

`torch.ops.kernelkit.matmul` runs the dispatched op; its fake (meta) kernel gives torch.compile the
output shape without running anything, and its autograd formula runs the backward products
through kernelkit.matmul as well. Registration happens on first use (`matmul_op()`), not at import,
so importing kernelkit never imports torch.
"""

from __future__ import annotations

import functools

from .. import core
from ..kernels import torch_activations
from ..kernels.convgeom import nchw_shape, out_size


@functools.cache
def matmul_op():
    """Register (once) and return `torch.ops.kernelkit.matmul`."""
    import torch

    matmul = core.op_spec("matmul").function

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
                y = _activation_fn(act)(z)
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


def _activation_fn(name):
    return torch_activations()[name]


@functools.cache
def conv2d_op():
    """Register (once) and return `torch.ops.kernelkit.conv2d` (padding as (top, bottom, left,
    right)); its backward runs kernelkit's conv2d_backward_input / _weight ops."""
    import torch

    conv2d, conv2d_backward_input, conv2d_backward_weight = (
        core.op_spec(name).function
        for name in ("conv2d", "conv2d_backward_input", "conv2d_backward_weight"))

    @torch.library.custom_op(
        "kernelkit::conv2d", mutates_args=(),
        schema="(Tensor x, Tensor weight, Tensor? bias, int[] stride, int[] padding, "
               "int[] dilation, int groups, str? activation, str? layout, bool allow_tf32) -> Tensor")
    def kk_conv2d(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                  allow_tf32):
        return conv2d(x.detach(), weight.detach(), None if bias is None else bias.detach(),
                      stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                      groups=groups, activation=activation, layout=layout, allow_tf32=allow_tf32)

    @kk_conv2d.register_fake
    def _(x, weight, bias, stride, padding, dilation, groups, activation, layout, allow_tf32):
        nhwc = layout == "NHWC"
        n, c, h, w = nchw_shape(x.shape, "NHWC" if nhwc else "NCHW")
        k, _, r, s = weight.shape
        ho, wo = out_size(h, w, r, s, stride, padding, dilation)
        if nhwc:
            return x.new_empty((n, ho, wo, k))
        cl = layout is None and x.is_contiguous(memory_format=torch.channels_last) \
            and not x.is_contiguous()
        fmt = torch.channels_last if cl else torch.contiguous_format
        return x.new_empty((n, k, ho, wo)).contiguous(memory_format=fmt)

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups, activation, layout, tf32 = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.geo = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                       groups=groups, layout=layout, allow_tf32=tf32)
        ctx.activation = activation

    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        geo = ctx.geo
        if ctx.activation is not None:  # recompute the pre-activation instead of storing it
            z = kk_conv2d(x, weight, bias, list(geo["stride"]), list(geo["padding"]),
                          list(geo["dilation"]), geo["groups"], None, geo["layout"],
                          geo["allow_tf32"]).requires_grad_(True)
            with torch.enable_grad():
                y = _activation_fn(ctx.activation)(z)
            (grad,) = torch.autograd.grad(y, z, grad)
        if geo["layout"] is None and x.is_contiguous(memory_format=torch.channels_last):
            grad = grad.contiguous(memory_format=torch.channels_last)
        else:
            grad = grad.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = conv2d_backward_input(grad, weight.detach(), tuple(x.shape), **geo)
        if ctx.needs_input_grad[1]:
            gw = conv2d_backward_weight(x.detach(), grad, tuple(weight.shape), **geo)
        if bias is not None and ctx.needs_input_grad[2]:
            gb = grad.sum(dim=(0, 1, 2) if geo["layout"] == "NHWC" else (0, 2, 3))
        return gx, gw, gb, None, None, None, None, None, None, None

    kk_conv2d.register_autograd(backward, setup_context=setup_context)
    return kk_conv2d
