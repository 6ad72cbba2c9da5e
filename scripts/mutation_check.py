#!/usr/bin/env python
"""Mutation check: put small deliberate bugs into a copy of the repo and see the tests catch them.

    python scripts/mutation_check.py                 # every mutation, fresh compiled-kernel cache
    python scripts/mutation_check.py --warm          # as a developer reruns: warm cache first
    python scripts/mutation_check.py --only gelu_c   # some of them (names below; --list)

Each mutation is an exact string replacement in one file (asserted to apply exactly once) in a
fresh copy of the working tree (tracked and untracked, not ignored, files), followed by the test
files that should catch it, run with ``-x`` and a private KERNELKIT_CACHE_DIR (so a fresh Numba
cache, see kernelkit/kernels/numba/_cache.py). ``--warm`` first runs the same tests on the
unmutated copy with that cache dir (they must pass), then mutates and reruns them: the way a
developer reruns tests after an edit. A mutation is caught when the tests fail; missed when they
pass. Exit status 1 if any is missed (or a baseline fails). Run by hand, not in CI (minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation("numba_bias_sign", "Numba epilogue bias += -> -= (_gemm.py)",
             "kernelkit/kernels/numba/_gemm.py",
             "c[_U(o + j)] += bias[_U(b0 + j)]", "c[_U(o + j)] -= bias[_U(b0 + j)]",
             ("tests/kernels/test_numba_matmul.py", "-k", "activations_bias")),
    Mutation("gelu_c", "fp32 GELU constant 0.044715 -> 0.0447 (_gemm.py)",
             "kernelkit/kernels/numba/_gemm.py",
             "_GELU_C = _F(0.044715)", "_GELU_C = _F(0.0447)",
             ("tests/kernels/test_activation_accuracy.py", "-k", "numba")),
    Mutation("crop_floor", "crop start floor(lo) -> floor(lo + 0.5) (taps.py)",
             "kernelkit/kernels/taps.py",
             "first = np.floor(np.asarray(lo, np.float64)).astype(np.int64)",
             "first = np.floor(np.asarray(lo, np.float64) + 0.5).astype(np.int64)",
             ("tests/kernels/test_resample_reference.py", "tests/kernels/test_numba_preprocess.py")),
    Mutation("numba_mc_nc", "Numba matmul launch with mc and nc swapped (matmul.py)",
             "kernelkit/kernels/numba/matmul.py",
             "fns.serial(0, 1, a, b, bias, has_bias, act, out, cfg.mc, cfg.kc, cfg.nc)",
             "fns.serial(0, 1, a, b, bias, has_bias, act, out, cfg.nc, cfg.kc, cfg.mc)",
             ("tests/kernels/test_config_plumbing.py", "-k", "numba_matmul")),
    Mutation("triton_block_mn", "Triton matmul launch with BLOCK_M and BLOCK_N swapped",
             "kernelkit/kernels/triton/matmul.py",
             "BLOCK_M=config.BLOCK_M, BLOCK_N=config.BLOCK_N,",
             "BLOCK_M=config.BLOCK_N, BLOCK_N=config.BLOCK_M,",
             ("tests/kernels/test_config_plumbing.py", "-k", "triton_matmul")),
    Mutation("cache_lock", "cache update without its file lock (autotune/cache.py)",
             "kernelkit/autotune/cache.py",
             'exist_ok=True)\n        with self._mutex, FileLock(str(self.path) + ".lock", timeout=60):',
             'exist_ok=True)\n        with self._mutex:',
             ("tests/autotune/test_cache.py",)),
    Mutation("triton_no_bias", "Triton epilogue without bias (triton/matmul.py)",
             "kernelkit/kernels/triton/matmul.py",
             "    if HAS_BIAS:\n", "    if False:\n",
             ("tests/kernels/test_triton_matmul.py", "-k", "bias")),
    Mutation("cupy_bias_last_col", "CuPy bias skipped on the last column (matmul.cu)",
             "kernelkit/kernels/cupy/matmul.cu",
             "bv[j] = (has_bias && gn < N) ?", "bv[j] = (has_bias && gn < N - 1) ?",
             ("tests/kernels/test_cupy_matmul_build.py", "-k", "emulated")),
)


def _copy_tree(dst: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)


def _pytest(repo: Path, cache: Path, tests: tuple[str, ...], log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(repo), "KERNELKIT_CACHE_DIR": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    with open(log, "a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=repo, env=env, stdout=f, stderr=subprocess.STDOUT).returncode


def check(m: Mutation, work: Path, warm: bool) -> tuple[str, float]:
    t0 = time.perf_counter()
    repo, cache, log = work / "repo", work / "cache", work / "log.txt"
    _copy_tree(repo)
    if warm and _pytest(repo, cache, m.tests, log) != 0:
        return "baseline fails", time.perf_counter() - t0
    target = repo / m.path
    src = target.read_text()
    if src.count(m.old) != 1:
        return f"does not apply ({src.count(m.old)} matches)", time.perf_counter() - t0
    target.write_text(src.replace(m.old, m.new))
    rc = _pytest(repo, cache, m.tests, log)
    status = "missed" if rc == 0 else "caught" if rc == 1 else f"error (pytest rc {rc})"
    return status, time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--warm", action="store_true", help="run the tests unmutated first (warm cache)")
    p.add_argument("--only", nargs="*", help="mutation names")
    p.add_argument("--list", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep the copies and logs")
    args = p.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:20} {m.what}")
        return 0
    base = Path(tempfile.mkdtemp(prefix="kk-mutation-"))
    rows = []
    for m in chosen:
        status, secs = check(m, base / m.name, args.warm)
        rows.append((m, status, secs))
        print(f"{m.name:20} {status:10} {secs:6.0f} s  {m.what}", flush=True)
    print(f"\nmode: {'warm cache' if args.warm else 'fresh cache'}; logs under {base}")
    print("| mutation | tests | result |\n| --- | --- | --- |")
    for m, status, _ in rows:
        print(f"| {m.what} | `{' '.join(m.tests)}` | {status} |")
    if not args.keep and all(s == "caught" for _, s, _ in rows):
        shutil.rmtree(base, ignore_errors=True)
    return 0 if all(s == "caught" for _, s, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
