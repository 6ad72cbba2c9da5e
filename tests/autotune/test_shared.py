"""autotune/shared.py on an in-process store (torch.distributed.HashStore): rounds, publishing,
adoption, stand-ins, nested decisions, a dead claim holder, and groups whose store does not
answer. `reset()` between two calls stands for another rank (a process of its own rounds);
tests/autotune/test_distributed.py runs the real thing on two ranks."""

from __future__ import annotations

import types

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

from kernelkit.autotune import shared  # noqa: E402
from kernelkit.core import Choice  # noqa: E402

JOB = 1


@pytest.fixture(autouse=True)
def _fresh_rounds():
    shared.reset()
    yield
    shared.reset()


def _store():
    return dist.PrefixStore("kernelkit/choices", dist.HashStore())


def _ask(store, decide, wait=True):
    return shared.decide_shared(store, JOB, "size", decide, lambda p: Choice(**p),
                                _payload, wait=wait)


def _payload(c: Choice) -> dict:
    return {"candidate": c.candidate, "config": c.config, "source": c.source,
            "recheck_after": c.recheck_after}


def _never() -> Choice:
    raise AssertionError("decided where the job's choice was published")


def test_a_published_round_is_adopted_and_rounds_follow_each_other():
    store = _store()
    model = Choice("numba-cpu", {"t": 1}, "model", recheck_after=5)
    measured = Choice("torch-cpu", {}, "measured")
    assert _ask(store, lambda: model) == model  # round 0, published
    assert _ask(store, lambda: measured) == measured  # round 1
    shared.reset()  # another rank: its rounds from 0
    assert _ask(store, _never) == model
    assert _ask(store, _never) == measured
    assert store.get("size#0#claim") == store.get("size#1#claim") == b""  # (released)


def test_a_stand_in_is_neither_published_nor_a_round():
    store = _store()
    warming = Choice("torch-cpu", {}, "warming")
    assert _ask(store, lambda: warming) == warming
    assert not store.check(["size#0"])
    measured = Choice("numba-cpu", {}, "measured")
    assert _ask(store, lambda: measured) == measured  # (still round 0)
    shared.reset()
    assert _ask(store, _never) == measured


def test_a_nested_decision_never_waits_and_is_not_memoised_where_another_rank_decides():
    store = _store()
    store.compare_set("size#0#claim", "", "another rank")
    mine = Choice("numba-cpu", {}, "measured")
    got = _ask(store, lambda: mine, wait=False)
    assert got.candidate == "numba-cpu" and got.recheck_after == 1  # (asks again next call)
    assert not store.check(["size#0"])
    # with the round free, the nested decision claims and publishes it
    free = _store()
    assert _ask(free, lambda: mine, wait=False) == mine
    assert free.check(["size#0"])


def test_a_claim_whose_holder_stopped_beating_is_taken_over(monkeypatch):
    monkeypatch.setattr(shared, "STALE_S", 0.3)
    store = _store()
    store.compare_set("size#0#claim", "", "a rank that died")
    mine = Choice("numba-cpu", {}, "measured")
    assert _ask(store, lambda: mine) == mine
    shared.reset()
    assert _ask(store, _never) == mine


def test_a_live_holder_is_waited_for(monkeypatch):
    import threading
    import time

    monkeypatch.setattr(shared, "STALE_S", 0.3)
    monkeypatch.setattr(shared, "BEAT_S", 0.05)
    store = _store()
    theirs = Choice("torch-cpu", {}, "measured")
    started = threading.Event()

    def slow() -> Choice:  # (longer than STALE_S: its beats keep the claim)
        started.set()
        time.sleep(1.0)
        return theirs

    other = threading.Thread(target=lambda: _ask(store, slow))
    other.start()
    started.wait(5)
    shared.reset()
    assert _ask(store, _never) == theirs
    other.join()


def test_a_group_whose_store_does_not_answer_decides_locally():
    # an MPI group's placeholder store, the fake backend's: their check raises ("pure virtual")
    fake = types.SimpleNamespace(
        PrefixStore=dist.PrefixStore,
        distributed_c10d=types.SimpleNamespace(_get_default_store=lambda: dist.Store()))
    assert shared.store_of(fake) is None
    real = types.SimpleNamespace(
        PrefixStore=dist.PrefixStore,
        distributed_c10d=types.SimpleNamespace(_get_default_store=dist.HashStore))
    assert shared.store_of(real) is not None


_FAKE_GROUP = """
import os, sys
import numpy as np, torch, torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore
import kernelkit
from kernelkit.autotune import tuner
dist.init_process_group("fake", rank=0, world_size=2, store=FakeStore())
assert tuner.distributed_peers() is not None
with kernelkit.use(tune="measure"):  # a miss: the fake group's store raised "pure virtual"
    kernelkit.matmul(np.ones((9, 7), np.float32), np.ones((7, 5), np.float32))
pid = os.fork()
if pid == 0:  # a DataLoader worker of a rank: no rank itself, nor a user of its store
    os._exit(0 if tuner.distributed_peers() is None else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert tuner.distributed_peers() is not None
print("ok")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_group_without_a_store_decides_locally_and_a_forked_child_is_no_rank(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", _FAKE_GROUP], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_relu_backward_is_registered_at_import():
    # a compiled backward loaded from Inductor's cache (or a saved graph) called it before any
    # backward formula had registered it: AttributeError in a fresh process
    import subprocess
    import sys

    code = ("import torch, kernelkit; kernelkit.matmul; "
            "assert hasattr(torch.ops.kernelkit, 'relu_backward'); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_a_holder_whose_claim_was_taken_over_runs_what_the_job_runs(monkeypatch):
    # a holder that stopped beating (a suspended process) lost its claim to another rank; when
    # it finished it overwrote the published choice: two choices for one round
    import threading
    import time

    monkeypatch.setattr(shared, "STALE_S", 0.3)
    monkeypatch.setattr(shared, "BEAT_S", 100.0)  # (nobody beats)
    store = _store()
    slow_pick, fast_pick = Choice("numba-cpu", {}, "measured"), Choice("torch-cpu", {}, "measured")
    got = {}
    started = threading.Event()

    def slow() -> Choice:
        started.set()
        time.sleep(1.5)
        return slow_pick

    a = threading.Thread(target=lambda: got.setdefault("a", _ask(store, slow)))
    a.start()
    started.wait(5)
    shared.reset()
    got["b"] = _ask(store, lambda: fast_pick)  # (takes the stale claim over)
    a.join()
    shared.reset()
    got["c"] = _ask(store, _never)
    assert got["a"] == got["b"] == got["c"] == fast_pick
