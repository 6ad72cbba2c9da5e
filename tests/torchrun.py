"""Two ranks under torchrun (gloo, CPU), for the tests that need torch.distributed for real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_two_ranks(script: str, tmp_path: Path, name: str = "rank.py") -> None:
    """Write ``script`` to ``tmp_path / name`` and run it on two ranks, ``tmp_path`` its one
    argument; fails the test with the end of the ranks' output unless both exit 0."""
    path = tmp_path / name
    path.write_text(script)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node=2", str(path), str(tmp_path)],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
