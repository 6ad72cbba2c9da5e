"""The README runs as written: every fenced code block, on a CPU-only machine, in fresh processes.

- The Python block runs in a fresh interpreter; then its results are checked against float64 /
  torch references computed from the names it defined.
- The command block runs as one bash script in an empty folder (PATH leads to this interpreter's
  `kernelkit`).
- The quickstart block: `./scripts/run.sh` runs here; `./scripts/test.sh` is the command CI runs
  (`.ci/run`), which is how this very test runs, so the test checks that `.ci/run` calls it.

All share one private cache folder, so the Numba kernels compile once for the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)


def blocks(lang: str) -> list[str]:
    return [body for tag, body in BLOCK.findall(README) if tag == lang]


def test_every_code_block_is_one_this_file_runs():
    tags = [tag for tag, _ in BLOCK.findall(README)]
    assert tags == ["bash", "python", "python", "bash"], (
        f"README code blocks are now {tags}: teach tests/test_readme.py to run the new ones")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("kk-readme-cache")
    e = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.pop("KERNELKIT_BACKEND", None)
    e.pop("KERNELKIT_TUNE", None)
    e.pop("KERNELKIT_COMPILE", None)  # the README's default: background compiles
    # The compiled kernels are shared with this test session's (same sources, same key): the
    # README's commands are under test here, not Numba's compile time.
    from kernelkit.kernels.numba import _cache

    if (numba_dir := _cache.cache_dir()) is not None:
        (cache / "numba").symlink_to(numba_dir.parent, target_is_directory=True)
    return e


CHECKS = textwrap.dedent("""
    # -- checks, after the README's block ran in this namespace --
    import torch.nn.functional as F
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = a64 @ b64 + bias
    ref = 0.5 * ref * (1 + np.vectorize(__import__("math").erf)(ref / np.sqrt(2)))
    tol = 1e-5 * np.sqrt(a.shape[1]) * np.abs(a64) @ np.abs(b64) + 1e-5
    assert c.shape == (512, 3072) and np.all(np.abs(kernelkit_c_first - ref) <= tol)
    assert np.allclose(c, a64 @ b64, rtol=1e-4, atol=1e-3)            # the forced numba run
    y_ref = F.silu(x.double() @ w.double())
    assert y.shape == (8, 128, 3072) and torch.allclose(y.double(), y_ref, rtol=1e-3, atol=1e-3)
    z_ref = F.relu(F.conv2d(images.double(), weight.double(), conv_bias.double(), padding="same"))
    assert torch.allclose(z.double(), z_ref, rtol=1e-4, atol=1e-4)
    assert tuple(batch.shape) == (2, 3, 224, 224) and np.isfinite(np.asarray(batch)).all()
    h = F.relu(F.conv2d(images.double(), model[0].weight.double(), model[0].bias.double(),
                        padding=1))
    logits_ref = F.linear(h.flatten(1), model[3].weight.double(), model[3].bias.double())
    assert logits.shape == (4, 10)
    assert torch.allclose(logits.double(), logits_ref, rtol=1e-4, atol=1e-3)
    print("README-OK")
""")


def test_the_python_block_runs_and_computes_what_it_says(env, tmp_path):
    code = blocks("python")[0]
    # keep the first `c` (the fused call): the block reassigns it in its last line
    code = code.replace('activation="gelu")', 'activation="gelu"); kernelkit_c_first = c', 1)
    assert "kernelkit_c_first = c" in code
    script = tmp_path / "readme_block.py"
    script.write_text(code + CHECKS)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "README-OK" in out.stdout
    assert "choice:" in out.stdout  # the explain print


def test_the_data_pipeline_block_runs(env, tmp_path):
    code = blocks("python")[1] + textwrap.dedent("""
        # -- checks --
        assert labels.shape == (32,) and torch.isfinite(batch).all()
        assert abs(float(batch.mean())) < 1.0  # unit-range stats applied to 0..255 images
        print("README-DATA-OK")
    """)
    script = tmp_path / "readme_data.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "README-DATA-OK" in out.stdout


def test_the_command_block_runs_as_written(env, tmp_path):
    (_, commands) = blocks("bash")
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert out.stdout.count("choice:") == 3  # the three explains
    for name in ("shapes.json", "tuned.json", "cache.json", "merged.json"):
        assert (tmp_path / name).exists(), name
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["entries"], "the merged cache holds the tuned entries"


def test_the_quickstart_commands_run(env):
    (quickstart, _) = blocks("bash")
    lines = [ln.split("#")[0].strip() for ln in quickstart.splitlines() if ln.strip()]
    assert lines == ["./scripts/run.sh", "./scripts/test.sh"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^exec bash scripts/test\.sh\b", ci, re.M), \
        "CI must run the README's test command (then this suite is its proof)"
    out = subprocess.run(["./scripts/run.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "vs vendor" in out.stdout or "vendor" in out.stdout
