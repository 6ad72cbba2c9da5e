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


def test_the_oracle_bench_runs_and_scores_every_policy(tmp_path):
    """`bench/oracle.py --quick`: a smoke run of the policy-vs-oracle bench (its figures are for
    a quiet machine; here only that it runs and scores each policy)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "oracle.py"
    out = tmp_path / "oracle.json"
    r = subprocess.run([sys.executable, str(script), "--quick", "--threads", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"auto", "model", "measure", "off"}
    for res in results.values():
        assert len(res["rows"]) == 2 and 0.0 <= res["within_10pct"] <= 1.0
        assert all(row["oracle_s"] > 0 for row in res["rows"])
    assert results["off"]["tuning_s"] < results["measure"]["tuning_s"]
    assert all(row["source"] == "measured" for row in results["measure"]["rows"])
