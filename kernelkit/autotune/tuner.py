"""The one decision: cache hit -> choice; miss -> measure, cost model, or the safe default.

`decide` is what op calls (through `choose`, memoised), `explain` and ahead-of-time `generate`
all use.

Measuring times every applicable candidate and config end to end (transfers included) on the
caller's data, verifies each output against the op's reference, and stores the winner with every
timing. A candidate whose output fails verification can never win; a config that fails to compile
or run is skipped and recorded, never fatal.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import compiling, core, devices, threads
from .. import settings as _settings
from ..core import Candidate, Choice, Config, Problem
from ..settings import Settings
from ..signals import import_whole, raised_by_signal_handler
from . import model, shared, timing
from .cache import cache_for, same_entry
from .key import Key, make_key
from .timing import Timing, cuda_sync, measure, measure_interleaved

MAX_CONFIGS = 6  # per candidate, when `auto` measures a family's first size
AUTO_TIE = 0.08  # auto: leaders this close are not re-timed (within 10% of each other either way)
FITTED_CONFIGS = 2  # per contender, when `auto` measures with a fitted family: its best-ranked
TOP_CANDIDATES = 3  # when `auto` measures with a model: the contenders it cannot tell apart
# Tuning pays for itself (op calls under `auto`): a size is measured once the time measuring could
# save over the calls seen so far (per call: the model's pessimistic time for its own choice minus
# the best optimistic time of a contender) exceeds what measuring costs (per timed config: its
# verification run and its share of the timing budget; plus the re-timing of close leaders).
TIMING_BUDGET_S = (0.05, 0.2)  # per timed config: problems below / above SMALL_FLOPS
RETIME_BUDGET_S = (0.2, 0.5)  # the re-timing of two overlapping leaders, below / above
SMALL_FLOPS = 1e8
RETIME_S = 0.3


@dataclass
class Trial:
    candidate: str
    config: Config
    timing: Timing | None = None
    error: str | None = None
    run: Callable[[], Any] | None = field(default=None, repr=False, compare=False)  # to re-time

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"candidate": self.candidate, "config": self.config}
        if self.timing is not None:
            d.update(self.timing.to_dict())
        if self.error is not None:
            d["error"] = self.error
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trial:
        timing = Timing(d["median"], d["spread"], d["count"]) if "median" in d else None
        return cls(d["candidate"], d["config"], timing, d.get("error"))


@dataclass
class Decision:
    key: str
    choice: Choice
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> why it cannot run this
    trials: list[Trial] = field(default_factory=list)
    busy: bool = False  # the trials ran while other processes loaded the machine (provisional)


Runner = Callable[[Candidate, Config], Callable[[], Any]]
Verifier = Callable[[Any], "str | None"]

_memo: dict[tuple[str, str], Choice] = {}
_ADOPTED: dict[str, dict] = {}  # key -> the entry a distributed job's adopted choice came with
_calls: dict[tuple[str, str], int] = {}  # op calls per (cache, key) that were not memo hits
# Threads that miss the same (cache, key) at once wait for the first one's decision instead of
# each measuring it (four serving threads meeting a new size each tuned it, about 1 s apiece,
# and stored four entries); and one thread measures at a time, as its timings assume
_DECIDING: dict[tuple[str, str], threading.RLock] = {}
_DECIDING_LOCK = threading.Lock()
_MEASURING = threading.RLock()
_IN_MEASURE = threading.local()  # depth: this thread is measuring


def clear_memo() -> None:
    _memo.clear()
    _calls.clear()
    _DECIDING.clear()
    _ADOPTED.clear()
    shared.reset()


def entry_for(key: str, cache) -> dict | None:
    """The measured entry behind this process's choice for `key`: the one a distributed job's
    choice was adopted with (the deciding rank's: this rank's cache lacks it on a machine of
    another kind), else `cache`'s. So a rule read off the entry (nn's KERNEL_MARGIN) gives every
    rank the same answer."""
    return _ADOPTED.get(key) or cache.get(key)


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader or multiprocessing worker) asks again what the parent
    decided: a parent's choice of torch's CPU op for numpy data hung in a child forked after
    torch's OpenMP team ran (a conv2d under tune="off", 2 threads), and `split_candidates` leaves
    torch out there (threads.torch_team_forked). A new epoch makes every per-call plan memo miss
    once; each decision is then a memo or cache lookup again."""
    global _DECIDING_LOCK, _MEASURING
    # (a parent's thread may have held them at the fork: it does not exist here)
    _DECIDING_LOCK, _MEASURING = threading.Lock(), threading.RLock()
    clear_memo()
    # the parent's process group is not this process's: its store's socket is the parent's, and
    # the child is no rank (a DataLoader worker of a DDP job)
    dist = devices.imported("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        _INHERITED_JOBS.add(_job_id(dist))
    _settings.new_epoch()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def split_candidates(
    problem: Problem, cands: list[Candidate], settings: Settings,
    pending: list[Candidate] | None = None,
) -> tuple[list[Candidate], dict[str, str]]:
    """The candidates that may run `problem` under the knobs, and why each other one may not.

    With a `pending` list, a candidate whose kernels are not compiled in this process yet goes
    there instead, before it is asked `supports`, which would import (and so compile) its kernel
    module on the caller's time."""
    usable, skipped = [], {}
    home: list[float | None] = []  # the data's device's vendor roofline, once it is needed
    for c in cands:
        if settings.backend and c.backend != settings.backend:
            skipped[c.name] = f"KERNELKIT_BACKEND={settings.backend}"
        elif settings.device and c.device != settings.device:
            skipped[c.name] = f"KERNELKIT_DEVICE={settings.device}"
        elif c.device == "cuda" and not devices.cuda_available():
            skipped[c.name] = "no CUDA device"
        elif (c.own_data_only and c.native != problem.lib and not settings.backend
              and stand_in(c, problem) is None):
            skipped[c.name] = (f"{problem.lib} data: its thread pool would stall {problem.lib}'s "
                               f"(chosen for {c.native} data, or forced)")
        elif (c.native == "torch" and c.device == "cpu" and problem.lib != "torch"
              and not settings.backend and threads.torch_team_forked()):
            skipped[c.name] = (f"{problem.lib} data in a forked process, where torch's "
                               f"multi-threaded OpenMP regions hang")
        elif (reason := c.precheck(problem)
              or _far_from_data(c, problem, settings, cands, home)) is not None:
            skipped[c.name] = reason
        elif pending is not None and c.compiles and not compiling.ready(c.module, problem.dtype):
            pending.append(c)
        elif (reason := c.supports(problem)) is not None:
            skipped[c.name] = reason
        else:
            usable.append(c)
    if not usable and not pending:
        forced = [f"backend={settings.backend}"] * bool(settings.backend) + \
                 [f"device={settings.device}"] * bool(settings.device)
        why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        if forced:
            raise ValueError(f"{problem.op}: the forced {' '.join(forced)} cannot run this call ({why})")
        raise ValueError(f"{problem.op}: no candidate can run this call ({why})")
    return usable, skipped


# A kernel that must still be compiled, on another device than the data, is not compiled for a
# call whose cost model (roofline plus both copies over the link) puts it this many times behind
# the vendor on the data's device. Why: on an H200 a patched ResNet-50 (float16, CUDA tensors)
# did not finish its first call in 120 s with compiles in the foreground (docs/performance.md,
# "GPU, first run"); by the code, the Numba CPU kernels were candidates for that data and compiled
# on the caller's time (the likely part of those 120 s, not timed there), while the cost model
# puts them thousands of times behind cuDNN. The margin is wide (the roofline alone can be off
# by a few times); what comes within it is compiled as before.
FAR_FROM_DATA = 20.0


def _home_roofline(problem: Problem, cands: list[Candidate]) -> float | None:
    """The roofline seconds of the fastest vendor on the data's own device that can run it."""
    times = [model.roofline_seconds(c, problem) for c in cands
             if c.vendor and c.device == problem.device and c.precheck(problem) is None]
    return min(times) if times else None


def _far_from_data(c: Candidate, problem: Problem, settings: Settings, cands: list[Candidate],
                   home: list[float | None]) -> str | None:
    """Why `c` is not compiled for `problem` (FAR_FROM_DATA), or None; `home` memoises the
    vendor's roofline across one call's candidates. A forced device or backend is obeyed."""
    if (not c.compiles or c.device == problem.device or settings.device or settings.backend
            or compiling.ready(c.module, problem.dtype)):
        return None
    if not home:
        home.append(_home_roofline(problem, cands))
    if home[0] is None:
        return None
    t = model.roofline_seconds(c, problem)
    if t <= FAR_FROM_DATA * home[0]:
        return None
    return (f"{problem.device} data: by the cost model {t / home[0]:.0f}x the {problem.device} "
            f"vendor's time with both copies; not compiled for it")


def default_choice(problem: Problem, usable: list[Candidate]) -> Choice:
    """The safe choice: the vendor library where the data lives (the one of the data's own array
    library first: numpy's BLAS for numpy arrays, torch for tensors), else the first usable
    candidate."""
    ranked = sorted(usable, key=lambda c: (c.device != problem.device, not c.vendor,
                                           c.native != problem.lib))
    cand = ranked[0]
    return Choice(cand.name, cand.space(problem)[0], "default")


def forced_suffix(settings: Settings) -> str:
    return ",".join(f"{k}={v}" for k, v in (("backend", settings.backend),
                                            ("device", settings.device)) if v)


def choose(
    problem: Problem,
    cands: list[Candidate],
    runner: Runner,
    verify: Verifier,
    settings: Settings,
) -> Choice:
    """`decide`, memoised per (cache, key): a memo hit does no other work. Inside a distributed
    job (torch.distributed initialised, several ranks) a miss is decided once, by the first rank
    to miss it, and shared through the job's store (`autotune.shared`: no collective, so ranks
    that miss other sizes, or miss at other times, never wait for each other); every rank runs
    that choice. `KERNELKIT_TUNE=pinned` needs no store."""
    key = make_key(problem, forced_suffix(settings))
    # (the mode too: a choice the model made is no answer for `use(tune="measure")`, nor a
    # measured one for "off")
    memo_key = (str(settings.cache_path), key, settings.tune)
    hit = _memo.get(memo_key)
    if hit is not None:
        return hit
    # (counted before waiting: a thread that waited for another's model choice, whose recheck
    # budget that one then set, would otherwise measure at once)
    calls = _calls[memo_key] = _calls.get(memo_key, 0) + 1
    dist = distributed_peers() if settings.tune != "pinned" else None
    if getattr(_IN_MEASURE, "depth", 0):
        # an op a measured candidate calls decides without waiting (a thread deciding that key
        # may be waiting to measure; another rank's claim on it, to be published)
        return _choose(problem, cands, runner, verify, settings, key, memo_key, dist, calls,
                       wait=False)
    with _DECIDING_LOCK:
        deciding = _DECIDING.setdefault(memo_key, threading.RLock())
    with deciding:
        hit = _memo.get(memo_key)  # (decided by the thread this one waited for)
        if hit is not None:
            return hit
        return _choose(problem, cands, runner, verify, settings, key, memo_key, dist, calls)


def _choose(problem, cands, runner, verify, settings, key, memo_key, dist, calls, *,
            wait: bool = True) -> Choice:
    background = settings.compile == "background"

    def mine() -> Choice:
        return decide(problem, cands, runner, verify, settings, key=key, background=background,
                      calls=calls).choice

    store = shared.store_of(dist) if dist is not None else None
    if store is None:  # (not distributed, or a group whose store does not answer)
        choice = mine()
    else:
        cache = cache_for(settings.cache_path)

        def publish(c: Choice):
            return c.to_dict(), c.recheck_after, cache.fp, cache.get(key)

        def adopt(payload) -> Choice:
            picked, recheck, fp, entry = payload
            if entry is not None:  # (what the job's choice was measured on, for every rank)
                _ADOPTED[key] = entry
            if entry is not None and fp == cache.fp:
                # the same measurement, kept by every rank of this kind; ranks of one machine
                # may share the file the deciding rank appended it to: not again
                cache.refresh()
                if not same_entry(cache.get(key), entry):
                    cache.put(key, entry)
            return Choice(picked["candidate"], picked["config"], picked["source"], recheck)

        choice = shared.decide_shared(store, _job_id(dist), f"{settings.tune}|{key}", mine,
                                      adopt, publish, wait=wait)
    if choice.recheck_after:  # the caller's plan counts them down, then asks again
        _calls[memo_key] = calls + choice.recheck_after - 1
    elif choice.source != "warming":  # decided again once the compiling candidates are ready
        _memo[memo_key] = choice
    return choice


# What a torch CPU plan on numpy data runs instead where torch's OpenMP team would stall or hang
# (ops/dispatch.py, _bound): numpy's own BLAS.
STAND_IN = "numpy-cpu"


def stand_in(c: Candidate, problem: Problem) -> Candidate | None:
    """numpy's BLAS where `c` is torch's CPU candidate on numpy data and numpy's BLAS runs the
    problem (so `c`, though `own_data_only`, may run it: its plan steps aside to this one while
    OpenBLAS's workers may spin); None otherwise."""
    if problem.lib != "numpy" or c.device != "cpu" or c.native != "torch":
        return None
    try:
        own = core.get(problem.op, STAND_IN)
    except KeyError:  # (an op numpy has no kernel for)
        return None
    return own if own.precheck(problem) is None and own.supports(problem) is None else None


def torch_deterministic() -> bool:
    """Whether torch is imported and `torch.use_deterministic_algorithms(True)` is in force
    (never imports torch)."""
    torch = devices.imported("torch")
    return torch is not None and torch.are_deterministic_algorithms_enabled()


def distributed_peers():
    """torch.distributed when this process is one of several initialised ranks, else None
    (never imports torch itself: a job that uses it has imported it; nor reads it half imported
    by another thread: "partially initialized module 'torch.distributed'" from every call of
    other threads while one's first tuning imported torch)."""
    dist = devices.imported("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    if _INHERITED_JOBS and _job_id(dist) in _INHERITED_JOBS:  # (a forked child of a rank)
        return None
    return dist if dist.get_world_size() > 1 else None


_INHERITED_JOBS: set[int] = set()  # the process groups a forked child inherited


def _job_id(dist) -> int:
    """The identity of this process's default process group (a new one after a re-init)."""
    return id(dist.distributed_c10d._get_default_group())


def decide(
    problem: Problem,
    cands: list[Candidate],
    runner: Runner,
    verify: Verifier,
    settings: Settings,
    *,
    key: Key | None = None,
    mode: str | None = None,
    remeasure: bool = False,
    background: bool = False,
    calls: int | None = None,
) -> Decision:
    """What runs `problem`: the cached choice (unless `remeasure`), else the miss policy (`mode`,
    default the knob), storing what was measured.

    With `background`, candidates whose kernels are still compiling (see `kernelkit.compiling`)
    sit this call out unless nothing else can run it: the call then runs on the cached choice if
    that is ready, else on the best ready candidate (source "warming", neither memoised nor
    stored), and is decided in full once they are ready.

    `calls` (op calls of this size so far; None for `tune` and `explain`, which always measure)
    makes `auto` measure a miss only once that pays for itself (see TIMING_BUDGET_S); until then
    the model's choice runs, with `recheck_after` set and nothing stored."""
    key = key or make_key(problem, forced_suffix(settings))
    if mode is None and settings.tune in ("auto", "measure") and torch_deterministic():
        # torch.use_deterministic_algorithms(True): a size runs one choice for good, as under
        # `pinned` (a first call's stand-in while kernels compiled, or the cost model's config
        # until measuring paid, changed the result's last bits between calls with the same
        # inputs: a conv's weight gradient 1.9e-7 apart). `tune` and `explain` still measure.
        mode, background = "pinned", False
    pending: list[Candidate] = []
    usable, skipped = split_candidates(problem, cands, settings, pending if background else None)
    if pending and (not usable or _torch_stand_in_only(problem, usable)):
        # Nothing else can run it (a forced backend): compile it now. Or numpy data whose only
        # ready candidate is torch's, torch not imported: load what is compiled on disk rather
        # than import torch for the stand-in (a first preprocess 0.61 s against 1.32 s, medians,
        # 2-core Zen 4; and no torch in a program that never uses it)
        now = pending if not usable else [c for c in pending
                                          if compiling.on_disk(c.module, problem.dtype)]
        for c in now:
            compiling.warm_here(c.module, problem.dtype)
        if now:  # (what is still compiling goes back to `pending`)
            pending = []
            usable, skipped = split_candidates(problem, cands, settings, pending)
    for c in pending:  # off the critical path (kernelkit.compiling); this call runs without them
        compiling.submit(c.module, problem.dtype)
    cache = cache_for(settings.cache_path)
    explicit, mode = mode is not None, mode or settings.tune
    # While candidates compile, a cache file this process has not read yet stays unread: reading
    # it means the machine's fingerprint (package versions: about 1 ms) and parsing, 1.5-2 ms of a
    # first call that is meant to cost what the vendor's does. The decision after the compile
    # reads it (a cached vendor choice is lost for those calls only).
    entry = cache.get(key) if cache.loaded or not pending else None
    if (entry is None or entry.get("provisional")) and cache.loaded and cache.refresh():
        entry = cache.get(key)  # (another process may have measured it since this one read)
    if entry is not None and (why := _config_error(entry, usable)) is not None:
        cache.unusable(key, why)  # (warned once) measured again below, as a miss
        entry = None
    if not remeasure and entry is not None:
        # a provisional entry (measured while the machine was busy) is a hint, not the truth:
        # measuring modes measure it again, unless it was measured busy BUSY_RETRIES times
        # running (a machine always this busy when this size runs: DataLoader workers that load
        # each other measured each size again in every epoch's new workers, without end)
        busy_times = entry.get("provisional")
        trusted = (not busy_times or _busy_count(busy_times) >= BUSY_RETRIES
                   or mode not in ("measure", "auto"))
        if trusted and any(c.name == entry["choice"]["candidate"] for c in usable):
            choice = Choice(entry["choice"]["candidate"], entry["choice"]["config"], "cache")
            return Decision(key, choice, skipped,
                            [Trial.from_dict(t) for t in entry.get("trials", [])],
                            busy=bool(busy_times))
    if pending:
        for c in pending:
            skipped[c.name] = "compiling in the background"
        return Decision(key, _warming_choice(problem, usable, entry), skipped)
    if mode == "off":
        return Decision(key, default_choice(problem, usable), skipped)
    if mode == "pinned":  # never measure, never write: every reader of this cache agrees
        family = cache.family_entries(key.family)
        return Decision(key, model.predict(key, problem, usable, family), skipped)
    if not explicit and len(usable) == 1 and len(space := usable[0].space(problem)) == 1:
        # Nothing to choose between: skip timing (explain and `tune` still measure it).
        source = "forced" if settings.backend or settings.device else "default"
        return Decision(key, Choice(usable[0].name, space[0], source), skipped)
    if mode == "model":
        family = cache.family_entries(key.family)
        return Decision(key, model.predict(key, problem, usable, family), skipped)
    measured, configs_for = usable, None  # measure: every candidate, every config of its space
    tie = 0.0  # measure: time to the budget; overlapping leaders are always re-timed
    if mode == "auto":
        entries = cache.family_entries(key.family)
        preds = model.predict_times(key, problem, usable, entries)
        if model.confident(preds):  # the fits tell the winner apart: no measurement
            return Decision(key, Choice(preds[0].candidate, preds[0].config, "model"), skipped)
        limit = MAX_CONFIGS
        if any(q.points for q in preds):  # measure only what the model cannot tell apart
            keep = {q.candidate for q in model.contenders(preds, TOP_CANDIDATES)}
            measured = [c for c in usable if c.name in keep]
            limit = FITTED_CONFIGS  # each contender's best configs by the model (ranked_configs)
            tie = AUTO_TIE
        configs_for = lambda c: model.ranked_configs(c, problem, key, entries, limit)
        if calls is not None and preds:
            cost = tuning_cost(problem, preds, sum(len(configs_for(c)) for c in measured)) \
                + block_waits(measured)
            gain = saving_per_call(preds)
            if calls * gain < cost:  # not yet worth it: the model's choice, asked again later
                due = math.ceil(cost / gain) if gain > 0 else 1 << 30
                choice = dataclasses.replace(model.predict(key, problem, usable, entries),
                                             recheck_after=max(1, due - calls))
                return Decision(key, choice, skipped)
    for _attempt in range(2):  # a busy machine gets one more try
        before = timing.snapshot()
        trials = measure_all(problem, measured, runner, verify, configs_for,
                             decided=tie or None)
        busy = timing.machine_busy(before, timing.snapshot())
        if not busy:
            break
    ok = [t for t in trials if t.timing is not None]
    if not ok and trials and all((t.error or "").startswith(UNVERIFIED) for t in trials):
        # nothing could be verified, and no vendor was among the measured (`auto` measures only
        # the model's contenders; a forced backend): the default runs, nothing is stored
        return Decision(key, default_choice(problem, usable), skipped, trials)
    if not ok:
        errors = "; ".join(f"{t.candidate} {json.dumps(t.config)}: {t.error}" for t in trials)
        raise RuntimeError(f"{problem.op}: every candidate failed ({errors})")
    # auto (a fitted family) stops timing once the fastest is told apart and does not re-time
    # a near tie: either leader is as good as the other
    best = _winner(problem, measured, ok, tie=tie)
    choice = Choice(best.candidate, best.config, "measured")
    cache.put(key, {
        "choice": choice.to_dict(),
        "trials": [t.to_dict() for t in trials],
        # the key's fields, so the cost model never parses keys back apart
        "problem": {"op": problem.op, "dtype": problem.dtype, "lib": problem.lib,
                    "device": problem.device,
                    "shapes": [list(s) for s in problem.shapes], "flops": problem.flops,
                    "nbytes": problem.nbytes, "family": key.family, "dims": list(key.dims)},
        "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **({"provisional": _busy_count((entry or {}).get("provisional")) + 1} if busy else {}),
    })
    if explicit or remeasure:
        _supersede((str(settings.cache_path), key), choice)
    return Decision(key, choice, skipped, trials, busy=busy)


# A size measured on a busy machine this many times running keeps its last measurement (see
# `decide`); before, each new process measured it again.
BUSY_RETRIES = 3


def _busy_count(provisional) -> int:
    """How many times running an entry was measured busy: its "provisional" field (True, from
    caches written before the count, is once)."""
    if provisional is True:
        return 1
    return provisional if isinstance(provisional, int) and provisional > 0 else 0


def _supersede(cache_key: tuple[str, str], choice: Choice) -> None:
    """`explain` or `tune` measured `choice` for a (cache, key) that op calls may have decided
    otherwise, under any tune mode (the model's guess, a default while measuring did not pay
    yet): forget their decisions, and start a new settings epoch so the plans memoised per call
    signature miss once too."""
    stale = False
    for memo_key in {k for k in (*_memo, *_calls) if k[:2] == cache_key}:
        old = _memo.pop(memo_key, None)
        counted = _calls.pop(memo_key, None)
        if old is not None and (old.candidate, old.config) == (choice.candidate, choice.config):
            _memo[memo_key] = old
        elif old is not None or counted:
            stale = True
    if stale:
        _settings.new_epoch()


def block_waits(measured: list[Candidate]) -> float:
    """The timer's waits, in seconds, where numpy's BLAS races another library's kernels
    (`timing._measure_in_blocks`): at most two of OpenBLAS's spin and two of torch's team."""
    blas = [c.module.startswith(threads.BLAS_PACKAGE) for c in measured]
    return 2 * (threads.BLAS_SPIN_S + timing.TEAM_SPIN_S) if any(blas) and not all(blas) else 0.0


def tuning_cost(problem: Problem, preds: list[model.Prediction], configs: int) -> float:
    """What measuring `configs` (candidate, config) pairs is expected to cost, in seconds: each is
    run once to verify and timed for its share of the budget (longer runs: at least 5 runs)."""
    run = max(q.pessimistic for q in preds)
    unit = TIMING_BUDGET_S[problem.flops >= SMALL_FLOPS]
    return configs * (run + max(unit, 5 * run)) + RETIME_S


def saving_per_call(preds: list[model.Prediction]) -> float:
    """What measuring could save per call: the pessimistic time of the model's own choice minus
    the best optimistic time among the predictions (0 when the model is sure)."""
    chosen = min(q.pessimistic for q in preds)
    optimistic = min(q.seconds * math.exp(-q.log_error) for q in preds)
    return max(0.0, chosen - optimistic)


def _config_error(entry: dict, usable: list[Candidate]) -> str | None:
    """Why the cached choice's config cannot run on its candidate (if that one is usable here),
    e.g. an entry written by another build of the kernel under the same version; else None."""
    choice = entry["choice"]
    cand = next((c for c in usable if c.name == choice["candidate"]), None)
    if cand is None:
        return None
    why = cand.config_error(choice["config"])
    return None if why is None else f"{cand.name} config {choice['config']}: {why}"


def _torch_stand_in_only(problem: Problem, usable: list[Candidate]) -> bool:
    """numpy data whose only ready candidates are torch's, in a process that has not imported
    torch (the stand-in would import it)."""
    return (problem.lib == "numpy" and devices.imported("torch") is None
            and all(c.native == "torch" for c in usable))


def _warming_choice(problem: Problem, ready: list[Candidate], entry: dict | None) -> Choice:
    """While some candidates compile: the fastest ready one the cache has timed for this key,
    else the safe default."""
    by_name = {c.name: c for c in ready}
    timed = [Trial.from_dict(t) for t in (entry or {}).get("trials", ())]
    timed = [t for t in timed if t.timing is not None and t.candidate in by_name
             and by_name[t.candidate].config_error(t.config) is None]
    if timed:
        best = min(timed, key=_rank)
        return Choice(best.candidate, best.config, "warming")
    return dataclasses.replace(default_choice(problem, ready), source="warming")


def _rank(t: Trial) -> tuple:
    """Fastest first; equal medians broken by name and config, never by measuring order."""
    return (t.timing.median, t.candidate, json.dumps(t.config, sort_keys=True))


def _winner(problem: Problem, usable: list[Candidate], ok: list[Trial], tie: float = 0.0) -> Trial:
    """The fastest trial; when the runner-up's interval (median +- spread) overlaps the leader's,
    the two are timed again, interleaved, with a longer budget before one is declared the winner
    (unless their medians are within `tie` of each other: then either will do). A kernel then
    replaces the vendor only where its lead is larger than its own spread (`_vendor_unless_clear`)."""
    return _vendor_unless_clear(_fastest(problem, usable, ok, tie), ok, usable)


def _vendor_unless_clear(best: Trial, ok: list[Trial], usable: list[Candidate]) -> Trial:
    """`best`, or the fastest vendor trial where `best` (not a vendor) leads it by no more than
    `best`'s spread: inside its own noise a kernel is not shown to be faster, and the vendor is
    the safe side. Why: on an H200 the tuner measured a Triton GEMM at 8192^3 fp16 1.652 ms
    (interquartile spread 0.100, 5 samples) against cuBLAS's 1.703 and chose Triton; timed with
    CUDA events in the same run cuBLAS was 1.49 ms and Triton 1.83 (docs/performance.md, "GPU,
    first run")."""
    vendors = {c.name for c in usable if c.vendor}
    if best.candidate in vendors:
        return best
    ranked = sorted((t for t in ok if t.candidate in vendors), key=_rank)
    if ranked and best.timing.median + best.timing.spread >= ranked[0].timing.median:
        return ranked[0]
    return best


def _fastest(problem: Problem, usable: list[Candidate], ok: list[Trial], tie: float) -> Trial:
    ranked = sorted(ok, key=_rank)
    if len(ranked) >= 2:
        a, b = ranked[0], ranked[1]
        if a.timing.median + a.timing.spread >= b.timing.median - b.timing.spread \
                and b.timing.median >= (1 + tie) * a.timing.median \
                and a.run is not None and b.run is not None:
            try:
                ta, tb = measure_interleaved([a.run, b.run], sync=_sync_for(problem, usable),
                                             min_reps=9,
                                             budget_s=RETIME_BUDGET_S[problem.flops >= SMALL_FLOPS])
                a.timing, b.timing = ta, tb
            except Exception as exc:  # noqa: BLE001 - keep the first timings
                if raised_by_signal_handler(exc):
                    raise
            ranked = sorted(ok, key=_rank)
    return ranked[0]


def _sync_for(problem: Problem, usable: list[Candidate]):
    needs = problem.device == "cuda" or any(c.device == "cuda" for c in usable)
    return cuda_sync if needs else None


def measure_all(
    problem: Problem, usable: list[Candidate], runner: Runner, verify: Verifier,
    configs_for: Callable[[Candidate], list[Config]] | None = None,
    decided: float | None = None,
) -> list[Trial]:
    """Verify every (candidate, config), then time the verified ones interleaved. The configs are
    `configs_for(candidate)`, by default the candidate's whole (size-pruned) space. With
    `decided`, timing stops as soon as the fastest is told apart (see measure_interleaved)."""
    with _MEASURING:
        _IN_MEASURE.depth = getattr(_IN_MEASURE, "depth", 0) + 1
        try:
            return _measure_all(problem, usable, runner, verify, configs_for, decided)
        finally:
            _IN_MEASURE.depth -= 1


def _measure_all(problem, usable, runner, verify, configs_for, decided) -> list[Trial]:
    sync = _sync_for(problem, usable)
    if devices.has_module("torch"):
        # the verifiers' float64 references run on torch: imported here, whole, not by the
        # first reference, where a caller's deadline could strike it half made
        import_whole("torch")
    trials, fns = [], []
    reference: list = []  # why the float64 reference could not be built, once it could not
    for cand in usable:
        if cand.native == "torch" and cand.device == "cpu":
            threads.team_used()  # (timing it runs torch's CPU ops: its OpenMP team)
        for config in (configs_for(cand) if configs_for else cand.space(problem)):
            trial = Trial(cand.name, config)
            trials.append(trial)
            try:
                fn = runner(cand, config)
                out = fn()
                if sync:
                    sync()
                trial.error = _verified(verify, out, cand, reference)
            except Exception as exc:  # noqa: BLE001 - a failing config is recorded, never fatal
                if raised_by_signal_handler(exc):
                    raise
                trial.error = f"{type(exc).__name__}: {exc}"[:500]
            if trial.error is None:
                trial.run = fn
                fns.append((trial, fn))
    if fns:
        # Total budget grows with the number of contenders; tiny problems need less.
        budget = TIMING_BUDGET_S[problem.flops >= SMALL_FLOPS] * len(fns)
        try:
            timings = measure_interleaved([fn for _, fn in fns], sync=sync, budget_s=budget,
                                          decided=decided)
        except Exception as exc:  # noqa: BLE001 - a kernel that ran once but fails when repeated
            if raised_by_signal_handler(exc):
                raise
            timings = [_time_alone(trial, fn, sync) for trial, fn in fns]
        for (trial, _), timing in zip(fns, timings):
            if trial.error is None:
                trial.timing = timing
    return trials


UNVERIFIED = "unverified: the float64 reference ran out of memory"


def _verified(verify: Verifier, out, cand: Candidate, reference: list) -> str | None:
    """`verify(out)`; where the float64 reference does not fit in memory (a broadcast operand
    of gigabytes, copied at full size; a batch of large images), the vendor runs unverified and
    a kernel is left out (`decide` runs the default where no vendor was measured). Before, the
    out-of-memory error failed every candidate, and the call raised "every candidate failed"
    where the vendor alone would have computed it. `reference` keeps the first such error: the
    reference is not built again for each config."""
    if not reference:
        try:
            return verify(out)
        except (MemoryError, RuntimeError) as exc:
            # (torch's CPU allocator raises RuntimeError: "DefaultCPUAllocator: can't allocate
            # memory"; CUDA's "out of memory")
            if not isinstance(exc, MemoryError) and "allocate" not in str(exc) \
                    and "out of memory" not in str(exc):
                raise
            reference.append(f"{type(exc).__name__}: {exc}"[:300])
    return None if cand.vendor else f"{UNVERIFIED} ({reference[0]})"[:500]


def _time_alone(trial: Trial, fn, sync) -> Timing | None:
    try:
        return measure(fn, sync=sync, budget_s=0.05)
    except Exception as exc:  # noqa: BLE001
        if raised_by_signal_handler(exc):
            raise
        trial.error = f"{type(exc).__name__}: {exc}"[:500]
        return None
