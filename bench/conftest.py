"""Benchmark session set-up: pinned thread pools and a private autotune cache."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # reference.py

THREADS = int(os.environ.get("KERNELKIT_BENCH_THREADS", os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def pinned_threads():
    """Every pool (OpenBLAS/MKL via threadpoolctl, torch's OpenMP, numba's) gets THREADS threads."""
    import numba
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(THREADS)
    numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    with threadpool_limits(THREADS):
        yield THREADS


@pytest.fixture(autouse=True, scope="session")
def compile_and_tune_first():
    """The suites time steady states: a first call compiles before it runs, and measures its size
    (KERNELKIT_TUNE=measure, unless set), so a `kernelkit` row is the dispatched op after tuning,
    not the cost model's guess that `auto` runs until measuring pays for itself.
    bench/first_call.py measures first calls."""
    saved = {k: os.environ.get(k) for k in ("KERNELKIT_COMPILE", "KERNELKIT_TUNE")}
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    os.environ.setdefault("KERNELKIT_TUNE", "measure")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True, scope="session")
def bench_cache():
    """Tune into a fresh cache, so the dispatched rows show what this run measured."""
    if "KERNELKIT_CACHE_DIR" in os.environ:
        yield os.environ["KERNELKIT_CACHE_DIR"]
        return
    with tempfile.TemporaryDirectory(prefix="kk-bench-") as d:
        os.environ["KERNELKIT_CACHE_DIR"] = d
        yield d
        del os.environ["KERNELKIT_CACHE_DIR"]


def run_rounds(benchmark, fn, seconds_per_call: float, *, budget_s: float = 2.0):
    """pedantic() with a round count sized so each row takes about `budget_s`."""
    rounds = int(max(5, min(200, budget_s / max(seconds_per_call, 1e-6))))
    iterations = 1 if seconds_per_call > 1e-4 else 20
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
