"""Problems, candidates and the list of candidates for each op.

An op file describes its call as a frozen `Problem` and registers one `Candidate` per
(backend, device). The tuner only ever sees these records: it never imports a kernel itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernelkit import devices

Config = dict[str, Any]  # small, JSON-serialisable: tile sizes, warps, stages, threads


@dataclass(frozen=True)
class Problem:
    """Everything that decides which kernel and config are right for one call."""

    op: str
    shapes: tuple[tuple[int, ...], ...]  # normalised operand shapes, e.g. (B, M, K), (B, K, N)
    dtype: str
    layout: str  # one tag per operand: "N" (row-major), "T" (transposed), "G" (general strides)
    lib: str  # where the data lives: array library ...
    device: str  # ... and device ("cpu" | "cuda")
    params: tuple[tuple[str, Any], ...] = ()  # op options that change the kernel (bias, activation)
    flops: float = 0.0  # useful work, for GFLOP/s and the cost model
    nbytes: int = 0  # bytes read + written once, for transfer costs and the roofline

    def param(self, name: str, default: Any = None) -> Any:
        for k, v in self.params:
            if k == name:
                return v
        return default


@dataclass(frozen=True)
class Candidate:
    """One way to run an op: a backend on a device, with its configuration space.

    `supports(problem)` returns None, or the reason this candidate cannot run the problem.
    `space(problem)` lists configs, the safe default first.
    `launcher(problem, config)` returns `fn(*native_inputs) -> native_output`, where the inputs are
    already in the candidate's `native` array library on its `device`.
    """

    op: str
    backend: str  # "numba" | "triton" | "cupy" | "torch"
    device: str  # "cpu" | "cuda"
    native: str  # the array library the kernel takes: "numpy" | "torch" | "cupy"
    supports: Callable[[Problem], str | None]
    space: Callable[[Problem], list[Config]]
    launcher: Callable[[Problem, Config], Callable[..., Any]]
    vendor: bool = False  # the vendor library's candidate (the baseline every ratio is against)

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.device}"


@dataclass(frozen=True)
class Choice:
    candidate: str  # Candidate.name
    config: Config = field(default_factory=dict)
    source: str = "default"  # "cache" | "measured" | "model" | "default" | "forced"

    def to_dict(self) -> dict:
        return {"candidate": self.candidate, "config": self.config, "source": self.source}


def backend_support(backend: str, dtypes: tuple[str, ...] | None = None
                    ) -> Callable[[Problem], str | None]:
    """A Candidate.supports for ``backend``: why it cannot run a problem (its library or device
    is missing, or the problem's dtype is not in ``dtypes``), or None."""
    def supports(p: Problem) -> str | None:
        if (missing := devices.backend_missing(backend)) is not None:
            return missing
        if dtypes is not None and p.dtype not in dtypes:
            return f"dtype {p.dtype} ({backend} runs {', '.join(dtypes)})"
        return None

    return supports


_REGISTRY: dict[str, list[Candidate]] = {}


def register(candidate: Candidate) -> Candidate:
    _REGISTRY.setdefault(candidate.op, []).append(candidate)
    return candidate


def candidates(op: str) -> list[Candidate]:
    return list(_REGISTRY.get(op, ()))


def get(op: str, name: str) -> Candidate:
    for cand in _REGISTRY.get(op, ()):
        if cand.name == name:
            return cand
    raise KeyError(f"{op}: no candidate named {name!r}")
