"""Ahead-of-time cache generation over presets, sharded across processes (or GPUs).

Each preset is a list of problems described as data. A shard measures its share on fresh random
inputs of the right shape and merges its results into the shared cache file under the lock, so
shards never lose each other's entries. On one CPU, keep one shard: parallel timings disturb each
other. With several GPUs, one shard per GPU (CUDA_VISIBLE_DEVICES is set per worker).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from .. import settings as _settings

# (op, dims, dtype) — dims are op-specific: matmul (M, K, N); conv2d (N, C, H=W, K, R=S, stride,
# padding, groups)
_RESNET50 = [(3, 64, 224, 7, 2, 3), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 0),
             (128, 128, 28, 3, 1, 1), (256, 1024, 14, 1, 1, 0), (512, 512, 7, 3, 1, 1)]
PRESETS: dict[str, list[tuple[str, tuple[int, ...], str]]] = {
    "quick": [("matmul", (n, n, n), "float32") for n in (32, 64, 128, 256, 512, 1024)]
    + [("matmul", (128, 768, 3072), "float32"), ("matmul", (1, 4096, 4096), "float32")],
    "square": [("matmul", (n, n, n), dt) for dt in ("float32", "float64")
               for n in (128, 256, 512, 1024, 2048)],
    "mlp": [("matmul", (m, k, n), "float32") for m in (1, 16, 128, 512)
            for k, n in ((768, 3072), (3072, 768), (4096, 11008), (11008, 4096))],
    "resnet50": [("conv2d", (n, c, hw, k, r, st, pad, 1), "float32")
                 for n in (1, 8) for c, k, hw, r, st, pad in _RESNET50],
    "odd": [("matmul", d, "float32") for d in ((1, 1, 1), (7, 13, 5), (97, 61, 89),
                                                (255, 257, 129), (1000, 3, 1000), (3, 1000, 3))],
}


@dataclass
class Row:
    op: str
    dims: tuple[int, ...]
    dtype: str
    where: str
    candidate: str
    config: dict
    source: str
    best_s: float | None
    vendor: str | None
    vendor_s: float | None
    flops: float

    @property
    def ratio(self) -> float | None:
        """Vendor time / chosen time: above 1 means the choice beats the vendor library."""
        if self.best_s and self.vendor_s:
            return self.vendor_s / self.best_s
        return None


def make_inputs(op: str, dims: tuple[int, ...], dtype: str, where: str, seed: int = 0):
    """(positional arrays, keyword options) for one problem of a preset."""
    rng = np.random.default_rng(seed)
    if op == "matmul":
        m, k, n = dims
        shapes, kwargs = ((m, k), (k, n)), {}
    elif op == "conv2d":
        n, c, hw, k, r, stride, pad, groups = dims
        shapes = ((n, c, hw, hw), (k, c // groups, r, r))
        kwargs = {"stride": stride, "padding": pad, "groups": groups}
    else:
        raise ValueError(f"generate: unknown op {op!r}")
    arrs = [rng.standard_normal(s, dtype=np.float32).astype(dtype) for s in shapes]
    if where != "numpy":
        import torch

        dev = "cuda" if where == "cuda" else "cpu"
        arrs = [torch.from_numpy(x).to(dev) for x in arrs]
    return arrs, kwargs


def tune_one(op: str, dims: tuple[int, ...], dtype: str, where: str, remeasure: bool) -> Row:
    from ..autotune import tuner
    from ..ops import conv2d as conv2d_op
    from ..ops import dispatch, registry
    from ..ops import matmul as matmul_op

    prepare = {"matmul": matmul_op.prepare, "conv2d": conv2d_op.prepare_forward}[op]
    arrs, kwargs = make_inputs(op, dims, dtype, where)
    call = prepare(*arrs, **kwargs)
    settings = _settings.current()
    if remeasure:
        decision = tuner.decide(call.problem, registry.candidates(op), call.runner, call.verify,
                                settings, mode="measure")
        trials = [t.to_dict() for t in decision.trials]
        choice = decision.choice
    else:
        ex = dispatch.explain_call(call, settings)
        trials, choice = ex.trials, ex.choice
    timed = [t for t in trials if "median" in t]
    best = min((t["median"] for t in timed if t["candidate"] == choice.candidate), default=None)
    vendors = {c.name for c in registry.candidates(op) if c.vendor}
    vendor_trials = [t for t in timed if t["candidate"] in vendors]
    # Prefer the vendor on the device the data lives on: that is what the user would call instead.
    vendor_trials.sort(key=lambda t: (not t["candidate"].endswith(call.problem.device), t["median"]))
    vt = vendor_trials[0] if vendor_trials else None
    return Row(op, tuple(dims), dtype, where, choice.candidate, choice.config, choice.source, best,
               vt["candidate"] if vt else None, vt["median"] if vt else None, call.problem.flops)


def _worker(jobs: list[tuple], gpu: int | None, remeasure: bool) -> list[Row]:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return [tune_one(*job, remeasure) for job in jobs]


def generate(
    preset: str | Iterable[tuple[str, tuple[int, ...], str]],
    *,
    where: str = "numpy",
    shards: int = 1,
    gpus: int = 0,
    remeasure: bool = False,
    progress: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Measure every problem of `preset` and store the winners in the cache. Returns one row each."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"generate: unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        problems = PRESETS[preset]
    else:
        problems = list(preset)
    jobs = [(op, tuple(dims), dtype, where) for op, dims, dtype in problems]
    if shards <= 1:
        rows = []
        for job in jobs:
            rows.append(tune_one(*job, remeasure))
            if progress:
                progress(rows[-1])
        return rows
    ctx = multiprocessing.get_context("spawn")
    parts = [jobs[i::shards] for i in range(shards)]
    with concurrent.futures.ProcessPoolExecutor(shards, mp_context=ctx) as pool:
        futures = [pool.submit(_worker, part, i % gpus if gpus else None, remeasure)
                   for i, part in enumerate(parts)]
        rows = [row for f in futures for row in f.result()]
    if progress:
        for row in rows:
            progress(row)
    return rows


def row_dict(row: Row) -> dict:
    return dataclasses.asdict(row) | {"ratio": row.ratio}
