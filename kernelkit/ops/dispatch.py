"""Op-independent dispatch: from a prepared call to a bound plan, and `explain`.

An op prepares a `Call` (the checked arguments, the `Problem`, how to run a candidate on these
arguments and how to verify its output) and hands it here. Dispatch asks the tuner for a `Choice`
and binds it into a plan: a plain function of the op's arguments, memoised per call signature, so a
repeated call costs one dict lookup on top of the kernel launch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
from dataclasses import dataclass

import numpy as np

from .. import compiling, core, threads
from .. import settings as _settings
from ..arrays import _SIG_OF_TYPE, TENSOR_TYPES, signature_fn
from ..autotune import tuner
from ..core import Call, Choice, Plan, Problem
from ..devices import imported, imported_torch

_NDARRAY = np.ndarray


# -- torch.jit.trace -----------------------------------------------------------------------------
class _OpBody(threading.local):
    depth = 0


_OP_BODY = _OpBody()


def jit_tracing() -> bool:
    """Whether torch.jit.trace is recording this thread's torch calls, outside the body of a
    registered kernelkit op. A kernel run now (Numba, or anything outside torch) would be baked
    into the trace as a constant, right only for the example inputs; the ops then call their
    registered torch op instead, which the trace records and replays on new inputs."""
    torch = imported_torch()
    return (torch is not None and torch._C._get_tracing_state() is not None
            and not _OP_BODY.depth)


def torch_only(*xs) -> bool:
    """Whether an op's torch tensors among `xs` are to be computed with torch's own ops rather than
    a kernelkit kernel, which computes on plain tensors' memory outside torch's dispatcher: a
    tensor subclass (FakeTensor, DTensor, a quantized weight), a sparse layout, operands all on a
    device other than the CPU and CUDA (meta), or, in this thread, a torch.func transform (vmap,
    grad, jvp, jacrev), a forward-mode AD level or a TorchDispatchMode (FakeTensorMode,
    FlopCounterMode). Before, the ops and layers raised under each of them (or, under
    forward-mode AD, returned a kernel's result without its tangent, and FlopCounterMode counted
    no FLOPs for it). False where no argument is a torch tensor. About 0.5 us for one tensor."""
    torch = imported_torch()
    if torch is None:
        return False
    foreign, plain, elsewhere = _kinds(torch, xs)
    if foreign:
        return True
    if elsewhere:  # all on meta: torch's ops; meta beside CPU tensors: the op's own device error
        return not plain
    return plain and _thread_leaves_to_torch()


def _thread_leaves_to_torch() -> bool:
    """A torch.func transform, a forward-mode AD level or a TorchDispatchMode is active in this
    thread (`torch_only`'s rule for plain tensors; `plain_signature3` asks it too)."""
    _, tc, forward_ad = _TORCH_BITS or _bind_torch_bits()
    return (tc._are_functorch_transforms_active() or forward_ad._current_level >= 0
            or tc._len_torch_dispatch_stack() > 0)


def fx_proxy(*xs):
    """The first torch.fx Proxy among `xs` (a symbolic trace is running through an op), or None.
    The ops then record themselves as one call node, as ``torch.fx.wrap`` would: the node runs
    the op on the real tensors later. Before, they raised "'x' must be a numpy array, torch
    tensor or cupy array, got Proxy"."""
    fx = imported("torch.fx") if imported_torch() is not None else None
    if fx is None:
        return None
    return next((x for x in xs if isinstance(x, fx.Proxy)), None)


def foreign_tensors(*xs) -> bool:
    """`torch_only`'s checks of the tensors themselves (a subclass, a sparse layout, a device
    other than the CPU and CUDA), without the thread's transforms and modes: for a layer's weight
    and bias, whose input was checked in full (a meta weight beside a CPU input goes to torch's
    op, which raises its own device error)."""
    foreign, _, elsewhere = _kinds(sys.modules["torch"], xs)
    return foreign or elsewhere


def _kinds(torch, xs) -> tuple[bool, bool, bool]:
    """Among `xs`: (a tensor subclass or a sparse tensor, a plain tensor on the CPU or CUDA, a
    plain tensor on another device); the first stops the scan."""
    plain = elsewhere = False
    for x in xs:
        t = type(x)
        if t is torch.Tensor or t is torch.nn.Parameter:
            if x.layout is not torch.strided or x.is_nested:  # (a strided nested tensor too)
                return True, plain, elsewhere
            if x.is_cpu or x.is_cuda:
                plain = True
            else:
                elsewhere = True
        elif isinstance(x, torch.Tensor):
            return True, plain, elsewhere
    return False, plain, elsewhere


@contextlib.contextmanager
def op_body():
    """The body of a registered op is running (the trace has recorded the op itself): the
    kernelkit ops it calls run their kernels, not the registered op again."""
    _OP_BODY.depth += 1
    try:
        yield
    finally:
        _OP_BODY.depth -= 1


# -- per-call-signature plan memos ---------------------------------------------------------------
# Stand-ins for True and False in plan keys (Python's True == 1, False == 0) and the tag of an
# argument keyed by type and value
_TRUE, _FALSE, _TYPED = object(), object(), object()


def key_part(v):
    """An op's argument `v` as part of a plan memo's key: a part equals another only where the two
    arguments pass the op's checks alike. In Python 2.0 == 2 and True == 1, so a call with
    ``stride=2.0`` or ``groups=True`` (which the checks reject) found the plan of ``stride=2``
    or ``groups=1`` and ran it. ints, strs and None stand for themselves (no allocation: the
    common arguments), lists become tuples, bools become stand-ins, anything else is tagged with
    its type (a numpy integer keys apart from an int: another plan, the same result)."""
    t = type(v)
    if t is int or t is str or v is None:
        return v
    if t is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # (a layer's stride, padding, dilation: the common pair, without the loop)
    if t is bool:
        return _TRUE if v else _FALSE
    if t is tuple or t is list:
        for e in v:
            if type(e) is not int:
                return tuple(key_part(e) for e in v)
        return v if t is tuple else tuple(v)
    return (_TYPED, t, v)


def flag_key(v):
    """`key_part` of an argument that is an int or a bool when valid (groups, allow_tf32), those
    two without a call: a function call per argument is a measurable part of a small op's call."""
    return v if type(v) is int else _TRUE if v is True else _FALSE if v is False else key_part(v)


FALSE_KEY = _FALSE  # flag_key(False): for an op that keys its usual False inline


def signature(arrays: tuple, extras: tuple) -> tuple | None:
    """Everything a plan depends on, cheaply: the arrays' signatures (None entries allowed), the
    op's other arguments, grad mode where a tensor needs gradients, and the knobs."""
    parts = []
    grad = False
    for x in arrays:
        if x is None:
            parts.append(None)
            continue
        t = type(x)
        fn = _SIG_OF_TYPE.get(t) or signature_fn(t)
        if fn is None:
            return None
        sig = fn(x)
        grad = grad or (len(sig) == 5 and sig[4])
        parts.append((t, sig))
    if grad:
        import torch

        grad = torch.is_grad_enabled()
    return (*parts, extras, grad, _settings.token())


def signature3(a, b, c, extras: tuple) -> tuple | None:
    """`signature((a, b, c), extras)` for the two- and three-array ops (`c` may be None), without
    its per-array type lookups where all are numpy arrays or all CPU/GPU torch tensors: about
    1 us of a small conv's 3 us over its kernel. Its keys are flat tuples led by "np"/"pt", so they
    never equal `signature`'s (whose entries are (type, sig) pairs or None)."""
    ta = type(a)
    if ta is _NDARRAY and type(b) is _NDARRAY and (c is None or type(c) is _NDARRAY):
        return ("np", a.dtype, a.shape, a.strides, b.dtype, b.shape, b.strides,
                None if c is None else (c.dtype, c.shape, c.strides), extras, _settings.token())
    tb, tcls = type(b), type(c)
    if ta not in _SIG_OF_TYPE or tb not in _SIG_OF_TYPE \
            or (c is not None and tcls not in _SIG_OF_TYPE):
        # (a process's first call with a torch type: `signature_fn` registers it, so the plan is
        # stored under the key the next call's `plain_signature3` looks up; before, that first
        # call stored it under `signature`'s key, and the second call prepared it again)
        for t in (ta, tb, tcls):
            signature_fn(t)
    if ta in TENSOR_TYPES and tb in TENSOR_TYPES and (c is None or tcls in TENSOR_TYPES):
        return _torch_key(a, b, c, extras)
    return signature((a, b, c), extras)


def _torch_key(a, b, c, extras: tuple) -> tuple:
    """`signature3`'s key of three torch tensors (`c` may be None); `plain_signature3` builds
    the same inline."""
    grad = a.requires_grad or b.requires_grad or (c is not None and c.requires_grad)
    # (a CPU tensor's device keyed as True: see plain_signature3)
    return ("pt", a.dtype, a.shape, a.stride(), a.is_cpu or a.device, b.dtype, b.shape,
            b.stride(), b.is_cpu or b.device,
            None if c is None else (c.dtype, c.shape, c.stride(), c.is_cpu or c.device),
            grad and _grad_enabled(), extras, _settings.token())


def plain_signature3(a, b, c, extras: tuple) -> tuple | None:
    """`signature3`'s key where it alone finds the call's plan in an op's memo: all numpy
    arrays, or all plain strided torch tensors with no torch.func transform, forward-mode AD
    level, TorchDispatchMode or torch.jit.trace active in this thread; None otherwise (the op
    then takes its checked path: `torch_only`, `jit_tracing`, `signature3`). A memoised plan
    exists only for calls that path let through, so the tensors' devices need no check here.

    Why a path of its own: after a small conv's kernel has run, Python's caches are cold, and
    `torch_only` plus `jit_tracing` then cost 5.4 us of the op's 14 us over its plan (1 x 8 x
    8 x 8, 3x3, float32, 2-vCPU Xeon), for checks this does with fewer calls."""
    ta = type(a)
    if ta is _NDARRAY:
        if type(b) is _NDARRAY and (c is None or type(c) is _NDARRAY):
            return signature3(a, b, c, extras)
        return None
    if ta not in TENSOR_TYPES or type(b) not in TENSOR_TYPES:
        return None
    strided, tc, forward_ad = _TORCH_BITS or _bind_torch_bits()
    if a.layout is not strided or b.layout is not strided:
        return None
    # `_thread_leaves_to_torch`, then torch.jit.trace (under which a key would miss anyway, its
    # sizes being traced tensors; checked rather than relied on). Inline, as is `_torch_key`
    # below: each call saved is 0.05-0.1 us of a small op's 3.
    if tc._are_functorch_transforms_active() or forward_ad._current_level >= 0 \
            or tc._len_torch_dispatch_stack() > 0 or tc._get_tracing_state() is not None:
        return None
    # A CPU tensor's device is keyed as True (`is_cpu`), any other as its torch.device: reading,
    # hashing and comparing a torch.device in the memo's lookup cost about 0.15 us a tensor
    # (a 1x8x8x8 conv's hit, 2-vCPU Zen 4), and True never equals a device.
    try:
        if c is None:  # (the ops' common case, apart: its three checks of c cost 0.05 us)
            ck, grad = None, a.requires_grad or b.requires_grad
        elif type(c) not in TENSOR_TYPES or c.layout is not strided:
            return None
        else:
            ck = (c.dtype, c.shape, c.stride(), c.is_cpu or c.device)
            grad = a.requires_grad or b.requires_grad or c.requires_grad
        get = _ENV_GET  # (settings.token() inline: its call was 0.07 us of a small op's hit)
        return ("pt", a.dtype, a.shape, a.stride(), a.is_cpu or a.device, b.dtype, b.shape,
                b.stride(), b.is_cpu or b.device, ck, grad and _grad_enabled(), extras,
                (get(_ENV_0), get(_ENV_1), get(_ENV_2), get(_ENV_3), get(_ENV_4),
                 _OVERRIDE_GET(), _EPOCH[0]))
    except RuntimeError:  # a nested tensor of strided layout has no sizes: the checked path
        return None


# settings.token()'s parts, which plain_signature3 reads inline (tests/ops/test_dispatch.py
# checks that its key's last item equals token() as knobs, use() blocks and the epoch change)
_ENV_GET = _settings._ENV_DICT.get
_ENV_0, _ENV_1, _ENV_2, _ENV_3, _ENV_4 = _settings._ENV_KEYS
_OVERRIDE_GET = _settings._override.get
_EPOCH = _settings._epoch

# (torch.strided, torch._C, torch.autograd.forward_ad), bound at the first plain_signature3 of a
# tensor (a type in TENSOR_TYPES: torch is imported by then)
_TORCH_BITS: list = []


def _bind_torch_bits() -> list:
    torch = sys.modules["torch"]
    _TORCH_BITS[:] = [torch.strided, torch._C, torch.autograd.forward_ad]
    return _TORCH_BITS


def _grad_enabled() -> bool:
    return sys.modules["torch"].is_grad_enabled()


def needs_grad(*xs) -> bool:
    """Some torch tensor among `xs` needs a gradient, and grad mode is on."""
    import torch

    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in xs)


class PlanMemo(dict):
    """signature -> plan, cleared rather than grown without bound by many one-off shapes."""

    MAX = 4096

    def find(self, sig: tuple | None) -> Plan | None:
        """The plan memoised for `sig`; None for none, for a None signature, and for one
        holding an unhashable argument (a padding given as a numpy array: the op's checks then
        say what is wrong with it, where the lookup raised "unhashable type")."""
        if sig is None:
            return None
        try:
            return self.get(sig)
        except TypeError:
            return None

    def store(self, sig: tuple | None, plan: Plan) -> Plan:
        if sig is not None:
            try:
                hash(sig)
            except TypeError:  # an argument the op accepted but cannot key: not memoised
                sig = None
        if isinstance(plan, (_Recheck, Warming)):
            plan.memo, plan.sig = self, sig
        if sig is not None:
            if len(self) >= self.MAX:
                self.clear()
            self[sig] = plan
        return plan




class Warming:
    """A plan (or kernelkit.nn route) chosen while better candidates compile: memoised until a
    compile job of this process finishes, then dropped from its memo so that the next call asks
    the tuner again (which then has the compiled candidates in the race). Until then a call costs
    one integer comparison more than a plain plan, not a decision (~1 ms).

    `finished` is `compiling.finished` read before the decision, so a job that ends while the
    decision runs still drops the plan."""

    __slots__ = ("plan", "finished", "memo", "sig")

    def __init__(self, plan: Plan, finished: int):
        self.plan, self.finished, self.memo, self.sig = plan, finished, None, None

    def __getattr__(self, name: str):  # `candidate` of a kernelkit.nn route
        if name in self.__slots__:  # unset (a copy made without __init__): no recursion
            raise AttributeError(name)
        return getattr(self.plan, name)

    def __call__(self, *args):
        if compiling.finished != self.finished:
            memo, self.memo = self.memo, None  # (a local: another thread may get here too)
            if memo is not None:
                memo.pop(self.sig, None)
        return self.plan(*args)


class _Recheck:
    """A plan chosen without measuring because measuring does not pay for itself yet: memoised
    for `left` calls, then dropped from its memo so the next call asks the tuner again (which by
    then has counted those calls)."""

    __slots__ = ("plan", "left", "memo", "sig")

    def __init__(self, plan: Plan, left: int):
        self.plan, self.left, self.memo, self.sig = plan, left, None, None

    def __call__(self, *args):
        self.left -= 1
        if self.left <= 0 and self.memo is not None:
            self.memo.pop(self.sig, None)
        return self.plan(*args)


# -- torch's CPU BLAS on numpy data ---------------------------------------------------------------
# After a numpy BLAS call OpenBLAS's workers spin for about 0.1 s (threads.BLAS_SPIN_S), and torch's
# next OpenMP region waits for a core behind them: on a 2-vCPU Xeon a 160^3 torch product on numpy
# data took 5.7-7.6 ms right after a numpy one against 0.03 ms alone, 512^3 3.9 against 0.78 ms
# (bench/probes/blas_handoff_probe.py). Numba's kernels take their Python pool then (_pool._team).
def _bound(call: Call, cand: core.Candidate, config: core.Config, forced: bool) -> Plan:
    """`cand`'s plan. Where it runs numpy data on torch's CPU BLAS (and the backend is not
    `forced`), numpy's own BLAS (`tuner.stand_in`) instead for the calls made while kernelkit's last
    numpy BLAS call may have left OpenBLAS's workers spinning, for every call in a forked
    process where torch's team would hang (`threads.torch_team_forked`), and for every
    call where this process has not imported torch (kernelkit does not import it for numpy
    data: a choice cached by another process)."""
    if cand.native == "torch" and cand.device == "cpu":
        threads.team_used()  # (the plan runs torch's CPU ops: its OpenMP team)
    own = None if forced else tuner.stand_in(cand, call.problem)
    if own is None:
        return profiled(call.bind(cand, config), call.problem.op, cand)
    own_plan = profiled(call.bind(own, {}), call.problem.op, own)
    if cand.native not in sys.modules:
        return own_plan
    plan = profiled(call.bind(cand, config), call.problem.op, cand)
    spinning, forked = threads.blas_spinning, threads.torch_team_forked

    def run(*args):  # (a plan made before a fork runs in the child too)
        return own_plan(*args) if spinning() or forked() else plan(*args)

    return run


def profiled(plan: Plan, op: str, cand: core.Candidate) -> Plan:
    """`plan`, recorded as ``kernelkit::<op> [<candidate>]`` while torch's profiler runs, where
    the kernel is not torch's own (whose ops torch records) and torch is imported. Why: a
    kernel's call made no event, so under `inference_mode` or `no_grad` a patched model's
    layers, and the ops on plain tensors, left no time in `torch.profiler`'s tables (0.21 of
    6.6 ms recorded for a three-layer model on the Numba kernels), and the next op showed as
    the costly one. While no profiler runs it costs about 0.1 us a call (the check and the
    frame). A plan made before torch was imported is not recorded."""
    torch = sys.modules.get("torch")  # (None too where an environment blocks its import)
    if cand.backend == "torch" or torch is None:
        return plan
    enabled = torch._C._autograd._profiler_enabled
    record = torch.autograd.profiler.record_function
    name = f"kernelkit::{op} [{cand.name}]"

    def run(*args):
        if enabled():
            with record(name):
                return plan(*args)
        return plan(*args)

    return run


def plan_for(call: Call, settings: _settings.Settings | None = None) -> Plan:
    if call.direct is not None:
        return call.direct
    finished = compiling.finished
    settings = settings or _settings.current()
    choice = choice_for(call, settings)
    plan = _bound(call, core.get(call.problem.op, choice.candidate), choice.config,
                  bool(settings.backend))
    if choice.source == "warming":
        return Warming(plan, finished)
    return _Recheck(plan, choice.recheck_after) if choice.recheck_after else plan


def _empty(problem: Problem) -> bool:
    """Some dim of the problem is 0: nothing to measure."""
    return any(d == 0 for shape in problem.shapes for d in shape)


def choice_for(call: Call, settings: _settings.Settings | None = None) -> Choice:
    """The tuner's choice for a prepared call (ignoring `call.direct`): what kernelkit.nn reads
    to run torch's own aten op where the vendor candidate won."""
    settings = settings or _settings.current()
    cands = core.candidates(call.problem.op)
    if _empty(call.problem):
        settings = dataclasses.replace(settings, tune="off")  # nothing to measure on empty inputs
    return tuner.choose(call.problem, cands, call.runner, call.verify, settings)


@dataclass
class Explanation:
    """What `kernelkit.explain` returns: printable, and inspectable in code."""

    problem: Problem
    key: str
    choice: Choice
    skipped: dict[str, str]
    trials: list[dict]
    busy: bool = False  # timed while other processes loaded the machine: a provisional entry
    # candidates that could run the call and were not timed, with why (`tune` that never measures)
    unmeasured: dict[str, str] = dataclasses.field(default_factory=dict)
    note: str | None = None  # why the choice is not the fastest trial, where a rule kept another

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # (IPython, Jupyter: the table)
        printer.text(str(self))

    def __str__(self) -> str:
        p = self.problem
        lines = [
            f"{p.op}: shapes {' , '.join(str(s) for s in p.shapes)}  dtype {p.dtype}  "
            f"data on {p.lib}:{p.device}  layout {p.layout}  {dict(p.option_items())}",
            f"cache key: {self.key}",
            "candidates:",
        ]
        for name, why in self.skipped.items():
            lines.append(f"  {name:<12} skipped: {why}")
        for t in sorted(self.trials, key=lambda t: t.get("median", float("inf"))):
            if "median" in t:
                gflops = p.flops / t["median"] / 1e9 if t["median"] > 0 else 0.0
                lines.append(f"  {t['candidate']:<12} {t['median'] * 1e6:10.1f} us "
                             f"± {t['spread'] * 1e6:7.1f}  {gflops:8.1f} GFLOP/s  {t['config']}")
            else:
                lines.append(f"  {t['candidate']:<12} failed: {t.get('error')}  {t['config']}")
        for name, why in self.unmeasured.items():
            lines.append(f"  {name:<12} not measured: {why}")
        source = self.choice.source + (", provisional: timed while other processes loaded the "
                                       "machine" if self.busy else "")
        lines.append(f"choice: {self.choice.candidate} {self.choice.config} ({source})")
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)


def explain_call(call: Call, settings: _settings.Settings | None = None) -> Explanation:
    """The candidates, why any were skipped, their measured times, and the choice.

    Uses the cached measurement when there is one; otherwise measures now (and caches it),
    except under ``tune="pinned"``, ``"model"`` or ``"off"``, which never measure or write: it
    then shows what the call runs (the cache's entry, the cost model's or the vendor's choice).
    """
    settings = settings or _settings.current()
    # an empty problem: nothing to measure (and nothing to store), as choice_for decides it
    mode = ("off" if _empty(call.problem)
            else settings.tune if settings.tune in ("pinned", "model", "off") else "measure")
    cands = core.candidates(call.problem.op)
    d = tuner.decide(call.problem, cands, call.runner, call.verify, settings, mode=mode)
    # (listed, not left out: under `pinned` with an empty cache only the skipped GPU candidates
    # showed, and the CPU ones the choice was made among were nowhere)
    timed = {t.candidate for t in d.trials}
    why = ("an empty problem: nothing to measure" if _empty(call.problem)
           else f"tune={mode!r} never measures" if mode != "measure"
           else "not timed for this choice")
    unmeasured = {c.name: why for c in cands if c.name not in d.skipped and c.name not in timed}
    return Explanation(call.problem, d.key, d.choice, d.skipped, [t.to_dict() for t in d.trials],
                       d.busy, unmeasured, _kept_vendor_note(d, cands))


def _kept_vendor_note(d, cands: list[core.Candidate]) -> str | None:
    """Why a measured choice is a vendor slower than a kernel's trial (the tuner's
    `_vendor_unless_clear`: a lead inside the kernel's own spread is not shown), or None."""
    ok = [t for t in d.trials if t.timing is not None]
    vendors = {c.name for c in cands if c.vendor}
    if not ok or d.choice.source not in ("measured", "cache") or d.choice.candidate not in vendors:
        return None
    fastest = min(ok, key=lambda t: t.timing.median)
    chosen = [t.timing.median for t in ok if t.candidate == d.choice.candidate]
    if fastest.candidate in vendors or not chosen:
        return None
    lead = (min(chosen) - fastest.timing.median) * 1e6
    return (f"{fastest.candidate} led by {lead:.1f} us, within its own spread "
            f"(± {fastest.timing.spread * 1e6:.1f} us): a kernel replaces the vendor only where "
            f"its lead is clear")
