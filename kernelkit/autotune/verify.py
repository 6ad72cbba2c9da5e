"""`kernelkit cache verify`: re-time the top two of each cached entry and flag drift.

A cached choice was right when it was measured; a driver update, a new library version that
kept the fingerprint, thermal limits or a noisy day can make it wrong since. For each of this
machine's entries, the stored winner and the best stored runner-up (another candidate if the
entry timed one, else the next config) are run again on fresh inputs of the entry's shape,
verified against the op's reference, and timed side by side. An entry drifts when the winner no
longer wins, or when its time moved by more than the tolerance. `fix` rewrites drifted entries
with the new timings and, where the runner-up now wins, the new choice.

The core (`verify_entry`) takes the candidates and a runner like `tuner.decide`, so tests describe
devices by a timing model on an injected clock; `verify_cache` rebuilds each entry's call from its
op spec (`OpSpec.dims_of` turns the stored shapes back into the op's preset dims; an entry whose
rebuilt call does not have the entry's key, e.g. a transposed or biased matmul, is skipped with
the reason).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from .. import core
from .. import settings as _settings
from ..core import Candidate, Config
from ..signals import raised_by_signal_handler
from . import timing
from .cache import Cache
from .key import make_key
from .timing import Timing

TOLERANCE = 0.25  # a winner's time may move by this fraction before the entry counts as drifted
RETIME_BUDGET_S = (0.2, 0.5)  # the side-by-side timing of the two, below / above SMALL_FLOPS
SMALL_FLOPS = 1e8

# where a problem's data lives (lib, device) -> `make_inputs`' `where`
_WHERE = {("numpy", "cpu"): "numpy", ("torch", "cpu"): "torch", ("torch", "cuda"): "cuda"}


@dataclass
class Verdict:
    key: str
    status: str  # "ok" | "drift" | "skipped" | "busy"
    reason: str = ""  # why drifted or skipped
    winner: str = ""  # "candidate {config}" stored as the choice
    winner_stored_s: float | None = None
    winner_now_s: float | None = None
    runner_up: str = ""
    runner_up_stored_s: float | None = None
    runner_up_now_s: float | None = None
    fixed: bool = False

    @property
    def change(self) -> float | None:
        """The winner's time now over its stored time, minus 1 (+0.3: 30% slower now)."""
        if self.winner_now_s and self.winner_stored_s:
            return self.winner_now_s / self.winner_stored_s - 1.0
        return None

    def to_dict(self) -> dict:
        return asdict(self) | {"change": self.change}


def _label(candidate: str, config: Config) -> str:
    return f"{candidate} {json.dumps(config, sort_keys=True, separators=(',', ':'))}"


def top_two(entry: dict) -> list[dict]:
    """The stored winner's trial, then the best runner-up: the fastest trial of another
    candidate, else the fastest other config of the same one (fewer if the entry has fewer)."""
    timed = sorted((t for t in entry.get("trials", []) if t.get("median")),
                   key=lambda t: (t["median"], t["candidate"], json.dumps(t["config"], sort_keys=True)))
    choice = entry["choice"]
    win = next((t for t in timed if t["candidate"] == choice["candidate"]
                and t["config"] == choice["config"]), None)
    if win is None:
        return []
    others = [t for t in timed if t is not win]
    other_cand = [t for t in others if t["candidate"] != win["candidate"]]
    return [win] + (other_cand or others)[:1]


def verify_entry(
    key: str,
    entry: dict,
    cands: list[Candidate],
    runner: Callable[[Candidate, Config], Callable[[], object]],
    check: Callable[[object], str | None],
    *,
    flops: float = 0.0,
    sync: Callable[[], None] | None = None,
    tolerance: float = TOLERANCE,
) -> tuple[Verdict, dict | None]:
    """Re-time the entry's top two with `runner` (verifying each output with `check`); the
    verdict, and the entry as it would be rewritten (None when nothing changed or nothing was
    timed)."""
    pair = top_two(entry)
    if not pair:
        return Verdict(key, "skipped", "no timed winner in the entry"), None
    v = Verdict(key, "ok", winner=_label(pair[0]["candidate"], pair[0]["config"]),
                winner_stored_s=pair[0]["median"])
    if len(pair) > 1:
        v.runner_up = _label(pair[1]["candidate"], pair[1]["config"])
        v.runner_up_stored_s = pair[1]["median"]
    by_name = {c.name: c for c in cands}
    fns = []
    for t in pair:
        cand = by_name.get(t["candidate"])
        if cand is None:
            if t is pair[0]:
                return _skip(v, f"{t['candidate']} is not available here"), None
            continue  # the runner-up cannot run here: check the winner alone
        try:  # (a config this build rejects fails here: a verdict, not the whole run's end)
            fn = runner(cand, t["config"])
            out = fn()
            if sync:
                sync()
            error = check(out)
        except Exception as exc:  # noqa: BLE001 - reported, never fatal
            if raised_by_signal_handler(exc):
                raise
            error = f"{type(exc).__name__}: {exc}"[:300]
        if error is not None:
            if t is pair[0]:
                v.status, v.reason = "drift", f"the winner fails verification now: {error}"
                return v, None  # nothing trustworthy to store: `tune --remeasure` it
            continue
        fns.append((t, fn))
    before = timing.snapshot()
    timings = timing.measure_interleaved([fn for _, fn in fns], sync=sync, min_reps=9,
                                         budget_s=RETIME_BUDGET_S[flops >= SMALL_FLOPS])
    now = {id(t): tm for (t, _), tm in zip(fns, timings)}
    v.winner_now_s = now[id(pair[0])].median
    if len(pair) > 1 and id(pair[1]) in now:
        v.runner_up_now_s = now[id(pair[1])].median
    if timing.machine_busy(before, timing.snapshot()):
        v.status, v.reason = "busy", "other processes loaded the machine while timing: not judged"
        return v, None
    reasons = []
    if v.runner_up_now_s is not None and v.runner_up_now_s < v.winner_now_s:
        reasons.append(f"the runner-up wins now ({v.runner_up_now_s / v.winner_now_s:.2f}x "
                       "the winner's time)")
    if abs(v.change) > tolerance:
        reasons.append(f"the winner's time moved {v.change:+.0%} (tolerance {tolerance:.0%})")
    if not reasons:
        return v, None
    v.status, v.reason = "drift", "; ".join(reasons)
    return v, _updated(entry, fns, now)


def _updated(entry: dict, fns: list[tuple[dict, object]], now: dict[int, Timing]) -> dict:
    """The entry with the re-timed trials' new timings and, if it changed, the new winner."""
    trials = [dict(t) for t in entry.get("trials", [])]
    best = None
    for t, _ in fns:
        tm = now[id(t)]
        for x in trials:
            if x["candidate"] == t["candidate"] and x["config"] == t["config"]:
                x.update(tm.to_dict())
        if best is None or tm.median < best[1]:
            best = (t, tm.median)
    winner = best[0]
    choice = {"candidate": winner["candidate"], "config": winner["config"], "source": "measured"}
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # measured now: an import of the older export (a deploy script's, on every start) no longer
    # puts the drifted entry back (`cache.newer_than` compares measured_at)
    return {**entry, "choice": choice, "trials": trials, "verified_at": stamp,
            "measured_at": stamp}


def _skip(v: Verdict, reason: str) -> Verdict:
    v.status, v.reason = "skipped", reason
    return v


def rebuild(key: str, entry: dict):
    """The prepared call (`core.Call`) of fresh inputs of the entry's shape, or the reason it
    cannot be rebuilt."""
    prob = entry.get("problem") or {}
    op = prob.get("op") or str(prob.get("family", "")).partition("|")[0]
    try:
        spec = core.op_spec(op)
    except ValueError:
        return f"unknown op {op!r}"
    where = _WHERE.get((prob.get("lib"), prob.get("device")), "numpy")
    shapes = tuple(tuple(s) if isinstance(s, list) else s for s in prob.get("shapes", ()))
    dims = spec.dims_of(shapes) if spec.dims_of is not None and spec.make_inputs else None
    if dims is None:
        return f"{op} has no way to rebuild inputs of shapes {shapes}"
    dtype = prob.get("dtype") or ("uint8" if op == "preprocess" else "float32")
    try:
        args, kwargs = spec.make_inputs(dims, dtype, where, seed=1)  # fresh: not the tuning seed
        call = spec.prepare(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - an entry this version cannot rebuild
        return f"cannot rebuild {op} {dims}: {type(exc).__name__}: {exc}"
    made = make_key(call.problem)
    if key != made and not key.startswith(made + "|"):
        return f"the rebuilt call's key differs ({made}): options the shapes do not carry"
    return call


def verify_cache(
    cache: Cache,
    *,
    tolerance: float = TOLERANCE,
    fix: bool = False,
    keys: Iterable[str] | None = None,
    candidates: Callable[[str], list[Candidate]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Verdict]:
    """Verify this machine's entries (or `keys`), fixing drifted ones when `fix`. `candidates`
    (default: the registry's) gives an op's candidates."""
    from . import tuner

    entries = cache.entries()
    out = []
    for key in sorted(keys if keys is not None else entries):
        entry = entries.get(key)
        if progress:
            progress(key)
        if entry is None:
            out.append(Verdict(key, "skipped", "not in the cache"))
            continue
        call = rebuild(key, entry)
        if isinstance(call, str):
            out.append(Verdict(key, "skipped", call))
            continue
        try:  # those that can run here (no CUDA candidate without a GPU), as the tuner sees them
            cands, _ = tuner.split_candidates(call.problem, (candidates or core.candidates)(
                call.problem.op), _settings.current())
        except ValueError as exc:
            out.append(Verdict(key, "skipped", str(exc)))
            continue
        on_gpu = call.problem.device == "cuda" or any(c.device == "cuda" for c in cands)
        v, new = verify_entry(key, entry, cands, call.runner, call.verify,
                              flops=call.problem.flops,
                              sync=timing.cuda_sync if on_gpu else None, tolerance=tolerance)
        if fix and new is not None:
            cache.put(key, new)
            v.fixed = True
        out.append(v)
    return out
