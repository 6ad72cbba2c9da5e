"""The cost model, for sizes never measured: per-candidate fits with an error estimate.

For each candidate and problem family (same op, dtype, layout, data location and options), the
measured entries give points (flops, best time of that candidate). A new size is predicted by
piecewise-linear interpolation in log-log between its neighbours (extrapolated with the nearest
slope, bounded between constant and linear), with an error from leave-one-out over the
candidate's points, widened by the distance to the nearest measured size. A candidate without a
point is predicted by its backend's roofline (launch overhead + flops / peak + bytes / bandwidth,
plus both host<->device copies when it runs away from the data), with a wide error. Candidates
that failed verification in the family are not predicted at all; provisional entries (measured
on a busy machine) are not fitted.

`predict_times` gives every candidate's prediction; `confident` says whether the best beats the
runner-up by more than both errors; `predict` picks the candidate with the best pessimistic bound
(time x e^error), so a rough guess never beats a measured fit by luck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core import Candidate, Choice, Config, Problem
from .key import Key

LINK_BYTES_PER_S = 1.2e10  # PCIe 4 x16, pageable memory
LINK_LATENCY_S = 2e-5
ROOFLINE_LOG_ERROR = math.log(8.0)  # round constants: right within ~8x
SINGLE_POINT_LOG_ERROR = math.log(2.0)  # one measured size, scaled by the roofline's shape
MIN_LOG_ERROR = 0.05  # ~5%: timing noise on a good day
DISTANCE_PENALTY = 0.15  # extra log-error per e-fold of flops beyond the measured range


def roofline_seconds(cand: Candidate, problem: Problem, flops: float | None = None) -> float:
    launch, peak, bw = cand.roofline
    flops = problem.flops if flops is None else flops
    nbytes = problem.nbytes
    t = launch + flops / peak + nbytes / bw
    if cand.device != problem.device:
        t += 2 * LINK_LATENCY_S + nbytes / LINK_BYTES_PER_S
    return t


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
    xs: list[float]  # log flops
    ys: list[float]  # log seconds
    configs: list[Config]


def family_points(key: Key, entries: dict[str, dict]) -> tuple[dict[str, _Points], set[str]]:
    """Per candidate, its best time at every trusted measured size of `key`'s family, and the
    candidates that failed verification there."""
    raw: dict[str, list[tuple[float, float, Config]]] = {}
    seen: set[str] = set()
    for entry in entries.values():
        prob = entry.get("problem", {})
        if prob.get("family") != key.family or entry.get("provisional") \
                or entry.get("choice", {}).get("source") != "measured":
            continue
        x = math.log(max(float(prob.get("flops", 0.0)), 1.0))
        best: dict[str, tuple[float, Config]] = {}
        for t in entry.get("trials", []):
            name = t["candidate"]
            seen.add(name)
            if "median" in t and t["median"] > 0 and (name not in best or t["median"] < best[name][0]):
                best[name] = (t["median"], t["config"])
        for name, (secs, cfg) in best.items():
            raw.setdefault(name, []).append((x, math.log(secs), cfg))
    pts = {}
    for name, items in raw.items():
        items.sort()
        pts[name] = _Points([i[0] for i in items], [i[1] for i in items], [i[2] for i in items])
    return pts, seen - set(pts)  # tried here, never verified and timed: failed


def _interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """log-time at log-flops x (two or more points): piecewise linear, extrapolated with the
    nearest slope bounded to [0, 1] (time neither falls nor grows faster than the work)."""
    i = min(max(next((j for j, v in enumerate(xs) if v >= x), len(xs)) - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
    if x < xs[0] or x > xs[-1]:
        slope = min(max(slope, 0.0), 1.0)
    return y0 + slope * (x - x0)


def _fit(cand: Candidate, problem: Problem, p: _Points, x: float) -> tuple[float, float]:
    """(log seconds, log error) of `cand` at log-flops x from its points."""
    if len(p.xs) == 1 or len(set(p.xs)) == 1:
        # one size: its time, scaled by the roofline's shape between that size and this one
        ref = roofline_seconds(cand, problem, flops=math.exp(p.xs[0]))
        here = roofline_seconds(cand, problem)
        return p.ys[0] + math.log(here / ref), SINGLE_POINT_LOG_ERROR
    y = _interpolate(p.xs, p.ys, x)
    if len(p.xs) < 3:
        return y, SINGLE_POINT_LOG_ERROR
    # leave one out: how well do the others predict each point? The error here is that of the
    # two measured sizes nearest to x (the fit's local quality), never below timing noise.
    loo = []
    for i in sorted(range(len(p.xs)), key=lambda i: abs(p.xs[i] - x))[:2]:
        xs, ys = p.xs[:i] + p.xs[i + 1:], p.ys[:i] + p.ys[i + 1:]
        loo.append(abs(_interpolate(xs, ys, p.xs[i]) - p.ys[i]))
    return y, max(max(loo), MIN_LOG_ERROR)


def predict_times(key: Key, problem: Problem, usable: list[Candidate],
                  entries: dict[str, dict]) -> list[Prediction]:
    """Every usable candidate's predicted time, best first (failed candidates left out)."""
    pts, failed = family_points(key, entries)
    x = math.log(max(problem.flops, 1.0))
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
        y, err = _fit(cand, problem, p, x)
        distance = max(p.xs[0] - x, x - p.xs[-1], 0.0)
        nearest = min(range(len(p.xs)), key=lambda i: abs(p.xs[i] - x))
        config = p.configs[nearest] if p.configs[nearest] in space else space[0]
        out.append(Prediction(cand.name, config, math.exp(y), err + DISTANCE_PENALTY * distance,
                              len(p.xs)))
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
    """The candidate's configs worth timing, at most `limit`: those that won for it at the
    family's measured sizes (nearest size first), then the default, then the rest of its space
    in the kernel's own order (which already prunes by size and by what the device holds)."""
    space = cand.space(problem)
    pts, _ = family_points(key, entries)
    p = pts.get(cand.name)
    winners: list[Config] = []
    if p is not None:
        x = math.log(max(problem.flops, 1.0))
        for i in sorted(range(len(p.xs)), key=lambda i: abs(p.xs[i] - x)):
            if p.configs[i] in space and p.configs[i] not in winners:
                winners.append(p.configs[i])
    ordered = winners + [c for c in space if c not in winners]
    return ordered[:limit]


def predict(key: Key, problem: Problem, usable: list[Candidate], entries: dict[str, dict]) -> Choice:
    """The model's choice: the best pessimistic bound."""
    preds = predict_times(key, problem, usable, entries)
    if not preds:  # every candidate failed verification here before: the safe default
        cand = next((c for c in usable if c.vendor), usable[0])
        return Choice(cand.name, cand.space(problem)[0], "model")
    best = min(preds, key=lambda q: q.pessimistic)
    return Choice(best.candidate, best.config, "model")
