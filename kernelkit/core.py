"""The records every layer shares, and the registry that joins ops and backends.

This module sits below both ``ops/`` and ``autotune/`` (neither imports the other's internals):

- ``Problem``: everything that decides which kernel and config are right for one call.
- ``Candidate``: one way to run an op (a backend on a device), with its config space.
- ``Choice``: what the tuner decided. ``Call``: a prepared call (problem, how to run and verify).
- ``Backend``: a kernel backend, declared as data in ``kernels/<backend>/__init__.py``.
- ``OpSpec``: an op, declared as data by its ``ops/<op>.py``: its kernel entry point, how a
  backend's entry point is bound to a problem, how inputs are built for a size, its presets and
  its command-line arguments.

Candidates are built from (ops x backends): a backend runs an op when it has the op's kernel
module, ``<backend package>.<spec.kernel>``. That module exposes the same small surface on every
backend: ``CONFIG`` (its config dataclass), ``space(problem)`` (configs, the safe default first)
and the entry point ``spec.entry`` with the same arguments on every backend. A new backend is one
folder under ``kernels/`` (or any package registered with ``register_backend``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import itertools
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import signals, threads

Config = dict[str, Any]  # small, JSON-serialisable: tile sizes, warps, stages, threads


# -- the problem ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """Everything that decides which kernel and config are right for one call."""

    op: str
    shapes: tuple[tuple[int, ...], ...]  # normalised operand shapes, e.g. (B, M, K), (B, K, N)
    dtype: str
    layout: str  # one tag per operand: "N" (row-major), "T" (transposed), "G" (general strides)
    lib: str  # where the data lives: array library ...
    device: str  # ... and device ("cpu" | "cuda")
    # The op's options that change the kernel (bias, activation, geometry...): the op's own frozen
    # dataclass (MatmulOptions, ConvOptions, PreprocessOptions), read by attribute.
    options: Any = ()
    flops: float = 0.0  # useful work, for GFLOP/s and the cost model
    nbytes: int = 0  # bytes read + written once, for transfer costs and the roofline

    def option_items(self) -> tuple[tuple[str, Any], ...]:
        """The options as (name, value) pairs, in declaration order (for keys and printing)."""
        return option_items(self.options)


def option_items(options: Any) -> tuple[tuple[str, Any], ...]:
    if dataclasses.is_dataclass(options):
        return tuple((f.name, getattr(options, f.name)) for f in dataclasses.fields(options))
    return tuple(options)  # a plain tuple of pairs (fake ops in tests)


# -- candidates and choices ----------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One way to run an op: a backend on a device, with its configuration space.

    `supports(problem)` returns None, or the reason this candidate cannot run the problem.
    `space(problem)` lists configs, the safe default first.
    `launcher(problem, config)` returns `fn(*native_inputs) -> native_output`, where the inputs are
    already in the candidate's `native` array library on its `device`.
    """

    op: str
    backend: str  # "numba" | "triton" | "cupy" | "torch" | any registered backend
    device: str  # "cpu" | "cuda"
    native: str  # the array library the kernel takes: "numpy" | "torch" | "cupy"
    supports: Callable[[Problem], str | None]
    space: Callable[[Problem], list[Config]]
    launcher: Callable[[Problem, Config], Callable[..., Any]]
    vendor: bool = False  # the vendor library's candidate (the baseline every ratio is against)
    # Roofline for the cost model before anything is measured: (launch s, flop/s, bytes/s).
    roofline: tuple[float, float, float] = (1e-5, 1e11, 1e10)
    rate_scale: Callable[[str], float] = lambda dtype: 1.0  # (Backend.rate_scale)
    # What can be checked without importing the kernel module (the library is installed, the
    # dtype is one the backend runs): None or the reason, as `supports` would say it.
    precheck: Callable[[Problem], str | None] = lambda problem: None
    # The kernel module's import name, and whether its kernels are compiled on first use (then
    # the module has `warm(dtype)`, and `kernelkit.compiling` builds them off the critical path).
    module: str = ""
    compiles: bool = False
    # Chosen automatically only for data of its own array library (Backend.own_data_only).
    own_data_only: bool = False
    # `launcher` for the op's arrays without their batch dim, from the kernel module's
    # `<entry>_2d` where it has one (None otherwise): a vendor's 2-D call skips the (1, M, K)
    # views and the batched library call (torch: 2.8 instead of 9.6 us for a 4x4 product).
    launcher_2d: Callable[[Problem, Config], Callable[..., Any] | None] = \
        lambda problem, config: None
    # None, or why this kernel cannot take `config` (a cache entry's, written by another build
    # of the kernel or edited by hand): the tuner then measures again instead of raising per call
    config_error: Callable[[Config], str | None] = lambda config: None

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.device}"


@dataclass(frozen=True)
class Choice:
    candidate: str  # Candidate.name
    config: Config = field(default_factory=dict)
    # "cache" | "measured" | "model" | "default" | "forced" | "warming" (a stand-in while the
    # better candidates compile; never stored, and its plan is kept only until a compile job
    # finishes: ops/dispatch.py Warming)
    source: str = "default"
    # > 0: a choice made without measuring because measuring would not pay for itself yet; ask
    # again after this many more calls of the same size (never stored in the cache)
    recheck_after: int = 0

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "config": self.config, "source": self.source}


Plan = Callable[..., Any]


@dataclass
class Call:
    """A prepared call: the checked arguments, the `Problem`, how to run a candidate on these
    arguments (`bind`) and how to verify its output against the op's float64 reference."""

    problem: Problem
    bind: Callable[[Candidate, Config], Plan]  # a plan for this choice, reusable for equal signatures
    args: tuple  # the caller's arguments, in the order the plan takes them
    verify: Callable[[Any], str | None]  # None, or why an output is wrong
    # A plan that needs no choice: tensors that need gradients go through an autograd Function
    # (ops/torch_ops.py), whose forward and backward dispatch (and tune) the kernels themselves.
    direct: Plan | None = None

    def runner(self, cand: Candidate, config: Config) -> Callable[[], Any]:
        """A function that runs `cand` with `config` on these arguments; where `rotation` made
        copies, each call, by this runner or another of this call's, takes the next set. One
        turn for all runners: with a turn each, the contenders of a round-robin round read the
        set the one before had just read (from L3, which the copies are there to prevent), while
        one timed alone cycled through cold sets."""
        plan = self.bind(cand, config)
        if len(self.rotation) == 1:
            return lambda: plan(*self.args)
        turn = self._turn
        return lambda: plan(*next(turn))

    @functools.cached_property
    def _turn(self) -> Iterator[tuple]:
        return itertools.cycle(self.rotation)

    @functools.cached_property
    def rotation(self) -> list[tuple]:
        """The argument sets a measurement cycles through: the caller's own, plus copies (same
        strides) where the inputs outgrow L2 but would stay in L3 if one set were run again and
        again, flattering a kernel that re-reads them; enough copies that together they do not
        fit in L3. Only on the CPU; never where a copy could not keep the strides."""
        arrays_in = [a for a in self.args if hasattr(a, "shape")]
        if self.problem.device != "cpu" or not arrays_in:
            return [self.args]
        from . import arrays, devices

        caches = devices.cpu_info()["caches"]
        l2, l3 = caches.get("L2", 1 << 20), caches.get("L3", 32 << 20)
        nbytes = sum(a.nbytes for a in arrays_in)
        if not l2 < nbytes <= l3:
            return [self.args]
        sets = [self.args]
        for _ in range(min(ROTATION_MAX_COPIES, -(-l3 // nbytes) + 1) - 1):
            copies = tuple(arrays.same_layout_copy(a) if hasattr(a, "shape") else a
                           for a in self.args)
            if any(c is None for c, a in zip(copies, self.args) if hasattr(a, "shape")):
                return [self.args]
            sets.append(copies)
        return sets


ROTATION_MAX_COPIES = 16  # argument sets a measurement cycles through (Call.rotation), at most


# -- backends and ops, as data -------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """A kernel backend on one device, declared in its package's ``__init__.py`` in ``BACKENDS``
    (one package may serve several devices, as torch does).

    `dtypes` maps an op name (or its kernel module's name) to the dtypes the backend runs for it;
    "*" is the default. `missing()` says why the backend cannot load here, or None. A kernel
    module may add its own ``supports(problem)`` for what only it knows.
    """

    name: str
    device: str  # "cpu" | "cuda"
    native: str  # the array library its kernels take
    package: str  # where its <op>.py kernel modules live
    dtypes: Mapping[str, tuple[str, ...]]
    missing: Callable[[], str | None]
    vendor: bool = False
    roofline: tuple[float, float, float] = (1e-5, 1e11, 1e10)
    # Per op (or kernel module) where one of its kernels is far from the backend's roofline
    # (the cost model's prior before anything is measured), looked up like `dtypes`.
    rooflines: Mapping[str, tuple[float, float, float]] = field(default_factory=dict)
    # The roofline's flop rate for a dtype, as a share of the one above (1.0 where it is as fast;
    # torch's half precision on a CPU without the instructions for it: a small fraction)
    rate_scale: Callable[[str], float] = lambda dtype: 1.0
    # Its kernels are compiled on first use, per dtype: each kernel module has `warm(dtype)`
    # (compile, or load from the on-disk cache, everything its entry point runs for that dtype).
    compiles: bool = False
    # The ops (names, or "*") for which the tuner chooses it only on its own library's data
    # (other data: only when forced). Why: two CPU libraries' thread pools stall each other when
    # their calls alternate (numpy's OpenBLAS threads spin ~0.1 s after each call and torch's
    # next OpenMP region waits a scheduler tick: 4 ms after a 0.07 ms matmul on 2 cores), so one
    # process's CPU matmuls stay with the BLAS of the library its data lives in.
    own_data_only: tuple[str, ...] = ()
    # Whether its kernel modules may define ``supports``, and its config space where every
    # module's is known beforehand: asking a candidate then does not import its module (torch's:
    # a numpy program's first call imported torch, 0.9 s, for the tuner's questions)
    own_supports: bool = True
    space: Callable[[Problem], list] | None = None

    @property
    def id(self) -> str:
        """The name of its candidates: ``<name>-<device>``."""
        return f"{self.name}-{self.device}"

    def dtypes_for(self, spec: OpSpec) -> tuple[str, ...] | None:
        for name in (spec.name, spec.kernel, "*"):
            if name in self.dtypes:
                return self.dtypes[name]
        return None

    def roofline_for(self, spec: OpSpec) -> tuple[float, float, float]:
        for name in (spec.name, spec.kernel):
            if name in self.rooflines:
                return self.rooflines[name]
        return self.roofline


@dataclass(frozen=True)
class OpSpec:
    """An op, declared as data by its op module.

    `launch(entry, problem, config)` binds a backend's entry point (the same signature on every
    backend) to a problem and a config object: it returns ``fn(*native_inputs)``.
    `function` is the public op (``kernelkit.matmul``); `prepare(*args, **kwargs)` checks the
    same arguments and returns a `Call`.
    `make_inputs(dims, dtype, where, seed)` builds ``(args, kwargs)`` for one size of a preset.
    `cli_dims` names the command-line sizes (e.g. "M K N"); `cli_inputs(dims)` turns them into
    the `make_inputs` dims, or raises ValueError. `scale(dims, factor)` grows a size for a sweep
    (by default the first dim: the batch). `dims_of(shapes)` is `make_inputs`' inverse: the dims
    whose inputs have a problem's `shapes`, or None (`kernelkit cache verify` rebuilds entries).
    """

    name: str
    kernel: str  # the kernel module name under each backend package
    entry: str  # the entry point in that module
    launch: Callable[[Callable[..., Any], Problem, Any], Callable[..., Any]]
    function: Callable[..., Any]
    prepare: Callable[..., Call]
    make_inputs: Callable[..., tuple[list, dict]] | None = None
    presets: Mapping[str, tuple[tuple[tuple[int, ...], str], ...]] = field(default_factory=dict)
    cli_dims: str = ""
    cli_inputs: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    scale: Callable[[tuple[int, ...], int], tuple[int, ...]] = \
        lambda dims, factor: (dims[0] * factor, *dims[1:])
    dims_of: Callable[[tuple[tuple[int, ...], ...]], tuple[int, ...] | None] | None = None


# The registries survive `importlib.reload(kernelkit.core)`: the op modules register into them
# once, at import, and a notebook's reload emptied them (every op then raised "unknown op"
# until a restart). The candidates are rebuilt from them.
_BACKENDS: dict[str, Backend] = globals().get("_BACKENDS", {})
_OPS: dict[str, OpSpec] = globals().get("_OPS", {})
_CANDIDATES: dict[str, list[Candidate]] = {}
_DISCOVERED = globals().get("_DISCOVERED", False)
_KERNELS_PACKAGE = "kernelkit.kernels"


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend; its candidates join every op it has a kernel module for."""
    _discover()
    _BACKENDS[backend.id] = backend
    _CANDIDATES.clear()
    return backend


def unregister_backend(backend: Backend) -> None:
    _BACKENDS.pop(backend.id, None)
    _CANDIDATES.clear()


def register_op(spec: OpSpec) -> OpSpec:
    _OPS[spec.name] = spec
    _CANDIDATES.pop(spec.name, None)
    return spec


def _discover() -> None:
    """Read ``BACKENDS`` from every ``kernels/<backend>/__init__.py`` (cheap: data only). The op
    modules register their specs when ``kernelkit`` is imported."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    pkg = importlib.import_module(_KERNELS_PACKAGE)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.ispkg:
            mod = importlib.import_module(f"{_KERNELS_PACKAGE}.{info.name}")
            for backend in getattr(mod, "BACKENDS", ()):
                _BACKENDS.setdefault(backend.id, backend)


def backends() -> list[Backend]:
    _discover()
    return list(_BACKENDS.values())


def op_spec(name: str) -> OpSpec:
    _discover()
    try:
        return _OPS[name]
    except KeyError:
        raise ValueError(f"kernelkit: unknown op {name!r}; expected one of {sorted(_OPS)}") from None


def op_specs() -> list[OpSpec]:
    _discover()
    return list(_OPS.values())


def candidates(op: str) -> list[Candidate]:
    """The candidates of `op`: one per backend that has the op's kernel module."""
    cands = _CANDIDATES.get(op)
    if cands is None:
        spec = op_spec(op)
        cands = [_make_candidate(spec, b) for b in backends()
                 if _has_module(f"{b.package}.{spec.kernel}")]
        _CANDIDATES[op] = cands
    return list(cands)


def preload_vendors() -> None:
    """Build every op's candidates and import the CPU kernel modules that need no compiling and
    whose array library this process has already loaded (numpy's and, once torch is imported,
    torch's: a few ms in all), so the first call of an op does not pay for finding and importing
    them (on a 2-core Zen 3, 2-3 ms of a cold first call against a vendor's 1.2-1.4 ms). Never
    imports an array library or a compiler itself. Also asks every CPU backend whether its
    library is installed (a cached probe: finding Numba on disk cost a first call 0.1-0.2 ms)."""
    cpu = [b for b in backends() if b.device == "cpu" and b.missing() is None]
    ready = [b for b in cpu if not b.compiles and b.native in sys.modules]
    for spec in op_specs():
        for cand in candidates(spec.name):
            if any(cand.module == f"{b.package}.{spec.kernel}" for b in ready):
                # a failure is said again, with the reason, by the first call that asks
                with contextlib.suppress(ImportError):
                    importlib.import_module(cand.module)


def get(op: str, name: str) -> Candidate:
    for cand in candidates(op):
        if cand.name == name:
            return cand
    raise KeyError(f"{op}: no candidate named {name!r}")


@functools.cache
def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


def _make_candidate(spec: OpSpec, backend: Backend) -> Candidate:
    module_name = f"{backend.package}.{spec.kernel}"
    dtypes = backend.dtypes_for(spec)
    module = functools.cache(lambda: signals.import_whole(module_name))

    def precheck(p: Problem) -> str | None:  # without importing the kernel module
        if (missing := backend.missing()) is not None:
            return missing
        if dtypes is not None and p.dtype not in dtypes:
            return f"dtype {p.dtype} ({backend.name} runs {', '.join(dtypes)})"
        return None

    def supports(p: Problem) -> str | None:
        if (reason := precheck(p)) is not None:
            return reason
        if not backend.own_supports:
            return None
        own = getattr(module(), "supports", None)
        return own(p) if own is not None else None

    def space(p: Problem) -> list[Config]:
        known = backend.space
        return [c.to_dict() for c in (known(p) if known is not None else module().space(p))]

    def bound(entry_name: str, p: Problem, config: Config):
        m = module()
        entry = getattr(m, entry_name, None)
        if entry is None:
            return None
        config = m.CONFIG.from_dict(config)
        # an entry's own plan for the problem where it has one (`entry.bind(p, device)`: torch's,
        # one closure over torch's call where its general path would do nothing), else the op's
        bind = getattr(entry, "bind", None)
        plan = (bind(p, backend.device) if bind is not None else None) \
            or spec.launch(entry, p, config)
        # threads.guard: a fork-safe Numba threading layer, launches serialised where it is not
        # threadsafe, numpy's BLAS calls noted, torch data said so (a no-op for other backends)
        return threads.guard(backend.package, plan, torch_data=p.lib == "torch")

    def launcher(p: Problem, config: Config):
        fn = bound(spec.entry, p, config)
        if fn is None:
            raise AttributeError(f"{module_name} has no {spec.entry}: the {spec.name} entry point")
        return fn

    def launcher_2d(p: Problem, config: Config):
        return bound(f"{spec.entry}_2d", p, config)

    def config_error(config: Config) -> str | None:
        try:
            module().CONFIG.from_dict(config)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    return Candidate(spec.name, backend.name, backend.device, backend.native, supports, space,
                     launcher, vendor=backend.vendor, roofline=backend.roofline_for(spec),
                     rate_scale=backend.rate_scale, precheck=precheck,
                     module=module_name, compiles=backend.compiles,
                     own_data_only=bool({spec.name, "*"} & set(backend.own_data_only)),
                     launcher_2d=launcher_2d, config_error=config_error)
