"""The tuner's policy on a fake op: verification, failures, model, default, cache hits."""

from __future__ import annotations

import time

import pytest

from kernelkit.autotune import timing, tuner
from kernelkit.autotune.cache import cache_for
from kernelkit.core import Candidate, Problem
from kernelkit.settings import Settings

CORRECT = 42


def fake(name, result, delay=0.0, raises=False, vendor=False, configs=({},), supports=None):
    def launcher(problem, config):
        def run():
            if raises:
                raise RuntimeError("does not compile")
            time.sleep(delay)
            return result
        return run
    return Candidate("fake", name, "cpu", "numpy", supports or (lambda p: None),
                     lambda p: [dict(c) for c in configs], launcher, vendor=vendor)


CANDS = [
    fake("vendor", CORRECT, delay=0.004, vendor=True),
    fake("fastwrong", CORRECT + 1, delay=0.0),  # fastest, but its output fails verification
    fake("broken", CORRECT, raises=True),
    fake("good", CORRECT, delay=0.001, configs=({"t": 1}, {"t": 2})),
    fake("never", CORRECT, supports=lambda p: "needs a quantum computer"),
]


def problem(n=64):
    return Problem("fake", ((n, n),), "float32", "N", "numpy", "cpu", flops=2.0 * n**3)


def run(cands, p, settings):
    runner = lambda c, cfg: c.launcher(p, cfg)
    verify = lambda out: None if out == CORRECT else f"got {out}"
    return tuner.decide(p, cands, runner, verify, settings)


def test_measure_never_picks_wrong_or_broken(tmp_path):
    s = Settings(cache_dir=str(tmp_path))
    d = run(CANDS, problem(), s)
    assert d.choice.candidate == "good-cpu" and d.choice.source == "measured"
    assert d.skipped == {"never-cpu": "needs a quantum computer"}
    by_name = {}
    for t in d.trials:
        by_name.setdefault(t.candidate, []).append(t)
    assert by_name["fastwrong-cpu"][0].error == f"got {CORRECT + 1}"
    assert "does not compile" in by_name["broken-cpu"][0].error
    assert len(by_name["good-cpu"]) == 2  # every config was timed
    stored = cache_for(tmp_path).get(d.key)
    assert stored["choice"]["candidate"] == "good-cpu"
    assert {t["candidate"] for t in stored["trials"]} >= {"broken-cpu", "fastwrong-cpu"}


def test_every_candidate_failing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="every candidate failed"):
        run([CANDS[1], CANDS[2]], problem(), Settings(cache_dir=str(tmp_path)))


def test_off_gives_the_vendor(tmp_path):
    d = run(CANDS, problem(), Settings(cache_dir=str(tmp_path), tune="off"))
    assert d.choice.candidate == "vendor-cpu" and d.choice.source == "default"
    assert cache_for(tmp_path).get(d.key) is None


def test_model_reuses_the_nearest_measurement(tmp_path):
    s = Settings(cache_dir=str(tmp_path))
    run(CANDS, problem(64), s)
    d = run(CANDS, problem(100), Settings(cache_dir=str(tmp_path), tune="model"))
    assert d.choice.candidate == "good-cpu" and d.choice.source == "model"


def test_choose_hits_memo_then_cache_without_measuring(tmp_path, monkeypatch):
    s = Settings(cache_dir=str(tmp_path))
    p = problem(32)
    runner = lambda c, cfg: c.launcher(p, cfg)
    verify = lambda out: None if out == CORRECT else "wrong"
    first = tuner.choose(p, CANDS, runner, verify, s)
    calls = []
    monkeypatch.setattr(tuner, "measure_all", lambda *a: calls.append(a) or [])
    assert tuner.choose(p, CANDS, runner, verify, s) == first  # memo
    tuner.clear_memo()
    again = tuner.choose(p, CANDS, runner, verify, s)  # persistent cache
    assert again.candidate == first.candidate and again.source == "cache"
    assert calls == []


def test_forced_backend_that_cannot_run_raises(tmp_path):
    with pytest.raises(ValueError, match="forced backend=never"):
        tuner.split_candidates(problem(), CANDS, Settings(cache_dir=str(tmp_path), backend="never"))


def test_timer_reports_median_and_spread():
    t = timing.measure(lambda: time.sleep(0.002), min_reps=5, budget_s=0.0)
    assert t.count == 5 and 0.0015 < t.median < 0.05 and t.spread >= 0


def test_pinned_reads_the_cache_never_measures_never_writes(tmp_path, monkeypatch):
    s = Settings(cache_dir=str(tmp_path))
    measured = run(CANDS, problem(64), s)  # one entry to read
    path = tmp_path / "autotune.jsonl"
    before = path.read_bytes()
    calls = []
    monkeypatch.setattr(tuner, "measure_all", lambda *a: calls.append(a) or [])
    pinned = Settings(cache_dir=str(tmp_path), tune="pinned")
    hit = run(CANDS, problem(64), pinned)
    assert hit.choice.candidate == measured.choice.candidate and hit.choice.source == "cache"
    miss = run(CANDS, problem(300), pinned)  # never measured: the model's choice, nothing stored
    assert miss.choice.source == "model" and miss.choice.candidate == "good-cpu"
    assert calls == [] and path.read_bytes() == before


def test_a_busy_machine_measurement_is_not_stored_as_truth(tmp_path, monkeypatch):
    s = Settings(cache_dir=str(tmp_path))
    calls = []
    real = tuner.measure_all
    monkeypatch.setattr(tuner, "measure_all", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(timing, "machine_busy", lambda before, after: True)
    d = run(CANDS, problem(48), s)
    assert len(calls) == 2  # measured again once the machine was found busy
    assert cache_for(tmp_path).get(d.key)["provisional"] is True
    tuner.clear_memo()
    pinned = run(CANDS, problem(48), Settings(cache_dir=str(tmp_path), tune="pinned"))
    assert pinned.choice.source == "cache" and len(calls) == 2  # a hint is still usable
    monkeypatch.setattr(timing, "machine_busy", lambda before, after: False)
    again = run(CANDS, problem(48), s)  # a measuring process does not trust it: measures again
    assert again.choice.source == "measured" and len(calls) == 3
    assert "provisional" not in cache_for(tmp_path).get(d.key)


def test_the_calibration_loop_flags_a_slow_run(monkeypatch):
    monkeypatch.setattr(timing, "_best_calibration", [float("inf")])
    base = timing.calibrate()
    assert 0 < timing._best_calibration[0] <= base
    best = timing._best_calibration[0]
    assert not timing.machine_busy(best, best * 1.2)
    assert timing.machine_busy(best, best * (timing.BUSY_RATIO + 0.5))
