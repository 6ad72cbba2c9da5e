"""Building CUDA sources without a GPU: find nvcc, run it, read ptxas's resource report.

Shared by the CuPy kernels' build tests (matmul, conv2d, preprocess).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest


def find_tool(name: str) -> str | None:
    """A CUDA tool on PATH, or in $CUDA_HOME / $CUDA_PATH / /usr/local/cuda."""
    found = shutil.which(name)
    if found:
        return found
    for d in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if d and (Path(d) / "bin" / name).is_file():
            return str(Path(d) / "bin" / name)
    return None


NVCC = find_tool("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in /usr/local/cuda/bin")


def nvcc(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([NVCC, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"nvcc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def ptxas_usage(text: str) -> dict[str, dict[str, int]]:
    """Parse `-Xptxas -v` output into {kernel: {regs, smem, spill_stores, spill_loads}}."""
    usage: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = usage.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            current["smem"] = int(s.group(1)) if s else 0
    return usage


def has_symbol(cubin: bytes, name: str) -> bool:
    return (b"\0" + name.encode() + b"\0") in cubin


def build_cubins(source: Path, archs: tuple[str, ...], tmp: Path) -> dict[str, tuple[bytes, dict]]:
    """{arch: (cubin bytes, ptxas usage)} for a whole .cu file, the archs built in parallel."""
    from concurrent.futures import ThreadPoolExecutor

    def build(arch):
        out = tmp / f"{Path(source).stem}_{arch}.cubin"
        proc = nvcc(["-std=c++17", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(out),
                     str(source)], tmp)
        return arch, (out.read_bytes(), ptxas_usage(proc.stdout + proc.stderr))

    with ThreadPoolExecutor(len(archs)) as pool:
        return dict(pool.map(build, archs))
