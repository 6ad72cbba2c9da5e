"""The CuPy preprocess without a GPU: nvcc builds, kernel names, config, and a host emulation.

* ``preprocess.cu`` is built with ``nvcc -cubin`` for sm_80 and sm_90 (in parallel); ptxas reports
  no spills, and every kernel name the launcher asks for is in the cubin.
* The same source is compiled for the CPU with g++ (``KK_HOST_EMULATION``: each CUDA thread runs
  in turn) and launched with the tables the launcher builds (``plan``, ``launch_geometry``,
  ``out_strides``) on numpy images, against the Numba kernel (within 1 uint8 level; bit-exact for
  crop / flip / rot90 with identity size). This checks the indexing, the tap loops, the rotation
  path, the channel groups and the conversions; only a GPU checks NVRTC and the launch itself.
"""

from __future__ import annotations

import ctypes
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from cuda_build import NVCC, assert_imports_without_cupy, build_emulation, needs_cupy_device
from reference import preprocess_args

from kernelkit.kernels import taps
from kernelkit.kernels.cupy import preprocess as cp_pp
from kernelkit.kernels.numba import preprocess as nb

ARCHS = ("sm_80", "sm_90")




@pytest.mark.skipif(NVCC is None, reason="nvcc not found on PATH or in /usr/local/cuda/bin")
def test_nvcc_builds_sm80_sm90_without_spills(tmp_path):
    def build(arch):
        out = tmp_path / f"pp_{arch}.cubin"
        proc = subprocess.run([NVCC, "-std=c++17", "-cubin", f"-arch={arch}", "-Xptxas", "-v",
                               "-o", str(out), str(cp_pp.SOURCE_PATH)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        return proc, out

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(build, ARCHS))
    for arch, (proc, out) in zip(ARCHS, results):
        text = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"nvcc {arch} failed:\n{text}"
        assert "warning" not in text.lower(), text
        spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
        assert spills and all(s == ("0", "0") for s in spills), text
        regs = [int(r) for r in re.findall(r"Used (\d+) registers", text)]
        assert len(regs) == len(cp_pp.KERNEL_NAMES) and max(regs) <= 128, regs
        binary = out.read_bytes()
        for name in cp_pp.KERNEL_NAMES:
            assert name.encode() in binary, (arch, name)


def test_names_config_and_source():
    assert cp_pp.kernel_name("uint8", "float16") == "kk_preprocess_u8_f16"
    text = cp_pp.source()
    listed = re.findall(r"^KK_PP_KERNEL\((\w+), [\w ]+, (\w+), [\w ]+\)", text, re.M)
    assert [f"kk_preprocess_{a}_{b}" for a, b in listed] == list(cp_pp.KERNEL_NAMES)
    assert re.findall(r"#include\s*[<\"]([^>\"]+)", text) == ["cuda_fp16.h"]
    for cfg in cp_pp.SHIPPED_CONFIGS:
        assert cp_pp.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    assert cp_pp.PreprocessConfig.space(32, 224, 224, 3)[0] == cp_pp.PreprocessConfig.default()
    for bad in ((3, 5), (64, 32), (0, 32), (True, 32)):
        with pytest.raises(ValueError):
            cp_pp.PreprocessConfig(*bad)
    assert cp_pp.launch_geometry(3, 17, 70, cp_pp.PreprocessConfig(32, 8)) == (3 * 3 * 3,
                                                                                (32, 8, 1), 3, 3)


def test_package_imports_without_cupy_being_imported():
    assert_imports_without_cupy("kernelkit.kernels.cupy.preprocess",
                                "m.PreprocessConfig.space(1, 8, 8, 3)")


# ------------------------------------------------------------------------ host emulation (g++)

_HARNESS = r"""
typedef void (*kk_kernel)(const void*, const long long*, const int*, const float*, const int*,
                          const float*, const double*, const float*, const int*, const float*,
                          const float*, void*, int, int, int, int, int, int, int, long long,
                          long long, long long, long long, int);

// The kernel has no shared memory: blocks and threads run one after another.
extern "C" void kk_emu_launch(void* fn, int blocks, int bx, int by, const void* src,
                              const long long* meta, const int* yst, const float* yw,
                              const int* xst, const float* xw, const double* aff,
                              const float* fill, const int* perm, const float* mean,
                              const float* scale, void* out, int out_h, int out_w, int tiles_y,
                              int tiles_x, int ky_len, int kx_len, int C, long long on,
                              long long oc, long long oy, long long ox, int nearest) {
    kk_emu_run_grid(blocks, 1, bx, by, [&] {
        ((kk_kernel)fn)(src, meta, yst, yw, xst, xw, aff, fill, perm, mean, scale, out, out_h,
                        out_w, tiles_y, tiles_x, ky_len, kx_len, C, on, oc, oy, ox, nearest);
    }, false);
}
"""


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    return build_emulation(tmp_path_factory.mktemp("cupy-preprocess-emu"), cp_pp.SOURCE_PATH,
                           _HARNESS, opt="-O2")


def _emu_forward(lib, images, boxes, flips, rot90, angles, fill, size, mean, scale, perm,
                 interpolation, antialias, out_dtype, layout, config=None):
    """The launcher's host side (tables, geometry, strides) with numpy images, run on the CPU."""
    arrs = list(images)
    n, first = len(arrs), arrs[0]
    item, cch = first.itemsize, first.shape[2]
    meta = np.zeros((n, taps.NMETA), np.int64)
    shapes = np.zeros((n, 2), np.int64)
    for i, a in enumerate(arrs):
        meta[i, taps.M_OFF] = (a.ctypes.data - first.ctypes.data) // item
        meta[i, taps.M_SH], meta[i, taps.M_SW], meta[i, taps.M_SC] = (s // item for s in a.strides)
        shapes[i] = a.shape[:2]
    out_h, out_w = int(size[0]), int(size[1])
    shape, (on, oc, oy, ox) = taps.out_layout(layout, cch, out_h, out_w)
    out = np.full((n, *shape), 77, cp_pp.OUT_DTYPES[out_dtype])  # poison: all must be written
    # the launcher's one packed buffer and its views (numpy here, cupy there: the same _view)
    packed = taps.pack_tables(taps.gpu_tables(meta, shapes, cch, boxes, flips, rot90, angles,
                                              fill, size, mean, scale, perm, interpolation,
                                              antialias))
    t = {**packed.views(packed.data.copy(), cp_pp._view), **packed.scalars}
    cfg = config or cp_pp.PreprocessConfig.default()
    blocks, threads, tiles_y, tiles_x = cp_pp.launch_geometry(n, out_h, out_w, cfg)
    fn = ctypes.cast(getattr(lib, cp_pp.kernel_name(first.dtype.name, out_dtype)), ctypes.c_void_p)
    p = lambda a: ctypes.c_void_p(a.ctypes.data)
    ll = ctypes.c_longlong
    lib.kk_emu_launch(fn, blocks, threads[0], threads[1], p(first), p(t["meta"]), p(t["yst"]),
                      p(t["yw"]), p(t["xst"]), p(t["xw"]), p(t["aff"]), p(t["fill"]),
                      p(t["perm"]), p(t["mean"]), p(t["scale"]), p(out), out_h, out_w, tiles_y,
                      tiles_x, t["ky_len"], t["kx_len"], cch, ll(on), ll(oc), ll(oy), ll(ox),
                      t["nearest"])
    return out


RNG = np.random.default_rng(11)


def _both(lib, imgs, a, interp, aa, od, layout, config=None):
    got = _emu_forward(lib, imgs, *a, interp, aa, od, layout, config)
    ref = nb.preprocess_forward(imgs, *a, interp, aa, od, layout)
    if od == "float16":
        ref = ref.view(np.float16)
    return got.astype(np.float64), ref.astype(np.float64)


def test_emulated_geometry_exact(emu):
    img = RNG.integers(0, 256, (13, 19, 3), dtype=np.uint8)
    for k in range(4):
        for fl, box in zip([(False, False), (True, False), (False, True), (True, True)],
                           [(0, 0, 13, 19), (2, 3, 11, 16), (12, 0, 1, 19), (0, 7, 5, 12)]):
            t, l, h, w = box
            ref = img[t:t + h, l:l + w]
            ref = ref[:, ::-1] if fl[0] else ref
            ref = np.rot90(ref[::-1] if fl[1] else ref, k)
            a = preprocess_args(1, 3, [box], ref.shape[:2], flips=[fl], rot90=[k])
            for interp, aa in (("nearest", False), ("bilinear", True), ("bilinear", False),
                               ("bicubic", True)):
                got = _emu_forward(emu, [img], *a, interp, aa, "uint8", "NHWC")
                assert np.array_equal(got[0], ref), (k, fl, interp, aa)


@pytest.mark.parametrize("od", ["float32", "float16", "uint8"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_emulated_matches_numba(emu, od, layout):
    """Down / up / odd resizes, every filter, per-image geometry, rotation, normalisation."""
    imgs = [RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8) for _ in range(3)]
    mean, scale = ([10.0, 0.0, -20.0], [0.9, 1.0, 1.2]) if od == "uint8" else \
        ([123.7, 116.3, 103.5], [1 / 58.4, 1 / 57.1, 1 / 57.4])
    for size in ((17, 29), (60, 71)):
        a = preprocess_args(3, 3, [(0, 0, 37, 53), (3.5, 2.25, 30, 45), (0, 0, 37, 53)], size,
                  flips=[(False, False), (True, False), (True, True)], rot90=[0, 1, 2],
                  angles=[0.0, 0.0, 25.0], fill=[0, 0, 99.0], mean=mean, scale=scale,
                  perm=[2, 0, 1])
        for interp, aa in (("bilinear", True), ("bilinear", False), ("nearest", False),
                           ("bicubic", True), ("bicubic", False)):
            got, ref = _both(emu, imgs, a, interp, aa, od, layout,
                             cp_pp.PreprocessConfig(16, 2))
            tol = {"float32": 1e-4, "float16": 2e-3, "uint8": 1}[od]
            assert np.abs(got - ref).max() <= tol, (size, interp, aa)


def test_emulated_float_input_many_channels_and_ragged_views(emu):
    """float32 input with C = 5 (two channel groups), and a ragged list of strided views."""
    img = (RNG.standard_normal((29, 41, 5)) * 40 + 100).astype(np.float32)
    a = preprocess_args(1, 5, [(0, 0, 29, 41)], (13, 50), perm=[4, 2, 0, 1, 3])
    for interp, aa in (("bilinear", True), ("bicubic", False)):
        got, ref = _both(emu, [img], a, interp, aa, "float32", "NCHW")
        assert np.abs(got - ref).max() <= 1e-3
    big = RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    views = [big[3:40, 5:60], big[::2, ::-3], big.transpose(1, 0, 2)]
    a = preprocess_args(3, 3, [(0, 0, *v.shape[:2]) for v in views], (16, 20), rot90=[0, 1, 3],
              angles=[0, 0, -40.0])
    for interp, aa in (("bilinear", True), ("nearest", False)):
        got, ref = _both(emu, views, a, interp, aa, "uint8", "NHWC")
        assert np.abs(got - ref).max() <= 1


def test_emulated_uint8_rounding_and_nan(emu):
    vals = np.array([0.5, 1.5, 2.5, 254.5, -3.0, 300.0, np.nan, np.inf], np.float32)
    img = vals.reshape(1, 8, 1).repeat(2, axis=0)
    a = preprocess_args(1, 1, [(0, 0, 2, 8)], (2, 8))
    got = _emu_forward(emu, [img], *a, "bilinear", True, "uint8", "NHWC")
    assert got[0, 0, :, 0].tolist() == [0, 2, 2, 254, 0, 255, 0, 255]
    got = _emu_forward(emu, [img], *a, "bilinear", True, "float32", "NHWC")
    np.testing.assert_array_equal(got[0, 0, :, 0], vals)


def test_emulated_nan_and_inf_reach_the_outputs_they_reach_in_numba(emu):
    """A tap of weight 0 does not read its pixel: a NaN or inf spreads exactly as in the Numba
    kernel (whose masks test_numba_preprocess.py checks against float64 matrices)."""
    for (h, w), size, interp, aa in (((30, 45), (18, 14), "bilinear", True),
                                     ((60, 45), (20, 15), "bicubic", True),
                                     ((17, 19), (31, 40), "bilinear", False)):
        img = RNG.uniform(0, 255, (h, w, 3)).astype(np.float32)
        for v in (np.nan, np.inf, -np.inf, np.nan, np.nan):
            img[RNG.integers(h), RNG.integers(w), RNG.integers(3)] = v
        got, ref = _both(emu, [img], preprocess_args(1, 3, [(0, 0, h, w)], size), interp, aa,
                         "float32", "NHWC")
        bad = ~np.isfinite(ref)
        assert bad.any() and np.array_equal(~np.isfinite(got), bad), (size, interp)
        assert np.array_equal(got[bad], ref[bad], equal_nan=True)
        assert np.abs(got[~bad] - ref[~bad]).max() <= 1e-3


# ------------------------------------------------------------------- on a GPU (skipped elsewhere)


@pytest.mark.gpu
@needs_cupy_device
def test_gpu_preprocess_matches_numba():
    import cupy

    imgs = RNG.integers(0, 256, (3, 37, 53, 3), dtype=np.uint8)
    a = preprocess_args(3, 3, [(0, 0, 37, 53), (3.5, 2.25, 30, 45), (0, 0, 37, 53)], (17, 29),
              flips=[(False, False), (True, False), (True, True)], rot90=[0, 1, 2],
              angles=[0.0, 0.0, 25.0])
    for interp, aa in (("bilinear", True), ("bilinear", False), ("nearest", False)):
        for od in ("float32", "float16", "uint8"):
            got = cp_pp.preprocess_forward(cupy.asarray(imgs), *a, interp, aa, od, "NCHW").get()
            ref = nb.preprocess_forward(imgs, *a, interp, aa, od, "NCHW")
            ref = ref.view(np.float16) if od == "float16" else ref
            assert np.abs(got.astype(np.float64) - ref.astype(np.float64)).max() <= (
                1 if od == "uint8" else 2e-3 if od == "float16" else 1e-4)
