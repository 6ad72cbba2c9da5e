"""The cost model, for sizes never measured.

First it looks for the nearest measured problem of the same family (same op, dtype, layout, data
location and options; nearest in log-size) and reuses that winner. With nothing measured it falls
back to each candidate's roofline (declared by its backend): launch overhead + flops / peak +
bytes / bandwidth, plus the host<->device transfer when the candidate runs away from the data. The
constants are deliberately round numbers; they only have to rank candidates sensibly until a
measurement replaces them.
"""

from __future__ import annotations

import math

from ..core import Candidate, Choice, Problem
from .key import Key

LINK_BYTES_PER_S = 1.2e10  # PCIe 4 x16, pageable memory
LINK_LATENCY_S = 2e-5


def roofline_seconds(cand: Candidate, problem: Problem) -> float:
    launch, peak, bw = cand.roofline
    t = launch + problem.flops / peak + problem.nbytes / bw
    if cand.device != problem.device:
        t += 2 * LINK_LATENCY_S + problem.nbytes / LINK_BYTES_PER_S
    return t


def nearest_measured(key: Key, entries: dict[str, dict]) -> dict | None:
    """The measured entry of `key`'s family nearest in log-size, read from the fields each entry
    stored when it was measured (entries without them are not used)."""
    best, best_d = None, math.inf
    for entry in entries.values():
        prob = entry.get("problem", {})
        if entry.get("choice", {}).get("source") != "measured" or prob.get("family") != key.family:
            continue
        theirs = tuple(prob.get("dims", ()))
        if len(theirs) != len(key.dims):
            continue
        d = sum(abs(math.log2(max(a, 1)) - math.log2(max(b, 1))) for a, b in zip(key.dims, theirs))
        if d < best_d:
            best, best_d = entry, d
    return best


def predict(key: Key, problem: Problem, usable: list[Candidate], entries: dict[str, dict]) -> Choice:
    names = {c.name: c for c in usable}
    near = nearest_measured(key, entries)
    if near is not None and near["choice"]["candidate"] in names:
        cand = names[near["choice"]["candidate"]]
        configs = cand.space(problem)
        config = near["choice"]["config"] if near["choice"]["config"] in configs else configs[0]
        return Choice(cand.name, config, "model")
    cand = min(usable, key=lambda c: roofline_seconds(c, problem))
    return Choice(cand.name, cand.space(problem)[0], "model")
