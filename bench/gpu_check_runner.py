"""The machinery of bench/gpu_check.py: phases with deadlines, checks, a compile counter, a plan
estimate, and a recorder that rewrites results.json / summary.md / log.txt after every check and
on SIGTERM (atomically: write to a temporary file, then os.replace), so a run killed at any point
leaves everything it finished. Nothing here imports torch, triton or cupy at import time.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Estimated seconds per compile (Triton 3.6 / NVRTC on the GPU machine's host CPU). The first
# run on an H200 machine (2026-12-04, docs/gpu-runs/2026-12-04-h200) measured 0.60 s per compile
# in the correctness phase (75 compiles, mostly Triton matmul and conv) and 0.93 s in the sweep
# (68, conv-heavy), 2.1-2.3 s for one CuPy/NVRTC build: these rates (its phases took 234 s where
# the plan then estimated 456). A run records the real counts and seconds per phase
# (results.json "phases").
COMPILE_S = {
    "triton.matmul": 0.6,
    "triton.conv": 0.9,
    "triton.conv_direct": 0.9,
    "triton.preprocess": 1.2,
    "cupy.matmul": 2.5,
    "cupy.conv": 3.0,
    "cupy.preprocess": 5.0,
    "numba": 8.0,
}
STARTUP_S = 15.0  # python + torch + triton imports before the first phase starts
LIMIT_S = 540.0  # the command's own limit on the GPU machine (timeout -s TERM -k 15 540)


def spec(*ints: int) -> str:
    """How Triton specialises integer arguments: equal to 1, a multiple of 16, or neither."""
    return "".join("1" if v == 1 else "a" if v % 16 == 0 else "x" for v in ints)


@dataclass
class Check:
    """One unit of work: ``fn()`` returns None (pass) or an error string, or raises (fail); a
    benchmark's ``fn()`` returns its row. ``keys``: the compiles it may cause, each
    ``(family, ...)`` with family a key of COMPILE_S; a key seen earlier in the run is free."""

    name: str
    fn: Callable[[], object]
    keys: tuple = ()
    run_s: float = 0.1
    bench: str = ""  # results key of a benchmark row ("bench_matmul", ...); "" for a check
    needs: str = ""  # "cupy" or "triton": skipped (not failed) when that family's preflight failed


@dataclass
class Phase:
    name: str
    budget_s: float
    build: Callable[[], list[Check]]
    about: str = ""
    status: str = "pending"  # pending, running, done, deadline, interrupted, skipped
    checks: list[Check] = field(default_factory=list)


def estimate(phases: list[Phase], built: dict[str, list[Check]] | None = None) -> list[dict]:
    """Per phase: planned checks, new compiles (by family) and estimated seconds, in run order;
    a phase's estimate is capped by its budget (the deadline stops it there)."""
    seen: set = set()
    rows = []
    for ph in phases:
        checks = (built or {}).get(ph.name)
        if checks is None:
            checks = ph.build()
        compiles: dict[str, int] = {}
        secs = 0.0
        for c in checks:
            for k in c.keys:
                if k not in seen:
                    seen.add(k)
                    compiles[k[0]] = compiles.get(k[0], 0) + 1
                    secs += COMPILE_S[k[0]]
            secs += c.run_s
        rows.append({"phase": ph.name, "budget_s": ph.budget_s, "checks": len(checks),
                     "compiles": sum(compiles.values()), "compiles_by_family": compiles,
                     "estimate_s": round(secs, 1), "fits": secs <= ph.budget_s,
                     "about": ph.about})
    return rows


class CompileCounter:
    """Counts Triton JIT compiles (and their seconds) through Triton's runtime hooks, and CuPy
    module builds through kernelkit's cupy KernelCache; both best effort (a version without the
    hooks counts nothing, and says so)."""

    def __init__(self) -> None:
        self.n = {"triton": 0, "cupy": 0}
        self.s = {"triton": 0.0, "cupy": 0.0}
        self.how = []
        self._t0: dict = {}

    def install(self) -> None:
        try:
            from triton import knobs

            def before(*args, **kw):
                self._t0[id(kw.get("key", args[0] if args else None))] = time.perf_counter()
                return None  # never skip the compile

            def after(*args, **kw):
                t0 = self._t0.pop(id(kw.get("key", args[0] if args else None)), None)
                self.n["triton"] += 1
                if t0 is not None:
                    self.s["triton"] += time.perf_counter() - t0
                return None

            knobs.runtime.jit_cache_hook = before
            knobs.runtime.jit_post_compile_hook = after
            self.how.append("triton: knobs.runtime jit hooks")
        except Exception as exc:  # noqa: BLE001 - counting is best effort
            self.how.append(f"triton: not counted ({type(exc).__name__}: {exc})")

    def install_cupy(self) -> None:
        try:
            from kernelkit.kernels.cupy import _common

            orig = _common.KernelCache.get
            counter = self

            def get(cache, key, build):
                def timed():
                    t0 = time.perf_counter()
                    try:
                        return build()
                    finally:
                        counter.n["cupy"] += 1
                        counter.s["cupy"] += time.perf_counter() - t0
                return orig(cache, key, timed)

            _common.KernelCache.get = get
            self.how.append("cupy: kernelkit KernelCache builds")
        except Exception as exc:  # noqa: BLE001
            self.how.append(f"cupy: not counted ({type(exc).__name__}: {exc})")

    def snapshot(self) -> tuple[int, float]:
        return sum(self.n.values()), sum(self.s.values())


class Recorder:
    """results.json, summary.md and log.txt in ``out``, rewritten after every check."""

    def __init__(self, out: Path, render: Callable[[dict], str], t_start: float) -> None:
        self.out = out
        self.render = render
        self.t_start = t_start
        self.lines: list[str] = []
        self.results: dict = {"meta": {}, "phases": [], "checks": [], "preflight": {}}
        self.phases: list[Phase] = []
        self.current: Phase | None = None
        self.counter = CompileCounter()
        self._n_writes = 0
        self.phase_deadline = math.inf

    # -- output -----------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        line = f"[{time.perf_counter() - self.t_start:6.1f}s] {msg}"
        print(line, flush=True)
        self.lines.append(line)

    def write(self) -> None:
        """Rewrite the three files (each: temporary file, then os.replace)."""
        now = time.perf_counter()
        self._n_writes += 1
        self.results["meta"]["elapsed_s"] = round(now - self.t_start, 1)
        self.results["meta"]["writes"] = self._n_writes
        tag = f".tmp{os.getpid()}.{self._n_writes}"
        for name, text in (("results.json", json.dumps(self.results, indent=1, default=str)),
                           ("summary.md", self.render(self.results)),
                           ("log.txt", "\n".join(self.lines) + "\n")):
            tmp = self.out / (name + tag)
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.out / name)

    # -- signals --------------------------------------------------------------------------
    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        try:
            self.log(f"{name}: stopping; everything finished so far is in results.json")
            for ph in self.phases:
                if ph.status == "running":
                    self._close_phase(ph, "interrupted")
                elif ph.status == "pending":
                    ph.status = "skipped"
                    self._phase_row(ph)["status"] = "skipped"
                    self._phase_row(ph)["why"] = f"{name} before it started"
            self.results["meta"]["stopped_by"] = name
            self.write()
            print(self.render(self.results), flush=True)
        finally:
            sys.stdout.flush()
            os._exit(128 + signum)

    # -- phases and checks ------------------------------------------------------------------
    def _phase_row(self, ph: Phase) -> dict:
        for row in self.results["phases"]:
            if row["phase"] == ph.name:
                return row
        row = {"phase": ph.name, "status": ph.status, "budget_s": ph.budget_s}
        self.results["phases"].append(row)
        return row

    def add_phases(self, phases: list[Phase], plan: list[dict]) -> None:
        self.phases = phases
        by = {p["phase"]: p for p in plan}
        for ph in phases:
            row = self._phase_row(ph)
            row.update({"planned_checks": by.get(ph.name, {}).get("checks"),
                        "planned_compiles": by.get(ph.name, {}).get("compiles"),
                        "planned_s": by.get(ph.name, {}).get("estimate_s")})

    def run_phase(self, ph: Phase, deadline: float, skip_why: str = "") -> None:
        row = self._phase_row(ph)
        if skip_why:
            ph.status = row["status"] = "skipped"
            row["why"] = skip_why
            self.log(f"phase {ph.name}: skipped ({skip_why})")
            self.write()
            return
        ph.status = row["status"] = "running"
        self.current = ph
        t0 = time.perf_counter()
        c0, s0 = self.counter.snapshot()
        row.update({"started_s": round(t0 - self.t_start, 1),
                    "deadline_s": round(deadline - self.t_start, 1),
                    "run": 0, "ok": 0, "failed": 0, "skipped": 0, "compiles": 0, "compile_s": 0.0})
        row["_t0"], row["_c0"], row["_s0"] = t0, c0, s0
        self.log(f"phase {ph.name}: start (budget {ph.budget_s:.0f} s, deadline at "
                 f"{deadline - self.t_start:.0f} s)")
        self.write()
        try:
            checks = ph.checks or ph.build()
        except Exception as exc:  # noqa: BLE001
            self._record(ph, row, {"check": f"{ph.name}: building the checks",
                                   "ok": False, "error": _err(exc)})
            checks = []
        ph.checks = checks
        out_of_time = False
        for i, chk in enumerate(checks):
            if time.perf_counter() >= deadline:
                row["skipped"] += len(checks) - i
                row["skipped_first"] = chk.name
                out_of_time = True
                self.log(f"phase {ph.name}: deadline; {len(checks) - i} checks not run "
                         f"(first: {chk.name})")
                break
            why = self.unavailable(chk.needs)
            if why:
                row["skipped"] += 1
                self._record(ph, row, {"check": chk.name, "ok": None, "skipped": why},
                             quiet=True)
                continue
            self.run_check(ph, row, chk)
        self._close_phase(ph, "deadline" if out_of_time else "done")

    def unavailable(self, needs: str) -> str:
        pf = self.results.get("preflight", {})
        if needs and pf.get(f"{needs}_ok") is False:
            return f"{needs} failed in preflight: {pf.get(f'{needs}_error', '')}"[:300]
        return ""

    def run_check(self, ph: Phase, row: dict, chk: Check) -> None:
        t0 = time.perf_counter()
        c0, _ = self.counter.snapshot()
        entry: dict = {"check": chk.name}
        try:
            res = chk.fn()
            if chk.bench:
                entry["ok"] = True
                if isinstance(res, dict):
                    res.setdefault("name", chk.name)
                    self.results.setdefault(chk.bench, []).append(res)
                    if res.get("error"):
                        entry["ok"], entry["error"] = False, str(res["error"])[:400]
            else:
                entry["ok"] = res is None
                if res is not None:
                    entry["error"] = str(res)[:400]
        except Exception as exc:  # noqa: BLE001 - a failed check is a result; the run goes on
            entry["ok"] = False
            entry["error"] = _err(exc)
        entry["s"] = round(time.perf_counter() - t0, 3)
        entry["compiles"] = self.counter.snapshot()[0] - c0
        self._record(ph, row, entry)

    def _record(self, ph: Phase, row: dict, entry: dict, quiet: bool = False) -> None:
        entry["phase"] = ph.name
        self.results["checks"].append(entry)
        if entry.get("ok") is not None:
            row["run"] = row.get("run", 0) + 1
            row["ok" if entry["ok"] else "failed"] = row.get("ok" if entry["ok"] else "failed",
                                                             0) + 1
        if entry.get("ok") is False:
            self.log(f"  FAIL {entry['check']}: {entry.get('error')}")
        elif not quiet and entry.get("s", 0) > 2:
            self.log(f"  ok {entry['check']} ({entry['s']:.1f} s, {entry.get('compiles', 0)} "
                     "compiles)")
        self._update_row(row)
        self.write()

    def _update_row(self, row: dict) -> None:
        if "_t0" not in row:
            return
        c, s = self.counter.snapshot()
        row["seconds"] = round(time.perf_counter() - row["_t0"], 1)
        row["compiles"] = c - row["_c0"]
        row["compile_s"] = round(s - row["_s0"], 1)

    def _close_phase(self, ph: Phase, status: str) -> None:
        row = self._phase_row(ph)
        self._update_row(row)
        for k in ("_t0", "_c0", "_s0"):
            row.pop(k, None)
        ph.status = row["status"] = status
        self.current = None
        self.log(f"phase {ph.name}: {status} in {row.get('seconds', 0):.0f} s "
                 f"({row.get('ok', 0)} ok, {row.get('failed', 0)} failed, "
                 f"{row.get('skipped', 0)} not run; {row.get('compiles', 0)} compiles, "
                 f"{row.get('compile_s', 0):.0f} s)")
        self.write()


def _err(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}"[:380] + where


def fmt_s(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3g}"
