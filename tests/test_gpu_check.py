"""bench/gpu_check.py must work when a GPU machine is finally at hand: exercise it here, in
--dry-run mode (Triton in the interpreter on tiny shapes), so its own logic is tested in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path),
                        "--dry-run"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["card"] == "interpreter (CPU)"
    assert len(results["checks"]) > 40 and all(c["ok"] for c in results["checks"])
    assert results["bench"] and results["bench"][0]["triton_s"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "checks passed" in summary and summary.strip() in r.stdout  # the table is printed last


def test_gpu_check_refuses_without_gpu(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the real run applies, not the refusal")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2 and "no CUDA device" in r.stdout
