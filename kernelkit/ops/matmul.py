"""matmul: act(a @ b + bias) with broadcast batch dims, any strides, numpy/torch/cupy in and out.

check arguments -> Problem -> dispatch -> launch. Backend work lives in kernelkit/kernels/*; this
file knows only the op: its checks, its Problem, its reference, and its spec.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import arrays, core
from .. import settings as _settings
from ..core import Call, Candidate, Config, OpSpec, Plan, Problem
from ..devices import imported_torch
from ..kernels import check_activation, check_flag, numpy_activation, torch_activations
from .dispatch import (
    PlanMemo,
    flag_key,
    fx_proxy,
    jit_tracing,
    needs_grad,
    plain_signature3,
    plan_for,
    signature3,
    torch_only,
)
from .verify import f64, normwise_error

OP = "matmul"
_NDARRAY = np.ndarray
FLOAT_DTYPES = arrays.FLOAT_DTYPES


@dataclass(frozen=True)
class MatmulOptions:
    """What of a matmul call, besides its sizes, changes the kernel."""

    bias: bool
    activation: str | None
    tf32: bool


# -- public API ----------------------------------------------------------------------------------
def matmul(a: Any, b: Any, *, bias: Any = None, activation: str | None = None,
           allow_tf32: bool = False) -> Any:
    """Matrix product with a fused epilogue: ``activation(a @ b + bias)``.

    Args:
        a: (..., M, K) numpy array, torch tensor (CPU or CUDA) or cupy array. Any strides. A
            vector (K,) is the row (1, K), as np.matmul and torch.matmul take it.
        b: (..., K, N), same library, device and dtype as `a`. Batch dims broadcast. A vector
            (K,) is the column (K, 1).
        bias: optional (N,) array added to every row before the activation (with a vector
            `b`, an (M,) array added to the result, as ``a @ b + bias`` broadcasts).
        activation: None, "relu", "gelu" (exact), "gelu_tanh" or "silu".
        allow_tf32: let fp32 GPU kernels use TF32 tensor cores (off unless asked for).

    Shape:
        (..., M, K) @ (..., K, N) -> (broadcast(...), M, N); a vector's added dim is dropped
        from the result ((K,) @ (K, N) -> (N,), (M, K) @ (K,) -> (M,), (K,) @ (K,) -> ()).

    Returns:
        A new array in the same library and on the same device as the inputs. float32 and float64
        on the CPU; float16, bfloat16 and float32 on the GPU (accumulating in float32).

    Example:
        >>> import numpy as np, kernelkit
        >>> kernelkit.matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)).shape
        (2, 4)
    """
    if type(a) is _NDARRAY and type(b) is _NDARRAY and bias is None:
        # two numpy arrays: the numpy BLAS candidate's whole call is about 7 us on a small
        # product, so even signature3's call is saved (no collision: its keys lead with a tag)
        # (allow_tf32 by type too: allow_tf32=1 must not find True's plan)
        sig = (a.dtype, a.shape, a.strides, b.dtype, b.shape, b.strides, activation,
               flag_key(allow_tf32), _settings.token())
    else:
        try:  # a repeat (inline, as below)
            plan = _PLANS.get(plain_signature3(a, b, bias, (activation, flag_key(allow_tf32))))
        except TypeError:  # (unhashable: prepare's checks say what is wrong with it)
            plan = None
        if plan is not None:
            return plan(a, b, bias)
        if (proxy := fx_proxy(a, b, bias)) is not None:  # a torch.fx symbolic trace: one node
            return proxy.tracer.create_proxy("call_function", matmul, (a, b), dict(
                bias=bias, activation=activation, allow_tf32=allow_tf32))
        if torch_only(a, b, bias):  # vmap, grad, jvp, meta, FakeTensor...: torch's own ops
            return _with_torch(a, b, bias, activation)  # (torch.matmul takes vectors itself)
        if _vector(a) or _vector(b):  # (before the registered op below: it takes matrices)
            return _with_vectors(a, b, bias, activation, allow_tf32)
        if jit_tracing():  # torch.jit.trace records the registered op (see jit_tracing)
            from .torch_ops import matmul_op

            return matmul_op()(a, b, bias, activation, allow_tf32)
        sig = signature3(a, b, bias, (activation, flag_key(allow_tf32)))
    try:  # (inline, not PlanMemo.find: a numpy call's whole lookup; zero-cost unless raised)
        plan = _PLANS.get(sig) if sig is not None else None
    except TypeError:  # an unhashable argument: prepare's checks say what is wrong with it
        plan = None
    if plan is None:
        if sig is None:  # (a type without a plan: a numpy subclass computes as a plain array,
            # whose result is a plain array from every candidate; numpy's `@` kept the subclass)
            a, b, bias = arrays.plain_numpy(a), arrays.plain_numpy(b), arrays.plain_numpy(bias)
        if _vector(a) or _vector(b):  # (numpy's; the others' went there above)
            return _with_vectors(a, b, bias, activation, allow_tf32)
        plan = _PLANS.store(sig, plan_for(prepare(a, b, bias=bias, activation=activation,
                                                   allow_tf32=allow_tf32)))
    return plan(a, b, bias)


def _vector(x) -> bool:
    """A 1-D operand the vector rule applies to. A torch tensor is asked first, by isinstance:
    under dynamo (torch.compile, a strict torch.export) `arrays.array_lib` cannot read a
    Parameter's ``type(x).__module__``, and a product with a vector Parameter raised
    "Unsupported method call" (fullgraph) or broke the graph."""
    if getattr(x, "ndim", None) != 1:
        return False
    torch = imported_torch()
    return (torch is not None and isinstance(x, torch.Tensor)) or arrays.array_lib(x) is not None


def _with_vectors(a, b, bias, activation, allow_tf32):
    """np.matmul's and torch.matmul's rule for a 1-D operand: `a` (K,) is the row (1, K), `b` (K,)
    the column (K, 1), and the dim added is dropped from the result (two vectors give a 0-d
    result: a numpy scalar, a 0-d tensor). The bias is added to the result's last dim, as
    ``a @ b + bias`` broadcasts it: with a vector `b` that is (M,), so the product is computed
    as the row b (1, K) times a's transpose, keeping the epilogue fused; two vectors take a (1,)
    bias and give (1,). Before, a vector raised "must have at least 2 dims"."""
    va, vb = _vector(a), _vector(b)
    try:
        y = matmul(*_promoted(a, b, bias), bias=bias, activation=activation,
                   allow_tf32=allow_tf32)
        if vb and not va and bias is not None:  # (b a^T: the row of the product is the result)
            return y[..., 0, :]
    except (ValueError, TypeError) as exc:  # (its shapes are the promoted ones: say so)
        if type(exc) not in (ValueError, TypeError):
            raise
        given = ", ".join(f"'{n}' {tuple(x.shape)}" for n, x in (("a", a), ("b", b)))
        raise type(exc)(f"{exc} (given {given}; a vector 'a' is the row (1, K), a vector 'b' "
                        "the column (K, 1))") from None
    if va and vb:
        return y[0, 0] if bias is None else y[0]
    return y[..., 0] if vb else y[..., 0, :] if va else y


def _promoted(a, b, bias) -> tuple:
    """The 2-D operands `_with_vectors` (and `prepare`, for explain) compute a vector's product
    with: the row (1, K) for a vector `a`, the column (K, 1) for a vector `b`; with a bias and
    only `b` a vector, the row b (1, K) times a's transpose, so the (M,) bias stays in the
    epilogue."""
    va, vb = _vector(a), _vector(b)
    if vb and not va and bias is not None:
        return b[None], a.swapaxes(-1, -2)
    return (a[None] if va else a), (b[:, None] if vb else b)


_PLANS = PlanMemo()


# -- checking ------------------------------------------------------------------------------------
def _check(a, b, bias, activation) -> tuple[arrays.Location, str, tuple[int, ...]]:
    for name, x in (("a", a), ("b", b)):
        if arrays.array_lib(x) is None:
            raise TypeError(f"matmul: argument '{name}' must be {arrays.ACCEPTED}, got "
                            f"{type(x).__name__}")
    la, lb = arrays.location(a), arrays.location(b)
    if la.lib != lb.lib:
        raise TypeError(f"matmul: 'a' and 'b' must come from the same array library, got {la.lib} "
                        f"and {lb.lib}")
    if (la.device, la.index) != (lb.device, lb.index):
        raise ValueError(f"matmul: 'a' and 'b' must be on the same device, got 'a' on "
                         f"{la.device}:{la.index} and 'b' on {lb.device}:{lb.index}")
    for name, x in (("a", a), ("b", b)):
        if x.ndim < 2:  # (a vector is promoted before this)
            dims = "(..., M, K)" if name == "a" else "(..., K, N)"
            raise ValueError(f"matmul: argument '{name}' must be a vector (K,) or have at least 2 "
                             f"dims {dims}, got shape {tuple(x.shape)}")
    da, db = arrays.dtype_name(a), arrays.dtype_name(b)
    if da != db:
        raise TypeError(f"matmul: 'a' and 'b' must have the same dtype, got {da} and {db}")
    if da not in FLOAT_DTYPES:
        raise TypeError(f"matmul: the dtype of 'a' and 'b' must be one of {FLOAT_DTYPES}, got {da}"
                        f"{arrays.byte_order_note(da, FLOAT_DTYPES)}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: a.shape[-1] (K={a.shape[-1]}) must equal b.shape[-2] "
                         f"(K={b.shape[-2]}); got a {tuple(a.shape)} and b {tuple(b.shape)}")
    try:
        batch = tuple(np.broadcast_shapes(tuple(a.shape[:-2]), tuple(b.shape[:-2])))
    except ValueError:
        raise ValueError(f"matmul: batch dims {tuple(a.shape[:-2])} of 'a' and "
                         f"{tuple(b.shape[:-2])} of 'b' do not broadcast") from None
    if bias is not None:
        if arrays.array_lib(bias) is None:
            raise TypeError(f"matmul: 'bias' must be an array like 'a' or None, got "
                            f"{type(bias).__name__}")
        lbias = arrays.location(bias)
        if lbias != la:
            raise ValueError(f"matmul: 'bias' must live where 'a' does ({la.lib} on {la.device}), "
                             f"got {lbias.lib} on {lbias.device}")
        if tuple(bias.shape) != (b.shape[-1],):
            raise ValueError(f"matmul: 'bias' must have shape (N,) = ({b.shape[-1]},), got "
                             f"{tuple(bias.shape)}")
        if arrays.dtype_name(bias) != da:
            raise TypeError(f"matmul: 'bias' must have the dtype of 'a' ({da}), got "
                            f"{arrays.dtype_name(bias)}")
    check_activation("matmul", activation)
    return la, da, batch


# -- preparing a call ----------------------------------------------------------------------------
def _layout_tag(strides: tuple[int, ...], shape: tuple[int, ...]) -> str:
    if strides[-1] == 1 or shape[-1] <= 1:
        return "N"
    if strides[-2] == 1 or shape[-2] <= 1:
        return "T"
    return "G"


def _to_3d(x, batch: tuple[int, ...]):
    """(..., R, C) -> (B, R, C), broadcasting the batch dims (stride 0: no copy for one dim)."""
    full = batch + tuple(x.shape[-2:])
    if tuple(x.shape) != full:
        x = arrays.broadcast_to(x, full)
    if len(batch) == 1:
        return x
    if not batch:
        return x[None]
    return x.reshape((math.prod(batch),) + full[-2:])  # a view unless batch strides do not merge


def _with_torch(a, b, bias, activation):
    """`matmul` on torch tensors that kernelkit's kernels leave to torch (`dispatch.torch_only`):
    torch's own ops, which carry the transforms' rules and dispatch to subclasses and modes."""
    import torch

    check_activation(OP, activation)
    y = torch.matmul(a, b)
    if bias is not None:
        y = y + bias
    return y if activation is None else torch_activations()[activation](y)


def prepare(a, b, *, bias=None, activation=None, allow_tf32=False) -> Call:
    a, b = _promoted(a, b, bias)  # (a vector: as the op runs it)
    loc, dtype, batch = _check(a, b, bias, activation)
    check_flag(OP, "allow_tf32", allow_tf32)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    nb = math.prod(batch)
    sa = arrays.element_strides(a)
    sb = arrays.element_strides(b)
    problem = Problem(
        op=OP,
        shapes=((nb, m, k), (nb, k, n)),
        dtype=dtype,
        layout=_layout_tag(sa, tuple(a.shape)) + _layout_tag(sb, tuple(b.shape)),
        lib=loc.lib,
        device=loc.device,
        options=MatmulOptions(bias is not None, activation, allow_tf32),
        flops=2.0 * nb * m * n * k,
        nbytes=int((nb * m * k + nb * k * n + nb * m * n) * np.dtype(
            "float16" if dtype == "bfloat16" else dtype).itemsize),
    )
    def bind(cand: Candidate, config: Config) -> Plan:
        own = cand.native == loc.lib and cand.device == loc.device
        views = loc.lib == "numpy" and cand.native == "torch" and cand.device == "cpu"
        if not batch and (own or views):
            plan = cand.launcher_2d(problem, config)  # the 2-D arrays as given, or their views
            if plan is not None:
                return plan if own else _numpy_through_torch_2d(plan, loc, problem.dtype)
        return _bind(cand.launcher(problem, config), cand, loc, batch, problem.dtype)

    direct = (_autograd_plan(activation, allow_tf32)
              if loc.lib == "torch" and needs_grad(a, b, bias) else None)
    return Call(problem, bind, (a, b, bias), _verifier(a, b, bias, activation, allow_tf32),
                direct)


def _autograd_plan(activation: str | None, allow_tf32: bool) -> Plan:
    """Tensors that need gradients go through an autograd Function with the registered custom
    op's backward formula (in eager mode a custom op's dispatch costs tens of microseconds)."""
    from .torch_ops import eager_matmul

    op = eager_matmul()
    return lambda a, b, bias: op(a, b, bias, activation, allow_tf32)


def _numpy_through_torch_2d(fn, loc: arrays.Location, dtype: str) -> Plan:
    """torch's 2-D CPU launcher on 2-D numpy arrays: zero-copy views in, the result's view out.
    Through the batched (1, M, K) views a 128^3 product cost 8.5 us more than torch's own call
    on the same memory (25.4 against 16.9 us, 2-vCPU Xeon)."""
    to = arrays.converter(loc, "torch", "cpu")
    back = arrays.converter_back("torch", "cpu", loc, dtype)
    return lambda a, b, bias: back(fn(to(a), to(b), None if bias is None else to(bias)))


def _bind(fn, cand: Candidate, loc: arrays.Location, batch: tuple[int, ...],
          dtype: str) -> Plan:
    """The plan for one candidate and one call signature: as little Python per call as possible."""
    lib = loc.lib
    to = arrays.converter(loc, cand.native, cand.device)
    back = arrays.converter_back(cand.native, cand.device, loc, dtype)
    if len(batch) == 0 and lib == "numpy":  # the common 2-D numpy case
        if to is None:
            return lambda a, b, bias: fn(a[None], b[None], bias)[0]
        return lambda a, b, bias: back(fn(to(a[None]), to(b[None]),
                                          None if bias is None else to(bias)))[0]
    if len(batch) == 0 and lib == "torch" and to is None:
        return lambda a, b, bias: fn(a.unsqueeze(0), b.unsqueeze(0), bias).squeeze(0)
    if len(batch) == 0 and to is arrays.torch_to_numpy:
        # CPU tensors to a numpy kernel: index the numpy views, not the tensors (a torch
        # index or reshape costs 1-3 us of Python each, ~30 us a call in all on a 4 x 64 Linear)
        return lambda a, b, bias: back(fn(to(a)[None], to(b)[None],
                                          None if bias is None else to(bias))[0])

    def plan(a, b, bias):
        a3, b3 = _to_3d(a, batch), _to_3d(b, batch)
        if to is not None:
            a3, b3 = to(a3), to(b3)
            bias = None if bias is None else to(bias)
        out = fn(a3, b3, bias)
        if back is not None:
            out = back(out)
        return out.reshape(batch + tuple(out.shape[-2:]))

    return plan


def _verifier(a, b, bias, activation, allow_tf32):
    """Check against float64 act(a @ b + bias), scaled by |a| @ |b| + |bias| (see verify.py)."""

    @functools.cache
    def reference():
        try:
            import torch
        except ImportError:  # (a dependency; without it, numpy's float64: the tuner still verifies)
            return _numpy_reference(f64(a), f64(b), None if bias is None else f64(bias),
                                    activation)
        a64 = arrays.numpy_to_torch(f64(a))
        b64 = arrays.numpy_to_torch(f64(b))
        c = torch.matmul(a64, b64)
        scale = torch.matmul(a64.abs(), b64.abs())
        if bias is not None:
            bias64 = torch.from_numpy(f64(bias))
            c, scale = c + bias64, scale + bias64.abs()
        if activation:
            c = torch_activations()[activation](c)
        return c.numpy(), scale.numpy()

    return lambda out: normwise_error(out, *reference(), a.shape[-1], allow_tf32)


def _numpy_reference(a64, b64, bias64, activation):
    """`_verifier`'s reference where torch is not installed: float64 numpy."""
    c, scale = np.matmul(a64, b64), np.matmul(np.abs(a64), np.abs(b64))
    if bias64 is not None:
        c, scale = c + bias64, scale + np.abs(bias64)
    return (numpy_activation(c, activation) if activation else c), scale


# -- the spec ------------------------------------------------------------------------------------
def _launch(entry, p: Problem, config) -> Plan:
    """Every backend's matmul entry: (a, b, bias, activation, *, config, allow_tf32)."""
    act, tf32 = p.options.activation, p.options.tf32
    return lambda a, b, bias: entry(a, b, bias, act, config=config, allow_tf32=tf32)


def make_inputs(dims: tuple[int, ...], dtype: str, where: str, seed: int = 0):
    """(args, kwargs) for an (M, K, N) problem."""
    m, k, n = dims
    return arrays.random_arrays(((m, k), (k, n)), dtype, where, seed), {}


def _transformer(hidden: int, tokens: int) -> tuple[tuple[int, int, int], ...]:
    """The GEMMs of one transformer block (4x MLP), tokens = batch x sequence: the fused QKV
    projection, the attention output projection, the MLP's up and down projections."""
    h, t = hidden, tokens
    return (t, h, 3 * h), (t, h, h), (t, h, 4 * h), (t, 4 * h, h)


# BERT-base / GPT-2 medium / GPT-2 XL-ish hidden sizes; one token (decoding), a short and a long
# prefill.
_TRANSFORMER = tuple((d, "float32") for h in (768, 1024, 2048) for t in (1, 128, 512)
                     for d in _transformer(h, t))


def _dims_of(shapes) -> tuple[int, ...] | None:
    """make_inputs' dims for a problem's shapes ((B, M, K), (B, K, N)), or None (batched)."""
    (nb, m, k), (_, _, n) = shapes[:2]
    return (m, k, n) if nb == 1 else None


def _cli_inputs(dims: tuple[int, ...]) -> tuple[int, ...]:
    if len(dims) != 3:
        raise ValueError("matmul takes M K N")
    return tuple(dims)


SPEC = core.register_op(OpSpec(
    name=OP, kernel="matmul", entry="matmul_forward", launch=_launch, function=matmul,
    prepare=prepare,
    make_inputs=make_inputs,
    presets={
        "quick": tuple(((n, n, n), "float32") for n in (32, 64, 128, 256, 512, 1024))
        + (((128, 768, 3072), "float32"), ((1, 4096, 4096), "float32")),
        "square": tuple(((n, n, n), dt) for dt in ("float32", "float64")
                        for n in (128, 256, 512, 1024, 2048)),
        "mlp": tuple(((m, k, n), "float32") for m in (1, 16, 128, 512)
                     for k, n in ((768, 3072), (3072, 768), (4096, 11008), (11008, 4096))),
        "odd": tuple((d, "float32") for d in ((1, 1, 1), (7, 13, 5), (97, 61, 89),
                                                (255, 257, 129), (1000, 3, 1000), (3, 1000, 3))),
        "transformer": _TRANSFORMER,
    },
    cli_dims="M K N", cli_inputs=_cli_inputs, dims_of=_dims_of,
    scale=lambda dims, factor: tuple(d * factor for d in dims),
))
