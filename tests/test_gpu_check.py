"""bench/gpu_check.py must yield the truth in its one run on a GPU machine, which has no
platformdirs and cannot install anything: exercise it here in --dry-run and --plan mode with
platformdirs hidden, kill it mid-run, and check its recorder and plan."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check_runner as runner  # noqa: E402


def _env(tmp_path: Path) -> dict:
    """The environment without TRITON_INTERPRET and with platformdirs hidden (as on the GPU
    machines): a shadowing package that raises ModuleNotFoundError on import."""
    hide = tmp_path / "hide"
    (hide / "platformdirs").mkdir(parents=True)
    (hide / "platformdirs" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'platformdirs'\", name='platformdirs')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(hide), str(ROOT)])
    env["HOME"] = str(tmp_path / "home")  # the fallback cache dir lands here
    env.pop("XDG_CACHE_HOME", None)
    return env


def _script(*args) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "gpu_check.py"), *map(str, args)]


def test_platformdirs_is_really_hidden(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import platformdirs"], env=_env(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "No module named 'platformdirs'" in r.stderr


def test_kernelkit_runs_without_platformdirs(tmp_path):
    code = ("import numpy as np, kernelkit\n"
            "from kernelkit import settings\n"
            "a = np.ones((4, 8), np.float32)\n"
            "c = kernelkit.matmul(a, a.T.copy())\n"
            "assert float(c[0, 0]) == 8.0\n"
            "print(settings.current().cache_path)\n")
    env = _env(tmp_path)
    env["KERNELKIT_TUNE"] = "off"
    env.pop("KERNELKIT_CACHE_DIR", None)  # the default path, from the fallback
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == str(tmp_path / "home" / ".cache" / "kernelkit")


def test_fallback_cache_dir_matches_platformdirs(monkeypatch, tmp_path):
    from kernelkit import paths

    assert paths.fallback_cache_dir({}, "linux", tmp_path) == tmp_path / ".cache" / "kernelkit"
    assert paths.fallback_cache_dir({"XDG_CACHE_HOME": "/x/c"}, "linux", tmp_path) == \
        Path("/x/c/kernelkit")
    assert paths.fallback_cache_dir({}, "darwin", tmp_path) == \
        tmp_path / "Library" / "Caches" / "kernelkit"
    assert paths.fallback_cache_dir({"LOCALAPPDATA": "C:/L"}, "win32", tmp_path) == \
        Path("C:/L/kernelkit/Cache")
    platformdirs = pytest.importorskip("platformdirs")
    for xdg in (None, str(tmp_path / "xdg")):
        if xdg is None:
            monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        else:
            monkeypatch.setenv("XDG_CACHE_HOME", xdg)
        if sys.platform.startswith("linux"):
            assert paths.fallback_cache_dir() == \
                Path(platformdirs.user_cache_dir("kernelkit", appauthor=False))
        assert paths.default_cache_dir() == \
            Path(platformdirs.user_cache_dir("kernelkit", appauthor=False))


def _plan(tmp_path, *extra) -> dict:
    r = subprocess.run(_script(tmp_path / "plan", "--plan", "--json", *extra),
                       env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


def test_plan_fits_in_540_s(tmp_path):
    plan = _plan(tmp_path)
    rows = {r["phase"]: r for r in plan["phases"]}
    assert list(rows) == ["preflight", "correctness", "sweep", "sanitizer", "bench"]
    assert rows["preflight"]["estimate_s"] <= 30 and rows["sanitizer"]["budget_s"] <= 90
    for r in plan["phases"]:
        if r["budget_s"]:
            assert r["estimate_s"] <= r["budget_s"], r  # each phase finishes inside its deadline
    assert plan["deadline_s"] + 15 <= plan["limit_s"] == 540  # SIGTERM grace is left
    assert plan["total_s"] <= plan["deadline_s"] <= 540
    # finding 3: the old run needed about 350 compiles; the correctness phase is bounded
    assert rows["correctness"]["compiles"] <= 90
    assert sum(r["compiles"] for r in plan["phases"]) <= 220
    # finding 4: the sweep runs each dtype's own table, not the union on every dtype
    from kernelkit.kernels.triton import matmul as tm

    union_on_every_dtype = 3 * len(tm.SHIPPED_CONFIGS)
    assert rows["sweep"]["compiles_by_family"]["triton.matmul"] < union_on_every_dtype


def test_plan_counts_each_compile_once():
    calls = []
    phases = [runner.Phase("a", 10, lambda: [
        runner.Check("x", lambda: None, keys=(("triton.matmul", 1),), run_s=0.5),
        runner.Check("y", lambda: None, keys=(("triton.matmul", 1),), run_s=0.5)]),
        runner.Phase("b", 10, lambda: calls.append(1) or [
            runner.Check("z", lambda: None, keys=(("triton.matmul", 1), ("cupy.conv", 2)))])]
    rows = runner.estimate(phases)
    assert rows[0]["compiles"] == 1 and rows[0]["estimate_s"] == pytest.approx(
        runner.COMPILE_S["triton.matmul"] + 1.0)
    assert rows[1]["compiles"] == 1 and rows[1]["compiles_by_family"] == {"cupy.conv": 1}
    assert calls == [1]


def test_recorder_deadline_skips_and_records(tmp_path):
    rec = runner.Recorder(tmp_path, lambda r: f"{len(r['checks'])} checks\n", time.perf_counter())
    ph = runner.Phase("p", 5, lambda: [
        runner.Check("good", lambda: None),
        runner.Check("bad", lambda: "wrong"),
        runner.Check("raises", lambda: 1 / 0),
        runner.Check("slow", lambda: time.sleep(0.3)),
        runner.Check("never", lambda: None)])
    rec.add_phases([ph], [])
    rec.run_phase(ph, time.perf_counter() + 0.2)
    res = json.loads((tmp_path / "results.json").read_text())
    got = {c["check"]: c for c in res["checks"]}
    assert got["good"]["ok"] and got["bad"]["ok"] is False and got["bad"]["error"] == "wrong"
    assert "ZeroDivisionError" in got["raises"]["error"] and "never" not in got
    row = res["phases"][0]
    assert row["status"] == "deadline" and row["skipped"] == 1 and row["skipped_first"] == "never"
    assert (tmp_path / "summary.md").read_text() == "4 checks\n"
    assert "deadline; 1 checks not run" in (tmp_path / "log.txt").read_text()
    assert not list(tmp_path.glob("*.tmp*"))  # every write went through os.replace


def test_preflight_failure_skips_not_fails(tmp_path):
    rec = runner.Recorder(tmp_path, lambda r: "", time.perf_counter())
    rec.results["preflight"] = {"cupy_ok": False, "cupy_error": "no cuda_fp16.h"}
    ph = runner.Phase("p", 5, lambda: [runner.Check("needs cupy", lambda: 1 / 0, needs="cupy")])
    rec.add_phases([ph], [])
    rec.run_phase(ph, time.perf_counter() + 5)
    c = json.loads((tmp_path / "results.json").read_text())["checks"][0]
    assert c["ok"] is None and "no cuda_fp16.h" in c["skipped"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dry")
    r = subprocess.run(_script(out, "--dry-run"), env=_env(out), capture_output=True, text=True,
                       timeout=900)
    return out, r


def test_gpu_check_dry_run(dry_run):
    out, r = dry_run
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["card"] == "interpreter (CPU)" and res["meta"]["finished"]
    assert res["preflight"]["platformdirs"] is False  # it really ran without platformdirs
    phases = {p["phase"]: p for p in res["phases"]}
    assert phases["sanitizer"]["status"] == "skipped"  # marked skipped, not failed
    for name in ("preflight", "correctness", "sweep", "bench"):
        assert phases[name]["status"] == "done", phases[name]
        assert phases[name]["run"] == phases[name]["planned_checks"], phases[name]
    checks = [c for c in res["checks"] if c.get("ok") is not None]
    assert len(checks) > 60 and all(c["ok"] for c in checks), [
        c for c in checks if not c["ok"]][:5]
    assert {c["phase"] for c in checks} == {"preflight", "correctness", "sweep", "bench"}
    assert res["bench_matmul"][0]["triton_s"] > 0 and res["bench_conv2d"][0]["triton_s"] > 0
    pre = res["bench_preprocess"][0]
    assert pre["triton_kernel_s"] > 0 and pre["triton_call_s"] > 0 and "error" not in pre
    summary = (out / "summary.md").read_text()
    assert "| correctness | done |" in summary and summary.strip() in r.stdout  # printed last
    log = (out / "log.txt").read_text()
    assert "phase correctness: done" in log


def test_sigterm_leaves_valid_results(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_script(out, "--dry-run"), env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 300:  # until some correctness checks are done
            try:
                res = json.loads((out / "results.json").read_text())
                if sum(c.get("phase") == "correctness" for c in res["checks"]) >= 3:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stdout[-3000:]
    res = json.loads((out / "results.json").read_text())
    status = {p["phase"]: p["status"] for p in res["phases"]}
    assert res["meta"]["stopped_by"] == "SIGTERM"
    assert status["preflight"] == "done" and status["correctness"] == "interrupted"
    assert status["sweep"] == "skipped" and status["bench"] == "skipped"
    assert sum(c.get("phase") == "correctness" for c in res["checks"]) >= 3
    assert "SIGTERM: stopping" in (out / "log.txt").read_text()


def test_sigkill_leaves_parseable_results(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_script(out, "--dry-run"), env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.time()  # kill it once it has recorded its phases (a fixed sleep was too short
        while time.time() - t0 < 300:  # on a loaded CI machine), mid-run
            try:
                if json.loads((out / "results.json").read_text())["phases"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        time.sleep(0.5)
        proc.kill()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = json.loads((out / "results.json").read_text())  # never a half-written file
    assert res["phases"] and "finished" not in res["meta"]


def test_gpu_check_refuses_without_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run applies, not the refusal")
    r = subprocess.run(_script(tmp_path), capture_output=True, text=True, env=_env(tmp_path),
                       timeout=300)
    assert r.returncode == 2 and "no CUDA device" in r.stdout
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["error"] == "no CUDA device"
