"""A new backend is one package: a numpy matmul backend declared and registered from this file
alone, without editing anything under kernelkit/, joins the tuner, explain and the knobs."""

from __future__ import annotations

import importlib.machinery
import sys
import time
import types
from dataclasses import dataclass

import numpy as np
import pytest

import kernelkit
from kernelkit import core
from kernelkit.kernels.config import KernelConfig

PACKAGE = "kk_fake_numpy_backend"
LAUNCHES: list[tuple[str, str | None, bool]] = []  # (config.order, activation, allow_tf32)
SLOW_ORDERS: set[str] = set()  # configs a test makes lose every measurement


@dataclass(frozen=True)
class FakeMatmulConfig(KernelConfig):
    order: str = "C"  # the output's memory order: two configs, so there is something to tune


def _space(problem):
    return [FakeMatmulConfig("C"), FakeMatmulConfig("F")]


def _supports(problem):
    if problem.options.activation not in (None, "relu"):
        return f"the fake backend has no {problem.options.activation}"
    return None


def _matmul_forward(a, b, bias=None, activation=None, *, config=None, allow_tf32=False):
    LAUNCHES.append((config.order, activation, allow_tf32))
    if config.order in SLOW_ORDERS:
        time.sleep(0.002)
    c = np.matmul(a, b)
    if bias is not None:
        c = c + bias
    if activation == "relu":
        c = np.maximum(c, 0)
    return np.asarray(c, order=config.order)


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=not attrs)
    if not attrs:
        mod.__path__ = []
    mod.__dict__.update(attrs)
    return mod


@pytest.fixture
def fake_backend():
    sys.modules[PACKAGE] = _module(PACKAGE)
    sys.modules[f"{PACKAGE}.matmul"] = _module(
        f"{PACKAGE}.matmul", CONFIG=FakeMatmulConfig, space=_space, supports=_supports,
        matmul_forward=_matmul_forward)
    backend = core.register_backend(core.Backend(
        name="npfake", device="cpu", native="numpy", package=PACKAGE,
        dtypes={"matmul": ("float32", "float64")}, missing=lambda: None))
    LAUNCHES.clear()
    SLOW_ORDERS.clear()
    try:
        yield backend
    finally:
        SLOW_ORDERS.clear()
        core.unregister_backend(backend)
        for name in (f"{PACKAGE}.matmul", PACKAGE):
            sys.modules.pop(name, None)


def test_a_backend_registered_from_a_test_joins_every_layer(fake_backend, tmp_path):
    assert "npfake-cpu" in [c.name for c in core.candidates("matmul")]
    assert "npfake-cpu" not in [c.name for c in core.candidates("conv2d")]  # no conv2d module
    rng = np.random.default_rng(7)
    a = rng.standard_normal((37, 19))
    b = rng.standard_normal((19, 23))
    bias = rng.standard_normal(23)
    expect = np.maximum(a @ b + bias, 0)

    with kernelkit.use(backend="npfake", cache_dir=tmp_path):  # the knob knows its name
        got = kernelkit.matmul(a, b, bias=bias, activation="relu")
        np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)
        ex = kernelkit.explain("matmul", a, b, bias=bias, activation="relu")
    assert ex.choice.candidate == "npfake-cpu"
    timed = [t for t in ex.trials if "median" in t]
    assert {t["config"]["order"] for t in timed} == {"C", "F"}  # both configs were measured
    # the config the tuner chose is exactly the one the kernel was launched with
    LAUNCHES.clear()
    with kernelkit.use(backend="npfake", cache_dir=tmp_path):
        kernelkit.matmul(a + 1.0, b, bias=bias, activation="relu")
    launched = LAUNCHES
    assert launched == [(ex.choice.config["order"], "relu", False)]


def test_explain_measuring_another_choice_replaces_what_calls_had_memoised(fake_backend, tmp_path):
    # The first call runs the cost model's guess (no measurement under tune=model); `explain`
    # (under a measuring mode: under tune=model it shows the guess) then measures, and the order
    # the guess picked loses. The next call must launch what explain reports, not the memoised
    # guess (this raced on timing noise before: a CI flake).
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((29, 13)), rng.standard_normal((13, 31))
    with kernelkit.use(backend="npfake", tune="model", cache_dir=tmp_path):
        kernelkit.matmul(a, b)
        (guess, _, _), = LAUNCHES
        SLOW_ORDERS.add(guess)
        with kernelkit.use(tune="auto"):
            ex = kernelkit.explain("matmul", a, b)
        assert ex.choice.config["order"] != guess
        LAUNCHES.clear()
        kernelkit.matmul(a, b)
        assert [(ex.choice.config["order"], None, False)] == LAUNCHES


def test_the_fake_backend_competes_and_says_why_it_cannot(fake_backend, tmp_path):
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((8, 8), dtype=np.float32), rng.standard_normal((8, 8), dtype=np.float32)
    with kernelkit.use(cache_dir=tmp_path):
        ex = kernelkit.explain("matmul", a, b, activation="silu")
        assert ex.skipped["npfake-cpu"] == "the fake backend has no silu"
        ex = kernelkit.explain("matmul", a, b)
        assert "npfake-cpu" in {t["candidate"] for t in ex.trials}
    with kernelkit.use(backend="npfake", cache_dir=tmp_path), pytest.raises(ValueError, match="npfake"):
        kernelkit.matmul(a.astype(np.float16), b.astype(np.float16))


def test_an_unregistered_backend_is_unknown_to_the_knob():
    with pytest.raises(ValueError, match=r"use\(backend=...\) must be one of"), \
            kernelkit.use(backend="npfake"):
        pass
