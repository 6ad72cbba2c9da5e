"""Choices shared by the ranks of a distributed job, through the job's key-value store.

Why not a collective: a broadcast on each tuning miss needs every rank to miss the same size at
the same moment. Ranks do not: a validation pass on rank 0 only, an uneven last batch, per-rank
sequence lengths, a background compile that ends on one rank first (its plan asks again, the
others' do not). Each of these left one rank in the broadcast and another in DDP's all-reduce
until gloo's timeout (30 minutes), or handed a rank another size's choice.

What: a size is asked for in rounds (the cost model's choice, then a measured one once
measuring pays; a final choice ends them). The first rank to reach a round claims it in
torch.distributed's store (``compare_set`` on ``<size>#<round>#claim``), decides it, publishes
the choice under ``<size>#<round>`` and releases the claim. A rank that reaches that round later
adopts the published choice; one that reaches it meanwhile waits for the claim holder (who is
deciding, never waiting for anyone). So no pattern of calls can hang, and every rank's n-th
choice of a size is the same. A stand-in while this rank's kernels compile ("warming") is neither
published nor a round: each rank compiles and stands in for itself.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ..core import Choice

WAIT_S = 600.0  # the longest a rank waits for another's decision before deciding on its own
_POLL_S = (0.001, 0.05)  # first and longest sleep between two looks at the store
_rounds: dict[str, int] = {}  # size -> the round this process asks next
_LOCK = threading.Lock()


def store_of(dist) -> Any | None:
    """The default group's store, under kernelkit's prefix; None where torch has none to give."""
    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None
    return dist.PrefixStore("kernelkit/choices", store)


def decide_shared(store, name: str, decide: Callable[[], Choice], adopt: Callable[[Any], Choice],
                  publish: Callable[[Choice], Any], *, wait: bool = True) -> Choice:
    """This rank's next choice for the size `name`: the job's choice for its next round (`adopt`
    of the published payload), else this rank's `decide()`, published (`publish(choice)`: the
    payload) unless it is a stand-in. `wait` False (a decision nested in a measurement): never
    wait for another rank's claim (and publish nothing)."""
    with _LOCK:
        n = _rounds.get(name, 0)
    this = f"{name}#{n}"
    claim = this + "#claim"
    token = f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}".encode()
    deadline = time.monotonic() + WAIT_S
    pause = _POLL_S[0]
    while True:
        if store.check([this]):
            return _next_round(name, n, adopt(pickle.loads(store.get(this))))
        if not wait or time.monotonic() > deadline:
            return decide()  # (its own, not published: the claim holder publishes)
        if store.compare_set(claim, "", token) == token:
            try:
                if store.check([this]):  # (published and released since the first look)
                    return _next_round(name, n, adopt(pickle.loads(store.get(this))))
                choice = decide()
                if choice.source == "warming":
                    return choice
                store.set(this, pickle.dumps(publish(choice)))
                return _next_round(name, n, choice)
            finally:
                store.compare_set(claim, token, "")
        time.sleep(pause)
        pause = min(2 * pause, _POLL_S[1])


def _next_round(name: str, n: int, choice: Choice) -> Choice:
    with _LOCK:
        _rounds[name] = max(_rounds.get(name, 0), n + 1)
    return choice
