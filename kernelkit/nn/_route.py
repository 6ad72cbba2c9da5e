"""How a kernelkit.nn module runs one call in eager mode: the route, memoised per signature.

A patched layer must cost what torch's layer costs, plus at most a few microseconds, so the
module does not go through the custom op on every call. Per call signature (input shape, strides,
dtype, device, the knobs) it asks the tuner once and keeps one of two routes:

- ``aten``: the vendor (torch) candidate won on the data's own device: call torch's functional
  op directly (F.linear / F.conv2d), which is exactly what the torch module does, autograd and
  all. Cost: torch's own call plus one dict lookup.
- ``kernel``: a kernelkit kernel won: when autograd does not record, the bound plan of the chosen
  kernel, with no custom-op dispatch in between; when it does, an autograd Function with the
  custom op's backward formula (a custom op's Python dispatch costs tens of microseconds in
  eager mode), whose backward dispatches (and tunes) each product on its own. On CPU data the
  kernel must then win again in the model itself: its first calls alternate with torch's op,
  timed, and the faster keeps the layer (`InContext`).

Under autocast the routes are those of the cast signature: torch's op (autocast casts for it), or
a kernel route run on the operands cast as autocast casts them (`autocast_route`). Under
torch.compile, torch.export and torch.jit.trace it traces torch's own op where every size the
layer saw in eager mode chose torch in the traced grad mode, or a kernel by less than
COMPILE_MARGIN in the model (so Inductor keeps its fusions, and a trace needs nothing but
torch), and where no eager call decided the layer yet; else the custom op (`compiled()`; a
kernel run while torch.jit.trace records would be baked into the trace as a constant).
"""

from __future__ import annotations

import math
import statistics
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import torch
from torch.nn.utils import parametrize

from .. import compiling, core
from .. import frozen as _frozen
from .. import settings as _settings
from ..autotune.key import bucket
from ..ops import dispatch
from ..ops.compiled import transforms_active
from ..ops.torch_ops import cast_copies

# (module, x, weight, bias) -> y; never closes over the module (a deepcopy's routes act on the copy)
Route = Callable[[Any, torch.Tensor, torch.Tensor, Any], torch.Tensor]
MAX_ROUTES = 64  # per module; the first made dropped rather than grown by many one-off shapes
# Signatures whose size bucket the tuner settled for torch, per module: kept apart from the
# routes and many more (each a key and the layer's one aten route, about 0.4 KB), so that a layer
# fed more sizes than MAX_ROUTES (an NLP model's lengths) finds torch's op without making a route
# per call; cleared, not grown, past this.
MAX_ATEN_SIGS = 1024
_NO_SIGS: dict = {}


class _Memo(dict):
    """A layer's memo of routes, trials or settled sizes: copied and pickled empty. `getstate`
    leaves the memos out of a layer's copies, but torch's parametrize gives a parametrized layer
    a `__deepcopy__` of its own, which deep-copies `__dict__` as it is: the copy shared the
    original's route objects (closures over the original's bound kernels and trials), and a
    counted route, copied without its `__init__`, recursed in `__getattr__` until RecursionError
    (`copy.deepcopy`, `AveragedModel`, `prepare_fx` of a patched layer that had run and was then
    given spectral_norm or orthogonal: a user hunt)."""

    __slots__ = ()

    def __deepcopy__(self, memo) -> _Memo:
        return _Memo()

    def __copy__(self) -> _Memo:
        return _Memo()

    def __reduce__(self):
        return _Memo, ()


# what `forward` checks of dispatch.torch_only, bound once
_TENSOR, _PARAMETER, _STRIDED = torch.Tensor, torch.nn.Parameter, torch.strided
_KERNEL_DTYPES = frozenset((torch.float16, torch.bfloat16, torch.float32, torch.float64))
_transforms_active = torch._C._are_functorch_transforms_active
_dispatch_modes = torch._C._len_torch_dispatch_stack
_forward_ad = torch.autograd.forward_ad
_saved_tensors_hooks = torch._C._autograd._top_saved_tensors_default_hooks  # (0.05 us)


def grad_on(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


_MISSING = object()


def forget_routes(module: torch.nn.Module, name: str, made_from: frozenset) -> None:
    """A layer's `__setattr__` hook: setting an attribute its memoised routes were made from
    (a conv's stride, padding, dilation; an activation) drops them, so the next call makes new
    ones. Before, a kernel route kept the geometry of its first call: a backbone "dilated" after
    a first forward kept its old output size on the Numba route."""
    if name in made_from:
        drop_routes(module.__dict__)


# What a layer's eager calls keep in its `__dict__` (plain attributes: not in state_dict). The
# layers name them in `__jit_ignored_attributes__`: torch.jit.script types every attribute of a
# module, and a memo keyed by tuples made it raise "Cannot create dict for key type" on a layer
# that had run once (the usual order: evaluate, then script for deployment).
ROUTE_STATE = ("_kk_routes", "_kk_trials", "_kk_torch_buckets", "_kk_aten_sigs", "_kk_aten_token",
               "_kk_casts")
STATE = [*ROUTE_STATE, "_kk_aten_only", "_kk_aten_only_grad"]


def drop_routes(state: dict) -> None:
    """Forget a layer's memoised routes and in-model trials (its `__dict__` is `state`): the next
    call makes new ones. (With the token go the flags' knobs: they are read again from the next
    routes.)"""
    for name in ROUTE_STATE:
        state.pop(name, None)


def forward(module: torch.nn.Module, x: torch.Tensor, aten_route: Route, op_route: Route,
            make) -> torch.Tensor:
    """A kernelkit.nn layer's call: traced (torch.compile, export and torch.jit.trace:
    `compiled`); torch's own op where kernelkit's kernels leave the tensors to torch (a torch.fx
    symbolic trace's Proxy, a tensor subclass, meta tensors, a torch.func transform, forward-mode
    AD, a TorchDispatchMode: `dispatch.torch_only`), and with grad inside saved-tensor hooks
    (checkpointing, save_on_cpu); under autocast the cast signature's route (`autocast_route`);
    else eager (the memoised route)."""
    # The weight and bias as `module.weight` and `module.bias` give them, read from the parameter
    # dict where they are plain parameters: each `module.weight` goes through
    # nn.Module.__getattr__, 0.5 us a read on torch 2.13 (1 us of a 4x64 Linear's 8.6 us call,
    # 2-vCPU Xeon), a dict read 0.03. A parametrization (a property on the layer's class) and
    # the old spectral/weight norm and pruning hooks (which move the weight out of `_parameters`
    # into a plain attribute) fall back to the attributes.
    params = module._parameters
    w, b = params.get("weight"), params.get("bias", _MISSING)
    if w is None or b is _MISSING:
        w, b = module.weight, module.bias
        if w is not None and type(w) is _TENSOR and (
                module._forward_pre_hooks or parametrize.is_parametrized(module, "weight")):
            # a weight a parametrization or a pruning hook makes anew for each call: under
            # `kernelkit.frozen_weights()` each call's was packed and kept, never to be used
            # again, with the tensor it came from (a pruned 2-conv model: 256 MB of packs and
            # 1.07 GB peak against 485 MB; a user hunt): marked as a copy, it is not kept
            with cast_copies((w,), (None,)):
                return _forward(module, x, w, b, aten_route, op_route, make)
    return _forward(module, x, w, b, aten_route, op_route, make)


def _forward(module: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, b, aten_route: Route,
             op_route: Route, make) -> torch.Tensor:
    if torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None:
        if transforms_active():  # torch.compile(torch.func.grad(...)): torch's op, as in eager
            return aten_route(module, x, w, b)
        return compiled(module, aten_route, op_route, grad_on(x, w, b))(module, x, w, b)
    t = type(x)  # dispatch.torch_only(x), inline (0.2 us, the call 0.5): a torch.fx Proxy too
    if (t is not _TENSOR and t is not _PARAMETER) or not (x.is_cpu or x.is_cuda) \
            or x.layout is not _STRIDED or _transforms_active() \
            or _forward_ad._current_level >= 0 or _dispatch_modes():
        return aten_route(module, x, w, b)
    if _saved_tensors_hooks(False) is not None and grad_on(x, w, b):
        # inside torch.utils.checkpoint (use_reentrant=False: the recomputation must save what
        # the forward saved, so the route may not change between them, as an in-model trial or
        # a re-decision once a compile finished did: CheckpointError) or save_on_cpu: torch's
        # own op, whose saved tensors do not depend on kernelkit's choices
        return aten_route(module, x, w, b)
    if torch._C._is_any_autocast_enabled() and (route := autocast_route(
            module, x, w, b, make, aten_route, op_route)) is not None:
        return route(module, x, w, b)
    return run(module, x, w, b, make, aten_route)


def _autocast_casts(t: torch.Tensor) -> bool:
    """Autocast casts `t` (for a matmul or conv): a floating tensor other than float64."""
    return t.is_floating_point() and t.dtype is not torch.float64


# the dtypes of a layer's usual autocast call, all cast: a set lookup each (the general test,
# three calls of _autocast_casts and a list, cost 0.8 us of a 4 us route choice)
_CAST_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})


def autocast_route(module: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, b, make,
                   aten_route: Route, op_route: Route) -> Route | None:
    """The route of a call under autocast: torch's own op (whose autocast casts the operands,
    and keeps a weight's cast for the region) where the tuner chose torch for the call in the
    autocast dtype, else the memoised kernel route run on the operands cast as autocast casts
    them (`_on_cast`); None where the call is as without autocast (nothing of it cast).

    Why: every autocast call went through the registered op, whose Python dispatch costs tens
    of microseconds: a patched transformer encoder under bfloat16 autocast ran 1.62x slower than
    torch where torch won every size (2-vCPU Zen 4). The choice is the route memoised for the
    cast signature (made once, from cast copies, as an eager call of that dtype makes it), or
    the signatures settled for torch (`_kk_aten_sigs`, `_settled`) as in `run`: past MAX_ROUTES
    sizes (a transformer's sequence lengths) each call made a route again, from copies of the
    whole weight, 2.5-3.6x torch's time for good (a user hunt). The kernel route itself runs,
    not the registered op: its in-model trial and its recheck count go on (before, neither ever
    advanced under autocast, and `kernelkit.nn.pending()` never reached 0). Except for a fused
    GELU or SiLU with grad: the kernel route's autograd Function applies those after the
    product (the bfloat16 product's rounding first), its plan without grad fused, and a
    layer's autocast result must not depend on the grad mode; the registered op fuses both."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return None  # (another device's autocast: the call is as without it)
    if x.dtype in _CAST_DTYPES and w.dtype in _CAST_DTYPES \
            and (b is None or b.dtype in _CAST_DTYPES):
        cast = None
    else:
        cast = [_autocast_casts(t) for t in (x, w, b) if t is not None]
    if cast is not None and not all(cast):
        # A float64, complex or integer operand, which autocast leaves as it is: with nothing
        # cast the call is as without autocast; with something cast, torch's op, whose autocast
        # gives torch's result or its error. Before, the registered op ran: a complex layer
        # raised TypeError where torch runs it, and mixed dtypes raised TypeError where torch
        # raises RuntimeError.
        return aten_route if any(cast) else None
    dtype = torch.get_autocast_dtype(device)
    if x.is_nested:  # (no sizes: torch's op, as in `run`)
        return aten_route
    sig = (x.shape, x.stride(), dtype, x.is_cpu or x.device, _settings.token())
    state = module.__dict__
    routes = state.get("_kk_routes")
    route = routes.get(sig) if routes is not None else None
    if route is None:
        route = state.get("_kk_aten_sigs", _NO_SIGS).get(sig)
    elif isinstance(route, dispatch.Warming) and route.finished != compiling.finished:
        route = None  # (a stand-in while kernels compiled: decided again, as a call of it is)
    if route is None:
        route = _settled(state, make, x, w, sig, aten_route, dtype)
    if route is None:
        with torch.no_grad(), torch.autocast(device, enabled=False):
            cast = [None if t is None else t.detach().to(dtype) for t in (x, w, b)]
            route = _new_route(module, cast[0], cast[1], cast[2], make, aten_route, sig)
    if state.get("_kk_aten_token") != sig[-1]:  # (as in `run`)
        _note_aten_only(state, sig[-1])
    if route is aten_route:
        return aten_route
    grad = grad_on(x, w, b)
    trial = _trial_of(route)
    # torch's op where it runs this call: a route without a kernel (counted, or while kernels
    # compile), or a trial this grad mode decided for torch (`candidate` asks any mode: a
    # layer whose inference went to torch first never ran its training trial, and one whose
    # training went to the kernel cast its weight on every inference call for torch's op)
    if (trial.decided(grad) is trial.aten) if trial is not None \
            else not hasattr(route, "candidate"):
        if isinstance(route, _Counted):
            route.count()
        return aten_route
    if getattr(module, "activation", None) not in (None, "relu") and grad:
        return op_route
    return _on_cast(route, dtype)


def _on_cast(route: Route, dtype: torch.dtype) -> Route:
    """`route` called on the operands cast to `dtype` as autocast casts them (differentiably:
    the gradient reaches the float32 parameters), its result in `dtype` as torch's.

    Without grad the weight's and bias's casts are kept on the layer only inside
    `frozen_weights()` (`_cast_params`), the user's word that weights change only through
    torch's own in-place ops; elsewhere they are cast on every call, since an update through
    ``param.data`` (EMA and older optimizers make them) changes a weight without its version
    counter, and a kept cast then gave the old weight's result. With grad a cast is used again
    within the autocast region while an autograd graph holds it (the calls of one forward).
    A call's own weight cast is charged to the kernel's side of the layer's in-model trial
    (`_CHARGE`), which times both routes on operands cast beforehand: uncharged, a
    Linear(2048, 2048) whose kernel won its trial paid 0.4 ms of cast a call, more than
    torch's whole call (a review). (torch's side is not charged: its autocast casts the weight
    once per region, which is once per call where a region wraps each forward: so a close trial
    leans to torch.)"""
    def call(m, x, w, b):
        xc = x.to(dtype)
        t0 = _clock()
        wc, bc, made = _cast_params(m, w, b, dtype)
        cast = (xc, wc, bc)
        # (the route's torch ops as cast; the copies this call made not kept packed:
        # `cast_copies`; a cast used again, unchanged since, may keep its packs)
        with torch.autocast(x.device.type, enabled=False), \
                cast_copies(cast, (x, w, b) if made else (x, wc, bc)):
            if not made:
                return route(m, *cast)
            _CHARGE.seconds = _clock() - t0
            try:
                return route(m, *cast)
            finally:
                _CHARGE.seconds = 0.0
    return call


class _Held(NamedTuple):
    """A layer's cast of its weight and bias (`_cast_params`) and what it was cast from."""

    w: torch.Tensor
    b: torch.Tensor | None
    versions: tuple  # (w._version, b._version or None)
    storages: tuple  # (w.data_ptr(), b.data_ptr() or None): ``param.data = t`` changes them
    generation: int  # `frozen.generation()`: `forget_packed_weights()` and optimizer steps
    region: Any  # with grad: the autocast region it was cast in (`_autocast_region`)
    wc: Any  # the casts: kept (without grad, inside frozen_weights()), else weak references
    bc: Any


def _cast_params(m, w: torch.Tensor, b, dtype: torch.dtype) -> tuple:
    """(weight, bias, made): the layer's weight and bias cast to `dtype`, and whether this call
    cast the weight.

    A cast is used again while the same tensors are at the same versions and storages (an
    optimizer step, ``copy_``, a swap or ``param.data = t`` makes new ones) and
    `forget_packed_weights()` (which any optimizer's step calls) has not been called since,
    per dtype, grad mode and inference mode:

    * without grad, inside `frozen_weights()` only, which keeps it: the user's word that the
      weights change only through torch's own in-place ops (an update through ``param.data``,
      as an EMA model's, changes no version: a cast kept past it gave the old weight's result);
    * with grad, within one autocast region (torch's cast cache lasts as long: a 1x1 canary's
      cached cast tells, `_autocast_region`) while an earlier call's autograd graph holds it (a
      weak reference): the calls of one forward (a tied or looped layer) share one cast as
      torch's share theirs. Cast per call, each call's graph kept its own copy for the backward
      (20 calls of a Linear(2048, 2048): 160 MB against torch's 8). The region is noted only
      once the layer was called while its last cast was held (`_LOOPED`): the first such call
      casts anew.

    Inference tensors (a model made under `torch.inference_mode`) have no version counter:
    cast on every call."""
    if w.dtype == dtype and (b is None or b.dtype == dtype):  # (a model of that dtype: its
        return w, b, False  # own weights, which frozen_weights() may keep packed)
    # (with grad: the cast is part of the graph, where a parameter needs its gradient; an
    # inference-mode call records nothing even under enable_grad)
    grad = torch.is_grad_enabled() and not torch.is_inference_mode_enabled() \
        and (w.requires_grad or (b is not None and b.requires_grad))
    if w.is_inference() or (b is not None and b.is_inference()):
        return (*_cast_now(w, b, dtype, grad), True)
    keep = not grad and _frozen.weights_frozen()
    casts = m.__dict__.get("_kk_casts")
    key = (dtype, torch.is_inference_mode_enabled(), grad)
    held = casts.get(key) if casts else None
    if held is not None and not (grad or keep):  # (kept under frozen_weights(): not past it)
        del casts[key]
        held = None
    region = None
    if held is not None and held.w is w and held.b is b \
            and held.versions == (w._version, None if b is None else b._version) \
            and held.storages == (w.data_ptr(), None if b is None else b.data_ptr()) \
            and held.generation == _frozen.generation():
        wc, bc = (held.wc, held.bc) if keep else (held.wc(), held.bc and held.bc())
        if wc is not None and grad and held.region is None:
            # a call while an earlier one's graph holds the cast: a layer called again within
            # a forward (or one whose graphs are kept), whose casts note their region from now
            # on; the others never pay for the probe (about 10 us where each forward is a
            # region of its own: the canary's cast is made anew)
            casts[_LOOPED] = True
        # (with grad: made with a graph as the weight needs one now, in this region)
        elif wc is not None and (not grad or (
                wc.requires_grad == w.requires_grad
                and (region := _autocast_region(w.device)) is held.region)):
            if b is not None and bc is None:  # (a graph saves no bias: cast anew, K words)
                bc = b.to(dtype)
                casts[key] = held._replace(bc=weakref.ref(bc))
            return wc, bc, False
    if not (grad or keep):
        return (*_cast_now(w, b, dtype, grad), True)
    # (the step hook and the generation before the cast: a step in another thread meanwhile
    # then leaves the cast under the old generation)
    _frozen.watch_optimizer_steps()  # (a fused step changes no version)
    generation = _frozen.generation()
    casts = m.__dict__.setdefault("_kk_casts", _Memo())
    if grad and region is None and _LOOPED in casts:
        region = _autocast_region(w.device)
    wc, bc = _cast_now(w, b, dtype, grad)
    casts[key] = _Held(w, b, (w._version, None if b is None else b._version),
                       (w.data_ptr(), None if b is None else b.data_ptr()), generation, region,
                       wc if keep else weakref.ref(wc),
                       bc if keep or bc is None else weakref.ref(bc))
    return wc, bc, True


def _cast_now(w: torch.Tensor, b, dtype: torch.dtype, grad: bool) -> tuple:
    """(weight, bias) cast to `dtype`: in the graph with grad, detached without."""
    if not grad:
        w, b = w.detach(), None if b is None else b.detach()
    return w.to(dtype), None if b is None else b.to(dtype)


_CANARIES: dict = {}  # device -> a 1x1 float32 leaf that needs grad (`_autocast_region`)
_LOOPED = "looped"  # `_kk_casts`: the layer was called while a graph held its last cast


def _autocast_region(device: torch.device) -> Any:
    """An object that stays the same while this thread's autocast region on `device` keeps its
    cast cache, and differs after (a region's exit clears the cache; so does a region with
    ``cache_enabled=False`` at every cast): the autograd node of a canary leaf's cast, which
    autocast caches for the region, as it caches a parameter's. (torch offers no other view of
    its cache; about 2.4 us, with grad only: a call that casts or may use a cast again.)"""
    canary = _CANARIES.get(device)
    if canary is None:  # (float32, which autocast casts, whatever the default dtype; not an
        with torch.inference_mode(False):  # inference tensor, though made in such a call)
            canary = torch.ones(1, 1, device=device, dtype=torch.float32, requires_grad=True)
        _CANARIES[device] = canary
    return torch.mm(canary, canary).grad_fn.next_functions[0][0]


def _settled(state: dict, make, x: torch.Tensor, w: torch.Tensor, sig: tuple,
             aten_route: Route, dtype: torch.dtype | None = None) -> Route | None:
    """torch's op, memoised for `sig`, where the tuner settled the call's size bucket for torch
    for good (`_kk_torch_buckets`); else None. `dtype`: the call's (autocast's), where `x` is
    not cast yet: no copy of the operands is made to find it out."""
    torch_buckets = state.get("_kk_torch_buckets")
    if not torch_buckets:
        return None
    if dtype is not None and not (x.is_contiguous() and w.is_contiguous()):
        # the key `_new_route` made from the cast copies, which `.to` makes contiguous where
        # the operand is not dense (a slice): no key of x itself matched (a review). Meta
        # stand-ins take `.to`'s strides (empty_like's rule is its: dense strides are kept)
        device = x.device
        x, w = (torch.empty_like(t, dtype=dtype, device="meta") for t in (x, w))
        bkey = _bucket_key(make, x, w, sig[-1], dtype, device)
    else:
        bkey = _bucket_key(make, x, w, sig[-1], dtype)
    if bkey not in torch_buckets or torch_buckets[bkey] is not None:
        return None
    return _memo_aten(state, _routes_of(state), sig, aten_route)


# Optional, not `str | None`: TorchScript parses this signature, and not every torch this runs on
# (the GPU image has 2.11) was checked with PEP 604 unions there
def scripted_activation(y: torch.Tensor, activation: Optional[str]) -> torch.Tensor:  # noqa: UP045
    """A layer's fused activation as torch computes it, in a form TorchScript compiles (a scripted
    model runs torch's ops: kernelkit's routes are Python). GELU keeps +inf where torch 2.13's
    vectorised CPU GELU gives NaN, as `kernels.torch_activations` does."""
    if activation is None:
        return y
    if activation == "relu":
        return torch.relu(y)
    if activation == "gelu":
        g = torch.nn.functional.gelu(y)
        return torch.where(y == math.inf, y, g) if y.device.type == "cpu" else g
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    return torch.nn.functional.silu(y)


def run(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias, make,
        aten_route: Route) -> torch.Tensor:
    """One eager call: the route for this signature, `make(module, x, weight, bias)` on a miss (the
    weight and bias the call read: a parametrization runs once a call, not again per read); a kernelkit
    kernel's route is first checked against `aten_route` in the model (`InContext`).

    The signature is only what the choice depends on (the input's shape, strides, dtype and
    device, and the knobs), about 1 us to build and look up; grad mode and the weight's dtype are
    checked inside the kernel routes, so the aten route pays for neither.
    """
    try:
        # (a CPU input's device keyed as True, as the ops key it: dispatch.plain_signature3)
        sig = (x.shape, x.stride(), x.dtype, x.is_cpu or x.device, _settings.token())
    except RuntimeError:  # a nested tensor of strided layout has no sizes: torch's op takes it
        return aten_route(module, x, weight, bias)
    state = module.__dict__
    routes = state.get("_kk_routes")
    route = routes.get(sig) if routes is not None else None
    if route is None:
        route = state.get("_kk_aten_sigs", _NO_SIGS).get(sig) \
            or _new_route(module, x, weight, bias, make, aten_route, sig)
    if state.get("_kk_aten_token") != sig[-1]:
        # a hit back under the knobs of earlier routes (a forced backend tried, then the
        # defaults): what torch.compile traces follows the routes that run now (0.04 us a call)
        _note_aten_only(state, sig[-1])
    return route(module, x, weight, bias)


def _new_route(module: torch.nn.Module, x: torch.Tensor, weight: torch.Tensor, bias, make,
               aten_route: Route, sig: tuple) -> Route:
    """The route of a signature the layer has not memoised (see `run`), memoised.

    A size whose size bucket (`_bucket_key`) the tuner settled for torch takes torch's op at
    once: the tuner's choice is per bucket, and asking it again (preparing the call, the cache
    lookup) cost 0.5-1 ms a new size. Why it matters: with varying input sizes (an NLP model's
    sequence lengths) most calls are a new signature; a patched Linear(64, 64) fed lengths
    1-512 ran 634 us a call against torch's 62 (2-vCPU Zen 4)."""
    state = module.__dict__
    routes = _routes_of(state)
    bkey = _bucket_key(make, x, weight, sig[-1])
    torch_buckets = state.setdefault("_kk_torch_buckets", _Memo())
    finished = compiling.finished
    until = torch_buckets.get(bkey, _MISSING)  # None: for good; else while no compile job
    if until is not _MISSING:  # finished since
        if state.get("_kk_aten_token") != sig[-1]:  # (flags read under other knobs)
            _note_aten_only(state, sig[-1])
        if until is None:  # (an aten route leaves what torch.compile traces as is)
            return _memo_aten(state, routes, sig, aten_route)
        if until == finished:
            route = routes[sig] = dispatch.Warming(aten_route, finished)
            route.memo, route.sig = routes, sig
            return route
        torch_buckets.pop(bkey, None)
    _last.choice = None
    # torch's op for dtypes no kernelkit kernel computes (complex: torch computes it;
    # integers: torch raises its own error) and for a weight kernelkit's kernels leave to
    # torch (a subclass: a quantized weight; meta)
    if x.dtype not in _KERNEL_DTYPES or dispatch.foreign_tensors(weight, bias):
        route = aten_route
    else:
        route = make(module, x, weight, bias)
    choice = _last.choice
    if route is aten_route and choice is not None and not choice.recheck_after:
        # the tuner's choice for the bucket (not one it revisits after counting calls, nor a
        # size `make` left to torch for its own reasons: the tuner was asked); a stand-in while
        # better kernels compile holds until a compile job finishes
        if len(torch_buckets) >= MAX_ROUTES:
            torch_buckets.clear()
        torch_buckets[bkey] = finished if choice.source == "warming" else None
        if choice.source != "warming":
            _remember_aten(state, sig, route)
    if hasattr(route, "candidate") and checks_in_context(x):
        route = _trial_for(state, route, aten_route, (bkey, _config_key(choice)),
                           max(x.numel(), 1))
    if choice is not None and choice.source == "warming":
        # better kernels still compile: asked again once a compile job finishes
        route = dispatch.Warming(route, finished)
        route.memo, route.sig = routes, sig
    elif choice is not None and choice.recheck_after:
        route = _Counted(route, choice.recheck_after, routes, sig)
    routes[sig] = route
    _note_route(state, route, sig[-1])
    return route


def _routes_of(state: dict) -> dict:
    """The layer's memo of routes (plain attributes: not in state_dict, and dropped by pickle
    and deepcopy, `getstate`), with room for one more: past MAX_ROUTES the first made goes (a
    hit does not reorder: that would cost every call a write; pop, not del: threads calling one
    layer with new sizes may both get here for one key)."""
    routes = state.setdefault("_kk_routes", _Memo())
    if len(routes) >= MAX_ROUTES:
        routes.pop(next(iter(routes), None), None)
    return routes


def _memo_aten(state: dict, routes: dict, sig: tuple, aten_route: Route) -> Route:
    """torch's op memoised for `sig` for good (a size bucket the tuner settled for torch)."""
    routes[sig] = aten_route
    _remember_aten(state, sig, aten_route)
    return aten_route


def _remember_aten(state: dict, sig: tuple, aten_route: Route) -> None:
    """Keep `sig` among the layer's signatures that run torch's op for good (`run` reads them
    after its routes): past MAX_ROUTES sizes each new call made a route again. A patched
    Linear(64, 64) fed lengths 1..200 cost 3.1-3.3 us over torch's call that way, 1.5-1.6 us
    now (`bench/probes/nn_varying_lengths_probe.py --max-length 200`, 2-vCPU Zen 4)."""
    sigs = state.setdefault("_kk_aten_sigs", _Memo())
    if len(sigs) >= MAX_ATEN_SIGS:
        sigs.clear()
    sigs[sig] = aten_route


def _config_key(choice) -> str:
    """What a kernel route's trial is shared by besides the bucket: the kind of choice it came
    from, a stand-in while kernels compile, the cost model's guess or a measured (cached) choice,
    so that a stand-in's config that lost its trial does not decide the tuned config's. (Not the
    config itself: the model's may differ from size to size within a bucket.)"""
    source = "" if choice is None else choice.source
    return source if source in ("warming", "model", "default") else "settled"


def _bucket_key(make, x: torch.Tensor, weight: torch.Tensor, token: tuple,
                dtype: torch.dtype | None = None, device: torch.device | None = None) -> tuple:
    """The size bucket of a call: its input's dims as the tuner buckets them for the layer's
    problem (`make.bucket_dims(x)`, the layer's; else each dim bucketed), its layout (the order
    of its strides, and whether it is contiguous), dtype, device, the weight's shape and strides
    (a weight swapped for another is another problem) and the knobs `token`; `dtype` for x's
    (an autocast call's, x not cast yet), `device` for x's (meta stand-ins of the cast copies)."""
    dims = getattr(make, "bucket_dims", None)
    if x.is_contiguous():
        layout = None
    else:
        strides = x.stride()
        layout = tuple(sorted(range(x.dim()), key=lambda i: -strides[i]))
    return (dims(x) if dims is not None else tuple(bucket(d) for d in x.shape), layout,
            dtype or x.dtype, device or x.device, weight.shape, weight.stride(), token)


def _trial_for(state: dict, kernel: Route, aten: Route, share: tuple, work: int) -> InContext:
    """The in-model trial of a new route: one of its own, led by the first trial made for the
    same size bucket (`_bucket_key`) and kernel, whose slot, samples and verdicts it shares.
    Why: with inputs of varying size (an NLP model's sequence lengths) each size is a new route,
    and a trial per route never gathered its calls: the layer stayed in trial for good, half its
    calls on the slower route and every other layer held on torch's op by the
    one-trial-at-a-time slot."""
    key = (share, kernel.candidate)  # (share: the bucket key and the choice's `_config_key`)
    trials = state.setdefault("_kk_trials", _Memo())
    lead = trials.get(key)
    if lead is None and len(trials) >= MAX_ROUTES:
        trials.clear()
    trial = InContext(kernel, aten, share[0][-1], lead, work)
    if lead is None:
        trials[key] = trial
    return trial


def _note_route(state: dict, route: Route, token: tuple) -> None:
    """`_note_aten_only` after a new route. While every route ran torch, the flags stay torch's
    only if this one does too, known without reading every memoised route again (1 ms a new
    size at 64 routes); otherwise they are read again (a route dropped since, e.g. a stand-in
    while kernels compiled, may have been the one that ran a kernel)."""
    if state.get("_kk_aten_token") != token or not (state["_kk_aten_only"]
                                                   and state["_kk_aten_only_grad"]):
        _note_aten_only(state, token)
        return
    state["_kk_aten_only"] = _runs_torch(route, False)
    state["_kk_aten_only_grad"] = _runs_torch(route, True)


def _note_aten_only(state: dict, token: tuple) -> None:
    """What torch.compile traces (see compiled()), per grad mode: torch's op once every size
    seen under the knobs ``token`` (those of the eager call that made or decided a route) chose
    it in that mode (an in-model trial decides the two modes apart). Routes made under other
    knobs do not count: a tuning pass under KERNELKIT_TUNE=measure leaves kernel routes whose
    trials never run, and with them a ResNet-50 whose every layer ran torch in eager mode traced
    11 custom ops into its compiled graph (0.87x torch.compile, Zen 4, docs/performance.md)."""
    routes = [r for _, r in _routes_under(state, token)]
    state["_kk_aten_only"] = all(_runs_torch(r, False) for r in routes)
    state["_kk_aten_only_grad"] = all(_runs_torch(r, True) for r in routes)
    state["_kk_aten_token"] = token  # (the knobs the flags were read under: `_note_route`)


# A kernel that won its layer's in-model trial (CPU data) enters a torch.compile graph only if
# it beat torch's eager op by at least this much. Why: Inductor's own CPU graph is faster than
# eager torch (channels_last convs, batch norm and ReLU fused around them), and a custom op in
# it runs in NCHW between layout conversions and without those fusions. On a 2-core Zen 4 one
# custom 128 -> 512 1x1 conv (0.82 GFLOP) made a compiled conv-BN-ReLU block 7-15 ms
# slower in eval and 22-31 ms in training (bench/probes/nn_compile_block_probe.py), and a
# compiled ResNet-50 training step at batch 8 ran 0.89-0.92x compiled torch with kernels that
# had won their trials by 1.05-1.2x (docs/performance.md).
COMPILE_MARGIN = 2.0


def _runs_torch(route, grad: bool) -> bool:
    """Whether torch.compile traces torch's op for a memoised route in grad mode `grad`: for a
    route without a candidate; for an in-model trial that has not decided that mode yet (no
    in-model evidence, as for a layer no eager call decided: `compiled`), that decided it for
    torch, or whose kernel won it by less than COMPILE_MARGIN. (A kernel route without a trial,
    under a forced backend, a pinned or multi-rank run, or on the GPU, traces the custom op.)"""
    trial = _trial_of(route)
    if trial is None:
        return not hasattr(route, "candidate")
    winner = trial.decided(grad)
    if winner is None:
        return True  # (once it decides, `_take` reads the flags again: dynamo recompiles)
    kernel_s, aten_s = trial.verdicts.get(grad) or trial.lead.verdicts[grad]
    return winner is trial.aten or kernel_s * COMPILE_MARGIN > aten_s


def compiled(module: torch.nn.Module, aten_route: Route, op_route: Route,
             grad: bool = False) -> Route:
    """The route torch.compile, torch.export and torch.jit.trace record: torch's own op when the
    layer ran in eager mode and torch won every input size it saw in this grad mode (Inductor
    then keeps its own fusions around it), else the custom op, which dispatches (and tunes) per
    call inside the compiled graph; a kernel that won its in-model trial by less than
    COMPILE_MARGIN counts as torch here. Per grad mode because the in-model trial decides the
    modes apart: a ResNet-50 1x1 conv whose Numba kernel won inference but lost the training
    step (forward plus backward) put the custom op into the compiled training graph too. Read at
    trace time from plain attributes, so dynamo guards on them: a later eager call that changes
    one recompiles.

    A layer no eager call has decided (the class's None) traces torch's op too. Why: a kernel
    enters a compiled graph only on in-model evidence that it beats torch by COMPILE_MARGIN, and
    a layer traced before any eager call has none; it traced the custom op, and a transformer
    encoder compiled that way ran 1.5x, an MLP 2x, slower than compiled torch (2-vCPU Zen 4). A
    forced backend changes nothing here: the knobs are not something dynamo can guard (a
    constant read at trace time let a second model of the same architecture reuse the first's
    graph, traced under other knobs); one eager call under the forced backend makes the layer's
    kernel routes, and the next trace takes the custom op."""
    only = module._kk_aten_only_grad if grad else module._kk_aten_only
    return aten_route if only is None or only else op_route


def kernel_route(plan_route: Route, grad_route: Route, aten_route: Route, name: str,
                 weight: torch.Tensor, bias) -> Route:
    """A kernelkit kernel won: its bound plan when autograd does not record; when it does, the
    eager autograd Function (ops/torch_ops.py), whose backward dispatches (and tunes) each
    backward product on its own; torch's own op when the weight's dtype differs from the
    input's (torch raises its own error) or the weight is one kernelkit's kernels leave to torch
    (`dispatch.foreign_tensors`).

    The plan was bound for `weight`'s and `bias`'s shapes and strides: a weight or bias swapped
    since for one of another shape or layout (``layer.weight = ...``, ``weight.data = ...``,
    ``load_state_dict(assign=True)``) takes torch's op for that call and drops the layer's routes
    (the next call makes one for it). Before, a weight of other input features failed an assert
    in the kernel's launcher (under ``python -O``: read out of bounds, NaN or 1e35 returned), and
    a weight made channels_last kept the NCHW output of the first call."""
    shape, strides = weight.shape, weight.stride()
    bshape = None if bias is None else bias.shape

    def kernel(m, x, w, b):
        if w.shape != shape or w.stride() != strides or (
                bshape is not None if b is None else b.shape != bshape):
            drop_routes(m.__dict__)
            return aten_route(m, x, w, b)
        if w.dtype != x.dtype or (b is not None and b.dtype != x.dtype) \
                or dispatch.foreign_tensors(w, b):  # (a weight swapped since)
            return aten_route(m, x, w, b)
        if grad_on(x, w, b):
            return grad_route(m, x, w, b)
        return plan_route(m, x, w, b)

    kernel.candidate = name  # for describe()
    return kernel


_last = threading.local()  # the choice behind the route being made (see run)


class _Counted:
    """A route made from a choice the tuner will revisit (measuring did not pay for itself yet):
    used for `left` calls, then dropped so the next call asks again."""

    __slots__ = ("route", "left", "routes", "sig")

    def __init__(self, route: Route, left: int, routes: dict, sig: tuple):
        self.route, self.left, self.routes, self.sig = route, left, routes, sig

    def __getattr__(self, name: str):  # `candidate`, for describe() and compiled()
        # (a slot unset, in a copy made without __init__, or a protocol method: no recursion)
        if name in self.__slots__ or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.route, name)

    def __call__(self, m, x, w, b):
        self.count()
        return self.route(m, x, w, b)

    def count(self) -> None:
        """One call of the route (an autocast call runs torch's op itself: `autocast_route`)."""
        self.left -= 1
        if self.left <= 0:
            self.routes.pop(self.sig, None)


# A layer leaves torch's own op for a kernelkit kernel only when the tuner measured the kernel at
# least this much faster than the vendor on the data's device. Why a margin: the tuner times the
# op alone, repeatedly; inside a model the kernel runs between torch ops (whose OpenMP pool spins
# on the same cores) and on a machine whose load varies, and on this 2-core VM the measured order
# of two candidates within ~20% of each other did not hold in the model (bench/probes/
# nn_layer_context.py, docs/performance.md). The aten route also keeps Inductor's fusions under
# torch.compile and torch's joint convolution backward. kernelkit.matmul/conv2d themselves
# still run whatever won.
KERNEL_MARGIN = 1.2


# An InContext trial's timed calls per route (and grad mode), after one untimed call of each.
TRIAL_CALLS = 3
# ...and by how much the kernel's in-model median must beat torch's to keep the layer. Three
# calls each cannot tell a tie apart: at batch 1 (ResNet-50's 56 px 1x1 convs, 0.36-0.45 ms
# either way on a 2-core Zen 5) ties went to the kernel about half the time and the patched
# model ran 2.5-3.5% slower than torch; a tie stays with torch, the route torch.compile fuses.
TRIAL_MARGIN = 1.05
# ...and in grad mode (forward plus the layer's share of the backward), where three samples of a
# training step's layer spread more: ResNet-50's layer1.1.conv1 and layer1.2.conv1 (the same
# 256 -> 64 1x1 conv at batch 8, 56 px) gave 21.42 against torch's 18.21 ms and 20.45 against
# 21.71 in one run (2-core Zen 4); the second kept its kernel by 1.06x, and the patched training
# step ran 0.965x torch (paired 0.972 [0.960, 0.981]); with both on torch, 1.017-1.027x.
TRIAL_MARGIN_GRAD = 1.1
# Grad-mode calls whose backward never ran (a forward with grad enabled and no backward, e.g. a
# validation loop without no_grad): after this many per route the verdict is taken on the
# forward times alone rather than never.
TRIAL_FORWARD_ONLY_AFTER = 3 * (TRIAL_CALLS + 1)
# A layer in trial holds its grad mode's slot (`_SLOTS`) until it decides; if it is not called
# again for this long (a one-off input size), another layer takes the slot over (at once, if
# the holder was made under other settings).
TRIAL_SLOT_IDLE_S = 1.0
_clock = time.perf_counter  # the trial's clock (tests inject one)
# Seconds this thread's autocast call spent casting the weight for the kernel route it runs
# (`_on_cast`), which an InContext trial adds to the kernel's sample: the trial times both
# routes on operands cast beforehand, and torch's autocast keeps its weight casts for a region.
_CHARGE = threading.local()
_SLOTS: dict[bool, list] = {False: [None, 0.0], True: [None, 0.0]}  # grad mode -> [trial, last call]


class InContext:
    """A kernelkit kernel the tuner chose for a layer, checked where it runs: the layer's first
    calls in the model alternate between the kernel and torch's op, timed, and once each has had
    one untimed and TRIAL_CALLS timed calls in a grad mode, the kernel keeps the layer in that
    grad mode for good if its median beats torch's by TRIAL_MARGIN (TRIAL_MARGIN_GRAD with
    grad), else torch's op does (`verdicts[grad]`: the two medians, kernel first).

    Why: the tuner times the op alone, each timed call after an untimed one of the same kind.
    Inside a model the kernel runs right after torch ops, whose OpenMP workers go on spinning on
    the same cores: on a 2-core VM a numba conv ran 1.54x slower after a torch batch norm + ReLU
    than after itself (bench/probes/torch_then_numba_probe.py), and convs the tuner had measured
    faster made patched ResNets slower (docs/performance.md). The Numba kernels now run their
    threads on torch's own OpenMP team (kernels/numba/_pool.py), which removed that slowdown,
    but a layer's context (its input fresh from the op before, a cold weight) still differs from
    the tuner's loop, and the trial costs a few calls.

    The two grad modes are tried and decided apart, because they are different work: without
    grad a call is the forward alone; with grad the time counted is the forward plus the layer's
    share of the backward (from the moment the gradient reaches the layer's output until the
    weight's gradient is out, clocked by hooks on the call's own autograd nodes, so nothing stays
    registered on the layer), because the two routes differ there most: torch's op runs its joint
    convolution backward, the kernel route one tuned product per input. (MobileNetV2 at batch 1
    ran its training step 0.86-0.89x torch while every trial was decided on inference calls.)
    A grad-mode call whose backward never comes counts only after TRIAL_FORWARD_ONLY_AFTER calls.

    One layer is in trial at a time (per grad mode, in the process); a layer waiting for its
    turn runs torch's op. Why: trials that ran side by side flipped all their layers together,
    so each kernel was timed next to the other layers' kernels, and that is not where it runs
    once some of them went back to torch. In a patched MobileNetV2 at batch 1 (2-core Zen 5)
    the depthwise kernels timed side by side at 0.045-0.06 ms against torch's 0.06-0.09 and
    kept their layers; each alone between torch's layers it took 0.12-0.25 ms: the numpy calls
    around the kernel run cold right after torch's ops, 10-50 us each (`bench/probes/
    nn_trial_context.py --parts`). A trial now times the layer where the settled model runs it.
    Costs while deciding: 2 * (TRIAL_CALLS + 1) calls per grad mode and layer, half of them on
    the slower route, so a model settles after about that many calls per kernel-routed layer;
    after it, one grad-mode check per call (none once both modes chose the same route).

    A trial is per route, so per input signature, but the routes of one size bucket share the
    first one's (`lead`): its slot, its samples (each scaled to the lead's input size) and its
    verdicts, which a new size of the bucket takes at its first call (`_trial_for`).
    """

    __slots__ = ("kernel", "aten", "token", "winners", "verdicts", "samples", "final", "lead",
                 "work")

    def __init__(self, kernel: Route, aten: Route, token: tuple | None = None,
                 lead: InContext | None = None, work: int = 1):
        self.kernel, self.aten = kernel, aten
        self.token = token  # the knobs it was made under (`settings.token()`)
        self.winners: dict[bool, Route | None] = {False: None, True: None}
        self.verdicts: dict[bool, tuple[float, float]] = {}
        # grad mode -> (kernel's, torch's) samples in call order, each [forward s, backward s,
        # scale] (backward None until it ran; 0.0 where nothing was clocked; scale: the lead's
        # work over the call's, so that samples of other sizes count per the lead's work)
        self.samples: dict[bool, tuple[list, list]] = {False: ([], []), True: ([], [])}
        self.final: Route | None = None  # the winner of both grad modes, once it is one route
        # the trial of the size bucket whose samples, slot and verdicts this one shares (see
        # `_trial_for`); itself where it leads
        self.lead: InContext = lead if lead is not None else self
        self.work = work  # the call's input elements: what its time is scaled by

    @property
    def candidate(self) -> str:
        """The kernel's name while it may run the layer; AttributeError once torch's op won in
        every grad mode decided so far (a route without `candidate` means torch, as everywhere
        in this module, and torch.compile then traces torch's op)."""
        decided = [w for w in map(self.decided, (False, True)) if w is not None]
        if decided and all(w is self.aten for w in decided):
            raise AttributeError("candidate")
        return self.kernel.candidate

    def decided(self, grad: bool) -> Route | None:
        """The grad mode's winner: this trial's, or, where it has not been called since its
        lead decided, the lead's verdict as this trial's route (for `where`, `candidate` and
        what torch.compile traces, which read it before its next call)."""
        won = self.winners[grad]
        lead = self.lead
        if won is None and lead is not self and lead.winners[grad] is not None:
            won = self.kernel if lead.winners[grad] is lead.kernel else self.aten
        return won

    @property
    def verdict(self) -> tuple[float, float] | None:
        """The first verdict taken (kernel's median, torch's), inference's if both were."""
        return self.verdicts.get(False, self.verdicts.get(True))

    def __call__(self, m, x, w, b):
        if self.final is not None:
            return self.final(m, x, w, b)
        grad = grad_on(x, w, b)
        winner = self.winners[grad] or self._decide(m, grad)
        if winner is not None:
            return winner(m, x, w, b)
        lead = self.lead
        if not lead._has_slot(grad):
            return self.aten(m, x, w, b)  # another layer is in trial: torch's op meanwhile
        kernel_s, aten_s = lead.samples[grad]
        route, samples = ((self.kernel, kernel_s) if len(kernel_s) <= len(aten_s)
                          else (self.aten, aten_s))
        sample = [0.0, None if grad else 0.0, lead.work / self.work]
        t0 = _clock()
        y = route(m, x, w, b)
        sample[0] = _clock() - t0
        if route is self.kernel:  # the caller's casts for it (not scaled with the input)
            sample[0] += getattr(_CHARGE, "seconds", 0.0) / sample[2]
        samples.append(sample)
        if grad:
            _clock_backward(y, w, b, sample)
        else:
            self._decide(m, grad)  # (with grad: at the next call, once the backward has run)
        return y

    def _decide(self, m, grad: bool) -> Route | None:
        """The grad mode's winner once both routes have their timed samples (the lead's, which
        a trial it leads takes over); None before."""
        lead = self.lead
        if lead is not self:
            won = lead.winners[grad] or lead._decide(m, grad)
            if won is None:
                return None
            return self._take(m, grad, won is lead.kernel, lead.verdicts[grad])
        kernel_s, aten_s = self.samples[grad]
        done_k, done_a = ([(s[0] + s[1]) * s[2] for s in ss[1:] if s[1] is not None]
                          for ss in (kernel_s, aten_s))
        if min(len(done_k), len(done_a)) < TRIAL_CALLS:
            if len(aten_s) < TRIAL_FORWARD_ONLY_AFTER:
                return None
            done_k, done_a = ([s[0] * s[2] for s in ss[1:]] for ss in (kernel_s, aten_s))
        k, a = statistics.median(done_k), statistics.median(done_a)
        self.samples[grad] = ([], [])
        slot = _SLOTS[grad]
        if slot[0] is self:
            slot[0] = None
        return self._take(m, grad, k * (TRIAL_MARGIN_GRAD if grad else TRIAL_MARGIN) < a, (k, a))

    def _take(self, m, grad: bool, kernel_won: bool, verdict: tuple[float, float]) -> Route:
        """Settle grad mode `grad` on this trial's kernel or torch's op."""
        self.verdicts[grad] = verdict
        winner = self.winners[grad] = self.kernel if kernel_won else self.aten
        if self.winners[not grad] is winner:
            self.final = winner
        if self.lead is self:  # (the trials it leads count as decided with it: `decided`)
            _note_aten_only(m.__dict__, self.token)  # what torch.compile traces may now be torch's
        return winner

    def _has_slot(self, grad: bool) -> bool:
        """Whether this layer is (now) the one in trial for `grad` (see the class doc)."""
        slot = _SLOTS[grad]
        holder, now = slot[0], _clock()
        # a holder made under other knobs (e.g. a tuning pass under KERNELKIT_TUNE=measure) is
        # not called again while these hold: it does not keep the slot for its idle time
        if (holder is not self and holder is not None and now - slot[1] < TRIAL_SLOT_IDLE_S
                and holder.token == self.token):
            return False
        slot[0], slot[1] = self, now
        return True


def pending(model: torch.nn.Module, grad: bool | None = None) -> int:
    """How many in-model trials of `model` (one per layer and size bucket: the sizes of a
    bucket share one) are still to run in grad mode `grad` (default: the current one) under the
    current knobs (routes made under other settings are not counted); a benchmark calls the
    model until none is. (It counted each input size: a model fed varying lengths showed
    hundreds where a few trials were open.)"""
    grad = torch.is_grad_enabled() if grad is None else grad
    trials = (_trial_of(r) for _, _, _, r in current_routes(model))
    return len({id(t.lead) for t in trials if t is not None and t.winners[grad] is None
                and t.lead.winners[grad] is None})


def current_routes(model: torch.nn.Module):
    """(qualified name, layer, signature, route) of every memoised route of `model` made under
    the current knobs (a tuning pass under other settings leaves its own routes behind)."""
    token = _settings.token()
    for name, m in model.named_modules():
        for sig, r in _routes_under(m.__dict__, token):
            yield name, m, sig, r


def _routes_under(state: dict, token: tuple):
    """(signature, route) of a layer's memoised routes made under the knobs ``token``."""
    # (a snapshot first, in one C call: another thread's forward adds and evicts routes)
    return [(sig, r) for sig, r in list(state.get("_kk_routes", {}).items()) if sig[-1] == token]


def _trial_of(route) -> InContext | None:
    """The InContext inside a memoised route (bare, or wrapped by _Counted or Warming)."""
    for _ in range(3):
        if isinstance(route, InContext):
            return route
        route = getattr(route, "route", None) or getattr(route, "plan", None)
    return None


def _clock_backward(y: torch.Tensor, w: torch.Tensor, b, sample: list) -> None:
    """Clock a layer's share of the backward into `sample[1]`: from the gradient reaching the
    output's node until the node that gives the weight's (or bias's) gradient has run. Hooks sit
    on this call's own graph nodes and go with them. Where no such node is near (the weight
    takes no gradient), only the forward counts (`sample[1] = 0.0`)."""
    from torch.autograd.graph import get_gradient_edge

    param = next((t for t in (w, b) if t is not None and t.requires_grad), None)
    node = y.grad_fn
    last = None
    if param is not None and node is not None:
        target = get_gradient_edge(param).node
        frontier = [node]
        for _ in range(4):  # the layer's own nodes: activation, bias add, the product
            last = next((n for n in frontier
                         if any(f is target for f, _ in n.next_functions)), None)
            if last is not None:
                break
            frontier = [f for n in frontier for f, _ in n.next_functions if f is not None]
    if last is None:
        sample[1] = 0.0
        return
    start: list[float] = []
    node.register_prehook(lambda grad_outputs: start.append(_clock()))

    def end(grad_inputs, grad_outputs):
        if start and sample[1] is None:
            sample[1] = _clock() - start[0]

    last.register_hook(end)


def checks_in_context(x: torch.Tensor) -> bool:
    """Whether a kernel route gets an InContext trial: CPU data (a GPU kernel would need a
    synchronisation per timed call), no forced backend or device (an explicit request runs what
    it asked for), and not a pinned or distributed run (every rank must run the same choices)
    nor one under torch's deterministic flag (the trial alternates two kernels)."""
    from ..autotune import tuner

    settings = _settings.current()
    return (x.device.type == "cpu" and not settings.backend and not settings.device
            and settings.tune != "pinned" and tuner.distributed_peers() is None
            and not tuner.torch_deterministic())


def chosen(call: core.Call) -> tuple[core.Candidate, core.Config]:
    """The tuner's candidate and config for a prepared (no-grad) call; the vendor's where the
    kernelkit kernel won by less than KERNEL_MARGIN (or the margin cannot be read)."""
    choice = _last.choice = dispatch.choice_for(call)
    cand = core.get(call.problem.op, choice.candidate)
    if cand.vendor or choice.source not in ("cache", "measured"):
        return cand, choice.config
    vendor = _vendor_if_close(call, choice)
    return (vendor, {}) if vendor is not None else (cand, choice.config)


def _vendor_if_close(call: core.Call, choice: core.Choice) -> core.Candidate | None:
    """The vendor candidate on the data's device when the measured entry behind `choice` has it
    within KERNEL_MARGIN of the chosen kernel; None otherwise (and when a backend is forced)."""
    from ..autotune import cache as _cache
    from ..autotune import tuner

    settings = _settings.current()
    if settings.backend or settings.device:
        return None  # an explicit request runs what it asked for
    key = tuner.make_key(call.problem, tuner.forced_suffix(settings))
    # (the entry the choice came with: in a distributed job, the deciding rank's)
    entry = tuner.entry_for(key, _cache.cache_for(settings.cache_path)) or {}
    best: dict[str, float] = {}
    for t in entry.get("trials", []):
        if t.get("median") is not None:
            best[t["candidate"]] = min(best.get(t["candidate"], float("inf")), t["median"])
    vendors = [c for c in core.candidates(call.problem.op)
               if c.vendor and c.device == call.problem.device and c.name in best]
    if not vendors or choice.candidate not in best:
        return None
    vendor = min(vendors, key=lambda c: best[c.name])
    return vendor if best[vendor.name] < KERNEL_MARGIN * best[choice.candidate] else None


def runs_aten(cand: core.Candidate, call: core.Call) -> bool:
    """torch's candidate won on the data's own device: torch's functional op is the same kernel.
    (Not another vendor's: numpy's BLAS, chosen or forced with `backend="numpy"`, ran torch's
    op instead.)"""
    return cand.vendor and cand.native == "torch" and cand.device == call.problem.device


def describe(route: Route) -> str:
    """Where a route runs the layer: "torch (aten)" or the kernelkit candidate's name."""
    return getattr(route, "candidate", "torch (aten)")


def getstate(module: torch.nn.Module) -> dict:
    """The layer's state for pickle and deepcopy, without its routes (closures over bound
    kernels, which do not pickle; a copy decides its own on its first call, from the tuner's
    memo). From torch's own state (which leaves out `compile()`'s bound `_compiled_call_impl`:
    kept, a deepcopy ran the original layer's forward and pickle failed)."""
    state = torch.nn.Module.__getstate__(module)
    for name in STATE:  # (the routes, and the flags read from them)
        state.pop(name, None)
    return state
