"""torch.library custom ops: kernelkit inside torch.compile graphs, autograd and autocast.

Seven ops, each with a fake (meta) kernel. The five differentiable ones (matmul, linear, conv2d
and conv2d's two backward ops) have an autograd formula and an autocast rule, relu_backward an
autograd formula, preprocess neither:

- ``kernelkit::matmul(a, b, bias, activation, allow_tf32)``
- ``kernelkit::linear(x, weight, bias, activation, allow_tf32)``: ``act(x @ weight.T + bias)``
  with torch.nn.Linear's shapes ((*, in) and (out, in) -> (*, out)), the op behind
  ``kernelkit.nn.Linear`` (batch dims flattened into M, so every batch shape is one problem)
- ``kernelkit::conv2d(x, weight, bias, stride, padding, dilation, groups, activation, layout,
  allow_tf32)`` (padding as (top, bottom, left, right))
- ``kernelkit::conv2d_backward_input(grad_out, weight, input_shape, stride, padding, dilation,
  groups, layout, allow_tf32)``
- ``kernelkit::conv2d_backward_weight(x, grad_out, weight_shape, ...)``
- ``kernelkit::preprocess(images, size, mean, std, crop, flip, interpolation, antialias,
  channel_order, out_dtype, layout, stats_unit)``: the fused crop/flip/resize/normalise/layout
  op behind ``kernelkit.nn.Preprocess`` (no gradient: its inputs are images; its output dtype
  is an argument, so no autocast rule)
- ``kernelkit::relu_backward(grad, output)``: a fused ReLU's gradient in the others' backward
  formulas, aten's threshold_backward kept whole under Inductor (see `relu_backward_op`)

Every backward formula calls registered ops only (these, and aten's own activation
backwards), never a plain Python function of the tensors: AOTAutograd traces the backward with
FunctionalTensors, which only registered ops accept. So `torch.compile` (Inductor, fullgraph) can
train through them, and the backward ops are differentiable themselves (double backward).

Registration happens on first use (`matmul_op()`, `conv2d_op()`), not at import, so importing
kernelkit never imports torch.
"""

from __future__ import annotations

import contextlib
import functools
import math

from .. import core, threads
from ..arrays import channels_last_memory
from ..kernels import check_activation, torch_activations
from ..kernels.convgeom import nchw_shape, out_size
from .dispatch import op_body


# -- shared pieces -------------------------------------------------------------------------------
def _activation_backward(name: str, grad, z):
    """d act(z) / dz applied to `grad`, through aten's own backward ops (traceable, and
    differentiable again), so no autograd.grad call runs inside a backward formula."""
    import torch

    aten = torch.ops.aten
    if name == "relu":
        return aten.threshold_backward(grad, z, 0)
    if name == "gelu":
        return aten.gelu_backward(grad, z, approximate="none")
    if name == "gelu_tanh":
        return aten.gelu_backward(grad, z, approximate="tanh")
    if name == "silu":  # aten.silu_backward has no derivative of its own: the closed form
        s = torch.sigmoid(z)
        return grad * s * (1 + z * (1 - s))
    raise ValueError(f"kernelkit: no backward for activation {name!r}")


def split_activation(activation, grad: bool):
    """(the activation a registered op fuses, the one applied after it).

    In a graph torch.compile traces that records gradients, a GELU or SiLU runs after the op,
    as torch's activation (Inductor fuses it elementwise and saves the pre-activation its
    backward reads), as the eager Functions do: fused, the op's backward recomputes the
    pre-activation, a third GEMM or conv per training step. A ReLU stays fused (its gradient
    reads the saved output), as does every activation in a graph without gradients, in an
    exported program (an inference artifact keeps the fusion) and in eager mode (the op's
    autocast route: the result must not depend on the grad mode)."""
    import torch

    compiler = torch.compiler
    if grad and activation not in (None, "relu") and compiler.is_compiling() \
            and not getattr(compiler, "is_exporting", lambda: False)():
        return None, activation
    return activation, None


def _saved_output(activation, output):
    """What a registered op's setup_context (and the eager Functions' forward) saves of its
    output: a fused ReLU's (its gradient is read off the output, as torch's relu's is); None for
    the other activations, whose registered backward recomputes the pre-activation (a product
    or a conv more). Before, the registered ops' ReLU recomputed it too: a third GEMM or conv
    per training step under torch.compile."""
    return output if activation == "relu" else None


def _through_saved_relu(activation, grad, output, *, opaque: bool = False):
    """(grad, activation) for the gradient helpers: a ReLU applied from its saved `output`.
    `opaque` (the registered ops' backward formulas): through ``kernelkit::relu_backward``,
    which Inductor cannot decompose (see `relu_backward_op`); else aten's threshold_backward."""
    if output is None:
        return grad, activation
    if opaque:
        return relu_backward_op()(grad, output), None
    import torch

    return torch.ops.aten.threshold_backward(grad, output, 0), None


@functools.cache
def relu_backward_op():
    """Register (once) and return ``torch.ops.kernelkit.relu_backward(grad, output)``: `grad`
    where `output` > 0, else 0 (aten's threshold_backward at 0), as one opaque op.

    Why not aten's op itself: Inductor decomposes threshold_backward into ``where(output <= 0,
    0, grad)`` and its partitioner then saves the bool mask ``output <= 0`` from the forward.
    Inductor's C++ code for a float-to-bool mask store and load (torch 2.13, AVX-512) runs two
    scalar loops per 16 elements: 2.9 ms for 512x1024 against 0.12 ms for aten's ``le`` (Zen
    4, 2 threads), so a compiled Linear+ReLU training step ran slower than the eager one. Opaque,
    the forward saves the float output (alive anyway for the next layer) and the backward runs
    aten's vectorised kernel."""
    import torch

    aten = torch.ops.aten

    @torch.library.custom_op("kernelkit::relu_backward", mutates_args=(),
                             schema="(Tensor grad, Tensor output) -> Tensor")
    def kk_relu_backward(grad: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(grad)  # (the fake's layout, whatever the operands' are)
        return aten.threshold_backward.grad_input(grad, output, 0, grad_input=out)

    @kk_relu_backward.register_fake
    def _(grad, output):
        torch._check(grad.shape == output.shape,
                     lambda: f"kernelkit::relu_backward: 'grad' and 'output' must have one "
                             f"shape, got {tuple(grad.shape)} and {tuple(output.shape)}")
        return torch.empty_like(grad)

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])

    def backward(ctx, gg):  # linear in grad; zero almost everywhere in output
        (output,) = ctx.saved_tensors
        return kk_relu_backward(gg, output), None

    kk_relu_backward.register_autograd(backward, setup_context=setup_context)
    return kk_relu_backward


def _body(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` (a kernelkit op) as the body of a registered op. Under
    torch.jit.trace the trace has recorded the registered op itself, so the kernelkit op must
    run its kernel here, not redirect to the registered op again (``dispatch.jit_tracing``)."""
    import torch

    if torch._C._get_tracing_state() is None:
        return _not_a_view(fn(*args, **kwargs))
    with op_body():
        return _not_a_view(fn(*args, **kwargs))


def _sum_to(x, shape):
    """Reduce broadcast batch dims of a gradient back to the operand's shape."""
    lead = x.ndim - len(shape)
    if lead:
        x = x.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, (n, s) in enumerate(zip(x.shape, shape)) if s == 1 and n != 1)
    return x.sum(dim=dims, keepdim=True) if dims else x


def _detach(t):
    return None if t is None else t.detach()


def _register_autocast(qualname: str) -> None:
    """Autocast as torch applies it to its own matmul and conv: in an autocast region, floating
    tensors other than float64 are cast to the region's dtype (torch.get_autocast_dtype, read per
    call, so `torch.autocast("cpu", torch.float16)` works too) and the op runs with autocast off.
    So the output dtype is the autocast dtype whichever backend runs the op."""
    import torch

    ns, name = qualname.split("::")
    lib = _library(ns)
    overload = getattr(getattr(torch.ops, ns), name).default
    for device_type in ("cpu", "cuda"):
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def kernel(*args, _key=key, _device=device_type):
            dtype = torch.get_autocast_dtype(_device)
            cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                    and a.dtype != torch.float64 and a.device.type == _device else a
                    for a in args]
            with cast_copies(cast, args), \
                    torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return overload(*cast)

        # the Python dispatcher (used while tracing) and the C++ dispatcher (eager)
        if overload.has_kernel_for_dispatch_key(key):
            overload.py_kernels.pop(key)
        overload.py_impl(key)(kernel)
        lib.impl(name, lambda _ks, *args, _k=kernel: _k(*args), key_name, with_keyset=True)


@functools.cache
def _library(ns: str):
    import torch

    return torch.library.Library(ns, "FRAGMENT")  # kept alive: registrations live with it


# -- matmul --------------------------------------------------------------------------------------
def _matmul_grads(mm, a, b, bias, act, tf32, needs, grad, shapes=None, b_cols=None):
    """The gradients of act(a @ b + bias), every product through `mm` (an op with the signature
    of kernelkit::matmul): the custom op's formula and the eager Function's. `shapes`: those of
    a and b, where one of them was not saved (None: a gradient that does not need it). `b_cols`:
    `transposed_matrix(b)`, for a b not saved (None: read from b)."""
    if act is not None:  # (the registered ops' GELU and SiLU) recompute the pre-activation
        grad = _activation_backward(act, grad, mm(a, b, bias, None, tf32))
    a_shape, b_shape = shapes or (a.shape, b.shape)
    ga = gb = gbias = None
    if needs[0]:
        ga = _sum_to(mm(grad, b.mT, None, None, tf32), a_shape)
    if needs[1] and (transposed_matrix(b) if b_cols is None else b_cols):
        # b a matrix's transpose (a Linear's `weight.t()`): its gradient as b^T's, contiguous,
        # transposed, so that the weight's gradient is laid out as the weight, as torch's is.
        # Before, autograd and tensor hooks got a transposed (non-contiguous) weight gradient,
        # and the usual `g.view(-1)` raised
        gb = mm(rows(grad, grad.shape[-1]).mT, rows(a, a.shape[-1]), None, None, tf32).mT
    elif needs[1]:
        gb = _sum_to(mm(a.mT, grad, None, None, tf32), b_shape)
    if needs[2]:  # (False for a None bias)
        gbias = rows(grad, grad.shape[-1]).sum(0)
    return ga, gb, gbias


def transposed_matrix(b, shape=None, stride=None) -> bool:
    """`b` (or a matrix of that `shape` and `stride`) is laid out as the transpose of a
    contiguous matrix (strides (1, rows)), and not contiguous too (no dim of 1). From one
    strides tuple: `b.mT.is_contiguous()` made a view, about 1 us of a patched Linear's call with
    grad, and reading each dim apart 0.8 us."""
    stride = b.stride() if stride is None else stride
    if len(stride) != 2 or stride[0] != 1:
        return False
    shape = b.shape if shape is None else shape
    return shape[0] > 1 and shape[1] > 1 and stride[1] == shape[0]


def rows(x, k: int):
    """`x` (*, k) as (M, k): ``x.reshape(-1, k)``, which torch refuses for k = 0 (the -1 is then
    ambiguous; a patched nn.Linear(0, n) raised there)."""
    return x.reshape(-1, k) if k else x.reshape(math.prod(x.shape[:-1]), 0)


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
        _check_matrices("kernelkit::matmul", a, b)
        return _body(matmul, a.detach(), b.detach(), bias=_detach(bias), activation=activation,
                     allow_tf32=allow_tf32)

    @kk_matmul.register_fake
    def _(a, b, bias, activation, allow_tf32):
        _check_matrices("kernelkit::matmul", a, b)
        _check_product("kernelkit::matmul", a, b, b.shape[-2], b.shape[-1], bias, activation)
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        return a.new_empty((*batch, a.shape[-2], b.shape[-1]))

    def setup_context(ctx, inputs, output):
        a, b, bias, activation, allow_tf32 = inputs
        ctx.save_for_backward(a, b, bias, _saved_output(activation, output))
        ctx.activation, ctx.allow_tf32 = activation, allow_tf32

    def backward(ctx, grad):
        a, b, bias, out = ctx.saved_tensors
        grad, act = _through_saved_relu(ctx.activation, grad, out, opaque=True)
        return (*_matmul_grads(kk_matmul, a, b, bias, act, ctx.allow_tf32,
                               ctx.needs_input_grad, grad), None, None)

    kk_matmul.register_autograd(backward, setup_context=setup_context)
    _register_autocast("kernelkit::matmul")
    return kk_matmul


# What the fakes check: what the op's body (kernelkit's own checks) would raise for the same
# arguments, raised at trace time. Before, torch.export of a patched Linear fed other features, or
# of a conv whose kernel is larger than its input, "succeeded" with a wrong output shape, and
# compiled code failed only when it ran. Sizes compare through torch._check_value, which takes
# symbolic sizes without specialising them.
def _check_matrices(op: str, *xs) -> None:
    for name, x in zip("ab", xs):
        if x.ndim < 2:
            raise ValueError(f"{op}: '{name}' must have at least 2 dims (kernelkit.matmul takes "
                             f"vectors: it calls this op on the matrices it makes of them), got "
                             f"shape {tuple(x.shape)}")


def _check_linear_form(x, weight) -> None:
    if weight.ndim != 2 or x.ndim < 1:
        raise ValueError(f"kernelkit::linear: 'x' must be (*, K) and 'weight' (N, K), got shapes "
                         f"{tuple(x.shape)} and {tuple(weight.shape)}")


def _check_float_dtypes(op: str, first: str, ref, named) -> None:
    """Every tensor of `named` ((name, tensor or None)) floating point, of `ref`'s dtype."""
    for name, t in named:
        if t is not None and (t.dtype != ref.dtype or not t.is_floating_point()):
            raise TypeError(f"{op}: '{name}' must be floating point, of {first}'s dtype "
                            f"({ref.dtype}), got {t.dtype}")


def _check_product(op: str, a, b, k, n, bias, activation, vector_x: bool = False) -> None:
    """act(a @ b + bias) with b's reduction length `k` and its `n` columns, the operands' forms
    checked already (`vector_x`: the linear op's x and weight, where x may be a vector)."""
    import torch

    names = ("x", "weight") if vector_x else ("a", "b")
    _check_float_dtypes(op, names[0], a, ((names[0], a), (names[1], b), ("bias", bias)))
    torch._check_value(a.shape[-1] == k, lambda: (
        f"{op}: the operands' reduction lengths differ: {a.shape[-1]} and {k} (shapes "
        f"{tuple(a.shape)}, {tuple(b.shape)})"))
    _check_epilogue(op, bias, n, activation)


def _check_epilogue(op: str, bias, n, activation) -> None:
    """A bias of the output's `n` channels (or None) and a known activation."""
    import torch

    if bias is not None:
        torch._check_value(bias.ndim == 1 and bias.shape[0] == n, lambda: (
            f"{op}: 'bias' must have shape ({n},), got {tuple(bias.shape)}"))
    check_activation(op, activation)


def _check_conv_form(op: str, x, weight, stride, padding, dilation, layout) -> None:
    """The registered conv's arguments in its own form (the body checks it too: an unbatched x
    or a padding pair, which kernelkit.conv2d takes, passed the body and failed the fake)."""
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"{op}: 'layout' must be None, 'NCHW' or 'NHWC', got {layout!r}")
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"{op}: 'x' and 'weight' must have 4 dims (kernelkit.conv2d takes an "
                         f"unbatched x), got {tuple(x.shape)} and {tuple(weight.shape)}")
    if len(stride) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise ValueError(f"{op}: stride and dilation must be pairs and padding (top, bottom, "
                         f"left, right), got {stride}, {dilation}, {padding}")


def _check_conv(op: str, x, weight, bias, stride, padding, dilation, groups, activation,
                layout) -> None:
    import torch

    _check_conv_form(op, x, weight, stride, padding, dilation, layout)
    _check_float_dtypes(op, "x", x, (("x", x), ("weight", weight), ("bias", bias)))
    n, c, h, w = nchw_shape(x.shape, layout or "NCHW")
    k, cg, r, s = weight.shape
    torch._check_value(groups >= 1 and k % groups == 0 and c == cg * groups, lambda: (
        f"{op}: x's {c} channels must be weight.shape[1] * groups = {cg} * {groups}, and the "
        f"weight's {k} filters a multiple of groups"))
    ho, wo = out_size(h, w, r, s, stride, padding, dilation)
    torch._check_value(ho >= 1 and wo >= 1, lambda: (
        f"{op}: the kernel ({r}x{s}, dilation {dilation}) is larger than the padded input "
        f"({h}x{w}, padding {padding})"))
    _check_epilogue(op, bias, k, activation)


# -- linear --------------------------------------------------------------------------------------
@functools.cache
def linear_op():
    """Register (once) and return `torch.ops.kernelkit.linear`: act(x @ weight.T + bias), as
    torch.nn.Linear lays its operands out; every product of its backward is `kernelkit::matmul`."""
    import torch

    matmul = core.op_spec("matmul").function
    mm = matmul_op()

    @torch.library.custom_op(
        "kernelkit::linear", mutates_args=(),
        schema="(Tensor x, Tensor weight, Tensor? bias, str? activation, bool allow_tf32) -> Tensor")
    def kk_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  activation: str | None, allow_tf32: bool) -> torch.Tensor:
        _check_linear_form(x, weight)
        # (*, K) -> (M, K): batch dims only scale the work, so every batch shape is one problem
        x2 = rows(x.detach(), x.shape[-1])
        y = _body(matmul, x2, weight.detach().t(), bias=_detach(bias), activation=activation,
                  allow_tf32=allow_tf32)
        return _not_a_view(y.reshape(*x.shape[:-1], weight.shape[0]))

    @kk_linear.register_fake
    def _(x, weight, bias, activation, allow_tf32):
        _check_linear_form(x, weight)
        _check_product("kernelkit::linear", x, weight, weight.shape[1], weight.shape[0], bias,
                       activation, vector_x=True)
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    def setup_context(ctx, inputs, output):
        x, weight, bias, activation, allow_tf32 = inputs
        ctx.save_for_backward(x, weight, bias, _saved_output(activation, output))
        ctx.activation, ctx.allow_tf32 = activation, allow_tf32

    def backward(ctx, grad):
        x, weight, bias, out = ctx.saved_tensors
        grad, act = _through_saved_relu(ctx.activation, grad, out, opaque=True)
        tf32, needs = ctx.allow_tf32, ctx.needs_input_grad
        if act is not None:  # (GELU and SiLU) recompute the pre-activation, not stored
            grad = _activation_backward(act, grad, kk_linear(x, weight, bias, None, tf32))
        g2 = rows(grad, weight.shape[0])
        gx = gw = gb = None
        if needs[0]:
            gx = mm(g2, weight, None, None, tf32).reshape(x.shape)
        if needs[1]:
            gw = mm(g2.t(), rows(x, x.shape[-1]), None, None, tf32)
        if bias is not None and needs[2]:
            gb = g2.sum(0)
        return gx, gw, gb, None, None

    kk_linear.register_autograd(backward, setup_context=setup_context)
    _register_autocast("kernelkit::linear")
    return kk_linear


# -- conv2d --------------------------------------------------------------------------------------
_GEOMETRY = "int[] stride, int[] padding, int[] dilation, int groups"


def _channels_last(t, layout, weight=None) -> bool:
    """The ops layer's rule (ops/conv2d.py `_layout`, `_weight_makes_channels_last`): a torch
    tensor torch reads as channels_last (`channels_last_memory`) runs in NHWC and gives a
    channels_last result; so does a forward whose `weight` is such a tensor (torch's rule)."""
    return layout is None and t.ndim == 4 and (channels_last_memory(t) or (
        weight is not None and channels_last_memory(weight)))


def _empty_like_layout(ref, shape, layout, weight=None):
    import torch

    # (empty(memory_format=...), not new_empty(...).contiguous(memory_format=...): a shape with a
    # size-1 dim is contiguous in both formats, and contiguous() kept the NCHW strides, which
    # the next conv's fake then read as NCHW where the real result's strides are channels_last)
    fmt = torch.channels_last if _channels_last(ref, layout, weight) else torch.contiguous_format
    return torch.empty(shape, dtype=ref.dtype, device=ref.device, memory_format=fmt)


@functools.cache
def conv2d_backward_ops():
    """Register (once) and return `torch.ops.kernelkit.conv2d_backward_input` and
    `conv2d_backward_weight`, each with a fake kernel and its own autograd formula (so a conv
    model can be differentiated twice, and opcheck passes with grad inputs)."""
    import torch

    bwd_input, bwd_weight = (core.op_spec(name).function
                             for name in ("conv2d_backward_input", "conv2d_backward_weight"))

    @torch.library.custom_op(
        "kernelkit::conv2d_backward_input", mutates_args=(),
        schema=f"(Tensor grad_out, Tensor weight, SymInt[] input_shape, {_GEOMETRY}, str? layout, "
               "bool allow_tf32) -> Tensor")
    def kk_bwd_input(grad_out, weight, input_shape, stride, padding, dilation, groups, layout,
                     allow_tf32):
        return _body(bwd_input, grad_out.detach(), weight.detach(), tuple(input_shape),
                     stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                     groups=groups, layout=layout, allow_tf32=allow_tf32)

    @kk_bwd_input.register_fake
    def _(grad_out, weight, input_shape, stride, padding, dilation, groups, layout, allow_tf32):
        return _empty_like_layout(grad_out, tuple(input_shape), layout)

    @torch.library.custom_op(
        "kernelkit::conv2d_backward_weight", mutates_args=(),
        schema=f"(Tensor x, Tensor grad_out, SymInt[] weight_shape, {_GEOMETRY}, str? layout, "
               "bool allow_tf32) -> Tensor")
    def kk_bwd_weight(x, grad_out, weight_shape, stride, padding, dilation, groups, layout,
                      allow_tf32):
        return _body(bwd_weight, x.detach(), grad_out.detach(), tuple(weight_shape),
                     stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                     groups=groups, layout=layout, allow_tf32=allow_tf32)

    @kk_bwd_weight.register_fake
    def _(x, grad_out, weight_shape, stride, padding, dilation, groups, layout, allow_tf32):
        return x.new_empty(tuple(weight_shape))

    # Both are linear in each argument: dx = Bi(g, w) and dw = Bw(x, g), whose adjoints are the
    # forward conv and the other backward op.
    def setup_input(ctx, inputs, output):
        grad_out, weight, input_shape, *geo = inputs
        ctx.save_for_backward(grad_out, weight)
        ctx.geo = geo

    def backward_input(ctx, gg):  # gg: the gradient of dx (x-shaped)
        grad_out, weight = ctx.saved_tensors
        stride, padding, dilation, groups, layout, tf32 = ctx.geo
        gg = _like_layout(gg, grad_out, layout)
        d_grad = d_weight = None
        if ctx.needs_input_grad[0]:
            d_grad = torch.ops.kernelkit.conv2d(gg, weight, None, stride, padding, dilation,
                                                groups, None, layout, tf32)
        if ctx.needs_input_grad[1]:
            d_weight = kk_bwd_weight(gg, grad_out, list(weight.shape), stride, padding, dilation,
                                     groups, layout, tf32)
        return d_grad, d_weight, None, None, None, None, None, None, None

    def setup_weight(ctx, inputs, output):
        x, grad_out, weight_shape, *geo = inputs
        ctx.save_for_backward(x, grad_out)
        ctx.geo = geo

    def backward_weight(ctx, gw):  # gw: the gradient of dw (weight-shaped)
        x, grad_out = ctx.saved_tensors
        stride, padding, dilation, groups, layout, tf32 = ctx.geo
        gw = gw.contiguous()
        d_x = d_grad = None
        if ctx.needs_input_grad[0]:
            d_x = kk_bwd_input(grad_out, gw, list(x.shape), stride, padding, dilation, groups,
                               layout, tf32)
        if ctx.needs_input_grad[1]:
            d_grad = torch.ops.kernelkit.conv2d(_like_layout(x, grad_out, layout), gw, None,
                                                stride, padding, dilation, groups, None, layout,
                                                tf32)
        return d_x, d_grad, None, None, None, None, None, None, None

    kk_bwd_input.register_autograd(backward_input, setup_context=setup_input)
    kk_bwd_weight.register_autograd(backward_weight, setup_context=setup_weight)
    for name in ("conv2d_backward_input", "conv2d_backward_weight"):
        _register_autocast(f"kernelkit::{name}")
    return kk_bwd_input, kk_bwd_weight


def _not_a_view(y):
    """An eager autograd Function's output as a tensor of its own, not a view (a batched product
    reshaped, a channels_last conv's permuted NHWC result): autograd refuses in-place ops on a
    view made inside a custom Function, so `y.relu_()`, `y += 1` and `nn.ReLU(inplace=True)`
    after such a result raised at backward where torch's own op works. (detach: the same memory
    and version counter, no copy.)"""
    return y.detach() if y._is_view() else y


def _like_layout(t, ref, layout):
    """`t` made dense in `ref`'s memory format (gradients arrive with any strides, even expanded
    ones), so the op runs the layout the forward ran."""
    return _dense(t, _channels_last(ref, layout))


def _dense(t, channels_last: bool):
    """`t` dense, channels_last or contiguous (see `_like_layout`)."""
    import torch

    if not channels_last:
        return t.contiguous()
    # (clone where it is not channels_last as torch reads it: contiguous() keeps the NCHW
    # strides of a gradient with a size-1 dim, which the op would then run as NCHW)
    dense = t.is_contiguous(memory_format=torch.channels_last) and channels_last_memory(t)
    return t if dense else t.clone(memory_format=torch.channels_last)


_UNSAVED_BIAS = object()  # `_conv2d_grads`' bias where only its presence matters (no activation)


def _conv2d_grads(ops, x, weight, bias, geo, activation, layout, tf32, needs, grad,
                  unsaved=None):
    """The gradients of act(conv2d(x, weight) + bias) through `ops` = (conv2d, backward_input,
    backward_weight) with the custom ops' signatures: the custom op's formula and the eager
    Function's. Without an activation `bias` is read for whether there is one only. `unsaved`:
    (x's shape, weight's shape, whether x ran channels_last) where x or weight was not saved
    (None: a gradient that does not need it)."""
    conv, bwd_input, bwd_weight = ops
    x_shape, w_shape, x_cl = unsaved or (x.shape, weight.shape, _channels_last(x, layout))
    if activation is not None:  # (the registered op's GELU, SiLU) recompute the pre-activation
        grad = _activation_backward(activation, grad, conv(x, weight, bias, *geo, None, layout,
                                                           tf32))
    grad = _dense(grad, x_cl)
    gx = gw = gb = None
    if needs[0]:
        gx = bwd_input(grad, weight, list(x_shape), *geo, layout, tf32)
    if needs[1]:
        gw = bwd_weight(x, grad, list(w_shape), *geo, layout, tf32)
    if bias is not None and needs[2]:
        gb = grad.sum(dim=(0, 1, 2) if layout == "NHWC" else (0, 2, 3))
    return gx, gw, gb


@functools.cache
def conv2d_op():
    """Register (once) and return `torch.ops.kernelkit.conv2d` (padding as (top, bottom, left,
    right)); its backward runs the registered `kernelkit::conv2d_backward_input` / `_weight`."""
    import torch

    conv2d = core.op_spec("conv2d").function

    @torch.library.custom_op(
        "kernelkit::conv2d", mutates_args=(),
        schema=f"(Tensor x, Tensor weight, Tensor? bias, {_GEOMETRY}, str? activation, "
               "str? layout, bool allow_tf32) -> Tensor")
    def kk_conv2d(x, weight, bias, stride, padding, dilation, groups, activation, layout,
                  allow_tf32):
        _check_conv_form("kernelkit::conv2d", x, weight, stride, padding, dilation, layout)
        return _body(conv2d, x.detach(), weight.detach(), _detach(bias), stride=tuple(stride),
                     padding=tuple(padding), dilation=tuple(dilation), groups=groups,
                     activation=activation, layout=layout, allow_tf32=allow_tf32)

    @kk_conv2d.register_fake
    def _(x, weight, bias, stride, padding, dilation, groups, activation, layout, allow_tf32):
        nhwc = layout == "NHWC"
        _check_conv("kernelkit::conv2d", x, weight, bias, stride, padding, dilation, groups,
                    activation, layout)
        n, c, h, w = nchw_shape(x.shape, "NHWC" if nhwc else "NCHW")
        k, _, r, s = weight.shape
        ho, wo = out_size(h, w, r, s, stride, padding, dilation)
        return _empty_like_layout(x, (n, ho, wo, k) if nhwc else (n, k, ho, wo), layout, weight)

    bwd_input, bwd_weight = conv2d_backward_ops()

    def setup_context(ctx, inputs, output):
        x, weight, bias, stride, padding, dilation, groups, activation, layout, tf32 = inputs
        ctx.save_for_backward(x, weight, bias, _saved_output(activation, output))
        ctx.geo = (stride, padding, dilation, groups)
        ctx.rest = (activation, layout, tf32)

    def backward(ctx, grad):
        x, weight, bias, out = ctx.saved_tensors
        activation, layout, tf32 = ctx.rest
        grad, activation = _through_saved_relu(activation, grad, out, opaque=True)
        return (*_conv2d_grads((kk_conv2d, bwd_input, bwd_weight), x, weight, bias, ctx.geo,
                               activation, layout, tf32, ctx.needs_input_grad, grad),
                None, None, None, None, None, None, None)

    kk_conv2d.register_autograd(backward, setup_context=setup_context)
    _register_autocast("kernelkit::conv2d")
    return kk_conv2d


# -- preprocess ----------------------------------------------------------------------------------
@functools.cache
def preprocess_op():
    """Register (once) and return `torch.ops.kernelkit.preprocess`: `kernelkit.preprocess` on one
    (N, H, W, C) uint8 or float32 tensor batch, with one crop box and one flip for every image
    (per-image geometry and ragged batches: the function, or kernelkit.data). No gradient:
    its inputs are images; a float input that requires grad gets torch's "no autograd formula"
    error at backward."""
    import torch

    from . import preprocess_args as check  # the fake runs the real call's checks

    preprocess = core.op_spec("preprocess").function

    @torch.library.custom_op(
        "kernelkit::preprocess", mutates_args=(),
        schema="(Tensor images, int[] size, float[] mean, float[] std, float[]? crop, str? flip, "
               "str interpolation, bool antialias, int[]? channel_order, ScalarType out_dtype, "
               "str layout, str stats_unit) -> Tensor")
    def kk_preprocess(images, size, mean, std, crop, flip, interpolation, antialias,
                      channel_order, out_dtype, layout, stats_unit):
        return _body(preprocess, images.detach(), size=tuple(size), mean=tuple(mean),
                     std=tuple(std), crop=None if crop is None else tuple(crop), flip=flip,
                     interpolation=interpolation, antialias=antialias,
                     channel_order=None if channel_order is None else tuple(channel_order),
                     out_dtype=out_dtype, layout=layout, stats_unit=stats_unit)

    @kk_preprocess.register_fake
    def _(images, size, mean, std, crop, flip, interpolation, antialias, channel_order,
          out_dtype, layout, stats_unit):
        # the real call's checks, so meta and FakeTensor calls raise what it raises
        in_dtype = str(images.dtype).removeprefix("torch.")
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError("preprocess: 'images' must be an (N, H, W, C) batch with 1 or 3 "
                             f"channels, got shape {tuple(images.shape)}")
        if in_dtype not in check.IN_DTYPES:
            raise TypeError(f"preprocess: images must be one of {check.IN_DTYPES}, got {in_dtype}")
        n, h, w, c = images.shape
        if n == 0:
            raise ValueError("preprocess: 'images' is an empty batch (N = 0)")
        if h == 0 or w == 0:  # (the real call names the first image; all share one shape)
            raise ValueError(f"preprocess: image 0 is empty ({h}x{w})")
        if crop is not None:  # (one box for every image of the batch)
            check.check_box(0, crop, h, w)
        check.check_flip_name(flip)
        (oh, ow), *_ = check.check_settings(
            c, in_dtype, size=size, mean=mean, std=std,
            interpolation=interpolation, layout=layout, out_dtype=out_dtype,
            stats_unit=stats_unit)
        shape = (n, c, oh, ow) if layout == "NCHW" else (n, oh, ow, c)
        return images.new_empty(shape, dtype=out_dtype)

    return kk_preprocess


# -- eager autograd ------------------------------------------------------------------------------
# In eager mode a custom op costs tens of microseconds of Python dispatch per call (measured in
# bench/test_bench_nn.py); an autograd.Function costs a fraction of that. So kernelkit.matmul /
# conv2d on tensors that need gradients, and the kernelkit.nn layers where a kernelkit kernel won,
# use these Functions, with the custom ops' own backward formulas. A backward that builds a graph
# (create_graph=True) runs the custom ops, so double backward works as well.
@functools.cache
def eager_matmul():
    """`fn(a, b, bias, activation, allow_tf32)`: kernelkit.matmul with autograd, for eager mode."""
    import torch

    op = matmul_op()
    matmul = core.op_spec("matmul").function

    def mm(a, b, bias, act, tf32):
        if torch.is_grad_enabled():  # create_graph: stay differentiable
            return op(a, b, bias, act, tf32)
        return matmul(a, b, bias=bias, activation=act, allow_tf32=tf32)

    class EagerMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, a, b, bias, act, tf32):
            # only what the gradients read, as torch's own product: a patched Linear whose
            # input needs no gradient saved its weight too, and an optimizer step between two
            # backwards then raised "modified by an inplace operation"
            need_a, need_b = ctx.needs_input_grad[:2]
            y = _not_a_view(matmul(a, b, bias=bias, activation=act, allow_tf32=tf32))
            # a fused ReLU's gradient from its output, which torch's relu saves too
            ctx.save_for_backward(a if need_b else None, b if need_a else None,
                                  _saved_output(act, y))
            ctx.act, ctx.tf32, ctx.shapes = act, tf32, (a.shape, b.shape)
            ctx.b_stride = b.stride() if need_b else None  # (read in the backward)
            return y

        @staticmethod
        def backward(ctx, grad):
            # (batched gradients, `is_grads_batched` / `jacobian(vectorize=True)`: the registered
            # op, which torch's vmap fallback runs one plain slice at a time)
            use = op if _legacy_batched(grad) else mm
            a, b, y = ctx.saved_tensors
            grad, _ = _through_saved_relu(ctx.act, grad, y)
            return (*_matmul_grads(use, a, b, None, None, ctx.tf32, ctx.needs_input_grad, grad,
                                   ctx.shapes, ctx.b_stride is not None and transposed_matrix(
                                       None, ctx.shapes[1], ctx.b_stride)), None, None)

    activations = torch_activations()

    def apply(a, b, bias, act, tf32):
        if act is None or act == "relu":
            return EagerMatmul.apply(a, b, bias, act, tf32)
        # GELU and SiLU: the product, then torch's activation, as torch's own chain (which saves
        # the pre-activation). Fused, the backward recomputed the product from a, b and bias,
        # all saved: a third GEMM per step, and a bias stepped in place between two backwards
        # raised "modified by an inplace operation"
        return activations[act](EagerMatmul.apply(a, b, bias, None, tf32))

    return apply


def _legacy_batched(t) -> bool:
    """`t` is a batched tensor of torch's legacy vmap, which autograd uses for batched gradients
    (`autograd.grad(..., is_grads_batched=True)`, `jacobian` and `hessian` with vectorize=True):
    a plain torch.Tensor to every check kernelkit makes, whose memory a kernel cannot read
    ("Batching rule not implemented for aten::detach" where a kernel's launcher took it)."""
    import torch

    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return check is not None and check(t)


@contextlib.contextmanager
def cast_copies(cast, args):
    """While the block runs, the memory of the copies an autocast call cast (`cast[i]` of
    `args[i]`) is marked in `threads.LOCAL.cast_copies`: a weight there is not kept packed
    (`kernels.numba._packs.owner`: each call casts anew; kept, every copy was packed and held).
    The input's copy does not stop a bfloat16 model's own weights from being kept. (Plain
    tensors only: under torch.compile and export the args are FakeTensors, whose data_ptr
    raises, and nothing runs a kernel on them.)"""
    import torch

    copies = frozenset(c.data_ptr() for c, a in zip(cast, args)
                       if c is not a and type(c) is torch.Tensor and not c.is_meta)
    local = threads.LOCAL
    before = getattr(local, "cast_copies", frozenset())
    local.cast_copies = before | copies
    try:
        yield
    finally:
        local.cast_copies = before


@functools.cache
def eager_conv2d():
    """`fn(x, weight, bias, plans)`: kernelkit.conv2d with autograd, for eager mode, running the
    bound plans of one call signature (`ops.conv2d.ConvPlans`: its geometry and knobs too)."""
    import torch

    ops = (conv2d_op(), *conv2d_backward_ops())

    class EagerConv2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, plans, pre):
            # what the gradients read, as torch's conv: not the bias (a bias stepped in place
            # between two backwards, bias-only fine-tuning, raised "modified by an inplace
            # operation"); a fused ReLU's output, as torch's relu saves it. `pre`: the
            # pre-activation of a GELU/SiLU layer, else the forward plan the caller bound (a
            # layer's route: the kernel that won its trial)
            y = _not_a_view(plans.pre_activation(x, w, b) if pre else plans.forward(x, w, b))
            need_x, need_w = ctx.needs_input_grad[:2]
            ctx.save_for_backward(x if need_w else None, w if need_x else None,
                                  _saved_output(plans.rest[0], y))
            ctx.plans, ctx.bias_given = plans, b is not None
            ctx.unsaved = (x.shape, w.shape, _channels_last(x, plans.rest[1]))
            return y

        @staticmethod
        def backward(ctx, grad):
            plans = ctx.plans
            x, w, y = ctx.saved_tensors
            grad, _ = _through_saved_relu(plans.rest[0], grad, y)
            use = (ops if torch.is_grad_enabled()  # create_graph: differentiable ops
                   or _legacy_batched(grad)  # (batched gradients: see eager_matmul)
                   else (plans.pre_activation, plans.input_grad, plans.weight_grad))
            return (*_conv2d_grads(use, x, w, _UNSAVED_BIAS if ctx.bias_given else None,
                                   plans.geo, None, *plans.rest[1:], ctx.needs_input_grad, grad,
                                   ctx.unsaved), None, None)

    activations = torch_activations()

    def apply(x, w, b, plans):
        act = plans.rest[0]
        if act is None or act == "relu":
            return EagerConv2d.apply(x, w, b, plans, False)
        # GELU and SiLU: the convolution, then torch's activation, as torch's own chain (see
        # eager_matmul: the backward no longer recomputes the convolution)
        return activations[act](EagerConv2d.apply(x, w, b, plans, True))

    return apply


def register_all() -> None:
    """Register every kernelkit custom op (and its fake, autograd and autocast rules) with torch.
    `import kernelkit` calls it once torch is imported (at once, or from a post-import hook), so
    `torch.export.load` of a saved program that uses kernelkit ops works in a fresh process."""
    matmul_op()
    linear_op()
    conv2d_op()  # and the two backward ops
    preprocess_op()
    relu_backward_op()  # (a saved or cached compiled backward calls it before any formula runs)
