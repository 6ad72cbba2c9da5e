"""Ahead-of-time generation: shards split the cores between them instead of oversubscribing."""

from __future__ import annotations

from kernelkit import use
from kernelkit.autotune import generate
from kernelkit.autotune.cache import Cache


def test_shards_pin_each_worker_to_its_share_of_the_cores(tmp_path):
    problems = [("matmul", (7, 13, 5), "float32"), ("matmul", (3, 5, 7), "float32")]
    with use(cache_dir=tmp_path):
        rows = generate.generate(problems, shards=2, threads=2)
    assert sorted(r.dims for r in rows) == [(3, 5, 7), (7, 13, 5)]
    assert [r.threads for r in rows] == [1, 1]  # 2 threads over 2 shards: one each
    assert all(r.source == "measured" and r.best_s > 0 for r in rows)
    assert len(Cache(tmp_path).entries()) == 2  # the workers wrote to the parent's cache
