"""Choices shared by the ranks of a distributed job, through the job's key-value store.

Why not a collective: a broadcast on each tuning miss needs every rank to miss the same size at
the same moment. Ranks do not: a validation pass on rank 0 only, an uneven last batch, per-rank
sequence lengths, a background compile that ends on one rank first (its plan asks again, the
others' do not). Each of these left one rank in the broadcast and another in DDP's all-reduce
until gloo's timeout (30 minutes), or handed a rank another size's choice.

What: a size is asked for in rounds (the cost model's choice, then a measured one once
measuring pays; a final choice ends them). The first rank to reach a round claims it in
torch.distributed's store (``compare_set`` on ``<size>#<round>#claim``), decides it, publishes
the choice under ``<size>#<round>`` (the first publication stands) and releases the claim. A
rank that reaches that round later adopts the published choice; one that reaches it meanwhile
waits for the claim holder, which is deciding and never waits for anyone. So no pattern of
calls can hang, and every rank's n-th choice of a size is the same. While it decides, the holder
beats a counter (`BEAT_S`); a claim whose counter stood still for `STALE_S` (its rank died) is
taken over.

A stand-in while this rank's kernels compile ("warming") is neither published nor a round: each
rank stands in for itself until its own compile ends. A decision made while measuring (an op
that a measured candidate calls) never waits: it claims the round if it is free, else runs its
own choice once, unmemoised (`recheck_after` 1), and adopts the job's at the next call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..core import Choice

BEAT_S = 2.0  # how often a claim holder shows it is alive
STALE_S = 60.0  # a claim whose beat stood still this long is taken over
_POLL_S = (0.001, 0.05)  # first and longest sleep between two looks at the store
_rounds: dict[tuple[int, str], int] = {}  # (job, size) -> the round this process asks next
_LOCK = threading.Lock()


def store_of(dist) -> Any | None:
    """The default group's store under kernelkit's prefix; None where torch gives none that
    answers (an MPI group's placeholder, the fake backend's store: their ``check`` raises), and
    every rank then decides for itself."""
    try:
        store = dist.PrefixStore("kernelkit/choices", dist.distributed_c10d._get_default_store())
        store.check(["probe"])
    except (AttributeError, RuntimeError, ValueError):
        return None
    return store


def reset() -> None:
    """Forget the rounds (the tuner's memo was cleared; a forked child)."""
    global _LOCK
    _LOCK = threading.Lock()  # (a parent's thread may have held it at a fork)
    _rounds.clear()


def decide_shared(store, job: int, name: str, decide: Callable[[], Choice],
                  adopt: Callable[[Any], Choice], publish: Callable[[Choice], Any], *,
                  wait: bool = True) -> Choice:
    """This rank's next choice for the size `name` in the job `job` (the process group's
    identity): the job's choice for its next round (`adopt` of the published payload), else this
    rank's `decide()`, published (`publish(choice)`: the payload) unless it is a stand-in.
    `wait` False: a decision nested in a measurement (see the module docstring)."""
    with _LOCK:
        n = _rounds.get((job, name), 0)
    this = f"{name}#{n}"
    claim, beat = this + "#claim", this + "#beat"
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}".encode()  # (this ask)
    pause, holder, beats, since = _POLL_S[0], None, None, time.monotonic()
    while True:
        if store.check([this]):
            return _adopted(job, name, n, adopt(pickle.loads(store.get(this))))
        got = store.compare_set(claim, "", token)
        if got == token:
            return _as_holder(store, job, name, n, this, claim, beat, token, decide, adopt,
                              publish)
        if not wait:  # (someone decides it: run this rank's choice once, ask again next call)
            return dataclasses.replace(decide(), recheck_after=1)
        # a claim whose holder stopped beating is taken over (its rank died holding it)
        now_beats = store.add(beat, 0)
        if got != holder or now_beats != beats:
            holder, beats, since = got, now_beats, time.monotonic()
        elif time.monotonic() - since > STALE_S and got and \
                store.compare_set(claim, got, token) == token:
            return _as_holder(store, job, name, n, this, claim, beat, token, decide, adopt,
                              publish)
        time.sleep(pause)
        pause = min(2 * pause, _POLL_S[1])


def _as_holder(store, job, name, n, this, claim, beat, token, decide, adopt, publish) -> Choice:
    stop = threading.Event()
    beater = threading.Thread(target=_beat, args=(store, beat, stop), daemon=True,
                              name="kk-claim-beat")
    beater.start()
    try:
        if store.check([this]):  # (published and released since the first look)
            return _adopted(job, name, n, adopt(pickle.loads(store.get(this))))
        choice = decide()
        if choice.source == "warming":
            return choice
        mine = pickle.dumps(publish(choice))
        # first publisher wins: a holder whose claim was taken over (it stopped beating: a
        # suspended process) may finish too, and must then run what the job runs
        first = store.compare_set(this, "", mine)
        return _adopted(job, name, n, choice if first == mine else adopt(pickle.loads(first)))
    finally:
        stop.set()
        beater.join()
        store.compare_set(claim, token, "")  # (only this holder's own claim)


def _beat(store, beat: str, stop: threading.Event) -> None:
    while not stop.wait(BEAT_S):
        with contextlib.suppress(Exception):  # (a store hiccup: beat again next time)
            store.add(beat, 1)


def _adopted(job: int, name: str, n: int, choice: Choice) -> Choice:
    with _LOCK:
        _rounds[(job, name)] = max(_rounds.get((job, name), 0), n + 1)
    return choice
