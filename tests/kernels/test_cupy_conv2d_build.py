"""The CuPy conv2d without a GPU: nvcc builds, kernel names, config space, and a host emulation.

* conv2d.cu is built with ``nvcc -cubin`` for sm_80 and sm_90 (every shipped forward config and
  the simple kernels, both dtypes), with ptxas' resource usage checked (no spills, registers x
  threads fit the register file, static shared memory as the launcher computes it), and the
  launcher's own NVRTC options (-DKK_SINGLE / -DKK_SIMPLE) build exactly the kernels it asks for.
* The same source is compiled for the CPU with g++ (``KK_HOST_EMULATION``: each CUDA thread is an
  OS thread, ``__shared__`` a static, ``__syncthreads`` a barrier) and driven with the launcher's
  own geometry and strides on odd shapes, both layouts, strided views, stride / dilation /
  asymmetric padding / groups / depthwise, bias and every activation, against float64 (forward)
  and torch autograd in float64 (both backwards). Only a GPU checks the rest.
"""

from __future__ import annotations

import ctypes
import re
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
from kernelkit.kernels.cupy import conv2d as kc

ARCHS = ("sm_80", "sm_90")
DTYPES = ("float32", "float16")




SIMPLE = ("fwd_direct", "bwd_input", "bwd_weight")


@pytest.fixture(scope="module")
def cubins(tmp_path_factory):
    return build_cubins(kc.SOURCE_PATH, ARCHS, tmp_path_factory.mktemp("cupy-conv2d-cubin"))


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_builds_without_spills(cubins, arch):
    blob, usage = cubins[arch]
    fwd = {kc.kernel_name(dt, cfg): cfg for dt in DTYPES for cfg in kc.SHIPPED_CONFIGS}
    simple = {kc.kernel_name(dt, None, w) for dt in DTYPES for w in SIMPLE}
    assert set(usage) == set(fwd) | simple
    for name in usage:
        assert _has_symbol(blob, name), name
        u = usage[name]
        assert u["spill_stores"] == 0 and u["spill_loads"] == 0, (name, u)
        threads = fwd[name].threads if name in fwd else kc.SIMPLE_THREADS
        assert u["regs"] * threads <= 65536, (name, u)
        if name in fwd:
            assert u["smem"] == fwd[name].smem_bytes, (name, u)


@needs_nvcc
@pytest.mark.parametrize("dtype", DTYPES)
def test_launcher_compile_options_build_the_requested_kernels(tmp_path, dtype):
    cases = [(kc.Conv2dConfig.default(dtype), {kc.kernel_name(dtype, kc.Conv2dConfig.default(dtype))}),
             (kc.Conv2dConfig(32, 32, 8, 2, 2), {kc.kernel_name(dtype, kc.Conv2dConfig(32, 32, 8, 2, 2))}),
             (None, {kc.kernel_name(dtype, None, w) for w in SIMPLE})]
    for i, (cfg, names) in enumerate(cases):
        out = tmp_path / f"k{i}.cubin"
        proc = _nvcc([*kc.compile_options(dtype, cfg), "-cubin", "-arch=sm_90", "-Xptxas", "-v",
                      "-o", str(out), str(kc.SOURCE_PATH)], tmp_path)
        assert set(_ptxas_usage(proc.stdout + proc.stderr)) == names
        assert all(_has_symbol(out.read_bytes(), n) for n in names)


@needs_nvcc
def test_launcher_source_is_self_contained(tmp_path):
    """What NVRTC gets, source() (kk_epilogue.cuh inlined), builds alone in another folder."""
    src = tmp_path / "alone.cu"
    src.write_text(kc.source())
    _nvcc([*kc.compile_options("float32"), "-cubin", "-arch=sm_90", "-o", str(tmp_path / "alone.cubin"), str(src)],
          tmp_path)


# -------------------------------------------------------------------------- pure-Python parts


def test_source_lists_the_shipped_configs():
    text = kc.source()
    block = text[text.index("// KK-SHIPPED-BEGIN"):text.index("// KK-SHIPPED-END")]
    listed = [tuple(int(x) for x in m.groups())
              for m in re.finditer(r"KK_CONV_BOTH\((\d+), (\d+), (\d+), (\d+), (\d+)\)", block)]
    assert listed == [(c.BM, c.BN, c.BK, c.TM, c.TN) for c in kc.SHIPPED_CONFIGS]
    assert re.findall(r"#include\s*[<\"]([^>\"]+)", text) == ["cuda_fp16.h"]
    assert f"#define KK_BWD_W_THREADS {kc.BWD_WEIGHT_THREADS} " in text


def test_names_options_and_configs():
    cfg = kc.Conv2dConfig(128, 64, 8, 8, 4)
    assert kc.kernel_name("float32", cfg) == "kk_conv2d_fwd_f32_128x64x8_8x4"
    assert kc.kernel_name(np.float16, None, "bwd_weight") == "kk_conv2d_bwd_weight_f16"
    assert "-DKK_SIMPLE=1" in kc.compile_options("float16")
    assert "-DKK_SINGLE=1" in kc.compile_options("float32", cfg)
    with pytest.raises(TypeError, match="float32 or float16"):
        kc.kernel_name("float64", cfg)
    for c in kc.SHIPPED_CONFIGS:
        assert kc.Conv2dConfig.from_dict(c.to_dict()) == c and c.threads % 32 == 0
    assert len(set(kc.SHIPPED_CONFIGS)) == len(kc.SHIPPED_CONFIGS)
    for bad in (dict(BM=64, BN=64, BK=8, TM=3, TN=4), dict(BM=16, BN=16, BK=8, TM=4, TN=4),
                dict(BM=64, BN=64, BK=128, TM=4, TN=4), dict(BM=64, BN=64, BK=8, TM=4, TN=0),
                dict(BM=64, BN=64, BK=512, TM=8, TN=8)):
        with pytest.raises(ValueError):
            kc.Conv2dConfig.from_dict(bad)
    with pytest.raises(ValueError, match="expected keys"):
        kc.Conv2dConfig.from_dict({"BM": 64})


def test_config_space():
    for dt in DTYPES:
        default = kc.Conv2dConfig.default(dt)
        for c, k, hw, ks, st, _ in reference.CONV_RESNET50:
            space = kc.Conv2dConfig.space(dt, 8, c, hw, hw, k, ks, ks, st, 1)
            assert space[0] == default and len(set(space)) == len(space) <= 6
            assert set(space) <= set(kc.SHIPPED_CONFIGS)
        assert kc.Conv2dConfig.space(dt, 8, 32, 112, 112, 32, 3, 3, 1, 32) == [default]
        tiny = kc.Conv2dConfig.space(dt, 1, 16, 2, 2, 16, 1, 1)
        assert tiny[0] == default and all(c.BM <= 32 for c in tiny[1:])
    with pytest.raises(TypeError):
        kc.Conv2dConfig.space("float64", 1, 8, 8, 8, 8, 3, 3)


def test_package_imports_without_cupy_being_imported():
    assert_imports_without_cupy("kernelkit.kernels.cupy.conv2d",
                                "m.Conv2dConfig.space('float32', 1, 64, 8, 8, 64, 3, 3)")


# ------------------------------------------------------------------------ host emulation (g++)

_HARNESS = r"""
typedef long long ll;
#define G17 g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11], g[12], \
            g[13], g[14], g[15], g[16]
#define I17 int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int, int

// Forward (GEMM or direct: same argument list), backward input, backward weight.
extern "C" int kk_emu_fwd(void* fn, int gx, int gy, int threads, const void* x, const void* w,
                          const void* b, void* y, const int* g, const ll* st, int extra,
                          int has_bias, int act, int sync) {
    typedef void (*F)(const void*, const void*, const void*, void*, I17, ll, ll, ll, ll, ll, ll,
                      ll, ll, ll, ll, ll, ll, ll, int, int, int);
    return kk_emu_run_grid(gx, gy, threads, 1, [&] {
        ((F)fn)(x, w, b, y, G17, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8],
                st[9], st[10], st[11], st[12], extra, has_bias, act);
    }, sync != 0);
}

extern "C" int kk_emu_bwd_input(void* fn, int gx, int threads, const void* dy, const void* w,
                                void* dx, const int* g, const ll* st, int cl) {
    typedef void (*F)(const void*, const void*, void*, I17, ll, ll, ll, ll, ll, ll, ll, ll, ll,
                      ll, ll, ll, int);
    return kk_emu_run_grid(gx, 1, threads, 1, [&] {
        ((F)fn)(dy, w, dx, G17, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7], st[8],
                st[9], st[10], st[11], cl);
    }, false);
}

extern "C" int kk_emu_bwd_weight(void* fn, int gx, int threads, const void* x, const void* dy,
                                 void* dw, const int* g, const ll* st) {
    typedef void (*F)(const void*, const void*, void*, I17, ll, ll, ll, ll, ll, ll, ll, ll);
    return kk_emu_run_grid(gx, 1, threads, 1, [&] {
        ((F)fn)(x, dy, dw, G17, st[0], st[1], st[2], st[3], st[4], st[5], st[6], st[7]);
    });
}
"""

# Backward weight's block-wide reduction with 8 threads: 256 OS threads per emulated block and
# one block per weight element would take minutes on a small CI machine.
EMU_BWD_W_THREADS = 8
# Forward configs emulated: every shipped one, and a non-shipped 64-thread one.
EMU_CONFIGS = (*kc.SHIPPED_CONFIGS, kc.Conv2dConfig(32, 32, 8, 4, 4))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    extra = "\n".join(f"KK_CONV_GEMM({t}, {ct}, {c.BM}, {c.BN}, {c.BK}, {c.TM}, {c.TN})"
                      for c in EMU_CONFIGS[len(kc.SHIPPED_CONFIGS):]
                      for t, ct in (("f32", "float"), ("f16", "__half")))
    return build_emulation(tmp_path_factory.mktemp("cupy-conv2d-emu"), kc.SOURCE_PATH, _HARNESS,
                           extra=extra, defines=(f"-DKK_BWD_W_THREADS={EMU_BWD_W_THREADS}",))


def _fn(lib, name):
    return ctypes.cast(getattr(lib, name), ctypes.c_void_p)


def _ints(vals):
    return (ctypes.c_int * len(vals))(*vals)


def _lls(vals):
    return (ctypes.c_longlong * len(vals))(*vals)


def _ptr(a):
    return ctypes.c_void_p(a.ctypes.data) if a is not None else ctypes.c_void_p(0)


def _emu_forward(lib, x, w, bias, conv, activation, layout, cfg):
    """What conv2d_forward does, on numpy arrays: geometry, launch shape, strides."""
    n, c, h, wd = kc.nchw_shape(x.shape, layout)
    k, _, r, s = w.shape
    geo = kc.geometry("conv2d", layout, n, c, h, wd, k, r, s, conv["stride"], conv["padding"],
                      conv["dilation"], conv["groups"])
    y = np.full(kc.act_shape(n, k, geo.ho, geo.wo, layout), np.nan, dtype=x.dtype)  # poison
    which, grid, block, extra = kc.forward_launch(geo, cfg, layout)
    strides = (*kc.elem_strides(x, layout), *kc.elem_strides(w),
               kc.elem_strides(bias)[0] if bias is not None else 0, *kc.elem_strides(y, layout))
    rc = lib.kk_emu_fwd(_fn(lib, kc.kernel_name(x.dtype, cfg, which)), grid[0], grid[1], block[0],
                        _ptr(x), _ptr(w), _ptr(bias), _ptr(y), _ints(geo.ints), _lls(strides),
                        extra[0], int(bias is not None), ck.ACT_CODES[activation],
                        int(which == "fwd"))
    assert rc == 0, "emulated __syncthreads deadlocked"
    return y, which


def _emu_backward(lib, x, w, dy, conv, layout):
    n, c, h, wd = kc.nchw_shape(x.shape, layout)
    k, _, r, s = w.shape
    geo = kc.geometry("conv2d", layout, n, c, h, wd, k, r, s, conv["stride"], conv["padding"],
                      conv["dilation"], conv["groups"])
    dx = np.full(x.shape, np.nan, dtype=x.dtype)
    st = (*kc.elem_strides(dy, layout), *kc.elem_strides(w), *kc.elem_strides(dx, layout))
    rc = lib.kk_emu_bwd_input(_fn(lib, kc.kernel_name(x.dtype, None, "bwd_input")),
                              kc.simple_grid(dx.size)[0], kc.SIMPLE_THREADS, _ptr(dy), _ptr(w),
                              _ptr(dx), _ints(geo.ints), _lls(st), int(layout == "NHWC"))
    assert rc == 0
    dw = np.full((k, geo.cg, r, s), np.nan, dtype=x.dtype)
    st = (*kc.elem_strides(x, layout), *kc.elem_strides(dy, layout))
    rc = lib.kk_emu_bwd_weight(_fn(lib, kc.kernel_name(x.dtype, None, "bwd_weight")), dw.size,
                               EMU_BWD_W_THREADS, _ptr(x), _ptr(dy), _ptr(dw),
                               _ints(geo.ints), _lls(st))
    assert rc == 0
    return dx, dw


def _grads_f64(x, w, dy, conv, layout):
    import torch
    import torch.nn.functional as F

    def nchw(a):
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        return t.permute(0, 3, 1, 2) if layout == "NHWC" else t

    top, bottom, left, right = conv["padding"]
    out = []
    for f in (lambda t: t, torch.abs):
        xd = f(nchw(x)).requires_grad_()
        wd = f(torch.from_numpy(w.astype(np.float64))).requires_grad_()
        y = F.conv2d(F.pad(xd, (left, right, top, bottom)), wd, None, conv["stride"], 0,
                     conv["dilation"], conv["groups"])
        y.backward(f(nchw(dy)))
        dx = xd.grad.permute(0, 2, 3, 1) if layout == "NHWC" else xd.grad
        out.append((dx.numpy(), wd.grad.numpy()))
    return out


def _assert_close(got, ref, scale, k, what):
    assert got.shape == ref.shape and not np.isnan(got).any(), what
    err = float(np.max(np.abs(got.astype(np.float64) - ref) / np.maximum(scale, 1.0), initial=0))
    bound = 1.2 * reference.matmul_bound(k, "float32", str(got.dtype))
    assert err <= bound, f"{what}: normwise error {err:.3e} > bound {bound:.3e}"


# (name, (n, c, h, w, k, r, s), conv): stride, dilation, asymmetric / large padding, groups,
# depthwise (direct kernel), the RGB stem shape (GEMM with a 3-channel reduction).
EMU_CASES = [
    ("3x3", (2, 16, 7, 6, 24, 3, 3), dict(padding=(1, 1, 1, 1))),
    ("stride2_asym", (1, 16, 8, 7, 16, 3, 2), dict(stride=(2, 3), padding=(0, 2, 1, 0),
                                                   dilation=(1, 2))),
    ("1x1_pad_gt_kernel", (2, 16, 3, 4, 20, 2, 2), dict(padding=(3, 2, 4, 3))),
    ("groups2", (1, 32, 5, 5, 32, 3, 3), dict(groups=2, padding=(1, 1, 1, 1), dilation=(2, 2))),
    ("stem", (1, 3, 9, 9, 16, 5, 5), dict(stride=(2, 2), padding=(2, 2, 2, 2))),
    ("depthwise_s2", (2, 12, 7, 8, 12, 3, 3), dict(groups=12, stride=(2, 2), padding=(1, 1, 1, 1))),
    ("depthwise_mult2", (1, 6, 6, 5, 12, 3, 3), dict(groups=6, padding=(1, 0, 0, 1))),
]


def _conv(d):
    return {"stride": (1, 1), "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1, **d}


def _operands(rng, dims, conv, dtype, layout, strided):
    n, c, h, w, k, r, s = dims
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    if strided:  # every other element along the innermost axis, and a channels_last weight
        x = np.repeat(x, 2, axis=-1)[..., ::2]
        wt = rng.standard_normal((k, r, s, c // conv["groups"])).astype(dtype).transpose(0, 3, 1, 2)
    else:
        wt = rng.standard_normal((k, c // conv["groups"], r, s)).astype(dtype)
    return x, wt


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", EMU_CASES, ids=[c[0] for c in EMU_CASES])
def test_emulated_forward_and_backward(emu, case, layout, dtype):
    name, dims, conv = case
    conv = _conv(conv)
    rng = np.random.default_rng(zlib.crc32(f"{name}{layout}{dtype}".encode()))
    x, w = _operands(rng, dims, conv, dtype, layout, strided=layout == "NHWC")
    bias = rng.standard_normal(dims[4]).astype(dtype)
    act = ("relu", "gelu", None, "silu", "gelu_tanh")[zlib.crc32(name.encode()) % 5]
    y, which = _emu_forward(emu, x, w, bias, conv, act, layout, kc.Conv2dConfig(32, 32, 8, 4, 4))
    assert which == ("fwd_direct" if "depthwise" in name else "fwd")
    reference.assert_conv2d_close(y, x, w, bias, activation=act, layout=layout, **conv)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dw = _emu_backward(emu, x, w, dy, conv, layout)
    (dx_ref, dw_ref), (dx_sc, dw_sc) = _grads_f64(x, w, dy, conv, layout)
    k, r, s = dims[4], dims[5], dims[6]
    _assert_close(dx, dx_ref, dx_sc, k // conv["groups"] * r * s, f"{name} grad_input")
    _assert_close(dw, dw_ref, dw_sc, y.size // k, f"{name} grad_weight")


@pytest.mark.parametrize("cfg", EMU_CONFIGS, ids=str)
def test_emulated_forward_every_config(emu, cfg):
    # ragged in pixels (2*9*10 = 180), output channels (40) and the reduction (24*9 = 216)
    conv = _conv(dict(padding=(1, 1, 1, 1), stride=(1, 1)))
    for dtype, layout in (("float32", "NHWC"), ("float16", "NCHW")):
        rng = np.random.default_rng(zlib.crc32(f"{cfg}{dtype}".encode()))
        x, w = _operands(rng, (2, 24, 9, 10, 40, 3, 3), conv, dtype, layout, strided=False)
        bias = rng.standard_normal(40).astype(dtype)
        y, _ = _emu_forward(emu, x, w, bias, conv, "gelu", layout, cfg)
        reference.assert_conv2d_close(y, x, w, bias, activation="gelu", layout=layout, **conv)


def test_emulated_nan_propagation(emu):
    conv = _conv(dict(padding=(1, 1, 1, 1)))
    rng = np.random.default_rng(3)
    for dims, groups in (((1, 16, 5, 5, 16, 3, 3), 1), ((1, 16, 5, 5, 16, 3, 3), 16)):
        c = {**conv, "groups": groups}
        x, w = _operands(rng, dims, c, "float32", "NCHW", strided=False)
        x[0, 2, 2, 2] = np.nan
        y, _ = _emu_forward(emu, x, w, None, c, "relu", "NCHW", kc.Conv2dConfig.default())
        assert np.isnan(y[0, :, 1:4, 1:4]).any() and not np.isnan(y[0, :, 0, :]).any()


@pytest.mark.parametrize("groups", [1, 16], ids=["gemm", "direct"])
def test_emulated_inf_at_padded_taps_gives_torchs_nan(emu, groups):
    # the direct forward and the backward weight skipped padded taps, where torch (and Numba,
    # Triton and the GEMM forward) multiply a zero in: an Inf weight or dy gave a finite border
    # where they give NaN (found by review)
    import torch
    import torch.nn.functional as F

    conv = _conv(dict(padding=(1, 1, 1, 1), groups=groups))
    rng = np.random.default_rng(5)
    x, w = _operands(rng, (1, 16, 5, 5, 16, 3, 3), conv, "float32", "NCHW", strided=False)
    w[:, :, 0, 0] = np.inf
    y, _ = _emu_forward(emu, x, w, None, conv, None, "NCHW", kc.Conv2dConfig.default())
    want = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(w).double(), padding=1,
                    groups=groups).numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    w[:, :, 0, 0] = 1.0
    dy = rng.standard_normal(y.shape).astype("float32")
    dy[0, :, 0, 0] = np.inf
    _, dw = _emu_backward(emu, x, w, dy, conv, "NCHW")
    xt = torch.from_numpy(x).double().requires_grad_()
    wt = torch.from_numpy(w).double().requires_grad_()
    F.conv2d(xt, wt, padding=1, groups=groups).backward(torch.from_numpy(dy).double())
    assert np.isnan(wt.grad.numpy()).any()  # (the check reads what it means to)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(wt.grad.numpy()))


# ------------------------------------------------------------------- on a GPU (skipped elsewhere)



@pytest.mark.gpu
@needs_cupy_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", EMU_CASES, ids=[c[0] for c in EMU_CASES])
def test_gpu_conv2d_matches_reference(case, layout, dtype):
    import cupy

    name, dims, conv = case
    conv = _conv(conv)
    rng = np.random.default_rng(zlib.crc32(f"gpu{name}{layout}{dtype}".encode()))
    x, w = _operands(rng, dims, conv, dtype, layout, strided=layout == "NHWC")
    bias = rng.standard_normal(dims[4]).astype(dtype)
    xg, wg, bg = cupy.asarray(x), cupy.asarray(w), cupy.asarray(bias)
    for cfg in kc.SHIPPED_CONFIGS:
        y = kc.conv2d_forward(xg, wg, bg, activation="silu", layout=layout, config=cfg, **conv)
        reference.assert_conv2d_close(y, x, w, bias, activation="silu", layout=layout, **conv)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = kc.conv2d_backward_input(cupy.asarray(dy), wg, x.shape[2:4] if layout == "NCHW"
                                  else x.shape[1:3], layout=layout, **conv)
    dw = kc.conv2d_backward_weight(xg, cupy.asarray(dy), dims[5:7], layout=layout, **conv)
    (dx_ref, dw_ref), (dx_sc, dw_sc) = _grads_f64(x, w, dy, conv, layout)
    _assert_close(dx.get(), dx_ref, dx_sc, dims[4] // conv["groups"] * dims[5] * dims[6], "dx")
    _assert_close(dw.get(), dw_ref, dw_sc, y.size // dims[4], "dw")


def test_size_limits_count_the_weight_per_group_and_groups_only_where_a_grid_axis_holds_them():
    """A 7x7 depthwise conv of 6621 channels (a weight of 324k elements) was refused as "over
    2**31 elements" (the check counted K * C * R * S, not K * C/groups * R * S); and every GPU
    conv refused groups > 65535, though only the GEMM kernels put groups on a grid axis: a
    65536-channel depthwise conv runs on the direct kernels."""
    conv = dict(stride=(1, 1), padding=(3, 3, 3, 3), dilation=(1, 1))
    geo = kc.geometry("conv2d", "NCHW", 1, 6621, 8, 8, 6621, 7, 7, groups=6621, **conv)
    assert (geo.cg, geo.ho) == (1, 8)
    with pytest.raises(ValueError, match="over 2\\*\\*31 elements"):  # (a real one still is)
        kc.geometry("conv2d", "NCHW", 1, 47000, 8, 8, 47000, 7, 7, groups=1, **conv)
    assert kc.geometry("conv2d", "NCHW", 1, 65536, 8, 8, 65536, 3, 3, groups=65536,
                       **conv).groups == 65536
    with pytest.raises(ValueError, match="groups=65536 exceeds the grid limit 65535"):
        kc.geometry("conv2d", "NCHW", 1, 16 * 65536, 1, 1, 16 * 65536, 1, 1, groups=65536,
                    stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1))
    # a direct forward whose backward input is a GEMM (K and C swap in its kind): refused too
    with pytest.raises(ValueError, match="groups=65536 exceeds the grid limit 65535"):
        kc.geometry("conv2d", "NCHW", 1, 16 * 65536, 4, 4, 2 * 65536, 3, 3, groups=65536,
                    **conv)
