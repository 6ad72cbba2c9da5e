"""conv2d (torch's F.conv2d semantics) and its two backward ops, numpy/torch/cupy in and out.

check arguments -> Problem -> dispatch -> launch, as for matmul. Three ops share the checks and
the candidate table: `conv2d`, `conv2d_backward_input`, `conv2d_backward_weight`; each is tuned
on its own. Layout: NCHW, or NHWC given either as a channels_last torch tensor (NCHW dims, NHWC
memory; the result is channels_last too) or as `layout="NHWC"` for (N, H, W, C) arrays.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any

import numpy as np

from .. import arrays
from ..kernels import check_activation
from ..kernels.convgeom import nchw_shape
from . import registry
from .dispatch import Call, Plan, PlanMemo, explain_call, needs_grad, plan_for, signature
from .matmul import FLOAT_DTYPES, kernel_dtype
from .registry import Candidate, Config, Problem, backend_support
from .verify import f64, normwise_error

OPS = ("conv2d", "conv2d_backward_input", "conv2d_backward_weight")


# -- public API ----------------------------------------------------------------------------------
def conv2d(x: Any, weight: Any, bias: Any = None, *, stride=1, padding=0, dilation=1,
           groups: int = 1, activation: str | None = None, layout: str | None = None,
           allow_tf32: bool = False) -> Any:
    """2-D convolution with a fused epilogue: ``activation(conv2d(x, weight) + bias)``.

    Args:
        x: input batch, (N, C, H, W), or (N, H, W, C) with ``layout="NHWC"``; a channels_last
            torch tensor runs in NHWC and gives a channels_last result. numpy, torch or cupy.
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
        (N, C, H, W) -> (N, K, Ho, Wo), Ho = (H + pad_h - dilation_h * (R - 1) - 1) // stride_h + 1

    Returns:
        A new array like `x` (library, device, dtype, layout).

    Example:
        >>> x = np.random.rand(1, 3, 32, 32).astype(np.float32)      # doctest: +SKIP
        >>> w = np.random.rand(8, 3, 3, 3).astype(np.float32)
        >>> kernelkit.conv2d(x, w, padding="same", activation="relu").shape
        (1, 8, 32, 32)
    """
    extras = (_hashable(stride), _hashable(padding), _hashable(dilation), groups, activation,
              layout, allow_tf32)
    sig = signature((x, weight, bias), extras)
    plan = _FORWARD.get(sig) if sig is not None else None
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
    extras = (tuple(input_shape), _hashable(stride), _hashable(padding), _hashable(dilation),
              groups, layout, allow_tf32)
    sig = signature((grad_out, weight), extras)
    plan = _BWD_INPUT.get(sig) if sig is not None else None
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
    extras = (tuple(weight_shape), _hashable(stride), _hashable(padding), _hashable(dilation),
              groups, layout, allow_tf32)
    sig = signature((x, grad_out), extras)
    plan = _BWD_WEIGHT.get(sig) if sig is not None else None
    if plan is None:
        plan = _BWD_WEIGHT.store(sig, plan_for(prepare_backward_weight(
            x, grad_out, weight_shape, stride=stride, padding=padding, dilation=dilation,
            groups=groups, layout=layout, allow_tf32=allow_tf32)))
    return plan(x, grad_out)


def explain(x, weight, bias=None, **kwargs):
    return explain_call(prepare_forward(x, weight, bias, **kwargs))


_FORWARD, _BWD_INPUT, _BWD_WEIGHT = PlanMemo(), PlanMemo(), PlanMemo()


def _hashable(v):
    return tuple(v) if isinstance(v, list) else v


# -- checking ------------------------------------------------------------------------------------
def _pair(op: str, name: str, v, *, minimum: int) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in v)):
        raise TypeError(f"{op}: '{name}' must be an int or a pair of ints, got {v!r}")
    if min(v) < minimum:
        what = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{op}: '{name}' must be {what}, got {tuple(v)}")
    return int(v[0]), int(v[1])


def _padding(op: str, padding, kernel_hw, dilation, stride) -> tuple[int, int, int, int]:
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {stride}")
            out = []
            for k, d in zip(kernel_hw, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(f"{op}: 'padding' must be an int, a pair, 'same' or 'valid', got "
                         f"{padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in padding):
            raise TypeError(f"{op}: 'padding' (top, bottom, left, right) must be ints, got {padding!r}")
        if min(padding) < 0:
            raise ValueError(f"{op}: 'padding' must be non-negative, got {tuple(padding)}")
        return tuple(int(v) for v in padding)
    ph, pw = _pair(op, "padding", padding, minimum=0)
    return (ph, ph, pw, pw)


def _layout(op: str, x, layout) -> tuple[str, bool]:
    """(kernel layout, x is a channels_last torch tensor seen with NCHW dims)."""
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"{op}: 'layout' must be None, 'NCHW' or 'NHWC', got {layout!r}")
    if arrays.array_lib(x) == "torch" and layout is None and x.ndim == 4:
        import torch

        cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return ("NHWC", True) if cl else ("NCHW", False)
    return layout or "NCHW", False


def _check_arrays(op: str, named: dict[str, Any]) -> tuple[arrays.Location, str]:
    loc = dtype = None
    for name, x in named.items():
        if x is None:
            continue
        if arrays.array_lib(x) is None:
            raise TypeError(f"{op}: '{name}' must be a numpy array, torch tensor or cupy array, "
                            f"got {type(x).__name__}")
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
            raise TypeError(f"{op}: '{name}' dtype must be one of {FLOAT_DTYPES}, got {dt}")
        if dtype is None:
            dtype = dt
        elif dt != dtype:
            raise TypeError(f"{op}: '{name}' has dtype {dt} but '{first}' has {dtype}")
    return loc, dtype


def _geometry(op, x_nchw_shape, w_shape, stride, padding, dilation, groups):
    """Checks shared by the three ops; returns (stride, pad4, dilation, (Ho, Wo))."""
    if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: 'groups' must be a positive int, got {groups!r}")
    n, c, h, w = x_nchw_shape
    k, cg, r, s = w_shape
    if c % groups or k % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={c} and the "
                         f"output channels K={k}")
    if cg * groups != c:
        raise ValueError(f"{op}: weight has {cg} input channels per group, so with groups={groups} "
                         f"the input needs C={cg * groups} channels, got C={c}")
    stride = _pair(op, "stride", stride, minimum=1)
    dilation = _pair(op, "dilation", dilation, minimum=1)
    pad = _padding(op, padding, (r, s), dilation, stride)
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    eff_r, eff_s = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    if eff_r > hp or eff_s > wp:
        raise ValueError(f"{op}: the (dilated) kernel {eff_r}x{eff_s} is larger than the padded "
                         f"input {hp}x{wp}")
    ho, wo = (hp - eff_r) // stride[0] + 1, (wp - eff_s) // stride[1] + 1
    return stride, pad, dilation, (ho, wo)


def _problem(op, shapes, xs, ws, out_hw, dtype, layout, loc, params) -> Problem:
    """The Problem of any of the three ops: the work is the same reduction in each."""
    (n, c, h, w), (k, cg, r, s), (ho, wo) = xs, ws, out_hw
    itemsize = np.dtype("float16" if dtype == "bfloat16" else dtype).itemsize
    return Problem(op=op, shapes=shapes, dtype=dtype, layout=layout, lib=loc.lib,
                   device=loc.device, params=params, flops=2.0 * n * k * ho * wo * cg * r * s,
                   nbytes=int((n * c * h * w + k * cg * r * s + n * k * ho * wo) * itemsize))


# -- preparing calls -----------------------------------------------------------------------------
def prepare_forward(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                    activation=None, layout=None, allow_tf32=False) -> Call:
    op = "conv2d"
    loc, dtype = _check_arrays(op, {"x": x, "weight": weight, "bias": bias})
    kl, channels_last = _layout(op, x, layout)
    _ndim(op, "x", x, "(N, H, W, C)" if kl == "NHWC" and not channels_last else "(N, C, H, W)")
    _ndim(op, "weight", weight, "(K, C // groups, R, S)")
    xs = tuple(x.shape) if channels_last else nchw_shape(x.shape, kl)
    ws = tuple(weight.shape)
    stride, pad, dilation, (ho, wo) = _geometry(op, xs, ws, stride, padding, dilation, groups)
    if bias is not None and tuple(bias.shape) != (ws[0],):
        raise ValueError(f"{op}: 'bias' must have shape (K,) = ({ws[0]},), got {tuple(bias.shape)}")
    check_activation(op, activation)
    params = (("stride", stride), ("padding", pad), ("dilation", dilation), ("groups", groups),
              ("bias", bias is not None), ("activation", activation), ("tf32", allow_tf32))
    problem = _problem(op, (xs, ws, (xs[0], ws[0], ho, wo)), xs, ws, (ho, wo), dtype, kl, loc,
                       params)
    to_kernel, from_kernel = _channels_last_views(channels_last)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, (to_kernel, None, None), from_kernel)

    direct = None
    if loc.lib == "torch" and needs_grad(x, weight, bias):
        from .torch_ops import conv2d_op

        fn = conv2d_op()
        direct = lambda x, w, b: fn(x, w, b, list(stride), list(pad), list(dilation), groups,
                                    activation, layout, allow_tf32)
    ref = functools.partial(_reference_forward, x, weight, bias, stride, pad, dilation, groups,
                            activation, kl, channels_last)
    return Call(problem, bind, (x, weight, bias), _verifier(ref, math.prod(ws[1:]), allow_tf32),
                direct)


def prepare_backward_input(grad_out, weight, input_shape, *, stride=1, padding=0, dilation=1,
                           groups=1, layout=None, allow_tf32=False) -> Call:
    op = "conv2d_backward_input"
    loc, dtype = _check_arrays(op, {"grad_out": grad_out, "weight": weight})
    kl, channels_last = _layout(op, grad_out, layout)
    _ndim(op, "grad_out", grad_out, "(N, K, Ho, Wo)")
    _ndim(op, "weight", weight, "(K, C // groups, R, S)")
    input_shape = tuple(int(v) for v in input_shape)
    xs = input_shape if channels_last else nchw_shape(input_shape, kl)
    ws = tuple(weight.shape)
    stride, pad, dilation, (ho, wo) = _geometry(op, xs, ws, stride, padding, dilation, groups)
    gs = _grad_out_shape(op, grad_out, kl, channels_last, (xs[0], ws[0], ho, wo))
    k, _, r, s = ws
    params = (("stride", stride), ("padding", pad), ("dilation", dilation), ("groups", groups),
              ("tf32", allow_tf32))
    problem = _problem(op, (gs, ws, xs), xs, ws, (ho, wo), dtype, kl, loc, params)
    to_kernel, from_kernel = _channels_last_views(channels_last)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, (to_kernel, None), from_kernel)

    ref = functools.partial(_reference_backward, "input", grad_out, weight, None, xs, stride, pad,
                            dilation, groups, kl, channels_last)
    return Call(problem, bind, (grad_out, weight), _verifier(ref, k // groups * r * s, allow_tf32))


def prepare_backward_weight(x, grad_out, weight_shape, *, stride=1, padding=0, dilation=1,
                            groups=1, layout=None, allow_tf32=False) -> Call:
    op = "conv2d_backward_weight"
    loc, dtype = _check_arrays(op, {"x": x, "grad_out": grad_out})
    kl, channels_last = _layout(op, x, layout)
    _ndim(op, "x", x, "(N, C, H, W)")
    _ndim(op, "grad_out", grad_out, "(N, K, Ho, Wo)")
    xs = tuple(x.shape) if channels_last else nchw_shape(x.shape, kl)
    ws = tuple(int(v) for v in weight_shape)
    if len(ws) != 4:
        raise ValueError(f"{op}: 'weight_shape' must be (K, C // groups, R, S), got {ws}")
    stride, pad, dilation, (ho, wo) = _geometry(op, xs, ws, stride, padding, dilation, groups)
    gs = _grad_out_shape(op, grad_out, kl, channels_last, (xs[0], ws[0], ho, wo))
    params = (("stride", stride), ("padding", pad), ("dilation", dilation), ("groups", groups),
              ("tf32", allow_tf32))
    problem = _problem(op, (xs, gs, ws), xs, ws, (ho, wo), dtype, kl, loc, params)
    to_kernel, _ = _channels_last_views(channels_last)

    def bind(cand: Candidate, config: Config) -> Plan:
        return _bind(cand.launcher(problem, config), cand, loc, (to_kernel, to_kernel), None)

    ref = functools.partial(_reference_backward, "weight", grad_out, None, x, ws, stride, pad,
                            dilation, groups, kl, channels_last)
    return Call(problem, bind, (x, grad_out), _verifier(ref, xs[0] * ho * wo, allow_tf32))


def _grad_out_shape(op, grad_out, kl, channels_last, expected) -> tuple[int, ...]:
    gs = tuple(grad_out.shape) if channels_last else nchw_shape(grad_out.shape, kl)
    if gs != expected:
        raise ValueError(f"{op}: 'grad_out' must have shape {expected} (NCHW dims) for this input "
                         f"and weight, got {gs}")
    return gs


def _ndim(op, name, x, dims) -> None:
    if x.ndim != 4:
        raise ValueError(f"{op}: '{name}' must be 4-D {dims}, got shape {tuple(x.shape)}")


def _channels_last_views(channels_last: bool):
    """A channels_last torch tensor has NCHW dims over NHWC memory: the kernels get the NHWC view
    (a permutation, no copy), and their NHWC result is handed back as channels_last NCHW."""
    if not channels_last:
        return None, None
    return (lambda t: t.permute(0, 2, 3, 1)), (lambda t: t.permute(0, 3, 1, 2))


def _bind(fn, cand: Candidate, loc: arrays.Location, views: tuple, out_view) -> Plan:
    """A plan for the kernel `fn`: per-argument views, moves to the candidate and back."""
    to = arrays.converter(loc, cand.native, cand.device)
    back = arrays.converter_back(cand.native, cand.device, loc)

    def plan(*args):
        args = [v(a) if v is not None and a is not None else a for v, a in zip(views, args)]
        if to is not None:
            args = [None if a is None else to(a) for a in args]
        out = fn(*args)
        if back is not None:
            out = back(out)
        return out_view(out) if out_view is not None else out

    return plan


# -- verification --------------------------------------------------------------------------------
def _torch64(x, kl, channels_last):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(f64(x)))
    if kl == "NHWC" and not channels_last:
        t = t.permute(0, 3, 1, 2)
    return t


def _reference_forward(x, weight, bias, stride, pad, dilation, groups, activation, kl,
                       channels_last):
    """float64 result and the conv(|x|, |w|) + |bias| scale, in the output's dims order."""
    import torch
    import torch.nn.functional as F

    from ..kernels.torch.matmul import ACTIVATION_FNS

    xt = F.pad(_torch64(x, kl, channels_last), (pad[2], pad[3], pad[0], pad[1]))
    wt = torch.from_numpy(np.ascontiguousarray(f64(weight)))
    bt = None if bias is None else torch.from_numpy(f64(bias))
    y = F.conv2d(xt, wt, bt, stride, 0, dilation, groups)
    scale = F.conv2d(xt.abs(), wt.abs(), None if bt is None else bt.abs(), stride, 0, dilation,
                     groups)
    if activation:
        y = ACTIVATION_FNS[activation](y)
    return _out_order(y, kl, channels_last), _out_order(scale, kl, channels_last)


def _reference_backward(which, grad_out, weight, x, shape, stride, pad, dilation, groups, kl,
                        channels_last):
    import torch

    g = _torch64(grad_out, kl, channels_last)
    if which == "input":
        w = torch.from_numpy(np.ascontiguousarray(f64(weight)))
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


# -- candidates ----------------------------------------------------------------------------------
_KERNEL_FN = {"conv2d": "conv2d_forward", "conv2d_backward_input": "conv2d_backward_input",
              "conv2d_backward_weight": "conv2d_backward_weight"}
_BACKENDS = (  # backend, device, native array library, dtypes it runs
    ("numba", "cpu", "numpy", ("float32", "float64")),
    ("torch", "cpu", "torch", FLOAT_DTYPES),
    ("triton", "cuda", "torch", ("float16", "bfloat16", "float32")),
    ("cupy", "cuda", "cupy", ("float16", "float32")),
    ("torch", "cuda", "torch", FLOAT_DTYPES),
)


def _kernel(backend: str):
    return importlib.import_module(f"kernelkit.kernels.{backend}.conv2d")


def _geometry_args(p: Problem) -> tuple:
    return (p.param("stride"), p.param("padding"), p.param("dilation"), p.param("groups"))


def _make_candidate(op: str, backend: str, device: str, native: str, dtypes: tuple) -> Candidate:
    supports = backend_support(backend, dtypes)

    def space(p: Problem) -> list[Config]:
        if backend == "torch":
            return [{}]
        k = _kernel(backend)
        xs, ws = (p.shapes[0], p.shapes[1]) if op != "conv2d_backward_weight" else \
            (p.shapes[0], p.shapes[2])
        if op == "conv2d_backward_input":
            xs = p.shapes[2]
        n, c, h, w = xs
        kk, _, r, s = ws
        dt = kernel_dtype(backend, p.dtype)
        if backend == "cupy" and op != "conv2d":
            return [k.Conv2dConfig.default(dt).to_dict()]  # its backward kernels take no config
        if backend == "triton" and op == "conv2d_backward_input":
            c, kk = kk, c  # grad_in's GEMM: N = C/groups, reduction over K/groups * R * S
        return [cfg.to_dict() for cfg in k.Conv2dConfig.space(
            dt, n, c, h, w, kk, r, s, p.param("stride"), p.param("groups"))]

    def launcher(p: Problem, config: Config):
        k = _kernel(backend)
        fn = getattr(k, _KERNEL_FN[op])
        kw = {}
        if backend != "torch":
            kw["config"] = k.Conv2dConfig.from_dict(config)
        if backend in ("torch", "triton"):
            kw["allow_tf32"] = p.param("tf32")
        geo, layout = _geometry_args(p), p.layout
        if op == "conv2d":
            act = p.param("activation")
            return lambda x, w, b: fn(x, w, b, *geo, act, layout, **kw)
        if op == "conv2d_backward_input":
            hw = p.shapes[2][2:]
            return lambda g, w: fn(g, w, hw, *geo, layout, **kw)
        rs = p.shapes[2][2:]
        return lambda x, g: fn(x, g, rs, *geo, layout, **kw)

    return Candidate(op, backend, device, native, supports, space, launcher,
                     vendor=backend == "torch")


for _op in OPS:
    for _backend, _device, _native, _dtypes in _BACKENDS:
        registry.register(_make_candidate(_op, _backend, _device, _native, _dtypes))
