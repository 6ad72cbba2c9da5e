"""One honest timer for CPU and GPU: synchronised, warmed up, median and spread.

The clock is injectable (`use_clock`), so tests can describe devices by a timing model (launch
latency, throughput, link bandwidth) whose kernels advance a simulated clock, and check the
tuner's decisions without the devices.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from .. import threads
from ..envvars import env_number

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
# Other processes took more than this share of the machine's CPU time while we measured: busy.
# KERNELKIT_BUSY_SHARE overrides it (1 turns the check off: a machine that is always shared, or
# the processes a test suite starts, where what else runs must not change what is stored).
BUSY_SHARE = 0.25
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float  # s
    busy: float | None  # s of CPU time used by every process (None: unknown on this OS)
    own: float  # s of CPU time used by this process (all its threads)


def snapshot() -> CpuSnapshot:
    """What the machine's CPUs have done so far (Linux: /proc/stat), and what we did."""
    busy = None
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        busy = (user + nice + system + irq + softirq + steal) / _TICK
    except (OSError, ValueError):
        pass
    return CpuSnapshot(time.monotonic(), busy, time.process_time())


def others_share(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """The share of all cores' time that other processes used between two snapshots."""
    if before.busy is None or after.busy is None:
        return 0.0
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    others = (after.busy - before.busy) - (after.own - before.own)
    return max(0.0, others) / (wall * (os.cpu_count() or 1))


def machine_busy(before: CpuSnapshot, after: CpuSnapshot) -> bool:
    """Other processes used a large share of the cores while we measured: the measurement is not
    to be trusted. (Our own threads, spinning or not, do not count.)"""
    return others_share(before, after) > busy_share()


def busy_share() -> float:
    """The threshold above: KERNELKIT_BUSY_SHARE if set to a number, else BUSY_SHARE."""
    return env_number("KERNELKIT_BUSY_SHARE", BUSY_SHARE, 0.0, 1.0)


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


DECIDED_MIN_SHARE = 0.2


def measure_interleaved(
    fns: list[Callable[[], object]],
    *,
    sync: Callable[[], None] | None = None,
    min_reps: int = 5,
    max_reps: int = 50,
    budget_s: float = 0.25,
    settled: float = 0.03,
    decided: float | None = None,
) -> list[Timing]:
    """Time several functions round-robin, one timed call each per round (after an untimed one
    that lets the previous function's thread pool go quiet), so that whatever the machine is doing
    meanwhile (another process) hits all of them alike. Comparisons between the results are then
    fair even where absolute times drift.

    Stops after `min_reps` rounds once every function's spread (interquartile range) is within
    `settled` of its median, or when `budget_s` is spent, or after `max_reps` rounds. With
    `decided` (a fraction), it also stops once the ranking is clear enough to pick the fastest:
    every other function is either clearly slower (its interval, median - spread, above the
    fastest's median + spread) or within `decided` of it (a near tie: either will do), and at
    least DECIDED_MIN_SHARE of the budget is spent (a few runs of a tiny kernel decide nothing).

    Functions that call numpy's BLAS (seen by `threads.blas_called` during their first call) are
    not interleaved call by call with others: see `_measure_in_blocks`."""
    blas = _first_calls(fns, sync)
    if any(blas) and not all(blas):
        return _measure_in_blocks(fns, blas, sync=sync, min_reps=min_reps, max_reps=max_reps,
                                  budget_s=budget_s, settled=settled, decided=decided)
    samples: list[list[float]] = [[] for _ in fns]

    def done(stats: list[Timing], spent: float) -> bool:
        return all(t.spread <= settled * t.median for t in stats) or (
            decided is not None and spent >= DECIDED_MIN_SHARE * budget_s
            and _clear(stats, decided))

    _rounds(fns, list(range(len(fns))), samples, sync, min_reps, max_reps, budget_s, done)
    return [_summary(s) for s in samples]


def _first_calls(fns: list[Callable[[], object]], sync) -> list[bool]:
    """Call each function once (untimed: compiles, allocations, first touches), noting which
    called numpy's BLAS (`threads.blas_called`, which the numpy backend's every call makes)."""
    used = []
    for fn in fns:
        before = threads.blas_mark()
        fn()
        if sync:
            sync()
        used.append(threads.blas_mark() != before)
    return used


# After torch's OpenMP team ran a region (torch's own ops, or the Numba kernels' shares on it),
# its workers spin for a few ms (GNU OpenMP: ~300,000 PAUSEs) waiting for the next one.
TEAM_SPIN_S = 0.01


def _settle(fn: Callable[[], object], sync, before_blas: bool, after_team: bool) -> None:
    """Call `fn` (the next block's first function; untimed) once, and again until the other
    group's threads stopped spinning: before the others' block, OpenBLAS's workers (up to threads.BLAS_SPIN_S
    after kernelkit's last BLAS call); before the BLAS block, torch's OpenMP team (TEAM_SPIN_S).
    Calls rather than a sleep: an idle pause let the vCPUs cool down, and a 256^3 Numba matmul
    timed right after one ran at 0.31 ms against 0.19 in its steady state (2-core Zen 4). Real
    time, whatever the clock: the spinning threads are real."""
    wait = threads.blas_spin_left() if not before_blas else TEAM_SPIN_S if after_team else 0.0
    end = time.monotonic() + wait
    while True:
        fn()
        if sync:
            sync()
        if time.monotonic() >= end:
            return


def _measure_in_blocks(fns: list[Callable[[], object]], blas: list[bool], *, sync, min_reps: int,
                       max_reps: int, budget_s: float, settled: float,
                       decided: float | None) -> list[Timing]:
    """`measure_interleaved` where some functions call numpy's BLAS and others do not.

    After a BLAS call OpenBLAS's workers spin for about 0.1 s, and any other library's threads
    share the cores with them meanwhile; round-robin rounds then time every other function in
    that window, which no user repeating one op sees. On a 2-core Zen 4 a Numba matmul timed so
    ran at half its steady rate (512^3: 3.15 against 1.52 ms alone; 1x4096x4096: 15.2 against
    7.5), and the tuner chose numpy where the two were even. So each group (BLAS, the rest) is
    timed in a block of its own rounds, started once the other group's threads went quiet
    (`_settle`): the others then BLAS, then BLAS then the others (each group early in one pass
    and late in the other, against drift), each block with its share of half the budget and half
    the rounds. The second pass is skipped where the first already gave `min_reps` timings each
    and settled or decided. The waits are not counted in the budget."""
    groups = [[i for i, b in enumerate(blas) if not b], [i for i, b in enumerate(blas) if b]]
    samples: list[list[float]] = [[] for _ in fns]
    last = None  # the group of the last block timed (None: the first calls)
    rounds_min, rounds_max = -(-min_reps // 2), -(-max_reps // 2)
    stats: list[Timing] = []

    def settled_now(timings: list[Timing], spent: float = 0.0) -> bool:
        return all(t.spread <= settled * t.median for t in timings)

    for order in ((0, 1), (1, 0)):
        for g in order:
            # (with the wait, the block's first call: its pool wakes up untimed)
            _settle(fns[groups[g][0]], sync, before_blas=bool(g), after_team=last == 0)
            last = g
            share = budget_s * len(groups[g]) / len(fns) / 2
            _rounds(fns, groups[g], samples, sync, rounds_min, rounds_max, share, settled_now)
        stats = [_summary(s) for s in samples]
        if all(t.count >= min_reps for t in stats) and (
                settled_now(stats) or (decided is not None and _clear(stats, decided))):
            break
    return stats


def _rounds(fns: list[Callable[[], object]], group: list[int], samples: list[list[float]], sync,
            rounds_min: int, rounds_max: int, budget_s: float,
            done: Callable[[list[Timing], float], bool]) -> None:
    """Round-robin timing of `group`'s functions, appending to `samples`: after `rounds_min`
    rounds, until `budget_s` is spent or `done(their timings, seconds spent)`; at most
    `rounds_max` rounds."""
    n = len(group)
    start = _clock()
    for rep in range(rounds_max):
        # Each round starts one further along, so drift hits every function alike.
        for j in range(rep, rep + n):
            i = group[j % n]
            if n > 1:
                # One untimed call first: the previous function's library may still have its
                # thread pool spinning, and the first call of another pool then waits a
                # scheduler tick (~4 ms measured on 2 cores, numpy against torch: 60x a 160^3
                # matmul). A user who repeats this op does not pay that; the function's own
                # steady state is what is compared. (OpenBLAS's spin outlasts one call: BLAS
                # callers are timed in blocks, `_measure_in_blocks`.)
                fns[i]()
                if sync:
                    sync()
            t0 = _clock()
            fns[i]()
            if sync:
                sync()
            samples[i].append(_clock() - t0)
        if rep + 1 >= rounds_min:
            spent = _clock() - start
            if spent >= budget_s or done([_summary(samples[i]) for i in group], spent):
                break


def _clear(stats: list[Timing], tie: float) -> bool:
    """The fastest is told apart from every other: clearly faster, or within `tie` of it."""
    best = min(stats, key=lambda t: t.median)
    return all(t is best or t.median - t.spread > best.median + best.spread
               or t.median <= (1 + tie) * best.median for t in stats)


def _summary(samples: list[float]) -> Timing:
    if len(samples) >= 4:
        q = statistics.quantiles(samples, n=4)
        spread = q[2] - q[0]
    else:
        spread = max(samples) - min(samples)
    return Timing(statistics.median(samples), spread, len(samples))
