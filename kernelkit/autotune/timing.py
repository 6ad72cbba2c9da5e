"""One honest timer for CPU and GPU: synchronised, warmed up, median and spread.

The clock is injectable (`use_clock`), so tests can describe devices by a timing model (launch
latency, throughput, link bandwidth) whose kernels advance a simulated clock, and check the
tuner's decisions without the devices.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

_clock: Callable[[], float] = time.perf_counter


@contextlib.contextmanager
def use_clock(clock: Callable[[], float]) -> Iterator[None]:
    """Time with `clock` (seconds, monotonic) inside the block instead of time.perf_counter."""
    global _clock
    old, _clock = _clock, clock
    try:
        yield
    finally:
        _clock = old


class SimulatedClock:
    """A clock that only moves when told: `advance(seconds)` is what a modelled kernel costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass(frozen=True)
class Timing:
    median: float  # seconds
    spread: float  # interquartile range, seconds
    count: int

    def to_dict(self) -> dict:
        return asdict(self)


# -- is the machine busy? -------------------------------------------------------------------------
BUSY_RATIO = 1.5  # a calibration loop this much slower than this process's best: busy
_best_calibration = [float("inf")]


def _spin() -> int:
    """A fixed piece of CPU work (~0.2 ms): the calibration loop."""
    return sum(i * i for i in range(4000))


def calibrate(reps: int = 5) -> float:
    """Time the calibration loop (median of `reps`); remember the process's best."""
    samples = []
    for _ in range(reps):
        t0 = _clock()
        _spin()
        samples.append(_clock() - t0)
    m = statistics.median(samples)
    _best_calibration[0] = min(_best_calibration[0], m)
    return m


def machine_busy(before: float, after: float) -> bool:
    """The calibration loop, timed around a measurement, ran much slower than it can on this
    machine: something else was using the cores, and the measurement is not to be trusted."""
    best = _best_calibration[0]
    return best > 0 and max(before, after) > BUSY_RATIO * best


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
    start = _clock()
    while len(samples) < max_reps:
        t0 = _clock()
        fn()
        if sync:
            sync()
        samples.append(_clock() - t0)
        if len(samples) >= min_reps and _clock() - start >= budget_s:
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
    start = _clock()
    n = len(fns)
    for rep in range(max_reps):
        # Each round starts one further along: a function that slows whatever runs right after
        # it (a thread pool still spinning) then slows every other function equally often.
        for i in range(rep, rep + n):
            t0 = _clock()
            fns[i % n]()
            if sync:
                sync()
            samples[i % n].append(_clock() - t0)
        if rep + 1 >= min_reps and _clock() - start >= budget_s:
            break
    return [_summary(s) for s in samples]


def _summary(samples: list[float]) -> Timing:
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = q[2] - q[0]
    else:
        spread = max(samples) - min(samples)
    return Timing(statistics.median(samples), spread, len(samples))
