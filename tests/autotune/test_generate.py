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


def test_presets_cover_resnet50_both_backward_ops_and_transformer_gemms():
    """Every row of the resnet50 and transformer presets builds its op's call, and the call is
    the size it names (so `cache verify` can rebuild the entry it leaves)."""
    from kernelkit import core

    known = generate.presets()
    resnet = known["resnet50"]
    assert {op for op, _, _ in resnet} == {"conv2d", "conv2d_backward_input",
                                          "conv2d_backward_weight"}
    per_op = {op: [d for o, d, _ in resnet if o == op] for op in ("conv2d", "conv2d_backward_weight")}
    assert per_op["conv2d"] == per_op["conv2d_backward_weight"]  # the same layers, both passes
    # the stem's input gradient is never needed (the image needs none)
    assert all(d[1] != 3 for o, d, _ in resnet if o == "conv2d_backward_input")
    gemms = {d for op, d, _ in known["transformer"]}
    for h in (768, 1024, 2048):
        for t in (1, 128, 512):
            assert {(t, h, 3 * h), (t, h, h), (t, h, 4 * h), (t, 4 * h, h)} <= gemms
    for op, dims, dtype in resnet[:: 3]:  # a third of the layers (inputs cost time to build)
        spec = core.op_spec(op)
        args, kwargs = spec.make_inputs(dims, dtype, "numpy")
        assert spec.dims_of(spec.prepare(*args, **kwargs).problem.shapes) == dims, (op, dims)
