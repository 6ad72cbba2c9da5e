"""Compile off the critical path (kernelkit.compiling): no call waits for a compiler it did not ask
for, the compiled candidate joins the decision once it is ready, and `kernelkit warmup` fills the
on-disk cache that new processes load from.

The tuner tests use fake candidates whose `warm` blocks on a gate the test opens, so what each
call decides while a compile is under way is exact. The end-to-end tests run fresh processes on
the real Numba kernels with a private cache folder (cold: the child process compiles).
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import pytest

from kernelkit import compiling
from kernelkit.autotune import tuner
from kernelkit.autotune.cache import cache_for
from kernelkit.core import Candidate, Problem
from kernelkit.settings import Settings

CORRECT = 42
MODULE = "kk_fake_compiled_kernels"


class Gate:
    """A fake kernel module's `warm`: blocks until the test opens the gate; records its calls."""

    def __init__(self, fails: bool = False):
        self.open = threading.Event()
        self.calls: list[tuple[str, int]] = []  # (dtype, thread id)
        self.fails = fails

    def warm(self, dtype: str) -> str:
        self.calls.append((dtype, threading.get_ident()))
        assert self.open.wait(30), "the test never opened the gate"
        if self.fails:
            raise RuntimeError("the compiler crashed")
        return "compiled"


@pytest.fixture
def gate(monkeypatch):
    """A fake compiled kernel module in sys.modules, and a clean job table (no child processes:
    a child could not import a module that exists only in this process)."""
    g = Gate()
    mod = types.ModuleType(MODULE)
    mod.__spec__ = importlib.machinery.ModuleSpec(MODULE, None)
    mod.warm = g.warm
    monkeypatch.setitem(sys.modules, MODULE, mod)
    monkeypatch.setattr(compiling, "_child_ok", False)
    for key in [k for k in compiling._jobs if k[0] == MODULE]:
        del compiling._jobs[key]
    yield g
    g.open.set()
    compiling.wait(MODULE, "float32", timeout=30)
    for key in [k for k in compiling._jobs if k[0] == MODULE]:
        del compiling._jobs[key]


def cand(name, *, delay=0.0, vendor=False, compiles=False):
    def launcher(problem, config):
        def run():
            time.sleep(delay)
            return CORRECT
        return run
    return Candidate("fake", name, "cpu", "numpy", lambda p: None, lambda p: [{}], launcher,
                     vendor=vendor, module=MODULE if compiles else "", compiles=compiles)


VENDOR = cand("vendor", delay=0.003, vendor=True)
COMPILED = cand("jit", delay=0.0, compiles=True)  # the faster one, once compiled


def problem(n=64):
    return Problem("fake", ((n, n),), "float32", "N", "numpy", "cpu", flops=2.0 * n**3)


def decide(cands, p, settings, background=True):
    runner = lambda c, cfg: c.launcher(p, cfg)
    verify = lambda out: None if out == CORRECT else f"got {out}"
    return tuner.decide(p, cands, runner, verify, settings, background=background)


def test_a_call_runs_on_a_ready_candidate_while_the_better_one_compiles(gate, tmp_path):
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    d = decide([VENDOR, COMPILED], problem(), s)
    assert d.choice.candidate == "vendor-cpu" and d.choice.source == "warming"
    assert d.skipped == {"jit-cpu": "compiling in the background"}
    assert cache_for(tmp_path).get(d.key) is None  # an incomplete race is never stored
    # the compile runs on the background thread, not the caller's
    deadline = time.monotonic() + 10
    while not gate.calls and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(gate.calls) == 1 and gate.calls[0][0] == "float32"
    assert gate.calls[0][1] != threading.get_ident()
    assert not compiling.ready(MODULE, "float32")
    assert decide([VENDOR, COMPILED], problem(), s).choice.source == "warming"  # still compiling
    gate.open.set()
    assert compiling.wait(MODULE, "float32", timeout=10)
    d = decide([VENDOR, COMPILED], problem(), s)
    assert d.choice.candidate == "jit-cpu" and d.choice.source == "measured"
    assert {t.candidate for t in d.trials} == {"vendor-cpu", "jit-cpu"}
    assert len(gate.calls) == 1  # compiled once


def test_warming_choices_are_not_memoised_by_choose(gate, tmp_path):
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    p = problem(32)
    runner = lambda c, cfg: c.launcher(p, cfg)
    verify = lambda out: None if out == CORRECT else f"got {out}"
    tuner.clear_memo()
    first = tuner.choose(p, [VENDOR, COMPILED], runner, verify, s)
    assert first.source == "warming"
    gate.open.set()
    compiling.wait(MODULE, "float32", timeout=10)
    again = tuner.choose(p, [VENDOR, COMPILED], runner, verify, s)
    assert again.candidate == "jit-cpu" and again.source == "measured"
    assert tuner.choose(p, [VENDOR, COMPILED], runner, verify, s) is again  # memoised now


def test_a_cached_choice_that_is_still_compiling_gives_way_to_the_fastest_ready_trial(gate,
                                                                                    tmp_path):
    slow_vendor = cand("vendor", delay=0.01, vendor=True)
    other = cand("other", delay=0.0)
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    p = problem(48)
    gate.open.set()
    d = decide([slow_vendor, other, COMPILED], p, s, background=False)  # measured in full
    assert d.choice.candidate in ("jit-cpu", "other-cpu")
    entry = cache_for(tmp_path).get(d.key)
    entry["choice"] = {"candidate": "jit-cpu", "config": {}, "source": "measured"}
    cache_for(tmp_path).put(d.key, entry)
    # a new process: nothing compiled yet
    compiling._jobs.pop((MODULE, "float32"), None)
    gate.open.clear()
    w = decide([slow_vendor, other, COMPILED], p, s)
    assert w.choice == tuner.Choice("other-cpu", {}, "warming")  # the fastest ready trial
    gate.open.set()
    compiling.wait(MODULE, "float32", timeout=10)
    assert decide([slow_vendor, other, COMPILED], p, s).choice.source == "cache"


def test_a_warming_plan_is_memoised_until_a_compile_job_finishes(monkeypatch):
    from kernelkit.ops import dispatch

    monkeypatch.setattr(compiling, "finished", 7)
    ran = []
    memo = dispatch.PlanMemo()
    plan = memo.store(("sig",), dispatch.Warming(lambda x: ran.append(x) or x, 7))
    assert memo[("sig",)] is plan
    assert plan(1) == 1 and memo[("sig",)] is plan  # no job finished: kept
    monkeypatch.setattr(compiling, "finished", 8)
    assert plan(2) == 2 and ("sig",) not in memo  # it still runs, then makes way for a decision
    assert ran == [1, 2]
    # a job that finished while the decision ran (snapshot older than now): dropped on first use
    stale = memo.store(("other",), dispatch.Warming(lambda: None, 7))
    stale()
    assert ("other",) not in memo


def test_a_cache_file_not_read_yet_waits_until_the_compile_is_done(gate, tmp_path):
    """A new process whose kernels still compile runs its first calls without reading the cache
    file (the fingerprint and the parse cost more than a vendor's first call); the decision
    after the compile reads it."""
    from kernelkit.autotune import cache as cache_mod

    other = cand("other", delay=0.0)
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    p = problem(40)
    key = tuner.make_key(p, "")
    cache_for(tmp_path).put(key, {"choice": {"candidate": "other-cpu", "config": {}},
                                  "trials": [{"candidate": "other-cpu", "config": {},
                                              "median": 1e-4, "spread": 0.0, "count": 5}]})
    cache_mod._caches.pop(str(tmp_path))  # a new process: the file is there, not read yet
    w = decide([VENDOR, other, COMPILED], p, s)
    assert w.choice == tuner.Choice("vendor-cpu", {}, "warming")  # the safe default
    assert not cache_for(tmp_path).loaded
    gate.open.set()
    compiling.wait(MODULE, "float32", timeout=10)
    d = decide([VENDOR, other, COMPILED], p, s)
    assert d.choice == tuner.Choice("other-cpu", {}, "cache") and cache_for(tmp_path).loaded


def test_a_forced_backend_waits_for_its_own_compile_in_the_calling_thread(gate, tmp_path):
    s = Settings(cache_dir=str(tmp_path), backend="jit")
    gate.open.set()
    d = decide([VENDOR, COMPILED], problem(), s)
    assert d.choice.candidate == "jit-cpu"
    assert gate.calls == [("float32", threading.get_ident())]


def test_foreground_mode_compiles_before_the_first_call(gate, tmp_path):
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="foreground")
    gate.open.set()
    d = decide([VENDOR, COMPILED], problem(), s, background=False)
    assert d.choice.source == "measured"
    assert {t.candidate for t in d.trials} == {"vendor-cpu", "jit-cpu"}
    assert not gate.calls  # foreground: the kernel compiles on its first launch, as before


def test_a_failed_compile_is_recorded_and_never_breaks_a_call(gate, tmp_path):
    gate.fails = True
    gate.open.set()
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    assert decide([VENDOR, COMPILED], problem(), s).choice.source == "warming"
    assert compiling.wait(MODULE, "float32", timeout=10)
    job = next(j for j in compiling.jobs() if j.module == MODULE)
    assert job.how == "failed" and "the compiler crashed" in job.error
    d = decide([VENDOR, COMPILED], problem(), s)  # the candidate joins; here its launch works
    assert d.choice.source == "measured"


def test_a_forked_child_forgets_jobs_it_has_no_thread_for(gate, tmp_path):
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    decide([VENDOR, COMPILED], problem(), s)  # queues the job; the gate holds it
    finished = compiling.finished
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its copy of the job would never finish
        try:
            os.close(r)
            known = (MODULE, "float32") in compiling._jobs
            # and the plans chosen while it compiled decide again (and so queue it again here)
            moved = compiling.finished != finished
            os.write(w, b"kept" if known or not moved else b"forgotten")
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 100) == b"forgotten"
    os.close(r)


def test_the_settings_knob_is_checked():
    from kernelkit import settings

    with pytest.raises(ValueError, match=r"use\(compile=...\) must be one of"), \
            settings.use(compile="sometimes"):
        pass


def test_warmup_targets_list_every_compiled_kernel_module_and_dtype():
    found = compiling.targets()
    assert ("kernelkit.kernels.numba.matmul", "float32") in found
    assert ("kernelkit.kernels.numba.matmul", "float64") in found
    assert ("kernelkit.kernels.numba.conv2d", "float32") in found
    assert any(m == "kernelkit.kernels.numba.preprocess" for m, _ in found)
    assert not any(".torch." in m for m, _ in found)  # the vendor compiles nothing of ours
    assert compiling.targets(["matmul"], ["float64"]) == [("kernelkit.kernels.numba.matmul",
                                                          "float64")]
    with pytest.raises(ValueError, match="unknown op"):
        compiling.targets(["matmull"])


# -- end to end, in fresh processes --------------------------------------------------------------
FIRST_CALL = textwrap.dedent("""
    import json, sys, time
    children = []  # the compile children started (an audit hook sees each Popen)
    sys.addaudithook(lambda event, args: children.append(1) if event == "subprocess.Popen"
                     and "_child" in str(args[1]) else None)
    import numpy as np
    import kernelkit
    from kernelkit import compiling
    from kernelkit.autotune import tuner
    rng = np.random.default_rng(3)
    a = rng.standard_normal((96, 80)).astype(np.float32)
    b = rng.standard_normal((80, 72)).astype(np.float32)
    seen = []
    real = tuner.choose
    tuner.choose = lambda *args, **kw: seen.append(real(*args, **kw)) or seen[-1]
    first = kernelkit.matmul(a, b)
    err1 = float(np.abs(first - a.astype(np.float64) @ b).max())
    kernelkit.matmul(a, b)  # still compiling: the warming plan is memoised, nothing decided
    decided_while_warming = len(seen)
    queued = [(j.module, j.dtype) for j in compiling.jobs()]
    assert compiling.wait(timeout=900)
    kernelkit.matmul(a, b)  # the warming plan's last call: it sees the job done and lets go
    again = kernelkit.matmul(a, b)
    err2 = float(np.abs(again - a.astype(np.float64) @ b).max())
    print(json.dumps({"first": seen[0].to_dict(), "then": seen[-1].to_dict(), "queued": queued,
                      "jobs": [(j.module, j.how, j.error) for j in compiling.jobs()],
                      "err": [err1, err2], "decided_while_warming": decided_while_warming,
                      "children": len(children)}))
""")


def _fresh(code: str, cache_dir, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache_dir), "KERNELKIT_COMPILE": "background",
           "KERNELKIT_TUNE": "measure"}
    env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)  # cold means no compiled kernels either
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cold_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("kk-cold")


def test_a_fresh_process_runs_its_first_call_on_the_vendor_and_then_the_compiled_kernel(
        cold_cache):
    out = _fresh(FIRST_CALL, cold_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # numpy data: numpy's BLAS is the vendor that serves it while numba compiles
    assert r["first"]["source"] == "warming" and r["first"]["candidate"] == "numpy-cpu"
    assert r["queued"] == [["kernelkit.kernels.numba.matmul", "float32"]]
    # cold: a child process compiled it into the on-disk cache, this process loaded it
    assert r["jobs"] == [["kernelkit.kernels.numba.matmul", "compiled in a child process", None]]
    assert r["children"] == 1
    assert r["decided_while_warming"] == 1  # the second call reused the first one's plan
    assert r["then"]["source"] == "measured"  # decided in full once numba was ready
    assert all(e < 1e-3 for e in r["err"])
    # a second process finds the kernels on disk: loaded, not compiled
    out = _fresh(FIRST_CALL, cold_cache)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["first"]["source"] == "cache" or r["first"]["source"] == "warming"
    assert r["jobs"] == [["kernelkit.kernels.numba.matmul", "loaded", None]]
    # ... in this process: a child started only to load them too cost a Python and numba's
    # import (1.4-2.1 s of CPU beside the program's first calls, 2-vCPU Zen 4), every process
    assert r["children"] == 0


def test_warmup_reports_what_it_compiled_and_loads_what_is_on_disk(cold_cache):
    args = ["-m", "kernelkit", "warmup", "--ops", "matmul", "--dtypes", "float32", "--json"]
    hows = []
    for _ in range(2):
        out = _fresh("", cold_cache, *args)
        assert out.returncode == 0, out.stderr[-3000:]
        rows = json.loads(out.stdout)
        assert [(r["module"], r["dtype"]) for r in rows] == \
            [("kernelkit.kernels.numba.matmul", "float32")]
        assert rows[0]["seconds"] > 0
        hows.append(rows[0]["how"])
    assert hows[0] in ("compiled", "loaded")  # (loaded when the test above ran first)
    assert hows[1] == "loaded"


def test_import_preloads_the_vendor_kernels_of_loaded_libraries_only():
    """`import kernelkit` imports numpy's (and, once torch is loaded, torch's) CPU kernel modules,
    so a first call does not pay for them; it never imports torch or a compiled backend itself."""
    probe = ("import sys, numpy{torch}, kernelkit; "
             "print(sorted(m for m in sys.modules if m.startswith('kernelkit.kernels.') "
             "and m.count('.') == 3), 'torch' in sys.modules)")
    for torch_first, expected_torch in ((False, False), (True, True)):
        out = subprocess.run([sys.executable, "-c", probe.format(torch=", torch" * torch_first)],
                             capture_output=True, text=True, check=True).stdout
        mods, has_torch = out.rsplit(" ", 1)
        assert "kernelkit.kernels.numpy.matmul" in mods
        assert ("kernelkit.kernels.torch.matmul" in mods) is expected_torch
        assert ("kernelkit.kernels.torch.conv2d" in mods) is expected_torch
        assert has_torch.strip() == str(expected_torch)
        assert "kernelkit.kernels.numba." not in mods  # compiled on first use, off the call


def test_a_notebooks_reload_of_kernelkit_core_keeps_every_op(tmp_path):
    """`importlib.reload(kernelkit.core)` in a notebook emptied the op registry: every op then
    raised "unknown op 'matmul'; expected one of []" until a restart (a user hunt)."""
    probe = ("import importlib, numpy as np, kernelkit, kernelkit.core; "
             "a = np.ones((5, 4), np.float32); b = np.ones((4, 3), np.float32); "
             "kernelkit.matmul(a, b); importlib.reload(kernelkit.core); "
             "x = np.ones((1, 3, 6, 6), np.float32); w = np.ones((2, 3, 3, 3), np.float32); "
             "print(float(kernelkit.matmul(a[:3], b).sum()), kernelkit.conv2d(x, w).shape, "
             "{'conv2d', 'matmul', 'preprocess'} <= {s.name for s in kernelkit.core.op_specs()})")
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["36.0", "(1,", "2,", "4,", "4)", "True"]


def test_a_compile_lock_the_cache_dir_cannot_hold_is_taken_in_the_temporary_dir(tmp_path,
                                                                                monkeypatch):
    """A cache dir that lets the lock be made but not taken (read-only: an image's) failed every
    background compile for good ("OSError: Read-only file system: .../compile-locks/..."), so
    the calls never got the compiled candidate. Here the lock's path is a folder, which no
    process can lock either. (The lock's first folder is beside the Numba kernels, the
    backend's `compile_lock_dir`: pointed here at a folder of the test's own.)"""
    import tempfile

    import kernelkit.kernels.numba as numba_backend

    monkeypatch.setattr(numba_backend, "compile_lock_dir", lambda: tmp_path / "compile-locks")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    job = compiling.Job("kernelkit.kernels.numba.preprocess", "uint8")
    name = f"{job.module}-{job.dtype}.lock"
    (tmp_path / "compile-locks" / name).mkdir(parents=True)
    compiling._run(job, child=False)
    assert job.error is None and job.how in ("loaded", "compiled"), job
    uid = getattr(os, "getuid", lambda: "user")()
    assert (tmp_path / "tmp" / f"kernelkit-compile-locks-{uid}" / name).exists()


def test_measure_without_a_compile_knob_measures_the_first_call(tmp_path):
    """KERNELKIT_TUNE=measure, KERNELKIT_COMPILE unset: the first call compiles the kernels and
    measures every candidate, and its choice is stored. Before, the compile ran in the background
    meanwhile (the default), a stand-in ran, and a short script measured and stored nothing."""
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path), "KERNELKIT_TUNE": "measure"}
    env.pop("KERNELKIT_COMPILE", None)  # (the tests' autouse fixture sets it)
    code = ("import numpy as np, kernelkit\n"
            "from kernelkit import settings\n"
            "a = np.random.default_rng(0).standard_normal((48, 40), dtype=np.float32)\n"
            "kernelkit.matmul(a, a.T)\n"
            "print(settings.current().compile)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["foreground"]
    entries = [json.loads(line)["entry"] for line in (tmp_path / "autotune.jsonl").open()
               if '"entry"' in line]
    assert [e["choice"]["source"] for e in entries] == ["measured"]
    assert "numba-cpu" in {t["candidate"] for t in entries[0]["trials"]}  # (compiled, timed)
    # an explicit KERNELKIT_COMPILE holds under measure too
    out = subprocess.run([sys.executable, "-c", "from kernelkit import settings\n"
                          "print(settings.current().compile)"],
                         env={**env, "KERNELKIT_COMPILE": "background"}, capture_output=True,
                         text=True, timeout=300)
    assert out.stdout.split() == ["background"], out.stderr[-2000:]


def test_the_compile_default_follows_the_tune_wherever_settings_are_made(monkeypatch):
    """measure compiles in the foreground unless told otherwise: in the environment, in use(),
    and in Settings built by hand (which described a setup no user could get: measure with
    background compiles). Knob values are stripped, a blank one is unset."""
    from kernelkit import settings

    assert Settings(tune="measure").compile == "foreground"
    assert Settings(tune="measure", compile="background").compile == "background"
    assert Settings().compile == "background"
    monkeypatch.delenv("KERNELKIT_COMPILE")
    monkeypatch.setenv("KERNELKIT_TUNE", " ")
    settings.new_epoch()
    assert (settings.current().tune, settings.current().compile) == ("auto", "background")
    with settings.use(tune=" Measure "):
        assert (settings.current().tune, settings.current().compile) == ("measure", "foreground")
        with settings.use(tune="auto"):
            assert settings.current().compile == "background"
    monkeypatch.setenv("KERNELKIT_COMPILE", "background ")
    with settings.use(tune="measure"):
        assert settings.current().compile == "background"


TORCH_VENDOR = dataclasses.replace(VENDOR, backend="torchish", native="torch")


@pytest.mark.parametrize(("on_disk", "torch_imported"), [(True, False), (False, False),
                                                          (True, True)])
def test_numpy_data_loads_kernels_on_disk_rather_than_import_torch_for_a_stand_in(
        gate, tmp_path, monkeypatch, on_disk, torch_imported):
    """A numpy program's first preprocess (whose only vendor is torch's) imported torch for the
    stand-in while Numba loaded in the background: 1.5-1.8 s and torch's memory, where loading
    the kernels already compiled on disk takes 0.6 s. Kernels marked on disk are now loaded in
    the calling thread; without the mark (a compile's seconds), or with torch already imported,
    torch still stands in."""
    from kernelkit import devices

    monkeypatch.setattr(compiling, "on_disk", lambda module, dtype: on_disk)
    real_imported = devices.imported
    monkeypatch.setattr(devices, "imported", lambda name: (
        real_imported(name) if torch_imported or name != "torch" else None))
    gate.open.set()  # (a load that was asked for finishes at once)
    s = Settings(cache_dir=str(tmp_path), tune="measure", compile="background")
    d = decide([TORCH_VENDOR, COMPILED], problem(), s)
    if on_disk and not torch_imported:
        assert d.choice.candidate == "jit-cpu" and d.choice.source == "measured"
        assert gate.calls == [("float32", threading.get_ident())]  # loaded here, now
    else:
        assert d.choice.candidate == "torchish-cpu" and d.choice.source == "warming"
        assert compiling.wait(MODULE, "float32", timeout=10)
        assert all(tid != threading.get_ident() for _, tid in gate.calls)


def test_a_compile_marks_its_kernels_on_disk_even_in_a_child_whose_parent_left(tmp_path,
                                                                              monkeypatch):
    """`_child` marks what it compiled itself: the parent that queued it may exit first (a short
    script), and the next process is the one that reads the mark. The mark is per CPU (numba's
    index is: another CPU's kernels compile again) and, for preprocess (one signature for every
    dtype: its warmup runs float32, its calls are uint8), for any dtype."""
    from kernelkit.kernels.numba import _cache

    monkeypatch.setattr(_cache, "cache_dir", lambda: tmp_path)  # (the marks only)
    monkeypatch.setattr(compiling.os, "nice", lambda inc: 0)  # (not this test process's)
    module = "kernelkit.kernels.numba.preprocess"
    assert not compiling.on_disk(module, "uint8")
    compiling._child(module, "float32")
    assert compiling.on_disk(module, "uint8") and compiling.on_disk(module, "float32")
    monkeypatch.setattr(_cache, "_cpu_tag", lambda: "another-cpu")
    assert not compiling.on_disk(module, "uint8")
    matmul = "kernelkit.kernels.numba.matmul"  # (per dtype elsewhere)
    _cache.mark_warmed(matmul, "float32")
    assert compiling.on_disk(matmul, "float32") and not compiling.on_disk(matmul, "float64")


def test_a_numpy_programs_first_preprocess_loads_the_warmed_kernels_without_torch(tmp_path):
    """End to end, in fresh processes with compiles in the background: after `kernelkit warmup
    --ops preprocess` (float32, the default), a numpy program's first preprocess of uint8 images
    runs Numba's kernel and never imports torch. The Numba folder is this test's own (the
    session's compiled kernels copied in, no marks), so no other test's mark counts."""
    import shutil

    from kernelkit.kernels.numba import _cache

    shutil.copytree(_cache.cache_dir(), tmp_path / "numba" / _cache.cache_key(),
                    ignore=shutil.ignore_patterns(_cache._WARMED))
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path / "tuning"),
           "KERNELKIT_NUMBA_CACHE_DIR": str(tmp_path / "numba"), "KERNELKIT_COMPILE": "background"}
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import kernelkit
        img = np.random.default_rng(0).integers(0, 256, (2, 9, 7, 3), dtype=np.uint8)
        out = kernelkit.preprocess(img, size=5, mean=0.0, std=1.0)
        print(type(out).__name__, "torch" in sys.modules)
    """)
    run = lambda *args: subprocess.run([sys.executable, *args], env=env, capture_output=True,
                                       text=True, timeout=900)
    warm = run("-m", "kernelkit", "warmup", "--ops", "preprocess")
    assert warm.returncode == 0, warm.stderr[-2000:]
    r = run("-c", code)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ndarray", "False"]


def test_processes_sharing_a_numba_cache_and_not_an_autotune_cache_share_the_compile_lock(
        tmp_path):
    """Two processes with their own autotune caches (KERNELKIT_CACHE_DIR) and one Numba cache
    (KERNELKIT_NUMBA_CACHE_DIR), as the README splits the knobs: a child holding the compile
    lock of a (module, dtype) keeps the other from taking it. Before, the lock lived in the
    autotune cache dir, so each process compiled the same kernels at once."""
    numba_dir = tmp_path / "numba"
    script = textwrap.dedent("""
        import sys, time
        from filelock import FileLock, Timeout
        from kernelkit import compiling
        job = compiling.Job("kernelkit.kernels.numba.matmul", "float32")
        folder = compiling._lock_folders(job)[0]
        print(folder, flush=True)
        if sys.argv[1] == "hold":
            with compiling._file_lock(job):
                print("held", flush=True)
                time.sleep(30)
        else:
            try:
                FileLock(str(folder / f"{job.module}-{job.dtype}.lock"), timeout=1).acquire()
                print("took it")
            except Timeout:
                print("waited")
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELKIT_CACHE")}
    env["KERNELKIT_NUMBA_CACHE_DIR"] = str(numba_dir)
    holder = subprocess.Popen([sys.executable, "-c", script, "hold"], text=True,
                              stdout=subprocess.PIPE,
                              env={**env, "KERNELKIT_CACHE_DIR": str(tmp_path / "a")})
    timer = threading.Timer(120, holder.kill)  # (a hung holder ends its readline: no hang)
    timer.start()
    try:
        held_folder = holder.stdout.readline().strip()
        assert holder.stdout.readline().strip() == "held"
        other = subprocess.run([sys.executable, "-c", script, "try"], text=True,
                               capture_output=True, check=True, timeout=120,
                               env={**env, "KERNELKIT_CACHE_DIR": str(tmp_path / "b")})
    finally:
        timer.cancel()
        holder.kill()
        holder.wait()
    folder, outcome = other.stdout.split()
    assert folder == held_folder and folder.startswith(str(numba_dir)), (folder, held_folder)
    assert outcome == "waited"


def test_a_backend_hook_runs_where_forks_wait_and_signal_handlers_are_deferred(monkeypatch):
    """A backend's hook (the compile lock's folder, the on-disk marks) may import its compiler
    (numba, about a second): a fork from another thread must wait for that import, and a
    deadline's handler must run after it, as for `import_whole`. Before, the hook ran outside
    both: a DataLoader worker forked meanwhile hung on numba's import lock, and a deadline left
    numba half imported for the rest of the process (found by a review)."""
    import signal

    from kernelkit import signals

    seen = {}

    def on_alarm(signum, frame):  # (the user's: must not be the one installed in the hook)
        raise AssertionError("not called")

    def hook():
        seen["fork_waits"] = threading.get_ident() in signals._busy
        seen["deferred"] = signal.getsignal(signal.SIGALRM) is not on_alarm
        return "folder"

    package = types.ModuleType("kk_fake_backend")
    package.__spec__ = importlib.machinery.ModuleSpec("kk_fake_backend", None)
    package.compile_lock_dir = hook
    monkeypatch.setitem(sys.modules, "kk_fake_backend", package)
    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        assert compiling._backend_hook("kk_fake_backend.kernels", "compile_lock_dir") == "folder"
    finally:
        signal.signal(signal.SIGALRM, old)
    assert seen == {"fork_waits": True, "deferred": True}


def test_a_program_importing_numba_right_after_its_first_call_gets_the_whole_package():
    """The background job's first numba import was a submodule's (`from numba.core import
    caching`, by `on_disk`): with the program's own `import numba` running at the same moment,
    the two threads' module locks deadlocked and Python handed the program a partial module
    ("cannot import name 'NullCache' from partially initialized module 'numba.core.caching'",
    3 of 3 runs, a helper's hunt: a library built on numba imported after a first call)."""
    code = ("import numpy as np, kernelkit\n"
            "a = np.random.default_rng(0).standard_normal((100, 100), dtype=np.float32)\n"
            "kernelkit.matmul(a, a)\n"
            "import numba\n"
            "from numba.core.caching import NullCache\n"
            "print('whole', numba.__version__ is not None)\n")
    env = {**os.environ}
    env.pop("KERNELKIT_COMPILE", None)  # (the background default: the tests' fixture sets it)
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.split() == ["whole", "True"]


def test_the_compile_child_imports_this_processs_kernelkit_whatever_the_working_directory(
        tmp_path, monkeypatch):
    """`python -c` puts the working directory first on the child's path: a program run from
    inside another checkout had the child compile that checkout's kernels (4 minutes of CPU, a
    user hunt), or fail where the folder holds anything named kernelkit. Here the working
    directory holds a kernelkit that cannot be imported; the child still runs this one's."""
    (tmp_path / "kernelkit").mkdir()
    (tmp_path / "kernelkit" / "__init__.py").write_text("raise ImportError('the wrong kernelkit')\n")
    (tmp_path / "kk_fake_child_mod.py").write_text("def warm(dtype):\n    return 'compiled'\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert compiling._compile_in_child(compiling.Job("kk_fake_child_mod", "float32")) == "compiled"


def test_a_compile_interrupted_by_ctrl_c_is_not_taken_for_done(monkeypatch):
    """Ctrl-C (Python's own SIGINT handler: a notebook's "interrupt kernel") during a first
    forced call's compile left its job marked done ("queued"): `ready` said yes for the rest of
    the session, and a later background-mode call compiled on the caller's time (14 s)."""
    module = types.ModuleType("kk_fake_interrupted_kernels")
    module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)

    def warm(dtype):
        raise KeyboardInterrupt

    module.warm = warm
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(KeyboardInterrupt):
        compiling.warm_here(module.__name__, "float32")
    assert not compiling.ready(module.__name__, "float32")
    assert (module.__name__, "float32") not in compiling._jobs  # (a later call queues it again)
