"""Ahead-of-time cache generation over presets, sharded across processes (or GPUs).

Each preset is a list of problems described as data. A shard measures its share on fresh random
inputs of the right shape and merges its results into the shared cache file under the lock, so
shards never lose each other's entries. On one CPU, keep one shard: parallel timings disturb each
other. With several GPUs, one shard per GPU (CUDA_VISIBLE_DEVICES is set per worker).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import multiprocessing
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .. import arrays, core
from .. import settings as _settings


def presets() -> dict[str, list[tuple[str, tuple[int, ...], str]]]:
    """Every op's presets, by name: (op, dims, dtype) rows; dims are the op's own (see its
    spec's `make_inputs`: matmul (M, K, N); conv2d (N, C, H=W, K, R=S, stride, padding, groups);
    preprocess (N, H, W, SIZE))."""
    out: dict[str, list] = {}
    for spec in core.op_specs():
        for name, rows in spec.presets.items():
            out.setdefault(name, []).extend((spec.name, dims, dtype) for dims, dtype in rows)
    return out


def pin_threads(n: int) -> None:
    """Every CPU thread pool of this process (BLAS/OpenMP, torch, Numba) to `n` threads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    import torch

    from .. import threads

    torch.set_num_threads(n)
    threads.limit_kernel_threads(n)  # (kernelkit's kernels: Numba's own layer is never used)


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
    threads: int = 0  # the CPU threads the measuring process had
    # the entry was measured while the machine was busy: a hint, measured again by the next
    # tuning (its times may be far off, e.g. a 489x "speed-up" under a load average of 5)
    provisional: bool = False

    @property
    def ratio(self) -> float | None:
        """Vendor time / chosen time: above 1 means the choice beats the vendor library."""
        if self.best_s and self.vendor_s:
            return self.vendor_s / self.best_s
        return None


# every dtype some kernelkit op takes (the ops say which of them each one runs)
KNOWN_DTYPES = (*arrays.FLOAT_DTYPES, "uint8")


def load_shapes(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """A shapes file: a JSON list of {"op", "dims", "dtype"} objects or [op, dims, dtype] rows
    (no dtype: the op's presets', float32 for matmul and conv2d, uint8 for preprocess);
    or that JSON itself, given in place of a path (``--shapes '[["matmul", [64, 64, 64]]]'``).

    `dims` as `kernelkit explain` takes them (e.g. conv2d: N C H K R STRIDE), or in the op's
    full preset form (conv2d: N C H K R STRIDE PADDING GROUPS)."""
    from pathlib import Path

    from .cache import read_json

    inline = str(path).lstrip().startswith("[") and not Path(path).is_file()
    rows = read_json(path, str(path) if inline else None)
    out = []
    for i, r in enumerate(rows if isinstance(rows, list) else []):
        try:
            op, dims, dtype = (r["op"], r["dims"], r.get("dtype")) \
                if isinstance(r, dict) else (r[0], r[1], r[2] if len(r) > 2 else None)
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                raise TypeError  # (int(8.5) tuned 8 without a word)
            dims = tuple(dims)
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f"{path}: row {i} must be {{\"op\", \"dims\", \"dtype\"}} or "
                             f"[op, dims, dtype] with integer dims, got {r!r}") from None
        spec = core.op_spec(op)  # a clear error for an unknown op
        if dtype is None:  # the op's own (its presets'): uint8 images for preprocess
            dtype = next((dt for rows_ in spec.presets.values() for _, dt in rows_), "float32")
        if not dims:
            raise ValueError(f"{path}: row {i} has no dims")
        if min(dims) < 0:  # (numpy's "negative dimensions are not allowed" named no row)
            raise ValueError(f"{path}: row {i}: dims must be >= 0, got {list(dims)}")
        sizes = {len(spec.cli_dims.split())} if spec.cli_dims else set()
        sizes |= {len(d) for rows_ in spec.presets.values() for d, _ in rows_}
        if sizes and len(dims) not in sizes:
            raise ValueError(f"{path}: row {i}: {op} takes {spec.cli_dims or 'its preset dims'} "
                             f"({' or '.join(map(str, sorted(sizes)))} numbers), got {list(dims)}")
        if str(dtype) not in KNOWN_DTYPES:
            raise ValueError(f"{path}: row {i}: unknown dtype {dtype!r}; expected one of "
                             f"{list(KNOWN_DTYPES)}")
        if spec.cli_inputs is not None and len(dims) == len(spec.cli_dims.split()):
            dims = spec.cli_inputs(dims)
        out.append((str(op), dims, str(dtype)))
    if not out:
        raise ValueError(f"{path}: expected a JSON list of {{op, dims, dtype}} rows")
    return out


def coverage(problems, where: str = "numpy") -> list[dict]:
    """For each (op, dims, dtype): "measured" (in the cache), "predicted" (the cost model is
    confident for it), "uncertain" (a fit exists, but measuring would be needed) or "missing"."""
    from . import model, tuner
    from .cache import cache_for

    settings = _settings.current()
    entries = cache_for(settings.cache_path).entries()
    out = []
    for op, dims, dtype in problems:
        problem = _call(op, dims, dtype, where).problem
        key = tuner.make_key(problem, tuner.forced_suffix(settings))
        entry = entries.get(key)
        if entry is not None:
            state = "provisional" if entry.get("provisional") else "measured"
            choice = entry["choice"]["candidate"]
        else:
            usable, _ = tuner.split_candidates(problem, core.candidates(op), settings)
            preds = model.predict_times(key, problem, usable, entries)
            fitted = any(q.points for q in preds)
            state = "predicted" if model.confident(preds) else "uncertain" if fitted else "missing"
            choice = preds[0].candidate if preds and fitted else None
        out.append({"op": op, "dims": list(dims), "dtype": dtype, "state": state,
                    "choice": choice})
    return out


def make_inputs(op: str, dims: tuple[int, ...], dtype: str, where: str, seed: int = 0):
    """(positional arrays, keyword options) for one problem of a preset."""
    spec = core.op_spec(op)
    if spec.make_inputs is None:
        raise ValueError(f"generate: op {op!r} has no input builder")
    return spec.make_inputs(tuple(dims), dtype, where, seed)


def _call(op: str, dims: tuple[int, ...], dtype: str, where: str):
    """The prepared call of one (op, dims, dtype) on fresh inputs living at `where`."""
    args, kwargs = make_inputs(op, dims, dtype, where)
    return core.op_spec(op).prepare(*args, **kwargs)


def tune_one(op: str, dims: tuple[int, ...], dtype: str, where: str, remeasure: bool) -> Row:
    return _tune(op, dims, dtype, where, remeasure)[0]


def _tune(op: str, dims: tuple[int, ...], dtype: str, where: str, remeasure: bool
          ) -> tuple[Row, str]:
    """tune_one, and the cache key it decided."""
    from . import tuner
    from .cache import cache_for

    call = _call(op, dims, dtype, where)
    cands = core.candidates(op)
    decision = tuner.decide(call.problem, cands, call.runner, call.verify, _settings.current(),
                            mode="measure", remeasure=remeasure)
    choice = decision.choice
    timed = [t for t in decision.trials if t.timing is not None]
    best = min((t.timing.median for t in timed if t.candidate == choice.candidate), default=None)
    medians: dict[str, float] = {}
    for t in timed:
        medians[t.candidate] = min(medians.get(t.candidate, math.inf), t.timing.median)
    vendor = pick_vendor(cands, call.problem.lib, call.problem.device, medians)
    entry = cache_for(_settings.current().cache_path).get(decision.key) or {}
    return Row(op, tuple(dims), dtype, where, choice.candidate, choice.config, choice.source, best,
               vendor, medians.get(vendor) if vendor else None,
               call.problem.flops, _torch_threads(), bool(entry.get("provisional"))), decision.key


def pick_vendor(cands, lib: str, device: str, medians: dict[str, float]) -> str | None:
    """The vendor candidate a "vs vendor" ratio is taken against, among those timed (`medians`:
    name -> best median): the one on the device the data lives on, of the data's own array
    library, as that is what the user would call instead (numpy's BLAS for numpy arrays, torch
    for tensors); else the fastest timed vendor."""
    native = {c.name: c.native for c in cands if c.vendor}
    timed = [name for name in medians if name in native]
    timed.sort(key=lambda n: (not n.endswith(device), native[n] != lib, medians[n]))
    return timed[0] if timed else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _worker(jobs: list[tuple], gpu: int | None, remeasure: bool, threads: int,
            cache_dir: str) -> list[Row]:
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ["KERNELKIT_CACHE_DIR"] = cache_dir  # the parent's, `kernelkit.use` included
    pin_threads(threads)  # its share of the cores: shards must not oversubscribe them
    return [tune_one(*job, remeasure) for job in jobs]


def generate(
    preset: str | Iterable[tuple[str, tuple[int, ...], str]],
    *,
    where: str = "numpy",
    shards: int = 1,
    gpus: int = 0,
    remeasure: bool = False,
    threads: int = 0,
    progress: Callable[[Row], None] | None = None,
    starting: Callable[[tuple[str, tuple[int, ...], str]], None] | None = None,
) -> list[Row]:
    """Measure every problem of `preset` and store the winners in the cache. Returns one row each.

    `threads` (default: every core) is split evenly between the `shards` worker processes.
    `starting(problem)` is called before each problem is measured in this process (a progress
    bar's label); `progress(row)` after each. Under torchrun, without a process group, it makes a
    gloo group (``distributed_group``); ``release_group()`` ends it once the ranks are done."""
    if isinstance(preset, str):
        known = presets()
        if preset not in known:
            raise ValueError(f"generate: unknown preset {preset!r}; expected one of {sorted(known)}")
        problems = known[preset]
    else:
        problems = list(preset)
    jobs = [(op, tuple(dims), dtype, where) for op, dims, dtype in problems]
    if (dist := distributed_group()) is not None:
        return _generate_distributed(dist, jobs, remeasure, threads, progress)
    if shards <= 1:
        rows = []
        for job in jobs:
            if starting:
                starting(job[:3])
            rows.append(tune_one(*job, remeasure))
            if progress:
                progress(rows[-1])
        return rows
    ctx = multiprocessing.get_context("spawn")
    parts = [jobs[i::shards] for i in range(shards)]
    with concurrent.futures.ProcessPoolExecutor(shards, mp_context=ctx) as pool:
        share = max(1, (threads or os.cpu_count() or 1) // shards)
        cache_dir = str(_settings.current().cache_path)
        futures = [pool.submit(_worker, part, i % gpus if gpus else None, remeasure, share,
                               cache_dir) for i, part in enumerate(parts)]
        rows = [row for f in futures for row in f.result()]
    if progress:
        for row in rows:
            progress(row)
    return rows


# Whether distributed_group() made the process group (then release_group() may end it); a
# group the caller made is theirs to end.
_MADE_GROUP = [False]


def distributed_group():
    """torch.distributed, when this process is one rank of several (torchrun), else None. A
    process started by torchrun without a group gets one (gloo: works on every machine); end it
    with ``release_group()``."""
    if "WORLD_SIZE" not in os.environ and "RANK" not in os.environ:
        import sys

        if "torch.distributed" not in sys.modules:
            return None
    import torch.distributed as dist

    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        dist.init_process_group("gloo")
        _MADE_GROUP[0] = True
    return dist if dist.get_world_size() > 1 else None


def release_group(dist=None) -> None:
    """End the process group ``distributed_group()`` made, once every rank got here (a barrier
    first): a rank that exits with the group alive while another still talks to it can abort
    ("terminate called without an active exception": `kernelkit tune` under torchrun did, one run
    in a loaded CI). A group the caller made is left alone."""
    if not _MADE_GROUP[0]:
        return
    if dist is None:
        import torch.distributed as dist
    _MADE_GROUP[0] = False
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _generate_distributed(dist, jobs, remeasure, threads, progress) -> list[Row]:
    """Each rank measures its share; every rank then holds every rank's entries (gathered and
    added to its cache), so all ranks make the same choices."""
    from .cache import cache_for, same_entry

    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    pin_threads(max(1, (threads or os.cpu_count() or 1) // local))  # ranks share the cores
    tuned = [_tune(*job, remeasure) for job in jobs[rank::world]]
    mine, keys = [row for row, _ in tuned], [key for _, key in tuned]
    cache = cache_for(_settings.current().cache_path)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, ([dataclasses.asdict(r) for r in mine],
                                      {(cache.fp, k): cache.get(k) for k in keys if cache.get(k)},
                                      cache.fingerprints()))
    # Ranks of one machine may share the cache file: what the others appended (before the
    # gather) is read, not appended again (each rank added every entry: N copies of each)
    cache.refresh()
    rows = []
    for row_dicts, records, fps in gathered:
        have = cache.records()
        cache.add_records({k: e for k, e in records.items() if not same_entry(have.get(k), e)},
                          fps)
        rows += [Row(**{**r, "dims": tuple(r["dims"])}) for r in row_dicts]
    if progress:
        for row in rows:
            progress(row)
    return rows


def row_dict(row: Row) -> dict:
    return dataclasses.asdict(row) | {"ratio": row.ratio}
