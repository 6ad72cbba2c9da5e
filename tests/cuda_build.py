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

from kernelkit import devices


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
# The launchers' own runs: only where cupy sees a device.
needs_cupy_device = pytest.mark.skipif(not devices.cupy_available(),
                                       reason="needs cupy and a CUDA device")


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
    """{arch: (cubin bytes, ptxas usage)} for a whole .cu file, the archs built in parallel
    (skips without nvcc)."""
    if NVCC is None:
        pytest.skip("nvcc not found on PATH or in /usr/local/cuda/bin")
    from concurrent.futures import ThreadPoolExecutor

    def build(arch):
        out = tmp / f"{Path(source).stem}_{arch}.cubin"
        proc = nvcc(["-std=c++17", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "-o", str(out),
                     str(source)], tmp)
        return arch, (out.read_bytes(), ptxas_usage(proc.stdout + proc.stderr))

    with ThreadPoolExecutor(len(archs)) as pool:
        return dict(pool.map(build, archs))


# ---------------------------------------------------------------------- host emulation (g++)
# A .cu source compiled for the CPU with -DKK_HOST_EMULATION: each CUDA thread of a block is an OS
# thread (or, for kernels without __syncthreads, a plain loop iteration), ``__shared__`` is a
# static (so blocks run one after another) and ``__syncthreads`` a barrier whose deadlock (a
# divergent __syncthreads) fails the launch instead of hanging.

EMU_SHIM = r"""
#include <math.h>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct kk_dim3 { unsigned x, y, z; };
typedef _Float16 __half;
static inline float __half2float(__half h) { return (float)h; }
static inline __half __float2half_rn(float f) { return (__half)f; }  // round to nearest even
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n)
extern thread_local kk_dim3 kk_emu_thread_idx;
extern thread_local kk_dim3 kk_emu_block_idx;
extern thread_local kk_dim3 kk_emu_block_dim;
#define threadIdx kk_emu_thread_idx
#define blockIdx kk_emu_block_idx
#define blockDim kk_emu_block_dim
void kk_emu_syncthreads();
#define __syncthreads() kk_emu_syncthreads()
"""

_EMU_RUNTIME = r"""
thread_local kk_dim3 kk_emu_thread_idx;
thread_local kk_dim3 kk_emu_block_idx;
thread_local kk_dim3 kk_emu_block_dim;

namespace {
std::mutex mu;
std::condition_variable cv;
int n_threads = 0, arrived = 0;
long generation = 0;
bool failed = false;
}

void kk_emu_syncthreads() {
    std::unique_lock<std::mutex> lock(mu);
    if (failed) return;
    const long gen = generation;
    if (++arrived == n_threads) {
        arrived = 0;
        ++generation;
        cv.notify_all();
        return;
    }
    if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return generation != gen || failed; })) {
        failed = true;
        cv.notify_all();
    }
}

// Runs the gx * gy blocks of bx * by threads one after another; with `sync`, each thread is an OS
// thread (for __syncthreads), otherwise the threads run one after another on the calling thread
// (much faster). Returns 1 if a barrier deadlocked.
inline int kk_emu_run_grid(int gx, int gy, int bx, int by, const std::function<void()>& body,
                           bool sync = true) {
    const int threads = bx * by;
    if (!sync) {
        kk_emu_block_dim = kk_dim3{(unsigned)bx, (unsigned)by, 1u};
        for (int y = 0; y < gy; ++y)
            for (int x = 0; x < gx; ++x)
                for (int t = 0; t < threads; ++t) {
                    kk_emu_block_idx = kk_dim3{(unsigned)x, (unsigned)y, 0u};
                    kk_emu_thread_idx = kk_dim3{(unsigned)(t % bx), (unsigned)(t / bx), 0u};
                    body();
                }
        return 0;
    }
    n_threads = threads;
    arrived = 0;
    failed = false;
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
        pool.emplace_back([=, &body] {
            kk_emu_thread_idx = kk_dim3{(unsigned)(t % bx), (unsigned)(t / bx), 0u};
            kk_emu_block_dim = kk_dim3{(unsigned)bx, (unsigned)by, 1u};
            for (int y = 0; y < gy; ++y)
                for (int x = 0; x < gx; ++x) {
                    kk_emu_block_idx = kk_dim3{(unsigned)x, (unsigned)y, 0u};
                    body();
                    kk_emu_syncthreads();  // shared memory is a static: one block at a time
                }
        });
    }
    for (auto& th : pool) th.join();
    return failed ? 1 : 0;
}
"""


def build_emulation(tmp: Path, source: Path, harness: str, *, extra: str = "",
                    defines: tuple[str, ...] = (), opt: str = "-O1"):
    """The .cu ``source`` (plus ``extra`` instantiations) and a C++ ``harness`` of extern "C"
    launch functions (built on kk_emu_run_grid) as a ctypes library; skips without g++ or
    _Float16, fails on any compiler warning."""
    import ctypes

    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ not found: the host emulation of the CUDA kernels needs it")
    (tmp / "shim.h").write_text(EMU_SHIM)
    (tmp / "emu.cpp").write_text(
        f'#include "shim.h"\n#include "{source}"\n{extra}\n{_EMU_RUNTIME}\n{harness}')
    lib = tmp / f"lib{Path(source).stem}emu.so"
    proc = subprocess.run(
        [gxx, "-std=c++17", opt, "-fPIC", "-shared", "-pthread", "-DKK_HOST_EMULATION=1",
         *defines, "-Wall", "-Wno-unknown-pragmas", "-o", str(lib), str(tmp / "emu.cpp")],
        capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "_Float16" in proc.stderr:
        pytest.skip(f"this g++ has no _Float16: {proc.stderr[:300]}")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    return ctypes.CDLL(str(lib))


def assert_imports_without_cupy(module: str, call: str) -> None:
    """Importing the launcher ``module`` and running ``call`` on it (``m``) imports no cupy."""
    import sys

    code = (f"import sys, kernelkit; before = 'cupy' in sys.modules; import {module} as m; {call}; "
            "assert before or 'cupy' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
