"""The cost model, for sizes never measured.

First it looks for the nearest measured problem of the same family (same op, dtype, layout, data
location and options; nearest in log-size) and reuses that winner. With nothing measured it falls
back to a roofline: launch overhead + flops / peak + bytes / bandwidth, plus the host<->device
transfer when the candidate runs away from the data. The constants are deliberately round numbers;
they only have to rank candidates sensibly until a measurement replaces them.
"""

from __future__ import annotations

import math

from ..ops.registry import Candidate, Choice, Problem
from .key import family, key_dims

# (launch overhead s, peak flop/s, memory bytes/s) per (backend, device)
ROOFLINE = {
    ("torch", "cpu"): (5e-6, 1.5e11, 2e10),
    ("numba", "cpu"): (3e-6, 1.2e11, 2e10),
    ("torch", "cuda"): (1e-5, 5e14, 2e12),
    ("triton", "cuda"): (2e-5, 4e14, 2e12),
    ("cupy", "cuda"): (1e-5, 5e13, 2e12),
}
LINK_BYTES_PER_S = 1.2e10  # PCIe 4 x16, pageable memory
LINK_LATENCY_S = 2e-5


def roofline_seconds(cand: Candidate, problem: Problem) -> float:
    launch, peak, bw = ROOFLINE.get((cand.backend, cand.device), (1e-5, 1e11, 1e10))
    t = launch + problem.flops / peak + problem.nbytes / bw
    if cand.device != problem.device:
        t += 2 * LINK_LATENCY_S + problem.nbytes / LINK_BYTES_PER_S
    return t


def nearest_measured(key: str, entries: dict[str, dict]) -> dict | None:
    fam, mine = family(key), key_dims(key)
    best, best_d = None, math.inf
    for other, entry in entries.items():
        if entry.get("choice", {}).get("source") != "measured" or family(other) != fam:
            continue
        theirs = key_dims(other)
        if len(theirs) != len(mine):
            continue
        d = sum(abs(math.log2(max(a, 1)) - math.log2(max(b, 1))) for a, b in zip(mine, theirs))
        if d < best_d:
            best, best_d = entry, d
    return best


def predict(key: str, problem: Problem, usable: list[Candidate], entries: dict[str, dict]) -> Choice:
    names = {c.name: c for c in usable}
    near = nearest_measured(key, entries)
    if near is not None and near["choice"]["candidate"] in names:
        cand = names[near["choice"]["candidate"]]
        configs = cand.space(problem)
        config = near["choice"]["config"] if near["choice"]["config"] in configs else configs[0]
        return Choice(cand.name, config, "model")
    cand = min(usable, key=lambda c: roofline_seconds(c, problem))
    return Choice(cand.name, cand.space(problem)[0], "model")
