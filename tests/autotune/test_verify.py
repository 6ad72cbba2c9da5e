"""`kernelkit cache verify`: the top two of each entry re-timed, drift flagged and fixed.

Devices are timing models on a simulated clock (as in test_crossover.py): an entry is measured
under one set of speeds, then verified under another, so the verdicts are exact and fast.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from kernelkit import cli, core
from kernelkit.autotune import timing, tuner, verify
from kernelkit.autotune.cache import Cache, newer_than
from kernelkit.core import Candidate
from kernelkit.settings import Settings


@dataclasses.dataclass
class Speeds:
    """Seconds per run of each fake candidate and config (mutable: the machine 'changes')."""

    table: dict[tuple[str, int], float]


def fakes(clock: timing.SimulatedClock, speeds: Speeds) -> list[Candidate]:
    """Two CPU candidates with two configs each; each run advances the clock by its table entry
    and returns the true product, so the op's own verification passes."""
    def make(backend: str) -> Candidate:
        def launcher(p, config):
            def run(a, b, bias=None):
                clock.advance(speeds.table[(backend, config["t"])])
                return np.matmul(a, b)
            return run

        return Candidate("matmul", backend, "cpu", "numpy", lambda p: None,
                         lambda p: [{"t": 0}, {"t": 1}], launcher, vendor=backend == "vend")

    return [make("fast"), make("vend")]


@pytest.fixture
def quiet_machine(monkeypatch):
    """Verdicts here must not depend on what other processes on this machine are doing."""
    monkeypatch.setattr(timing, "machine_busy", lambda before, after: False)
    tuner.clear_memo()
    yield
    tuner.clear_memo()


def measured_cache(tmp_path, clock, cands, dims=(24, 16, 8)):
    """A cache holding one measured matmul entry (timed with `cands` on `clock`)."""
    spec = core.op_spec("matmul")
    args, kwargs = spec.make_inputs(dims, "float32", "numpy")
    call = spec.prepare(*args, **kwargs)
    with timing.use_clock(clock):
        d = tuner.decide(call.problem, cands, call.runner, call.verify,
                         Settings(cache_dir=str(tmp_path), tune="measure"))
    return Cache(tmp_path), d


SPEEDS = {("fast", 0): 2e-4, ("fast", 1): 1e-4, ("vend", 0): 3e-4, ("vend", 1): 5e-4}


def test_an_unchanged_machine_verifies_ok(tmp_path, quiet_machine):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, d = measured_cache(tmp_path, clock, fakes(clock, speeds))
    assert (d.choice.candidate, d.choice.config) == ("fast-cpu", {"t": 1})
    with timing.use_clock(clock):
        [v] = verify.verify_cache(cache, candidates=lambda op: fakes(clock, speeds))
    assert v.status == "ok", v
    assert v.winner == 'fast-cpu {"t":1}' and v.runner_up == 'vend-cpu {"t":0}'  # another candidate
    assert v.winner_now_s == pytest.approx(1e-4) and v.runner_up_now_s == pytest.approx(3e-4)


def test_a_runner_up_that_wins_now_is_drift_and_fix_rewrites_the_choice(tmp_path, quiet_machine):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, d = measured_cache(tmp_path, clock, fakes(clock, speeds))
    key = d.key
    speeds.table[("vend", 0)] = 0.8e-4  # the vendor got faster (a new library build, say)
    old = {**cache.get(key), "measured_at": "2020-01-01T00:00:00+00:00"}
    cache.put(key, old)  # (measured long ago)
    with timing.use_clock(clock):
        [v] = verify.verify_cache(cache, candidates=lambda op: fakes(clock, speeds))
        assert v.status == "drift" and "runner-up wins" in v.reason and not v.fixed
        assert cache.get(key)["choice"]["candidate"] == "fast-cpu"  # not fixed unless asked
        [v] = verify.verify_cache(cache, fix=True, candidates=lambda op: fakes(clock, speeds))
    assert v.fixed
    entry = Cache(tmp_path).get(key)  # read back from the file, not the in-memory object
    assert entry["choice"] == {"candidate": "vend-cpu", "config": {"t": 0}, "source": "measured"}
    vend = next(t for t in entry["trials"] if t["candidate"] == "vend-cpu" and t["config"]["t"] == 0)
    assert vend["median"] == pytest.approx(0.8e-4) and "verified_at" in entry
    with timing.use_clock(clock):  # fixed: verifying again finds nothing
        [v] = verify.verify_cache(Cache(tmp_path), candidates=lambda op: fakes(clock, speeds))
    assert v.status == "ok"
    # the fix is a measurement: importing an older export of the drifted entry (a deploy
    # script's, on every start) no longer puts it back
    assert entry["measured_at"] == entry["verified_at"] and newer_than(entry, old)
    assert not newer_than(old, entry)


@pytest.mark.parametrize("factor, status", [(1.2, "ok"), (1.5, "drift"), (0.6, "drift")])
def test_the_winner_moving_beyond_the_tolerance_is_drift(tmp_path, quiet_machine, factor, status):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, _ = measured_cache(tmp_path, clock, fakes(clock, speeds))
    speeds.table[("fast", 1)] *= factor  # still the winner, but slower / faster than stored
    with timing.use_clock(clock):
        [v] = verify.verify_cache(cache, tolerance=0.25,
                                  candidates=lambda op: fakes(clock, speeds))
    assert v.status == status, v
    assert v.change == pytest.approx(factor - 1)
    if status == "drift":
        assert "moved" in v.reason and "runner-up" not in v.reason


def test_a_winner_that_fails_verification_now_is_drift(tmp_path, quiet_machine):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, _ = measured_cache(tmp_path, clock, fakes(clock, speeds))
    broken = fakes(clock, speeds)
    bad = dataclasses.replace(broken[0], launcher=lambda p, cfg: lambda a, b, bias=None: np.zeros(
        (a.shape[0], a.shape[1], b.shape[2]), np.float32) + np.nan)
    [v] = verify.verify_cache(cache, candidates=lambda op: [bad, broken[1]])
    assert v.status == "drift" and "fails verification" in v.reason


def test_busy_machine_is_not_judged(tmp_path, quiet_machine, monkeypatch):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, _ = measured_cache(tmp_path, clock, fakes(clock, speeds))
    speeds.table[("vend", 0)] = 0.5e-4
    monkeypatch.setattr(timing, "machine_busy", lambda before, after: True)
    with timing.use_clock(clock):
        [v] = verify.verify_cache(cache, fix=True, candidates=lambda op: fakes(clock, speeds))
    assert v.status == "busy" and not v.fixed


def test_entries_that_cannot_be_rebuilt_are_skipped_with_the_reason(tmp_path, quiet_machine):
    cache = Cache(tmp_path)
    cache.put("matmul|float32|numpy:cpu|NN|1x2x3|x", {
        "choice": {"candidate": "fast-cpu", "config": {}, "source": "measured"},
        "trials": [{"candidate": "fast-cpu", "config": {}, "median": 1e-4, "spread": 0, "count": 5}],
        "problem": {"op": "matmul", "shapes": [[4, 2, 3], [4, 3, 5]]}})  # batched
    [v] = verify.verify_cache(cache, candidates=lambda op: [])
    assert v.status == "skipped" and "rebuild" in v.reason


def test_cli_cache_verify_prints_json_and_exits_1_on_drift(tmp_path, quiet_machine, monkeypatch,
                                                           capsys):
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    measured_cache(tmp_path, clock, fakes(clock, speeds))
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(core, "candidates", lambda op: fakes(clock, speeds))
    with timing.use_clock(clock):
        assert cli.main(["cache", "verify", "--json"]) == 0
        [row] = json.loads(capsys.readouterr().out)
        assert row["status"] == "ok" and row["change"] == pytest.approx(0.0)
        speeds.table[("vend", 0)] = 0.5e-4
        assert cli.main(["cache", "verify", "--quiet"]) == 1
        table = capsys.readouterr().out
        assert "drift" in table and "runner-up wins" in table
        assert cli.main(["cache", "verify", "--fix", "--json"]) == 0  # drift found and fixed
        assert json.loads(capsys.readouterr().out)[0]["fixed"] is True
        assert cli.main(["cache", "verify", "no-such-key", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("op, dims", [
    ("matmul", (97, 61, 89)), ("matmul", (1, 1, 1)),
    ("conv2d", (2, 3, 17, 5, 7, 2, 3, 1)), ("conv2d", (1, 8, 9, 8, 3, 1, 1, 2)),
    ("conv2d_backward_input", (1, 6, 15, 4, 3, 2, 1, 1)),
    ("conv2d_backward_weight", (2, 4, 8, 6, 1, 1, 0, 1)),
    ("preprocess", (3, 37, 41, 16)),
])
def test_dims_of_inverts_make_inputs(op, dims):
    """What verify rebuilds is the entry's problem: the key made again matches."""
    spec = core.op_spec(op)
    args, kwargs = spec.make_inputs(dims, "uint8" if op == "preprocess" else "float32", "numpy")
    problem = spec.prepare(*args, **kwargs).problem
    assert spec.dims_of(problem.shapes) == dims
    entry = {"problem": {"op": op, "dtype": problem.dtype, "lib": "numpy", "device": "cpu",
                         "shapes": [list(s) for s in problem.shapes]}}
    call = verify.rebuild(tuner.make_key(problem), entry)
    assert not isinstance(call, str), call
    assert tuner.make_key(call.problem) == tuner.make_key(problem)


def test_a_winner_whose_config_this_build_rejects_is_a_verdict_not_the_runs_end(tmp_path,
                                                                               quiet_machine):
    """Building the winner's launcher sat outside the check: `cache verify` ended with exit 2
    and no verdicts (under --json too)."""
    clock, speeds = timing.SimulatedClock(), Speeds(dict(SPEEDS))
    cache, _ = measured_cache(tmp_path, clock, fakes(clock, speeds))
    rejecting = fakes(clock, speeds)

    def launcher(p, cfg):
        raise ValueError(f"config {cfg} is not one of this build's")

    bad = dataclasses.replace(rejecting[0], launcher=launcher)
    [v] = verify.verify_cache(cache, candidates=lambda op: [bad, rejecting[1]])
    assert v.status == "drift" and "not one of this build's" in v.reason
