"""Problem -> cache key: bucketed sizes, dtype, layout, where the data lives, op options.

Sizes are bucketed so that a new size does not always mean a new tuning run: small sizes are kept
exact (they change which kernel wins), larger ones round up to the next of 2^k or 3*2^(k-1).

A key is a string (stable across processes, readable in the cache file) that also carries the
fields it was made from (`Key.family`, `Key.dims`), so nothing ever parses a key back apart.
"""

from __future__ import annotations

import functools

from ..core import Problem

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


class Key(str):
    """A cache key: the string, plus the problem family (everything but the sizes: problems of one
    family share a cost model) and the bucketed sizes."""

    family: str
    dims: tuple[int, ...]


def problem_family(problem: Problem, suffix: str = "") -> str:
    opts = ",".join(f"{k}={v}" for k, v in problem.option_items())
    fam = f"{problem.op}|{problem.dtype}|{problem.lib}:{problem.device}|{problem.layout}|{opts}"
    return fam + (f"|{suffix}" if suffix else "")


def make_key(problem: Problem, suffix: str = "") -> Key:
    d = dims(problem)
    opts = ",".join(f"{k}={v}" for k, v in problem.option_items())
    sizes = "x".join(str(v) for v in d)
    text = f"{problem.op}|{problem.dtype}|{problem.lib}:{problem.device}|{problem.layout}|{sizes}|{opts}"
    key = Key(text + (f"|{suffix}" if suffix else ""))
    key.family, key.dims = problem_family(problem, suffix), d
    return key


def family(key: Key) -> str:
    """The key's problem family: problems that differ only in size share one."""
    return key.family


def key_dims(key: Key) -> tuple[int, ...]:
    return key.dims
