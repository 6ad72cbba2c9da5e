"""Test session set-up: interpreter mode for Triton without a GPU, and a private autotune cache."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # so tests can `import reference`


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch install means "no CUDA" for test set-up
        return False


# Hypothesis: a fixed seed in CI (derandomize: the same examples on every run), and a longer
# profile to run by hand: KERNELKIT_HYPOTHESIS=long pytest tests -k hypothesis. Tests that set
# their own max_examples keep it in both.
try:
    from hypothesis import settings as _hyp

    _hyp.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
    _hyp.register_profile("long", derandomize=False, deadline=None, max_examples=1000,
                          print_blob=True)
    _hyp.load_profile(os.environ.get("KERNELKIT_HYPOTHESIS", "ci"))
except ImportError:  # hypothesis is a test dependency; without it the property tests skip
    pass

# TRITON_INTERPRET must be set before triton is imported anywhere.
if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# Numba's compiled kernels stay where the user's kernelkit keeps them (KERNELKIT_CACHE_DIR as the
# session starts, else the user cache dir), decided here before the session's private autotune
# cache folder is set below: that cache is keyed by the kernel sources and versions, so sharing it
# is safe, and a test session does not recompile every kernel cold (the kernel tests themselves
# use fresh folders where compiling is what they test).
# The knob is set in the environment, so the `kernelkit` processes tests start (the CLI, the README,
# DataLoader workers) share the compiled kernels too.
try:
    from kernelkit.kernels.numba import _cache as _numba_cache

    os.environ["KERNELKIT_NUMBA_CACHE_DIR"] = str(_numba_cache.numba_root())
    _numba_cache.cache_dir()
except ImportError:  # no numba: the numba tests skip
    pass


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Never read or write the user's real autotune cache from tests."""
    old = os.environ.get("KERNELKIT_CACHE_DIR")
    os.environ["KERNELKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("kk-cache"))
    yield
    if old is None:
        os.environ.pop("KERNELKIT_CACHE_DIR", None)
    else:
        os.environ["KERNELKIT_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _compile_in_foreground(monkeypatch):
    """Calls compile the kernels they pick before running (KERNELKIT_COMPILE=foreground): what a
    test checks must not depend on how far a background compile has got. tests/test_compiling.py
    tests the background path."""
    monkeypatch.setenv("KERNELKIT_COMPILE", "foreground")


# The same for the `kernelkit` processes tests start (they inherit the environment).
os.environ["KERNELKIT_BUSY_SHARE"] = "1"


@pytest.fixture(autouse=True)
def _machine_not_busy(monkeypatch):
    """The tuner marks measurements taken while other processes load the machine as provisional;
    tests must not depend on what else runs here, so detection is off unless a test patches it
    on (tests/autotune/test_tuner.py tests it)."""
    from kernelkit.autotune import timing

    monkeypatch.setattr(timing, "machine_busy", lambda before, after: False)
