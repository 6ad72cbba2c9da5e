"""Timing rows in their steady state, interleaved: the method the CPU probes share.

torch's OpenMP workers spin for milliseconds after each op (libgomp's default spin count; PAUSE
is slow on Zen), so a kernelkit call right after a torch call runs on one core (up to 2x slower
at small sizes); and after a pause this VM's idle vCPUs wake slowly, which slows every row's
first calls. So each round calls every row in its steady state: untimed calls for at least
``warm`` seconds, then ``reps`` timed calls back to back; each round starts at the next row.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Sequence


def steady_medians(fns: Sequence[Callable[[], object]], rounds: int = 6, warm: float = 0.03,
                   reps: int = 3) -> list[float]:
    """Median seconds per call of each of ``fns``, over ``rounds * reps`` timed calls each."""
    return [statistics.median(t) for t in steady_times(fns, rounds, warm, reps)]


def steady_times(fns: Sequence[Callable[[], object]], rounds: int = 6, warm: float = 0.03,
                 reps: int = 3) -> list[list[float]]:
    """Every timed call's seconds, per function (``rounds * reps`` each)."""
    times: list[list[float]] = [[] for _ in fns]
    for rnd in range(rounds):
        for j in range(len(fns)):
            i = (rnd + j) % len(fns)
            fn = fns[i]
            t_end = time.perf_counter() + warm
            fn()
            while time.perf_counter() < t_end:
                fn()
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times[i].append(time.perf_counter() - t0)
    return times


def faults_per_call(fn: Callable[[], object], calls: int = 5) -> float:
    """Minor page faults per call of ``fn``, after one untimed call. A new mapping faults on
    every 4 KiB page written (about 2 us each on these VMs), so a row that faults is partly
    timing the allocator: where glibc serves a large array from depends on the process's
    history (its dynamic mmap threshold, where the heap was last trimmed)."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls
