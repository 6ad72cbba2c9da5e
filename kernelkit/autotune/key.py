"""Problem -> cache key: bucketed sizes, dtype, layout, where the data lives, op options.

Sizes are bucketed so that a new size does not always mean a new tuning run: small sizes are kept
exact (they change which kernel wins), larger ones round up to the next of 2^k or 3*2^(k-1).
"""

from __future__ import annotations

import functools

from ..ops.registry import Problem

EXACT_BELOW = 16


@functools.lru_cache(maxsize=4096)
def bucket(n: int) -> int:
    if n <= EXACT_BELOW:
        return n
    p = 1 << (n - 1).bit_length()  # next power of two >= n
    three_quarters = 3 * p // 4
    return three_quarters if n <= three_quarters else p


def dims(problem: Problem) -> tuple[int, ...]:
    return tuple(bucket(d) for shape in problem.shapes for d in shape)


def make_key(problem: Problem, suffix: str = "") -> str:
    """A string key, stable across processes and readable in the cache file."""
    sizes = "x".join(str(d) for d in dims(problem))
    opts = ",".join(f"{k}={v}" for k, v in problem.params)
    key = f"{problem.op}|{problem.dtype}|{problem.lib}:{problem.device}|{problem.layout}|{sizes}|{opts}"
    return key + (f"|{suffix}" if suffix else "")


def family(key: str) -> str:
    """The key without its sizes: problems that differ only in size share a family (cost model)."""
    parts = key.split("|")
    return "|".join(parts[:4] + parts[5:])


def key_dims(key: str) -> tuple[int, ...]:
    sizes = key.split("|")[4]
    return tuple(int(d) for d in sizes.split("x")) if sizes else ()
