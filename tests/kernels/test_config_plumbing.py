"""The config a caller passes reaches the kernel launch exactly (issue 15).

A config dropped or mangled on its way to the launch (mc and nc swapped, BLOCK_M and BLOCK_N
swapped) computes the right numbers and only loses speed, so the numeric tests cannot see it.
Here a spy stands in for the compiled entry point or the ``@triton.jit`` kernel and records what
the launcher hands it. The configs are asymmetric on purpose, so a swap changes the launch.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import preprocess_args


class _Launches:
    """Spies on the ``@triton.jit`` kernels of a module: ``kernel[grid](*args, **kw)`` records
    (kernel name, grid, kwargs) and launches nothing."""

    def __init__(self, monkeypatch, module):
        import triton

        self.calls = []
        for name in dir(module):
            if isinstance(getattr(module, name), triton.runtime.jit.KernelInterface):
                monkeypatch.setattr(module, name, self._spy(name))

    def _spy(self, name):
        calls = self.calls

        class Spy:
            def __getitem__(self, grid):
                return lambda *args, **kw: calls.append((name, tuple(grid), kw))

        return Spy()


# --------------------------------------------------------------------------------------- numba

def test_numba_matmul_launch_gets_the_blocking(monkeypatch):
    pytest.importorskip("numba")
    from kernelkit.kernels.numba import matmul as nm

    dtype = np.dtype(np.float32)
    real = nm._compiled(dtype)
    seen = []

    class Spy:
        small, empty, unpacked = real.small, real.empty, real.unpacked

        def serial(self, *args):  # share t of nthr: (t, nthr, ..., mc, kc, nc, ws, share)
            seen.append((args[1], args[8:11]))
            return real.serial(*args)

    monkeypatch.setitem(nm._COMPILED, dtype, Spy())
    mr, nr = nm.tile_shape(dtype)
    cfg = nm.MatmulConfig(mc=2 * mr, kc=48, nc=4 * nr)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 97, 80)).astype(dtype)
    b = rng.standard_normal((1, 80, 130)).astype(dtype)
    for path in ("serial", "parallel"):
        monkeypatch.setattr(nm, "SMALL_WORK", 0)
        monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if path == "serial" else 0)
        monkeypatch.setattr(nm.numba, "get_num_threads", lambda: 2)
        seen.clear()
        out = nm.matmul_forward(a, b, None, None, config=cfg)
        nthr = 1 if path == "serial" else 2
        assert seen == [(nthr, (cfg.mc, cfg.kc, cfg.nc))] * nthr
        np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_numba_matmul_config_kernel_picks_the_unpacked_kernel(monkeypatch):
    """``MatmulConfig.kernel`` reaches the launch: each unpacked kernel runs its own entry point
    (one share, or two on the thread pool), and "packed" none of them."""
    pytest.importorskip("numba")
    from kernelkit.kernels.numba import matmul as nm

    dtype = np.dtype(np.float32)
    real = nm._compiled(dtype)
    seen = []

    def spy(name, fn):
        return lambda *args: seen.append((name, "serial" if args[1] == 1 else "parallel")) or fn(
            *args)

    class Spy:
        small, serial, empty = real.small, real.serial, real.empty
        unpacked = {name: spy(name, part) for name, part in real.unpacked.items()}

    monkeypatch.setitem(nm._COMPILED, dtype, Spy())
    monkeypatch.setattr(nm.numba, "get_num_threads", lambda: 2)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1, 9, 80)).astype(dtype)
    b = rng.standard_normal((1, 80, 30)).astype(dtype)
    for kernel in nm.KERNELS:
        for how, serial_work in (("serial", 1 << 62), ("parallel", 0)):
            monkeypatch.setattr(nm, "SERIAL_WORK", serial_work)
            seen.clear()
            out = nm.matmul_forward(a, b, None, None, config=nm.MatmulConfig(32, 32, 64, kernel))
            # (amx and amx_w are bfloat16's: float32 takes its packed default)
            assert seen == ([] if kernel in ("packed", "amx", "amx_w") else
                            [(kernel, how)] * (1 if how == "serial" else 2))
            np.testing.assert_allclose(out, a @ b, rtol=1e-4, atol=1e-4)


def test_numba_preprocess_launch_gets_the_config(monkeypatch):
    pytest.importorskip("numba")
    from kernelkit.kernels.numba import preprocess as npp

    real = npp._entry()
    seen = []

    def spy(*args):
        seen.append((args[20], args[21], args[-1]))  # rows, tile_w, stream (after share, nshares)
        return real(*args)

    monkeypatch.setattr(npp, "_entry", lambda: spy)
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for cfg in (npp.CONFIG(rows=3, tile_w=16, stream=False), npp.CONFIG(rows=5, tile_w=0, stream=True)):
        seen.clear()
        npp.preprocess_forward(img[None], *preprocess_args(1, 3, [(2, 3, 30, 41)], (24, 20)),
                               "bilinear", True, "float32", "NHWC", cfg)
        assert seen and set(seen) == {(cfg.rows, cfg.tile_w, cfg.stream)}  # once per share


# -------------------------------------------------------------------------------------- triton

@pytest.fixture
def torch_cpu():
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    return torch


def _check_tile_kwargs(name, kw, cfg):
    """Every field of a TileConfig, as launch keywords; the direct (depthwise) kernels take the
    tile and warps only, and run one stage (Conv2dConfig's docstring)."""
    direct = name.endswith("direct_kernel")
    fields = ("BLOCK_M", "BLOCK_N", "num_warps") + (() if direct else ("BLOCK_K", "GROUP_M",
                                                                         "num_stages"))
    for f in fields:
        assert kw[f] == getattr(cfg, f), (name, f, kw[f], cfg)
    if direct:
        assert kw["num_stages"] == 1


def test_triton_matmul_launch_gets_the_config(monkeypatch, torch_cpu):
    from kernelkit.kernels.triton import matmul as tm

    launches = _Launches(monkeypatch, tm)
    cfg = tm.MatmulConfig(BLOCK_M=32, BLOCK_N=64, BLOCK_K=16, GROUP_M=3, num_warps=2, num_stages=3)
    a, b = torch_cpu.zeros(2, 100, 40), torch_cpu.zeros(2, 40, 70)
    tm.matmul_forward(a, b, None, None, config=cfg)
    [(name, grid, kw)] = launches.calls
    _check_tile_kwargs(name, kw, cfg)
    assert grid == (2 * -(-100 // 32) * -(-70 // 64),)


@pytest.mark.parametrize("groups", [1, 6])  # implicit GEMM, and depthwise (direct kernels)
def test_triton_conv2d_launches_get_the_config(monkeypatch, torch_cpu, groups):
    from kernelkit.kernels.triton import conv2d as tc

    launches = _Launches(monkeypatch, tc)
    cfg = tc.Conv2dConfig(BLOCK_M=32, BLOCK_N=16, BLOCK_K=64, GROUP_M=3, num_warps=2, num_stages=3)
    x, w = torch_cpu.zeros(2, 6, 9, 11), torch_cpu.zeros(6, 6 // groups, 3, 3)
    dy = torch_cpu.zeros(2, 6, 9, 11)
    geo = ((1, 1), (1, 1), (1, 1), groups)
    tc.conv2d_forward(x, w, None, *geo, None, "NCHW", config=cfg)
    tc.conv2d_backward_input(dy, w, (9, 11), *geo, "NCHW", config=cfg)
    tc.conv2d_backward_weight(x, dy, (3, 3), *geo, "NCHW", config=cfg)
    assert len(launches.calls) >= 3
    for name, _, kw in launches.calls:
        _check_tile_kwargs(name, kw, cfg)


def test_triton_preprocess_launch_gets_the_config(monkeypatch, torch_cpu):
    from kernelkit.kernels.triton import preprocess as tp

    launches = _Launches(monkeypatch, tp)
    cfg = tp.PreprocessConfig(block_y=2, block_x=32, num_warps=8)
    img = torch_cpu.zeros(1, 40, 50, 3, dtype=torch_cpu.uint8)
    tp.preprocess_forward(img, *preprocess_args(1, 3, [(2, 3, 30, 41)], (24, 20)), "bilinear",
                          True, "float32", "NHWC", cfg)
    [(_, grid, kw)] = launches.calls
    assert (kw["BLOCK_Y"], kw["BLOCK_X"], kw["num_warps"]) == (2, 32, 8)
    assert grid == (1 * 12 * 1,)
