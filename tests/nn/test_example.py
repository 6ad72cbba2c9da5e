"""examples/train_cnn.py runs, and its patched loss curves match torch's (a short float64 run
with every layer on Numba, so the kernels really run and the check is to rounding)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_cnn.py"


def test_train_cnn_example_matches_torch():
    out = subprocess.run([sys.executable, str(EXAMPLE), "--steps", "8", "--batch", "8",
                          "--backend", "numba", "--dtype", "float64"],
                         capture_output=True, text=True, check=True).stdout
    assert out.count(" OK") == 2, out
    assert "numba-cpu" in out and "blocks.1.down.0" in out


def test_train_cnn_example_refuses_steps_and_batches_it_cannot_run():
    """--steps 0 raised "max() arg is an empty sequence"; a batch above the 1024 samples trained
    on odd slices."""
    for args in (["--steps", "0"], ["--steps", "-3"], ["--batch", "2000"], ["--batch", "0"]):
        r = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2 and "--steps must be >= 1 and --batch in 1..1024" in r.stderr, \
            (args, r.stderr[-2000:])
