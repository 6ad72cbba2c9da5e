"""The cost model, for sizes never measured: per-candidate fits with an error estimate.

Each candidate has a roofline (its backend's launch overhead, flop/s and bytes/s, plus both
host<->device copies when it runs away from the data). For each candidate and problem family
(same op, dtype, layout, data location and options), every measured size gives the residual
log(measured / roofline). A new size is predicted as its roofline times the residual of the
nearest measured sizes in (log flops, log bytes) (inverse-distance weighted, 3 neighbours), so the
roofline carries the shape (a memory-bound 1000x3x1000 is not a 180^3) and the measurements carry
the constants. The error comes from leave-one-out at the two nearest measured sizes, plus a
penalty per e-fold of distance to the nearest one. A candidate without a measured size gets the
bare roofline with a wide error. Candidates that failed verification in the family are not
predicted; provisional entries (measured on a busy machine) are not fitted.

`predict_times` gives every candidate's prediction; `confident` says whether the best beats the
runner-up by more than both errors; `predict` picks the candidate with the best pessimistic bound
(time x e^error), so a rough guess never beats a measured fit by luck.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from ..core import Candidate, Choice, Config, Problem
from .key import Key

LINK_BYTES_PER_S = 1.2e10  # PCIe 4 x16, pageable memory
LINK_LATENCY_S = 2e-5
# A candidate whose array library is not the data's (Numba on torch tensors) on the same device:
# the zero-copy views in and out and the op's generic (batched) plan around them. Measured on a
# 2-core Zen 3, 32^3 fp32 through kernelkit.matmul with Numba forced: 9.4 us on numpy arrays,
# 30.6 us on torch tensors (bench notes in docs/performance.md).
LIBRARY_SWITCH_S = 2e-5
ROOFLINE_LOG_ERROR = math.log(8.0)  # round constants: right within ~8x
SINGLE_POINT_LOG_ERROR = math.log(2.0)  # one measured size, scaled by the roofline's shape
MIN_LOG_ERROR = 0.05  # ~5%: timing noise on a good day
DISTANCE_PENALTY = 0.15  # extra log-error per e-fold of (flops, bytes) to the nearest measured size
# Vendor kernels take other paths where a size does not fill their vector blocks (oneDNN blocks
# channels by 16 on AVX-512 and 8 on AVX2; tensor cores want multiples of 8), so times measured at
# aligned sizes say little about an unaligned one, and the other way round: at 24 channels torch's
# 40 px 3x3 conv took 0.170 ms where its 16- and 32-channel neighbours (0.104, 0.106 ms at about
# the same work) had the model predict it 1.5x faster than Numba; Numba ran it in 0.127 ms
# (bench/oracle.py, 2-core Zen 5). A size whose alignment class (`lane_alignment`) the candidate
# was never measured at gets this much more error.
ALIGN_CAP = 4  # alignment classes: trailing zero bits of the lane dims, up to 16 elements
UNALIGNED_LOG_ERROR = math.log(1.5)


def roofline_seconds(cand: Candidate, problem: Problem, flops: float | None = None) -> float:
    launch, peak, bw = cand.roofline
    flops = problem.flops if flops is None else flops
    nbytes = problem.nbytes
    t = launch + flops / (peak * cand.rate_scale(problem.dtype)) + nbytes / bw
    return t + _moving_seconds(cand, problem, nbytes)


def _moving_seconds(cand: Candidate, problem: Problem, nbytes: float) -> float:
    """What running away from the data costs: both copies over the link to another device, or
    the views into and out of another array library on the same one."""
    if cand.device != problem.device:
        return 2 * LINK_LATENCY_S + nbytes / LINK_BYTES_PER_S
    return LIBRARY_SWITCH_S if cand.native != problem.lib else 0.0


@dataclass(frozen=True)
class Prediction:
    candidate: str
    config: Config
    seconds: float
    log_error: float  # natural-log half-width: the truth is within seconds * e^(+-log_error)
    points: int  # measured sizes behind it (0: the roofline)

    @property
    def pessimistic(self) -> float:
        return self.seconds * math.exp(self.log_error)


@dataclass
class _Points:
    lf: list[float]  # log flops
    lb: list[float]  # log bytes
    res: list[float]  # log(measured time / roofline time): what the roofline gets wrong
    al: list[int]  # alignment class (`lane_alignment`)


def lane_alignment(op: str, shapes) -> int:
    """A problem's alignment class: the fewest trailing zero bits (at most ALIGN_CAP) among the
    dims vendor kernels vectorise or block: output and input channels (the weight's first two
    dims) for the convolutions, K and N for matmul; ALIGN_CAP for other ops (one class)."""
    try:
        if op.startswith("conv2d"):
            lanes = shapes[1][:2]
        elif op == "matmul":
            lanes = (shapes[0][-1], shapes[1][-1])
        else:
            return ALIGN_CAP
        return min(min((d & -d).bit_length() - 1, ALIGN_CAP) if d > 0 else ALIGN_CAP
                   for d in (int(x) for x in lanes))
    except (IndexError, TypeError, ValueError):  # an entry without usable shapes
        return ALIGN_CAP


def _roofline_at(cand: Candidate, problem: Problem, flops: float, nbytes: float) -> float:
    launch, peak, bw = cand.roofline
    return launch + flops / peak + nbytes / bw + _moving_seconds(cand, problem, nbytes)


def family_points(key: Key, entries: dict[str, dict], usable: list[Candidate] | None = None,
                  problem: Problem | None = None) -> tuple[dict[str, _Points], set[str]]:
    """Per candidate, its best time at every trusted measured size of `key`'s family (as the
    residual against its roofline when `usable` and `problem` are given), and the candidates that
    failed verification there."""
    by_name = {c.name: c for c in usable or ()}
    raw: dict[str, list[tuple[float, float, float, int]]] = {}
    seen: set[str] = set()
    for entry in entries.values():
        prob = entry.get("problem", {})
        if prob.get("family") != key.family or entry.get("provisional") \
                or entry.get("choice", {}).get("source") != "measured":
            continue
        flops = max(float(prob.get("flops", 0.0)), 1.0)
        nbytes = max(float(prob.get("nbytes", 0.0)), 1.0)
        align = lane_alignment(prob.get("op", ""), prob.get("shapes") or ())
        best: dict[str, float] = {}
        for t in entry.get("trials", []):
            name = t["candidate"]
            seen.add(name)
            if "median" in t and t["median"] > 0 and (name not in best or t["median"] < best[name]):
                best[name] = t["median"]
        for name, secs in best.items():
            roof = _roofline_at(by_name[name], problem, flops, nbytes) \
                if name in by_name and problem is not None else 1.0
            raw.setdefault(name, []).append((math.log(flops), math.log(nbytes),
                                             math.log(secs / roof), align))
    pts = {name: _Points(*(list(col) for col in zip(*items))) for name, items in raw.items()}
    return pts, seen - set(pts)  # tried here, never verified and timed: failed


NEIGHBOURS = 3


def _nearest(p: _Points, lf: float, lb: float, skip: int = -1) -> list[tuple[float, int]]:
    d = [(math.hypot(p.lf[i] - lf, p.lb[i] - lb), i) for i in range(len(p.lf)) if i != skip]
    return sorted(d)[:NEIGHBOURS]


def _residual(p: _Points, lf: float, lb: float, skip: int = -1) -> tuple[float, float]:
    """Inverse-distance-weighted residual of the nearest measured sizes, and the distance to the
    nearest one (log units)."""
    near = _nearest(p, lf, lb, skip)
    weights = [1.0 / (d + 1e-3) ** 2 for d, _ in near]
    res = sum(w * p.res[i] for w, (_, i) in zip(weights, near)) / sum(weights)
    return res, near[0][0]


def _fit(cand: Candidate, problem: Problem, p: _Points, lf: float, lb: float) -> tuple[float, float]:
    """(log seconds, log error) of `cand` at (log flops, log bytes): the roofline times the
    neighbours' residual; the error from leave-one-out at the two nearest measured sizes, plus a
    penalty for the distance to the nearest one and one for an alignment class never measured."""
    res, dist = _residual(p, lf, lb)
    y = math.log(_roofline_at(cand, problem, math.exp(lf), math.exp(lb))) + res
    unaligned = UNALIGNED_LOG_ERROR \
        if lane_alignment(problem.op, problem.shapes) not in p.al else 0.0
    if len(p.lf) < 3:
        return y, SINGLE_POINT_LOG_ERROR + DISTANCE_PENALTY * dist + unaligned
    loo = [abs(_residual(p, p.lf[i], p.lb[i], skip=i)[0] - p.res[i])
           for _, i in _nearest(p, lf, lb)[:2]]
    return y, max(max(loo), MIN_LOG_ERROR) + DISTANCE_PENALTY * dist + unaligned


def predict_times(key: Key, problem: Problem, usable: list[Candidate],
                  entries: dict[str, dict]) -> list[Prediction]:
    """Every usable candidate's predicted time, best first (failed candidates left out)."""
    pts, failed = family_points(key, entries, usable, problem)
    lf, lb = math.log(max(problem.flops, 1.0)), math.log(max(float(problem.nbytes), 1.0))
    out = []
    for cand in usable:
        if cand.name in failed:
            continue
        space = cand.space(problem)
        p = pts.get(cand.name)
        if p is None:
            out.append(Prediction(cand.name, space[0], roofline_seconds(cand, problem),
                                  ROOFLINE_LOG_ERROR, 0))
            continue
        y, err = _fit(cand, problem, p, lf, lb)
        # the config: the best interpolated over the nearest sizes that timed it, not the nearest
        # size's winner (configs a few % apart swap places between neighbouring sizes by noise)
        config = ranked_configs(cand, problem, key, entries, 1)[0]
        out.append(Prediction(cand.name, config, math.exp(y), err, len(p.lf)))
    return sorted(out, key=lambda q: q.seconds)


def confident(preds: list[Prediction]) -> bool:
    """The best prediction beats every other by more than both errors (and is a fit)."""
    if not preds or preds[0].points == 0:
        return False
    best = preds[0]
    return all(math.log(q.seconds / best.seconds) > best.log_error + q.log_error
               for q in preds[1:])


def contenders(preds: list[Prediction], limit: int) -> list[Prediction]:
    """The predictions whose interval overlaps the best one's (at most `limit`), best first."""
    if not preds:
        return []
    best = min(preds, key=lambda q: q.pessimistic)
    near = [q for q in preds
            if math.log(q.seconds / best.seconds) <= best.log_error + q.log_error]
    return sorted(near, key=lambda q: q.pessimistic)[:limit]


def ranked_configs(cand: Candidate, problem: Problem, key: Key, entries: dict[str, dict],
                   limit: int) -> list[Config]:
    """The candidate's configs worth timing, at most `limit`, ranked by the model: each config's
    predicted slowdown against the candidate's best config here, interpolated (inverse-distance
    weighted over log flops and log bytes) from the family's measured sizes that timed it. The
    configs never timed in the family follow in the kernel's own order (which already prunes by
    size and by what the device holds), the default first among them."""
    space = cand.space(problem)
    lf, lb = math.log(max(problem.flops, 1.0)), math.log(max(float(problem.nbytes), 1.0))
    seen: dict[str, list[tuple[float, float]]] = {}  # config -> [(distance, log slowdown)]
    for entry in entries.values():
        prob = entry.get("problem", {})
        if prob.get("family") != key.family or entry.get("provisional") \
                or entry.get("choice", {}).get("source") != "measured":
            continue
        times = {json.dumps(t["config"], sort_keys=True): t["median"]
                 for t in entry.get("trials", [])
                 if t["candidate"] == cand.name and t.get("median", 0) > 0}
        if not times:
            continue
        best = min(times.values())
        d = math.hypot(math.log(max(float(prob.get("flops", 0.0)), 1.0)) - lf,
                       math.log(max(float(prob.get("nbytes", 0.0)), 1.0)) - lb)
        for cfg, t in times.items():
            seen.setdefault(cfg, []).append((d, math.log(t / best)))

    def slowdown(cfg: Config) -> float:
        near = sorted(seen.get(json.dumps(cfg, sort_keys=True), []))[:NEIGHBOURS]
        if not near:
            return math.inf
        w = [1.0 / (d + 1e-3) ** 2 for d, _ in near]
        # to 1%: configs closer than that are a tie, broken by the kernel's order
        return round(sum(wi * r for wi, (_, r) in zip(w, near)) / sum(w), 2)

    order = {json.dumps(c, sort_keys=True): i for i, c in enumerate(space)}
    ranked = sorted(space, key=lambda c: (slowdown(c), order[json.dumps(c, sort_keys=True)]))
    return ranked[:limit]


def predict(key: Key, problem: Problem, usable: list[Candidate], entries: dict[str, dict]) -> Choice:
    """The model's choice: the best pessimistic bound."""
    preds = predict_times(key, problem, usable, entries)
    if not preds:  # every candidate failed verification here before: the safe default
        cand = next((c for c in usable if c.vendor), usable[0])
        return Choice(cand.name, cand.space(problem)[0], "model")
    best = min(preds, key=lambda q: q.pessimistic)
    return Choice(best.candidate, best.config, "model")
