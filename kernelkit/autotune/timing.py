"""One honest timer for CPU and GPU: synchronised, warmed up, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timing:
    median: float  # seconds
    spread: float  # interquartile range, seconds
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


def cuda_sync() -> None:
    """Wait for all work on the current CUDA device, whichever library queued it."""
    import torch

    torch.cuda.synchronize()


def measure(
    fn: Callable[[], object],
    *,
    sync: Callable[[], None] | None = None,
    warmup: int = 1,
    min_reps: int = 3,
    max_reps: int = 50,
    budget_s: float = 0.25,
) -> Timing:
    """Time `fn()` end to end, synchronising after every call when `sync` is given.

    Repeats until `budget_s` is spent (at least `min_reps`, at most `max_reps` times) and reports
    the median and the interquartile range, which ignore the odd preempted run on a noisy machine.
    """
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < max_reps:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - t0)
        if len(samples) >= min_reps and time.perf_counter() - start >= budget_s:
            break
    return _summary(samples)


def measure_interleaved(
    fns: list[Callable[[], object]],
    *,
    sync: Callable[[], None] | None = None,
    min_reps: int = 5,
    max_reps: int = 50,
    budget_s: float = 0.25,
) -> list[Timing]:
    """Time several functions round-robin, one call each per round, so that whatever the machine
    is doing meanwhile (another process, a thread pool still spinning) hits all of them alike.
    Comparisons between the results are then fair even where absolute times drift."""
    for fn in fns:
        fn()
        if sync:
            sync()
    samples: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    n = len(fns)
    for rep in range(max_reps):
        # Each round starts one further along: a function that slows whatever runs right after
        # it (a thread pool still spinning) then slows every other function equally often.
        for i in range(rep, rep + n):
            t0 = time.perf_counter()
            fns[i % n]()
            if sync:
                sync()
            samples[i % n].append(time.perf_counter() - t0)
        if rep + 1 >= min_reps and time.perf_counter() - start >= budget_s:
            break
    return [_summary(s) for s in samples]


def _summary(samples: list[float]) -> Timing:
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = q[2] - q[0]
    else:
        spread = max(samples) - min(samples)
    return Timing(statistics.median(samples), spread, len(samples))
