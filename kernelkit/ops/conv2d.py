"""conv2d (torch's F.conv2d semantics) and its two backward ops, numpy/torch/cupy in and out.

check arguments -> Problem -> dispatch -> launch, as for matmul. Three ops share the checks and
the candidate table: `conv2d`, `conv2d_backward_input`, `conv2d_backward_weight`; each is tuned
on its own. Layout: NCHW, or NHWC given either as a channels_last torch tensor (NCHW dims, NHWC
memory; the result is channels_last too) or as `layout="NHWC"` for (N, H, W, C) arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any

import numpy as np

from .. import arrays, core
from ..core import Call, Candidate, Config, OpSpec, Plan, Problem
from ..kernels import check_activation, check_flag, torch_activations
from ..kernels.convgeom import ConvOptions, check_geometry, nchw_shape
from .dispatch import (
    FALSE_KEY,
    PlanMemo,
    flag_key,
    fx_proxy,
    jit_tracing,
    key_part,
    needs_grad,
    plain_signature3,
    plan_for,
    signature3,
    torch_only,
)
from .verify import f64, normwise_error

FLOAT_DTYPES = arrays.FLOAT_DTYPES
_NDARRAY = np.ndarray

OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")


# -- public API ----------------------------------------------------------------------------------
def conv2d(x: Any, weight: Any, bias: Any = None, *, stride=1, padding=0, dilation=1,
           groups: int = 1, activation: str | None = None, layout: str | None = None,
           allow_tf32: bool = False) -> Any:
    """2-D convolution with a fused epilogue: ``activation(conv2d(x, weight) + bias)``.

    Args:
        x: input batch, (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"`` (one image
            without the batch dim, (C, H, W) or (H, W, C), as F.conv2d takes it); a channels_last
            torch tensor runs in NHWC and gives a channels_last result, and so does any torch
            input beside a channels_last weight (torch's rule, read from the strides as torch
            reads them: a one-channel or 1x1 tensor in channels_last memory counts).
            numpy (not a masked array, np.matrix or a subclass with array rules of its own),
            torch or cupy.
        weight: (K, C // groups, R, S), same library, device and dtype as `x`.
        bias: optional (K,).
        stride, dilation: int or (h, w) pair, positive.
        padding: int, (h, w), (top, bottom, left, right), "same" (stride 1 only, asymmetric
            for even kernels, as torch) or "valid". Non-negative.
        groups: divides C and K; groups == C is a depthwise convolution.
        activation: None, "relu", "gelu", "gelu_tanh" or "silu".
        layout: None/"NCHW" or "NHWC" (the dims order of `x` and of the result).
        allow_tf32: let fp32 GPU kernels use TF32 (off unless asked for).

    Shape:
        (N, C, H, W) -> (N, K, Ho, Wo), Ho = (H + pad_h - dilation_h * (R - 1) - 1) // stride_h + 1;
        (C, H, W) -> (K, Ho, Wo)

    Returns:
        A new array like `x` (library, device, dtype, layout). With C = 0 every sum is empty and
        the result is act(bias) (zeros without a bias) of shape (N, K, Ho, Wo); K = 0 gives an
        empty (N, 0, Ho, Wo). (torch's F.conv2d returns an input-shaped empty tensor for the
        first and raises for the second.)

    Example:
        >>> x = np.random.rand(1, 3, 32, 32).astype(np.float32)      # doctest: +SKIP
        >>> w = np.random.rand(8, 3, 3, 3).astype(np.float32)
        >>> kernelkit.conv2d(x, w, padding="same", activation="relu").shape
        (1, 8, 32, 32)
    """
    # (activation and layout keyed as given: only a str can equal a valid one; an int argument
    # keyed inline, without key_part's call: 0.12 us of a small conv's overhead)
    extras = (stride if type(stride) is int else key_part(stride),
              padding if type(padding) is int else key_part(padding),
              dilation if type(dilation) is int else key_part(dilation),
              groups if type(groups) is int else flag_key(groups), activation, layout,
              FALSE_KEY if allow_tf32 is False else flag_key(allow_tf32))
    try:  # a repeated call (inline, not PlanMemo.find: 0.07 us of a small conv's hit)
        plan = _FORWARD.get(plain_signature3(x, weight, bias, extras))  # (None: no such key)
    except TypeError:  # an unhashable argument: the checks below say what is wrong with it
        plan = None
    if plan is not None:
        return plan(x, weight, bias)
    if type(x) is not _NDARRAY and (proxy := fx_proxy(x, weight, bias)) is not None:
        return proxy.tracer.create_proxy("call_function", conv2d, (x, weight, bias), dict(
            stride=stride, padding=padding, dilation=dilation, groups=groups,
            activation=activation, layout=layout, allow_tf32=allow_tf32))  # (an fx trace)
    if arrays.array_lib(x) is not None and x.ndim == 3:  # unbatched (C, H, W), as F.conv2d
        return conv2d(x[None], weight, bias, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, activation=activation, layout=layout,
                      allow_tf32=allow_tf32)[0]
    if type(x) is not _NDARRAY and getattr(x, "is_nested", False):  # (sizes raised "Internal
        # error: NestedTensorImpl doesn't support sizes. Please file an issue.")
        raise TypeError("conv2d: 'x' is a nested tensor, which has no one (N, C, H, W) shape: "
                        "convolve each image (x.unbind()) or pad them into one batch")
    if type(x) is not _NDARRAY and torch_only(x, weight, bias):  # vmap, meta, ...: torch's ops
        check_activation("conv2d", activation)
        geo = _op_geometry("conv2d", x, x.shape, weight.shape, stride, padding, dilation, groups,
                           layout)
        return _vendor().conv2d_forward(x, weight, bias, *geo, activation, layout or "NCHW",
                                        allow_tf32)
    if type(x) is not _NDARRAY and jit_tracing():  # the trace records the registered op
        from .torch_ops import conv2d_op

        geo = _op_geometry("conv2d", x, x.shape, weight.shape, stride, padding, dilation, groups,
                           layout)
        return conv2d_op()(x, weight, bias, *geo, activation, layout, allow_tf32)
    sig = signature3(x, weight, bias, extras)
    plan = _FORWARD.find(sig)
    if plan is None:
        plan = _FORWARD.store(sig, plan_for(prepare_forward(
            x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
            activation=activation, layout=layout, allow_tf32=allow_tf32)))
    return plan(x, weight, bias)


def conv2d_backward_input(grad_out: Any, weight: Any, input_shape, *, stride=1, padding=0,
                          dilation=1, groups: int = 1, layout: str | None = None,
                          allow_tf32: bool = False) -> Any:
    """Gradient of conv2d (without bias/activation) with respect to its input.

    Args:
        grad_out: (N, K, Ho, Wo) (or NHWC, as for `conv2d`).
        weight: (K, C // groups, R, S).
        input_shape: the shape of the forward input, in `layout`'s dims order.
        stride, padding, dilation, groups, layout, allow_tf32: as given to `conv2d`.

    Returns:
        dx, shaped like the forward input.
    """
    extras = (key_part(_tuple_key(input_shape)), key_part(stride), key_part(padding),
              key_part(dilation), flag_key(groups), layout, flag_key(allow_tf32))
    plan = _BWD_INPUT.find(plain_signature3(grad_out, weight, None, extras))
    if plan is not None:
        return plan(grad_out, weight)
    if type(grad_out) is not _NDARRAY and torch_only(grad_out, weight):
        shape = list(_shape4("conv2d_backward_input", "input_shape", input_shape))
        geo = _op_geometry("conv2d_backward_input", grad_out, shape, weight.shape, stride,
                           padding, dilation, groups, layout)
        return _vendor().conv2d_backward_input(grad_out, weight,
                                                nchw_shape(shape, layout or "NCHW")[2:], *geo,
                                                layout or "NCHW", allow_tf32)
    if type(grad_out) is not _NDARRAY and jit_tracing():
        from .torch_ops import conv2d_backward_ops

        shape = list(_shape4("conv2d_backward_input", "input_shape", input_shape))
        geo = _op_geometry("conv2d_backward_input", grad_out, shape, weight.shape, stride,
                           padding, dilation, groups, layout)
        return conv2d_backward_ops()[0](grad_out, weight, shape, *geo, layout, allow_tf32)
    sig = signature3(grad_out, weight, None, extras)
    plan = _BWD_INPUT.find(sig)
    if plan is None:
        plan = _BWD_INPUT.store(sig, plan_for(prepare_backward_input(
            grad_out, weight, input_shape, stride=stride, padding=padding, dilation=dilation,
            groups=groups, layout=layout, allow_tf32=allow_tf32)))
    return plan(grad_out, weight)


def conv2d_backward_weight(x: Any, grad_out: Any, weight_shape, *, stride=1, padding=0,
                           dilation=1, groups: int = 1, layout: str | None = None,
                           allow_tf32: bool = False) -> Any:
    """Gradient of conv2d (without bias/activation) with respect to its weight.

    Args:
        x: the forward input. grad_out: (N, K, Ho, Wo) (or NHWC).
        weight_shape: (K, C // groups, R, S).
        stride, padding, dilation, groups, layout, allow_tf32: as given to `conv2d`.

    Returns:
        dw of shape `weight_shape`. The bias gradient is ``grad_out.sum((0, 2, 3))``.
    """
    extras = (key_part(_tuple_key(weight_shape)), key_part(stride), key_part(padding),
              key_part(dilation), flag_key(groups), layout, flag_key(allow_tf32))
    plan = _BWD_WEIGHT.find(plain_signature3(x, grad_out, None, extras))
    if plan is not None:
        return plan(x, grad_out)
    if type(x) is not _NDARRAY and torch_only(x, grad_out):
        shape = list(_shape4("conv2d_backward_weight", "weight_shape", weight_shape))
        geo = _op_geometry("conv2d_backward_weight", x, x.shape, shape, stride, padding, dilation,
                           groups, layout)
        return _vendor().conv2d_backward_weight(x, grad_out, shape[2:], *geo, layout or "NCHW",
                                                 allow_tf32)
    if type(x) is not _NDARRAY and jit_tracing():
        from .torch_ops import conv2d_backward_ops

        shape = list(_shape4("conv2d_backward_weight", "weight_shape", weight_shape))
        geo = _op_geometry("conv2d_backward_weight", x, x.shape, shape, stride, padding, dilation,
                           groups, layout)
        return conv2d_backward_ops()[1](x, grad_out, shape, *geo, layout, allow_tf32)
    sig = signature3(x, grad_out, None, extras)
    plan = _BWD_WEIGHT.find(sig)
    if plan is None:
        plan = _BWD_WEIGHT.store(sig, plan_for(prepare_backward_weight(
            x, grad_out, weight_shape, stride=stride, padding=padding, dilation=dilation,
            groups=groups, layout=layout, allow_tf32=allow_tf32)))
    return plan(x, grad_out)


_FORWARD, _BWD_INPUT, _BWD_WEIGHT = PlanMemo(), PlanMemo(), PlanMemo()


def _op_geometry(op: str, like, x_shape, w_shape, stride, padding, dilation, groups,
                 layout, traced: bool = False) -> list:
    """[stride, padding, dilation, groups] checked and in the registered ops' form (padding as
    (top, bottom, left, right)), for a call that goes to ``torch.ops.kernelkit.<op>`` under
    torch.jit.trace, or in code dynamo traces (``traced``: ``like`` is a tensor dynamo stands
    in for, whose memory format is its own). ``like``: the tensor whose memory format says
    channels_last; ``x_shape``: the forward input's shape in the call's dims order."""
    kl, channels_last = _layout(op, like, layout, traced)
    xs = tuple(int(v) for v in x_shape)
    geo, _ = check_geometry(op, xs if channels_last else nchw_shape(xs, kl),
                            tuple(int(v) for v in w_shape), stride, padding, dilation, groups)
    return [list(geo.stride), list(geo.padding), list(geo.dilation), geo.groups]


def _vendor():
    """torch's conv2d ops in the kernels' contract: what the conv2d ops compute the torch tensors
    that kernelkit's kernels leave to torch with (`dispatch.torch_only`)."""
    from ..kernels.torch import conv2d

    return conv2d


# -- checking ------------------------------------------------------------------------------------
def _layout(op: str, x, layout, traced: bool = False) -> tuple[str, bool]:
    """(kernel layout, x is a channels_last torch tensor seen with NCHW dims)."""
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"{op}: 'layout' must be None, 'NCHW' or 'NHWC', got {layout!r}")
    # (under vmap, torch cannot say whether a tensor is channels_last: its dims are NCHW, and the
    # transform's path runs torch's ops, which follow the memory format themselves)
    if arrays.array_lib(x) == "torch" and layout is None and x.ndim == 4 \
            and (traced or not torch_only(x)):
        return ("NHWC", True) if arrays.channels_last_memory(x) else ("NCHW", False)
    return layout or "NCHW", False


def _check_arrays(op: str, named: dict[str, Any]) -> tuple[arrays.Location, str]:
    loc = dtype = None
    for name, x in named.items():
        if x is None:
            continue
        if arrays.array_lib(x) is None:
            raise TypeError(f"{op}: '{name}' must be {arrays.ACCEPTED}, got "
                            f"{type(x).__name__}")
        here = arrays.location(x)
        if loc is None:
            loc, first = here, name
        elif here.lib != loc.lib:
            raise TypeError(f"{op}: '{name}' is a {here.lib} array but '{first}' is {loc.lib}")
        elif (here.device, here.index) != (loc.device, loc.index):
            raise ValueError(f"{op}: '{name}' is on {here.device}:{here.index} but '{first}' is on "
                             f"{loc.device}:{loc.index}")
        dt = arrays.dtype_name(x)
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"{op}: '{name}' dtype must be one of {FLOAT_DTYPES}, got {dt}"
                            f"{arrays.byte_order_note(dt, FLOAT_DTYPES)}")
        if dtype is None:
            dtype = dt
        elif dt != dtype:
            raise TypeError(f"{op}: '{name}' has dtype {dt} but '{first}' has {dtype}")
    return loc, dtype


def _problem(op, xs, ws, out_hw, dtype, layout, loc, options: ConvOptions) -> Problem:
    """The Problem of any of the three ops: the work is the same reduction in each, and the
    shapes are always (x, weight, y), activations in NCHW dims."""
    (n, c, h, w), (k, cg, r, s), (ho, wo) = xs, ws, out_hw
    itemsize = np.dtype("float16" if dtype == "bfloat16" else dtype).itemsize
    return Problem(op=op, shapes=(xs, ws, (n, k, ho, wo)), dtype=dtype, layout=layout,
                   lib=loc.lib, device=loc.device, options=options,
                   flops=2.0 * n * k * ho * wo * cg * r * s,
                   nbytes=int((n * c * h * w + k * cg * r * s + n * k * ho * wo) * itemsize))


# -- preparing calls -----------------------------------------------------------------------------
def prepare_forward(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                    activation=None, layout=None, allow_tf32=False) -> Call:
    op = "conv2d"
    if arrays.array_lib(x) is not None and x.ndim == 3:  # one image, as the op takes it
        x = x[None]
    loc, dtype = _check_arrays(op, {"x": x, "weight": weight, "bias": bias})
    kl, channels_last = _layout(op, x, layout)
    _ndim(op, "x", x, "(N, H, W, C)" if kl == "NHWC" and not channels_last else "(N, C, H, W)")
    _ndim(op, "weight", weight, "(K, C // groups, R, S)")
    converted = not channels_last and layout is None and _weight_makes_channels_last(x, weight)
    if converted:
        kl, channels_last = "NHWC", True
    xs = tuple(x.shape) if channels_last else nchw_shape(x.shape, kl)
    ws = tuple(weight.shape)
    geo, (ho, wo) = check_geometry(op, xs, ws, stride, padding, dilation, groups)
    check_flag(op, "allow_tf32", allow_tf32)
    if bias is not None and tuple(bias.shape) != (ws[0],):
        raise ValueError(f"{op}: 'bias' must have shape (K,) = ({ws[0]},), got {tuple(bias.shape)}")
    check_activation(op, activation)
    options = ConvOptions(geo.stride, geo.padding, geo.dilation, geo.groups, bias is not None,
                          activation, allow_tf32)
    stride, pad, dilation = geo.stride, geo.padding, geo.dilation
    problem = _problem(op, xs, ws, (ho, wo), dtype, kl, loc, options)
    to_kernel, from_kernel = _channels_last_views(channels_last, converted)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, problem.dtype, (to_kernel, None, None), from_kernel)

    direct = None
    if loc.lib == "torch" and needs_grad(x, weight, bias):
        from .torch_ops import eager_conv2d  # autograd without the custom op's dispatch cost

        fn = eager_conv2d()
        plans = ConvPlans(stride, pad, dilation, geo.groups, activation, layout, allow_tf32)
        direct = lambda x, w, b: fn(x, w, b, plans)
    ref = functools.partial(_reference_forward, x, weight, bias, stride, pad, dilation, geo.groups,
                            activation, kl, channels_last)
    return Call(problem, bind, (x, weight, bias), _verifier(ref, math.prod(ws[1:]), allow_tf32),
                direct)


def _tuple_key(v):
    """A shape argument as its key: a list, a torch.Size or a 1-d array as the tuple it equals;
    anything else as given (the checks then say what is wrong with it: `tuple(5)` raised before
    them)."""
    if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1):
        return tuple(v)  # (a numpy array of dims too: hashable, as before)
    return v


def _shape4(op: str, name: str, v, form: str = "the forward input's shape, (N, C, H, W) or "
            "with layout='NHWC' (N, H, W, C)") -> tuple[int, ...]:
    """A shape argument of a backward op as 4 non-negative ints, or a ValueError naming it."""
    try:
        shape = tuple(operator.index(d) for d in v)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 4 or min(shape) < 0:
        raise ValueError(f"{op}: '{name}' must be {form}, 4 non-negative ints, got {v!r}")
    return shape


def prepare_backward_input(grad_out, weight, input_shape, *, stride=1, padding=0, dilation=1,
                           groups=1, layout=None, allow_tf32=False) -> Call:
    op = "conv2d_backward_input"
    loc, dtype = _check_arrays(op, {"grad_out": grad_out, "weight": weight})
    kl, channels_last = _layout(op, grad_out, layout)
    _ndim(op, "grad_out", grad_out, "(N, K, Ho, Wo)")
    _ndim(op, "weight", weight, "(K, C // groups, R, S)")
    input_shape = _shape4(op, "input_shape", input_shape)
    xs = input_shape if channels_last else nchw_shape(input_shape, kl)
    ws = tuple(weight.shape)
    geo, (ho, wo) = check_geometry(op, xs, ws, stride, padding, dilation, groups)
    check_flag(op, "allow_tf32", allow_tf32)
    _grad_out_shape(op, grad_out, kl, channels_last, (xs[0], ws[0], ho, wo))
    k, _, r, s = ws
    problem = _problem(op, xs, ws, (ho, wo), dtype, kl, loc,
                       dataclasses.replace(geo, tf32=allow_tf32))
    to_kernel, from_kernel = _channels_last_views(channels_last)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, problem.dtype, (to_kernel, None), from_kernel)

    ref = functools.partial(_reference_backward, "input", grad_out, weight, None, xs, *geo.geometry_args,
                            kl, channels_last)
    return Call(problem, bind, (grad_out, weight),
                _verifier(ref, k // geo.groups * r * s, allow_tf32))


def prepare_backward_weight(x, grad_out, weight_shape, *, stride=1, padding=0, dilation=1,
                            groups=1, layout=None, allow_tf32=False) -> Call:
    op = "conv2d_backward_weight"
    loc, dtype = _check_arrays(op, {"x": x, "grad_out": grad_out})
    kl, channels_last = _layout(op, x, layout)
    _ndim(op, "x", x, "(N, C, H, W)")
    _ndim(op, "grad_out", grad_out, "(N, K, Ho, Wo)")
    xs = tuple(x.shape) if channels_last else nchw_shape(x.shape, kl)
    ws = _shape4(op, "weight_shape", weight_shape, "(K, C // groups, R, S)")
    geo, (ho, wo) = check_geometry(op, xs, ws, stride, padding, dilation, groups)
    check_flag(op, "allow_tf32", allow_tf32)
    _grad_out_shape(op, grad_out, kl, channels_last, (xs[0], ws[0], ho, wo))
    problem = _problem(op, xs, ws, (ho, wo), dtype, kl, loc,
                       dataclasses.replace(geo, tf32=allow_tf32))
    to_kernel, _ = _channels_last_views(channels_last)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, problem.dtype, (to_kernel, to_kernel), None)

    ref = functools.partial(_reference_backward, "weight", grad_out, None, x, ws, *geo.geometry_args,
                            kl, channels_last)
    return Call(problem, bind, (x, grad_out), _verifier(ref, xs[0] * ho * wo, allow_tf32))


class ConvPlans:
    """The plans of one conv2d signature's training step, each chosen on its first use and kept:
    the forward, the pre-activation (the forward of a GELU or SiLU, which torch applies) and
    the two backward products. The eager autograd Function (`torch_ops.eager_conv2d`) runs
    these, so a training step calls bound plans, not the public functions, whose per-call
    signature and memo lookup cost 10-40 us each on a small CPU layer (bench/probes/
    nn_grad_overhead.py). Every plan is made from the tensors at hand (their shapes are fixed
    by the forward signature; the gradient arrives dense in the input's memory format). A plan
    chosen while better kernels compile, or due for a recheck, drops out of `memo` as from the
    public functions' memos and is chosen again.

    Args:
        stride, padding, dilation: resolved pairs (padding as (top, bottom, left, right)).
        groups, activation, layout, allow_tf32: as given to `conv2d`.
        forward: the forward's plan when the caller already bound it (kernelkit.nn's route).
    """

    __slots__ = ("geo", "rest", "memo")

    def __init__(self, stride, padding, dilation, groups: int, activation: str | None,
                 layout: str | None, allow_tf32: bool, forward: Plan | None = None):
        # the custom ops' geometry arguments (lists), for a backward that builds a graph
        self.geo = (list(stride), list(padding), list(dilation), groups)
        self.rest = (activation, layout, allow_tf32)
        self.memo = PlanMemo()
        if forward is not None:
            self.memo["forward"] = forward

    def _kwargs(self) -> dict:
        stride, padding, dilation, groups = self.geo
        return dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                    groups=groups, layout=self.rest[1], allow_tf32=self.rest[2])

    def _plan(self, key: str, make) -> Plan:
        """The kept plan `key`, chosen from the call `make()` prepares on first use."""
        plan = self.memo.get(key)
        if plan is None:
            plan = self.memo.store(key, plan_for(make()))
        return plan

    def forward(self, x, w, b):
        return self._plan("forward", lambda: prepare_forward(
            x, w, b, activation=self.rest[0], **self._kwargs()))(x, w, b)

    # the three below take (and ignore) the custom ops' trailing arguments: `_conv2d_grads`
    # calls them as it calls the ops
    def pre_activation(self, x, w, b, *_):
        return self._plan("pre", lambda: prepare_forward(x, w, b, **self._kwargs()))(x, w, b)

    def input_grad(self, grad_out, w, input_shape, *_):
        return self._plan("input", lambda: prepare_backward_input(
            grad_out, w, input_shape, **self._kwargs()))(grad_out, w)

    def weight_grad(self, x, grad_out, weight_shape, *_):
        return self._plan("weight", lambda: prepare_backward_weight(
            x, grad_out, weight_shape, **self._kwargs()))(x, grad_out)


def _grad_out_shape(op, grad_out, kl, channels_last, expected) -> tuple[int, ...]:
    gs = tuple(grad_out.shape) if channels_last else nchw_shape(grad_out.shape, kl)
    if gs != expected:
        raise ValueError(f"{op}: 'grad_out' must have shape {expected} (NCHW dims) for this input "
                         f"and weight, got {gs}")
    return gs


def _ndim(op, name, x, dims) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: '{name}' must be 4-D {dims}, got shape {tuple(x.shape)}")


def _channels_last_views(channels_last: bool, convert: bool = False):
    """A channels_last torch tensor has NCHW dims over NHWC memory: the kernels get the NHWC view
    (a permutation, no copy), and their NHWC result is handed back as channels_last NCHW.
    `convert`: the input is not channels_last but the weight is (`_weight_makes_channels_last`):
    it is copied into channels_last first, as torch's own conv does."""
    if not channels_last:
        return None, None
    if convert:
        import torch

        def to_kernel(t):
            return t.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1)
    else:
        def to_kernel(t):
            return t.permute(0, 2, 3, 1)
    return to_kernel, (lambda t: t.permute(0, 3, 1, 2))


def _weight_makes_channels_last(x, weight) -> bool:
    """torch's rule for a 2-D conv (oneDNN and cuDNN alike): a weight in channels_last memory
    makes the conv channels_last, its result included, whatever the input's format. Before, a
    channels_last weight beside an NCHW input gave torch a channels_last output and kernelkit a
    contiguous one."""
    if arrays.array_lib(x) != "torch" or arrays.array_lib(weight) != "torch" \
            or torch_only(x, weight):
        return False
    return arrays.channels_last_memory(weight)


def _bind(fn, cand: Candidate, loc: arrays.Location, dtype: str, views: tuple, out_view) -> Plan:
    """A plan for the kernel `fn`: per-argument views, moves to the candidate and back."""
    to = arrays.converter(loc, cand.native, cand.device)
    back = arrays.converter_back(cand.native, cand.device, loc, dtype)
    if out_view is None and all(v is None for v in views):
        # no views (NCHW, or NHWC arrays): the common case, without the general plan's lists
        # (about 1 us a call); the forward's bias may be None, the other arguments never are
        if to is None and back is None:
            return fn
        to, back = to or _same, back or _same
        if len(views) == 3:
            return lambda x, w, b: back(fn(to(x), to(w), None if b is None else to(b)))
        return lambda a, b: back(fn(to(a), to(b)))

    def plan(*args):
        args = [v(a) if v is not None and a is not None else a for v, a in zip(views, args)]
        if to is not None:
            args = [None if a is None else to(a) for a in args]
        out = fn(*args)
        if back is not None:
            out = back(out)
        return out_view(out) if out_view is not None else out

    return plan


def _same(x):
    return x


# -- verification --------------------------------------------------------------------------------
def _torch64(x, kl, channels_last):

    t = arrays.numpy_to_torch(f64(x))
    if kl == "NHWC" and not channels_last:
        t = t.permute(0, 3, 1, 2)
    return t


def _reference_forward(x, weight, bias, stride, pad, dilation, groups, activation, kl,
                       channels_last):
    """float64 result and the conv(|x|, |w|) + |bias| scale, in the output's dims order."""
    import torch
    import torch.nn.functional as F

    xt = F.pad(_torch64(x, kl, channels_last), (pad[2], pad[3], pad[0], pad[1]))
    wt = arrays.numpy_to_torch(f64(weight))
    bt = None if bias is None else torch.from_numpy(f64(bias))
    y = F.conv2d(xt, wt, bt, stride, 0, dilation, groups)
    scale = F.conv2d(xt.abs(), wt.abs(), None if bt is None else bt.abs(), stride, 0, dilation,
                     groups)
    if activation:
        y = torch_activations()[activation](y)
    return _out_order(y, kl, channels_last), _out_order(scale, kl, channels_last)


def _reference_backward(which, grad_out, weight, x, shape, stride, pad, dilation, groups, kl,
                        channels_last):
    import torch

    g = _torch64(grad_out, kl, channels_last)
    if which == "input":
        w = arrays.numpy_to_torch(f64(weight))
        n, c, h, wd = shape
        padded = (n, c, h + pad[0] + pad[1], wd + pad[2] + pad[3])
        grad = lambda gg, ww: torch.nn.grad.conv2d_input(padded, ww, gg, stride, 0, dilation,
                                                         groups)[:, :, pad[0]:pad[0] + h,
                                                                 pad[2]:pad[2] + wd]
        dx, scale = grad(g, w), grad(g.abs(), w.abs())
        return _out_order(dx, kl, channels_last), _out_order(scale, kl, channels_last)
    import torch.nn.functional as F

    xt = F.pad(_torch64(x, kl, channels_last), (pad[2], pad[3], pad[0], pad[1]))
    grad = lambda xx, gg: torch.nn.grad.conv2d_weight(xx, shape, gg, stride, 0, dilation, groups)
    return grad(xt, g).numpy(), grad(xt.abs(), g.abs()).numpy()


def _out_order(t, kl, channels_last):
    # channels_last tensors come back with NCHW dims; (N, H, W, C) arrays in NHWC dims.
    return (t.permute(0, 2, 3, 1) if kl == "NHWC" and not channels_last else t).numpy()


def _verifier(reference, k: int, allow_tf32: bool):
    """Check against the float64 reference, scaled by the op's own condition (see verify.py)."""
    ref_once = functools.cache(reference)
    return lambda out: normwise_error(out, *ref_once(), k, allow_tf32)


# -- the specs -----------------------------------------------------------------------------------
# Every backend's conv2d entry points take the geometry as (stride, padding, dilation, groups),
# then the layout, then (*, config, allow_tf32).
def _launch_forward(entry, p: Problem, config) -> Plan:
    o = p.options
    geo, act, layout, tf32 = o.geometry_args, o.activation, p.layout, o.tf32
    return lambda x, w, b: entry(x, w, b, *geo, act, layout, config=config, allow_tf32=tf32)


def _launch_backward_input(entry, p: Problem, config) -> Plan:
    o, hw = p.options, p.shapes[0][2:]
    geo, layout, tf32 = o.geometry_args, p.layout, o.tf32
    return lambda g, w: entry(g, w, hw, *geo, layout, config=config, allow_tf32=tf32)


def _launch_backward_weight(entry, p: Problem, config) -> Plan:
    o, rs = p.options, p.shapes[1][2:]
    geo, layout, tf32 = o.geometry_args, p.layout, o.tf32
    return lambda x, g: entry(x, g, rs, *geo, layout, config=config, allow_tf32=tf32)


def _make_inputs(op: str):
    """(args, kwargs) for a size (N, C, H=W, K, R=S, stride, padding, groups) of `op`."""

    def make_inputs(dims: tuple[int, ...], dtype: str, where: str, seed: int = 0):
        n, c, hw, k, r, stride, pad, groups = dims
        xs, ws = (n, c, hw, hw), (k, c // groups, r, r)
        kwargs = {"stride": stride, "padding": pad, "groups": groups}
        if op == "conv2d":
            return arrays.random_arrays((xs, ws), dtype, where, seed), kwargs
        ho = (hw + 2 * pad - r) // stride + 1
        x, w, g = arrays.random_arrays((xs, ws, (n, k, ho, ho)), dtype, where, seed)
        if op == "conv2d_backward_input":
            return [g, w, xs], kwargs
        return [x, g, ws], kwargs

    return make_inputs


def _dims_of(shapes) -> tuple[int, ...] | None:
    """make_inputs' dims for a problem's shapes (x, weight, y), or None: square images and
    kernels, padding R // 2 (the stride follows from the output size)."""
    (n, c, h, w), (k, cg, r, s), (_, _, ho, wo) = shapes
    if h != w or r != s or ho != wo or cg == 0 or c % cg:
        return None
    pad = r // 2
    stride = next((st for st in range(1, r + 2) if (h + 2 * pad - r) // st + 1 == ho), None)
    return None if stride is None else (n, c, h, k, r, stride, pad, c // cg)


def _cli_inputs(op: str):
    def cli_inputs(dims: tuple[int, ...]) -> tuple[int, ...]:
        if len(dims) != 6:
            raise ValueError(f"{op} takes N C H K R STRIDE (square images and kernels)")
        n, c, h, k, r, stride = dims
        return (n, c, h, k, r, stride, r // 2, 1)

    return cli_inputs


_RESNET50 = ((3, 64, 224, 7, 2, 3), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 0),
             (128, 128, 28, 3, 1, 1), (256, 1024, 14, 1, 1, 0), (512, 512, 7, 3, 1, 1))
_PRESETS = {"resnet50": tuple(((n, c, hw, k, r, st, pad, 1), "float32")
                              for n in (1, 8) for c, k, hw, r, st, pad in _RESNET50)}
# (the same layers for each op: forward, and both backward products of training; the first
# layer's input gradient is never needed, since the image needs none)

for _op, _fn, _prepare, _launch in (
        ("conv2d", conv2d, prepare_forward, _launch_forward),
        ("conv2d_backward_input", conv2d_backward_input, prepare_backward_input,
         _launch_backward_input),
        ("conv2d_backward_weight", conv2d_backward_weight, prepare_backward_weight,
         _launch_backward_weight)):
    core.register_op(OpSpec(
        name=_op, kernel="conv2d", entry=_op if _op != "conv2d" else "conv2d_forward",
        launch=_launch, function=_fn, prepare=_prepare, make_inputs=_make_inputs(_op),
        presets=_PRESETS if _op != "conv2d_backward_input" else
        {"resnet50": tuple(row for row in _PRESETS["resnet50"] if row[0][1] != 3)},
        cli_dims="N C H K R STRIDE", cli_inputs=_cli_inputs(_op), dims_of=_dims_of))
