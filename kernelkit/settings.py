"""The knobs: environment variables, and the same as a context manager in code.

KERNELKIT_CACHE_DIR  where the autotune cache lives (default: the platform's user cache dir, from
                     platformdirs when it is installed, else the same path worked out here)
KERNELKIT_NUMBA_CACHE_DIR  where Numba's compiled kernels live (default: <cache dir>/numba)
KERNELKIT_TUNE       on a cache miss: "auto" (default: the cost model where it tells the winner apart,
                     else measure the candidates it cannot), "measure" (every candidate and config),
                     "model" (cost model only) or "off" (safe default);
                     "pinned": read the cache, never measure and never write (a miss takes the
                     cost model's choice, the same in every process that reads the same cache)
KERNELKIT_BUSY_SHARE a measurement during which other processes used more than this share of the
                     cores is stored as provisional (default 0.25; 1 turns the check off)
KERNELKIT_BACKEND    force a backend: numba | triton | cupy | torch (any registered backend)
KERNELKIT_DEVICE     force a device: cpu | cuda
KERNELKIT_COMPILE    "background" (default): a kernel not compiled yet in this process is compiled
                     off the critical path while calls run on a ready candidate (kernelkit.compiling);
                     "foreground": the first call that needs it waits for the compile (the
                     default under KERNELKIT_TUNE=measure, whose calls measure the compiled kernels)
KERNELKIT_OPENMP_TEAM "0" runs the Numba kernels' threads on kernelkit's own Python pool even where
                     torch is loaded (default: on torch's OpenMP team; kernels/numba/_pool.py says why)
KERNELKIT_NATIVE_SHARES "0": each share on torch's OpenMP team is a Python callback (default: the
                     kernel's native trampoline, where no thread takes the GIL; kernels/numba/_native.py)
KERNELKIT_FROZEN_WEIGHTS "1": as `kernelkit.frozen_weights()` for the whole process (kernelkit/frozen.py)

A forced backend or device that cannot run a call raises; an automatic choice falls back quietly.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from .paths import default_cache_dir

TUNE_MODES = ("auto", "measure", "model", "off", "pinned")
DEVICES = ("cpu", "cuda")
COMPILE_MODES = ("background", "foreground")


def backend_names() -> tuple[str, ...]:
    """The registered kernel backends' names (kernelkit/kernels/<backend>/)."""
    from . import core

    return tuple(dict.fromkeys(b.name for b in core.backends()))


@dataclass(frozen=True)
class Settings:
    tune: str = "auto"
    backend: str | None = None
    device: str | None = None
    cache_dir: str | None = None
    # None: "foreground" under tune="measure", else "background" (resolved below). Why: measure
    # means the call measures the compiled kernels; in the background a call measured only once
    # they were ready, and a short script under KERNELKIT_TUNE=measure stored nothing at all (its
    # calls ran a stand-in meanwhile)
    compile: str | None = None

    def __post_init__(self) -> None:
        if self.compile is None:
            object.__setattr__(self, "compile",
                               "foreground" if self.tune == "measure" else "background")

    @property
    def cache_path(self) -> Path:
        if self.cache_dir:  # ("~/x" from an environment that did not expand it: Docker's ENV)
            return Path(self.cache_dir).expanduser()
        return default_cache_dir()




# The overrides of the innermost `use()` block, as a hashable tuple of (knob, value) pairs, so
# that per-call memos can key on it by value.
_override: contextvars.ContextVar[tuple] = contextvars.ContextVar("kernelkit_settings", default=())
_ENV = ("KERNELKIT_TUNE", "KERNELKIT_BACKEND", "KERNELKIT_DEVICE", "KERNELKIT_CACHE_DIR",
        "KERNELKIT_COMPILE")


# os.environ.get costs ~1 us per missing key (it raises and catches KeyError inside); the dict
# behind it answers in ~50 ns and is what os.environ (and so monkeypatch.setenv) writes through.
_ENV_DICT = getattr(os.environ, "_data", None)
_ENV_KEYS = tuple(os.environ.encodekey(k) for k in _ENV) if isinstance(_ENV_DICT, dict) else _ENV
if not isinstance(_ENV_DICT, dict):
    _ENV_DICT = os.environ


# Bumped when `explain` or `tune` measures a choice that calls may already have memoised under
# another one (see tuner.decide): part of token(), so every per-call memo misses once and asks
# the tuner again, instead of launching what `explain` says was not chosen.
_epoch = [0]


def new_epoch() -> None:
    _epoch[0] += 1


def token() -> tuple:
    """A cheap fingerprint of the knobs (and of the choices' epoch), so per-call memos notice
    when they change."""
    get = _ENV_DICT.get
    return (get(_ENV_KEYS[0]), get(_ENV_KEYS[1]), get(_ENV_KEYS[2]), get(_ENV_KEYS[3]),
            get(_ENV_KEYS[4]), _override.get(), _epoch[0])


# current()'s answers by token(): a `use()` block costs a lookup, not building and validating
# Settings (about 16 us); bounded, since cache_dir overrides can be many.
_CURRENT: dict = {}
_CURRENT_MAX = 64


def current() -> Settings:
    tok = token()
    s = _CURRENT.get(tok)
    if s is None:
        s = _current()
        if len(_CURRENT) >= _CURRENT_MAX:
            _CURRENT.clear()
        _CURRENT[tok] = s
    return s


def _current() -> Settings:
    env = os.environ
    # (values stripped, as the switches' are: `KERNELKIT_TUNE="measure "` from a shell script;
    # a blank one is unset. Built once, with the overrides: the compile default follows the tune)
    s = Settings(**{
        "tune": (env.get("KERNELKIT_TUNE") or "").strip().lower() or "auto",
        "backend": (env.get("KERNELKIT_BACKEND") or "").strip().lower() or None,
        "device": (env.get("KERNELKIT_DEVICE") or "").strip().lower() or None,
        "cache_dir": env.get("KERNELKIT_CACHE_DIR") or None,
        "compile": (env.get("KERNELKIT_COMPILE") or "").strip().lower() or None,
        **dict(_override.get())})
    _validate(s)
    return s


def _validate(s: Settings, in_use: bool = False) -> None:
    """Raise for a knob's bad value, naming it as the user gave it: the environment variable, or
    (`in_use`) kernelkit.use()'s argument."""
    for knob, allowed, got in (("tune", TUNE_MODES, s.tune),
                               ("backend", backend_names(), s.backend),
                               ("device", DEVICES, s.device),
                               ("compile", COMPILE_MODES, s.compile)):
        if got is None and knob in ("backend", "device"):  # (None: choose)
            continue
        if got not in allowed:
            name = f"kernelkit.use({knob}=...)" if in_use else f"KERNELKIT_{knob.upper()}"
            raise ValueError(f"kernelkit: {name} must be one of {allowed}, got {got!r}")


_VALID_OVERRIDES: set = set()  # use() overrides already validated


@contextlib.contextmanager
def use(
    *,
    tune: str | None = None,
    backend: str | None = None,
    device: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    compile: str | None = None,  # noqa: A002 - the knob's name
) -> Iterator[Settings]:
    """Override knobs inside a block: `with kernelkit.use(backend="numba"): ...`."""
    new = dict(_override.get())
    for name, value in (("tune", tune), ("backend", backend), ("device", device),
                        ("compile", compile)):
        if value is not None:
            if not isinstance(value, str):
                raise TypeError(f"kernelkit: kernelkit.use({name}=...) must be a string, got "
                                f"{type(value).__name__} {value!r}")
            new[name] = value.strip().lower()
    if cache_dir is not None:
        if not isinstance(cache_dir, (str, os.PathLike)) or not str(cache_dir):
            raise TypeError(f"kernelkit: kernelkit.use(cache_dir=...) must be a non-empty path, "
                            f"got {cache_dir!r}")
        new["cache_dir"] = str(cache_dir)
    knobs = tuple(sorted(new.items()))
    if knobs not in _VALID_OVERRIDES:
        _validate(replace(Settings(), **new), in_use=True)
        if len(_VALID_OVERRIDES) >= _CURRENT_MAX:
            _VALID_OVERRIDES.clear()
        _VALID_OVERRIDES.add(knobs)
    tok = _override.set(knobs)
    try:
        yield current()
    finally:
        _override.reset(tok)

