"""The CuPy matmul without a GPU: nvcc builds, kernel names, config space, and a host emulation.

* Every shipped config and dtype is built with ``nvcc -cubin`` for sm_80 and sm_90 (one nvcc per
  arch, run in parallel), with ptxas' resource usage checked (no real spills, registers x threads fit
  the register file, static shared memory as the launcher computes it).
* The names the launcher asks for exist in those cubins, and the launcher's own single-kernel
  compile options (``-DKK_SINGLE ...``) build exactly the kernel it will request.
* The same .cu source is compiled for the CPU with g++ (``KK_HOST_EMULATION``: each CUDA thread is
  an OS thread, ``__shared__`` is a static, ``__syncthreads`` a barrier) and run on odd shapes,
  strided / transposed / broadcast operands, bias and every activation, against float64. This
  checks the indexing, the edges and the double-buffer schedule; only a GPU checks the rest.
"""

from __future__ import annotations

import ctypes
import re
import types
import zlib

import numpy as np
import pytest
import reference
from cuda_build import (
    assert_imports_without_cupy,
    build_cubins,
    build_emulation,
    needs_cupy_device,
    needs_nvcc,
)
from cuda_build import has_symbol as _has_symbol
from cuda_build import nvcc as _nvcc
from cuda_build import ptxas_usage as _ptxas_usage

from kernelkit.kernels.cupy import _common as ck
from kernelkit.kernels.cupy import matmul as km

ARCHS = ("sm_80", "sm_90")
DTYPES = ("float32", "float16")




@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    """{arch: (cubin bytes, ptxas usage)} for the whole .cu (every shipped kernel)."""
    return build_cubins(km.SOURCE_PATH, ARCHS, tmp_path_factory.mktemp("cupy-matmul-cubin"))


# ----------------------------------------------------------------------------------- nvcc builds


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_shipped_kernel_builds(cubins, arch):
    blob, usage = cubins[arch]
    expected = {km.kernel_name(dt, cfg) for dt in DTYPES for cfg in km.SHIPPED_CONFIGS}
    # The .cu's own shipped list and SHIPPED_CONFIGS agree, both ways.
    assert set(usage) == expected
    for name in expected:
        assert _has_symbol(blob, name), name
    for dt in DTYPES:
        for cfg in km.SHIPPED_CONFIGS:
            u = usage[km.kernel_name(dt, cfg)]
            # A few bytes may be saved around the call to the division slow path in the epilogue
            # (silu's exact x / (1 + exp(-x))); anything more means the main loop spills.
            assert u["spill_stores"] <= 32 and u["spill_loads"] <= 32, (dt, cfg, u)
            assert u["regs"] * cfg.threads <= 65536, (dt, cfg, u)
            assert u["smem"] == cfg.smem_bytes, (dt, cfg, u)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_launcher_compile_options_build_the_requested_kernel(tmp_path, dtype):
    """What get_kernel compiles (-DKK_SINGLE ...) defines exactly the name it then looks up,
    also for a config that is not shipped (odd TM / TN)."""
    cfgs = [km.MatmulConfig.default(dtype), km.MatmulConfig(32, 32, 8, 2, 4)]
    for cfg in cfgs:
        opts = [o for o in km.compile_options(dtype, cfg)]
        out = tmp_path / f"{km.kernel_name(dtype, cfg)}.cubin"
        proc = _nvcc([*opts, "-cubin", "-arch=sm_90", "-Xptxas", "-v", "-o", str(out),
                      str(km.SOURCE_PATH)], tmp_path)
        usage = _ptxas_usage(proc.stdout + proc.stderr)
        assert set(usage) == {km.kernel_name(dtype, cfg)}
        assert _has_symbol(out.read_bytes(), km.kernel_name(dtype, cfg))


@needs_nvcc
def test_launcher_source_is_self_contained(tmp_path):
    """What NVRTC gets, source() (kk_epilogue.cuh inlined), builds alone in another folder."""
    src = tmp_path / "alone.cu"
    src.write_text(km.source())
    _nvcc([*km.compile_options("float32", km.MatmulConfig.default("float32")), "-cubin", "-arch=sm_90", "-o", str(tmp_path / "alone.cubin"), str(src)],
          tmp_path)


# -------------------------------------------------------------------------- pure-Python parts


def test_kernel_names_and_options():
    cfg = km.MatmulConfig(128, 64, 8, 8, 4)
    assert km.kernel_name("float32", cfg) == "kk_matmul_f32_128x64x8_8x4"
    assert km.kernel_name(np.float16, cfg) == "kk_matmul_f16_128x64x8_8x4"
    opts = km.compile_options("float16", cfg)
    assert "-DKK_SINGLE=1" in opts and "-DKK_T=__half" in opts and "-DKK_DT=f16" in opts
    assert "-std=c++17" in opts
    with pytest.raises(TypeError, match="float32 or float16"):
        km.kernel_name("float64", cfg)


def test_source_lists_the_shipped_configs():
    text = km.source()
    block = text[text.index("// KK-SHIPPED-BEGIN"):text.index("// KK-SHIPPED-END")]
    listed = [tuple(int(x) for x in m.groups())
              for m in re.finditer(r"KK_BOTH\((\d+), (\d+), (\d+), (\d+), (\d+)\)", block)]
    assert listed == [(c.BM, c.BN, c.BK, c.TM, c.TN) for c in km.SHIPPED_CONFIGS]
    # NVRTC has no host headers: the only include is cuda_fp16.h.
    includes = re.findall(r"#include\s*[<\"]([^>\"]+)", text)
    assert includes == ["cuda_fp16.h"]


def test_config_validation_and_dict_round_trip():
    for cfg in km.SHIPPED_CONFIGS:
        assert km.MatmulConfig.from_dict(cfg.to_dict()) == cfg
        assert cfg.to_dict() == {"BM": cfg.BM, "BN": cfg.BN, "BK": cfg.BK, "TM": cfg.TM,
                                 "TN": cfg.TN}
        assert cfg.smem_bytes <= 48 * 1024
        assert cfg.threads % 32 == 0
    assert len(set(km.SHIPPED_CONFIGS)) == len(km.SHIPPED_CONFIGS)
    bad = [
        dict(BM=128, BN=128, BK=8, TM=7, TN=8),  # BM % TM
        dict(BM=16, BN=16, BK=8, TM=4, TN=4),  # 16 threads
        dict(BM=256, BN=256, BK=8, TM=2, TN=2),  # 16384 threads
        dict(BM=128, BN=128, BK=64, TM=8, TN=8),  # smem > 48 KiB
        dict(BM=64, BN=64, BK=2, TM=2, TN=2),  # 1024 threads, 128 A elements
        dict(BM=60, BN=64, BK=8, TM=6, TN=4),  # TM = 6
        dict(BM=128, BN=128, BK=8, TM=8, TN=0),
        dict(BM=128.0, BN=128, BK=8, TM=8, TN=8),
    ]
    for d in bad:
        with pytest.raises(ValueError):
            km.MatmulConfig.from_dict(d)
    with pytest.raises(ValueError, match="expected keys"):
        km.MatmulConfig.from_dict({"BM": 128, "BN": 128, "BK": 8, "TM": 8})
    with pytest.raises(ValueError, match="expected keys"):
        km.MatmulConfig.from_dict({**km.SHIPPED_CONFIGS[0].to_dict(), "stages": 2})


def test_config_space():
    for dt in DTYPES:
        default = km.MatmulConfig.default(dt)
        assert default in km.SHIPPED_CONFIGS
        big = km.MatmulConfig.space(dt, 4096, 4096, 4096)
        assert big[0] == default and set(big) == set(km.SHIPPED_CONFIGS)
        tiny = km.MatmulConfig.space(dt, 1, 1, 1)
        assert tiny[0] == default
        assert km.MatmulConfig(32, 32, 8, 4, 4) in tiny
        assert all(c.BM <= 32 and c.BK <= 8 for c in tiny[1:])
        for m, n, k in reference.MATMUL_ODD + reference.MATMUL_ALIGNED:
            space = km.MatmulConfig.space(dt, m, n, k)
            assert space[0] == default and len(set(space)) == len(space)
            assert set(space) <= set(km.SHIPPED_CONFIGS)
    with pytest.raises(TypeError):
        km.MatmulConfig.space("float64", 8, 8, 8)


def test_launch_geometry():
    cfg = km.MatmulConfig(128, 64, 8, 8, 4)
    assert km.launch_geometry(3, 129, 64, cfg) == (3 * 2 * 1, 256, 2, 1)
    assert km.launch_geometry(1, 1, 1, cfg) == (1, 256, 1, 1)
    with pytest.raises(ValueError, match="grid"):
        km.launch_geometry(2**20, 2**16, 2**16, cfg)
    assert ck.elem_strides("matmul", (-8, 0, 4), 4) == (-2, 0, 1)


@pytest.mark.parametrize("sizes, why", [
    ((2**31 - 1, 8, 8), "M, N, K"), ((8, 2**31 - 100, 8), "M, N, K"), ((8, 8, 2**31 - 1), "M, N, K"),
    ((2**31 - 129, 8, 8), None), ((4096, 4096, 4096), None)])
def test_sizes_within_a_tile_of_2_31_are_not_supported(sizes, why):
    # K in (2**31 - BK, 2**31): (K + BK - 1) / BK wrapped negative in the kernel, its K loop never
    # ran and act(bias) came back (found by review; no GPU here): the dispatcher picks another
    m, n, k = sizes
    problem = types.SimpleNamespace(shapes=((1, m, k), (1, k, n)), dtype="float16")
    reason = km.supports(problem)
    assert reason is None if why is None else why in reason


def test_package_imports_without_cupy_being_imported():
    assert_imports_without_cupy("kernelkit.kernels.cupy.matmul",
                                "m.MatmulConfig.space('float32', 64, 64, 64)")


# ------------------------------------------------------------------------ host emulation (g++)

_HARNESS = r"""
typedef void (*kk_kernel)(const void*, const void*, const void*, void*, int, int, int, int, int,
                          long long, long long, long long, long long, long long, long long,
                          long long, int, int);

extern "C" int kk_emu_launch(void* fn, int blocks, int threads, const void* A, const void* B,
                             const void* bias, void* C, int M, int N, int K, int tiles_m,
                             int tiles_n, long long sab, long long sam, long long sak,
                             long long sbb, long long sbk, long long sbn, long long sbias,
                             int has_bias, int act) {
    return kk_emu_run_grid(blocks, 1, threads, 1, [&] {
        ((kk_kernel)fn)(A, B, bias, C, M, N, K, tiles_m, tiles_n, sab, sam, sak, sbb, sbk, sbn,
                        sbias, has_bias, act);
    });
}
"""

# Configs emulated: every shipped one plus non-shipped shapes of the register tile (TM=2, TN=1).
_EXTRA_CONFIGS = (km.MatmulConfig(32, 32, 8, 2, 4), km.MatmulConfig(64, 32, 16, 4, 1))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    extra = "\n".join(f"KK_INSTANTIATE({t}, {ct}, {c.BM}, {c.BN}, {c.BK}, {c.TM}, {c.TN})"
                      for c in _EXTRA_CONFIGS for t, ct in (("f32", "float"), ("f16", "__half")))
    return build_emulation(tmp_path_factory.mktemp("cupy-matmul-emu"), km.SOURCE_PATH, _HARNESS,
                           extra=extra)


def _emu_matmul(lib, a, b, bias, activation, cfg):
    """The launcher's arithmetic (launch_geometry, element strides) on numpy views."""
    batch, m, k = a.shape
    n = b.shape[2]
    out = np.full((batch, m, n), np.nan, dtype=a.dtype)  # poison: every element must be written
    blocks, threads, tiles_m, tiles_n = km.launch_geometry(batch, m, n, cfg)
    isz = a.itemsize
    sa = ck.elem_strides("matmul", a.strides, isz)
    sb = ck.elem_strides("matmul", b.strides, isz)
    sbias = ck.elem_strides("matmul", bias.strides, isz)[0] if bias is not None else 0
    fn = ctypes.cast(getattr(lib, km.kernel_name(a.dtype, cfg)), ctypes.c_void_p)
    ptr = ctypes.c_void_p
    ll = ctypes.c_longlong
    rc = lib.kk_emu_launch(
        fn, blocks, threads, ptr(a.ctypes.data), ptr(b.ctypes.data),
        ptr(bias.ctypes.data if bias is not None else 0), ptr(out.ctypes.data),
        m, n, k, tiles_m, tiles_n, ll(sa[0]), ll(sa[1]), ll(sa[2]), ll(sb[0]), ll(sb[1]),
        ll(sb[2]), ll(sbias), int(bias is not None), ck.ACT_CODES[activation])
    assert rc == 0, "emulated __syncthreads deadlocked"
    return out


def _operands(rng, batch, m, k, n, dtype, layout, xp=np):
    """a (batch, m, k), b (batch, k, n) of the array module xp, as views with the given layout."""
    def rand(*shape):
        return xp.asarray(rng.standard_normal(shape).astype(dtype))

    if layout == "contiguous":
        return rand(batch, m, k), rand(batch, k, n)
    if layout == "transposed":  # column-major A and B
        return rand(batch, k, m).transpose(0, 2, 1), rand(batch, n, k).transpose(0, 2, 1)
    if layout == "broadcast":  # batch stride 0 for B; A sliced with a step and reversed along K
        a = rand(batch, m, 2 * k)[:, :, ::-2]
        return a, xp.broadcast_to(rand(1, k, n), (batch, k, n))
    if layout == "mixed":  # A column-major, B row-major with padded rows, negative batch stride
        a = rand(batch, k, m).transpose(0, 2, 1)
        b = rand(batch, k, n + 3)[::-1, :, :n]
        return a, b
    raise ValueError(layout)


EMU_CONFIGS = km.SHIPPED_CONFIGS + _EXTRA_CONFIGS
# (batch, M, K, N): ragged in every dimension, several K tiles, K < BK, and one-element cases.
EMU_SHAPES = [(2, 37, 29, 45), (1, 1, 1, 1), (1, 67, 5, 1), (3, 130, 17, 66)]


@pytest.mark.parametrize("cfg", EMU_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_kernel_matches_reference(emu, cfg, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{cfg}{dtype}".encode()))
    for i, (batch, m, k, n) in enumerate(EMU_SHAPES):
        layout = ("contiguous", "transposed", "broadcast", "mixed")[i % 4]
        a, b = _operands(rng, batch, m, k, n, dtype, layout)
        bias = rng.standard_normal(n).astype(dtype) if i % 2 == 0 else None
        act = (None, "relu", "gelu", "gelu_tanh", "silu")[i % 5]
        out = _emu_matmul(emu, a, b, bias, act, cfg)
        reference.assert_matmul_close(out, a, b, bias, act)


@pytest.mark.parametrize("act", [None, *km.ACTIVATIONS])
def test_emulated_epilogue_every_activation(emu, act):
    rng = np.random.default_rng(0)
    cfg = km.MatmulConfig(32, 32, 8, 4, 4)
    for dtype in DTYPES:
        a, b = _operands(rng, 2, 33, 19, 35, dtype, "contiguous")
        bias_full = rng.standard_normal(2 * 35).astype(dtype)
        bias = bias_full[::2]  # strided bias
        out = _emu_matmul(emu, a, b, bias, act, cfg)
        reference.assert_matmul_close(out, a, b, bias, act)


def test_emulated_gelu_and_silu_hold_their_relative_accuracy_in_the_tails(emu):
    # relative to the value itself (the matmul bound, floored at 1, cannot see the tails): SiLU
    # was x / (1 + exp(-x)), -0.0 below -88.72 where it is a float32 normal down to -91.8
    import torch

    x = np.concatenate([np.linspace(-9, -0.01, 2011, dtype=np.float32),
                        np.array([-91.5, -90.0, -89.0, -88.7, -88.1], np.float32)])
    x64 = torch.from_numpy(x).double()
    want = {"gelu": (0.5 * x64 * torch.special.erfc(-x64 / np.sqrt(2))).numpy(),
            "silu": (x64 * torch.sigmoid(x64)).numpy()}
    # (GELU: the rounding of x / sqrt 2 before erfcf squares it, 4.4e-6 near -9, as in Numba)
    for act, bound in (("gelu", 1.5e-5), ("silu", 1e-6)):
        ref = want[act]
        got = _emu_matmul(emu, x.reshape(1, -1, 1), np.ones((1, 1, 1), np.float32), None, act,
                          km.MatmulConfig(32, 32, 8, 4, 4))[0, :, 0].astype(np.float64)
        keep = np.abs(ref) >= np.finfo(np.float32).tiny  # (float32 normals)
        err = np.abs(got - ref)[keep] / np.abs(ref)[keep]
        assert err.max() <= bound, (act, float(err.max()), float(x[keep][np.argmax(err)]))


def test_emulated_k_zero_and_nan_propagation(emu):
    cfg = km.MatmulConfig(32, 32, 8, 4, 4)
    a = np.zeros((2, 5, 0), np.float32)
    b = np.zeros((2, 0, 7), np.float32)
    bias = np.arange(7, dtype=np.float32) - 3
    out = _emu_matmul(emu, a, b, bias, "relu", cfg)
    np.testing.assert_array_equal(out, np.broadcast_to(np.maximum(bias, 0), (2, 5, 7)))
    out = _emu_matmul(emu, a, b, None, None, cfg)
    np.testing.assert_array_equal(out, np.zeros((2, 5, 7), np.float32))
    rng = np.random.default_rng(1)
    a = rng.standard_normal((1, 9, 11)).astype(np.float32)
    b = rng.standard_normal((1, 11, 6)).astype(np.float32)
    a[0, 3, 4] = np.nan
    for act in (None, *km.ACTIVATIONS):
        out = _emu_matmul(emu, a, b, None, act, cfg)
        assert np.isnan(out[0, 3]).all() and not np.isnan(np.delete(out[0], 3, axis=0)).any()


# ------------------------------------------------------------------- on a GPU (skipped elsewhere)



@pytest.mark.gpu
@needs_cupy_device
@pytest.mark.parametrize("cfg", EMU_CONFIGS, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_matmul_forward_matches_reference(cfg, dtype):
    import cupy

    rng = np.random.default_rng(zlib.crc32(f"gpu{cfg}{dtype}".encode()))
    shapes = [*EMU_SHAPES, (2, 257, 300, 129), (1, 512, 64, 384)]
    for i, (batch, m, k, n) in enumerate(shapes):
        layout = ("contiguous", "transposed", "broadcast", "mixed")[i % 4]
        a, b = _operands(rng, batch, m, k, n, dtype, layout, xp=cupy)
        bias = cupy.asarray(rng.standard_normal(n).astype(dtype)) if i % 2 == 0 else None
        act = (None, "relu", "gelu", "gelu_tanh", "silu")[i % 5]
        out = km.matmul_forward(a, b, bias, act, cfg)
        assert out.dtype == a.dtype and out.shape == (batch, m, n) and out.flags.c_contiguous
        reference.assert_matmul_close(out, a, b, bias, act)


@pytest.mark.gpu
@needs_cupy_device
def test_gpu_matmul_forward_empty_dims():
    import cupy

    for batch, m, k, n in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 4, 0), (2, 3, 0, 5)]:
        a = cupy.ones((batch, m, k), cupy.float32)
        b = cupy.ones((batch, k, n), cupy.float32)
        bias = cupy.arange(n, dtype=cupy.float32) - 1
        out = km.matmul_forward(a, b, bias, "relu")
        assert out.shape == (batch, m, n)
        # ones @ ones = k in every entry: relu(k + bias), exact
        expected = np.broadcast_to(np.maximum(k + np.arange(n) - 1.0, 0), (batch, m, n))
        np.testing.assert_array_equal(out.get(), expected)


def test_nvrtc_finds_cuda_fp16_h_where_cupy_does_not(tmp_path, monkeypatch):
    """NVRTC has no built-in cuda_fp16.h: the launchers point it at a folder that has one (the
    toolkit, a pip wheel's nvidia/* folder, Triton's bundled CUDA) when CuPy's own lookup has none.
    The search is plain Python (cupy is not needed to test it)."""
    from kernelkit.kernels.cupy import _common

    empty, toolkit = tmp_path / "empty", tmp_path / "cuda-13.0"
    (empty / "include").mkdir(parents=True)
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_fp16.h").write_text("// half\n")
    assert _common.fp16_include_dir([None, str(empty), str(toolkit)]) == toolkit / "include"
    assert _common.fp16_include_dir([str(empty)]) is None
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    assert _common.header_candidates()[0] == str(toolkit)
    wheel_site = tmp_path / "site"
    (wheel_site / "nvidia" / "cuda_runtime" / "include").mkdir(parents=True)
    monkeypatch.setattr("sys.path", [str(wheel_site)])
    assert str(wheel_site / "nvidia" / "cuda_runtime") in _common.header_candidates()
