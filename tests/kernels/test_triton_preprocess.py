"""The Triton fused preprocess against the Numba kernel (the reference implementation of the same
contract), under the interpreter on small images when there is no GPU (on a GPU, on CUDA tensors).

* crop / flip / rot90 with identity size: bit-exact vs numpy slicing, every interpolation;
* resizes (down, up, odd, tiny), antialias and 2-tap, nearest, bicubic, rotation (mixed batch),
  fractional crops, ragged lists of strided views, float32 input, channel_perm / mean / scale:
  within 1 uint8 level of the Numba kernel (and float outputs to float32 rounding);
* out dtypes float32 / float16 / bfloat16 / uint8 and NCHW / NHWC;
* the kernel compiles for sm_80 and sm_90 in every shipped config (slow; no GPU needed).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from reference import preprocess_args

from kernelkit.kernels import taps
from kernelkit.kernels.numba import preprocess as nb
from kernelkit.kernels.triton import preprocess as tp

DEV = "cuda" if torch.cuda.is_available() else "cpu"
RNG = np.random.default_rng(7)


def rand_img(h, w, c=3, dtype=np.uint8):
    img = RNG.integers(0, 256, (h, w, c), dtype=np.uint8)
    return img.astype(dtype)


def to_torch(images):
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).to(DEV)
    return [torch.from_numpy(np.ascontiguousarray(a)).to(DEV) for a in images]


def both(images, a, interp="bilinear", aa=True, od="float32", layout="NHWC", config=None,
         timages=None):
    """(triton output as numpy, numba output) of the same call; f16 / bf16 both as float32."""
    got = tp.preprocess_forward(to_torch(images) if timages is None else timages, *a, interp, aa,
                                od, layout, config)
    ref = nb.preprocess_forward(images, *a, interp, aa, od, layout)
    assert got.dtype == tp.OUT_TORCH_DTYPES[od] and tuple(got.shape) == ref.shape
    assert got.is_contiguous()
    got = got.cpu()
    if od == "bfloat16":
        got = got.float().numpy()
        ref = (ref.astype(np.uint32) << 16).view(np.float32)
    elif od == "float16":
        got = got.float().numpy()
        ref = ref.view(np.float16).astype(np.float32)
    else:
        got = got.numpy()
    return got, ref


def maxdiff(a, b):
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


# ------------------------------------------------------------------------------- exact geometry

@pytest.mark.parametrize("k", range(4))
def test_geometry_exact(k):
    """Crop + flip + rot90 with identity size is a copy: bit-exact vs numpy, every filter."""
    img = rand_img(13, 19)
    boxes = [(0, 0, 13, 19), (2, 3, 11, 16), (12, 0, 1, 19), (0, 7, 5, 12)]
    flips = [(False, False), (True, False), (False, True), (True, True)]
    imgs = [img] * 4
    for box, fl in zip(boxes, flips):
        t, l, h, w = box
        ref = img[t:t + h, l:l + w]
        ref = ref[:, ::-1] if fl[0] else ref
        ref = ref[::-1] if fl[1] else ref
        ref = np.ascontiguousarray(np.rot90(ref, k))
        a = preprocess_args(1, 3, [box], ref.shape[:2], flips=[fl], rot90=[k])
        for interp, aa in (("nearest", False), ("bilinear", True), ("bilinear", False),
                           ("bicubic", True), ("bicubic", False)):
            got, _ = both(imgs[:1], a, interp, aa)
            assert np.array_equal(got[0], ref.astype(np.float32)), (box, fl, interp, aa)
        got, _ = both(imgs[:1], a, od="uint8", layout="NCHW")
        assert np.array_equal(got[0], ref.transpose(2, 0, 1))


# ---------------------------------------------------------------------------- resize vs Numba

CASES = [  # (H, W), (out_h, out_w): down, up, odd, tiny
    ((37, 53), (17, 29)), ((37, 53), (60, 71)), ((64, 48), (32, 24)), ((31, 17), (31, 40)),
    ((9, 1), (4, 3)), ((120, 160), (28, 28)),
]


@pytest.mark.parametrize("shape,size", CASES)
def test_resize_matches_numba(shape, size):
    """Every filter on a batch of 3 (one shared crop and per-image geometry): within 1 level."""
    h, w = shape
    imgs = np.stack([rand_img(h, w) for _ in range(3)])
    shared = preprocess_args(3, 3, [(0, 0, h, w)] * 3, size)
    own = preprocess_args(3, 3, [(0, 0, h, w), (h * 0.25, w * 0.1, h * 0.6, w * 0.75), (0.5, 0, h - 0.5, w)],
               size, flips=[(False, False), (True, False), (True, True)], rot90=[0, 2, 0])
    for a in (shared, own):
        for interp, aa in (("bilinear", True), ("bilinear", False), ("nearest", False),
                           ("bicubic", True), ("bicubic", False)):
            od = "float32" if a is own else "uint8"
            got, ref = both(imgs, a, interp, aa, od=od)
            assert maxdiff(got, ref) <= (2e-3 if od == "float32" else 1), (interp, aa)


def test_rot90_odd_and_non_square_resize():
    img = rand_img(41, 29)
    imgs = [img, img, img, img]
    a = preprocess_args(4, 3, [(3, 2, 35, 26)] * 4, (17, 23), rot90=[1, 3, 1, 3],
             flips=[(False, False), (True, False), (False, True), (True, True)])
    for interp, aa in (("bilinear", True), ("bilinear", False), ("bicubic", True)):
        got, ref = both(imgs, a, interp, aa, layout="NCHW")
        assert maxdiff(got, ref) <= 2e-3


def test_rotation_mixed_batch_and_fill():
    """Rotated and axis-aligned images in one batch; bilinear and nearest; fill outside."""
    imgs = np.stack([rand_img(33, 45) for _ in range(3)])
    a = preprocess_args(3, 3, [(0, 0, 33, 45), (2, 4, 28, 37), (0, 0, 33, 45)], (24, 31),
             angles=[30.0, 0.0, -117.5], fill=[7.0, 0.0, 200.0], rot90=[0, 1, 1],
             flips=[(True, False), (False, False), (False, True)])
    for interp in ("bilinear", "nearest", "bicubic"):
        got, ref = both(imgs, a, interp, True, od="uint8")
        assert maxdiff(got, ref) <= 1, interp
        got, ref = both(imgs, a, interp, False, od="float32", layout="NCHW")
        assert maxdiff(got, ref) <= 2e-3, interp


def test_nearest_rotation_breaks_ties_in_the_flipped_turned_crop_as_torch():
    """Odd outputs over even crops put pixels on exact ties: they go right and down in the image
    that is rotated (the flipped, quarter-turned crop), as torch's chain does, on every flip and
    quarter turn; the shared map broke them in the source."""
    from kernelkit.kernels.torch import preprocess as tch

    img = rand_img(6, 8)
    flips = [(False, False), (True, False), (False, True), (True, True)] * 2
    a = preprocess_args(8, 3, [(0, 0, 6, 8)] * 8, (7, 9), flips=flips,
                        rot90=[0, 0, 0, 0, 1, 2, 3, 1], angles=[30.0, -45.0, 135.0, 200.0] * 2)
    got, ref = both([img] * 8, a, "nearest", False, od="uint8", layout="NCHW")
    want = tch.preprocess_forward([torch.from_numpy(img)] * 8, *a, "nearest", False, "uint8",
                                  "NCHW")
    np.testing.assert_array_equal(ref, want.numpy())
    np.testing.assert_array_equal(got, want.numpy())


# ------------------------------------------------------------------- dtypes, layouts, channels

@pytest.mark.parametrize("od", ["float32", "float16", "bfloat16", "uint8"])
def test_out_dtypes_layouts_and_normalise(od):
    imgs = np.stack([rand_img(30, 40) for _ in range(2)])
    mean, scale = [123.7, 116.3, 103.5], [1 / 58.4, 1 / 57.1, 1 / 57.4]
    if od == "uint8":
        mean, scale = [10.0, 0.0, -20.0], [0.9, 1.0, 1.2]  # keeps values in range (and saturates)
    a = preprocess_args(2, 3, [(0, 0, 30, 40), (1, 3, 25, 30)], (21, 19), mean=mean, scale=scale,
             perm=[2, 1, 0], flips=[(True, False), (False, False)])
    outs = {}
    for layout in ("NCHW", "NHWC"):
        got, ref = both(imgs, a, od=od, layout=layout)
        tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2, "uint8": 1}[od]
        assert maxdiff(got, ref) <= tol, layout
        outs[layout] = got
    assert np.array_equal(outs["NCHW"], outs["NHWC"].transpose(0, 3, 1, 2))


def test_uint8_rounding_saturation_and_nan():
    """Half to even, saturation, NaN -> 0 on uint8 output; NaN / Inf propagate to float32."""
    vals = np.array([0.5, 1.5, 2.5, 254.5, -3.0, 300.0, np.nan, np.inf], np.float32)
    img = vals.reshape(1, 8, 1).repeat(2, axis=0)
    got = tp.preprocess_forward(to_torch(img[None]), *preprocess_args(1, 1, [(0, 0, 2, 8)], (2, 8)),
                                "bilinear", True, "uint8", "NHWC").cpu().numpy()
    assert got[0, 0, :, 0].tolist() == [0, 2, 2, 254, 0, 255, 0, 255]
    got = tp.preprocess_forward(to_torch(img[None]), *preprocess_args(1, 1, [(0, 0, 2, 8)], (2, 8)),
                                "bilinear", True, "float32", "NHWC").cpu().numpy()
    np.testing.assert_array_equal(got[0, 0, :, 0], vals)


def test_float_input_one_and_four_channels():
    for c in (1, 4):
        imgs = RNG.standard_normal((2, 23, 31, c)).astype(np.float32) * 50 + 100
        a = preprocess_args(2, c, [(0, 0, 23, 31)] * 2, (11, 40), perm=np.arange(c)[::-1].copy())
        for interp, aa in (("bilinear", True), ("bilinear", False), ("bicubic", False)):
            got, ref = both(imgs, a, interp, aa, layout="NCHW")
            assert maxdiff(got, ref) <= 2e-3


def test_nan_and_inf_reach_the_outputs_they_reach_in_numba():
    """A tap of weight 0 (the tables pad windows to one length; window edges on pixel centres; a
    bicubic window's zeros) does not read its pixel, so a NaN or inf spreads exactly as in the
    Numba kernel (whose masks tests/kernels/test_numba_preprocess.py checks against float64)."""
    for (h, w), size, interp, aa in (((30, 45), (18, 14), "bilinear", True),
                                     ((60, 45), (20, 15), "bicubic", True),
                                     ((17, 19), (31, 40), "bilinear", False)):
        imgs = RNG.uniform(0, 255, (1, h, w, 3)).astype(np.float32)
        for v in (np.nan, np.inf, -np.inf, np.nan, np.nan):
            imgs[0, RNG.integers(h), RNG.integers(w), RNG.integers(3)] = v
        got, ref = both(imgs, preprocess_args(1, 3, [(0, 0, h, w)], size), interp, aa)
        bad = ~np.isfinite(ref)
        assert bad.any() and np.array_equal(~np.isfinite(got), bad), (size, interp)
        assert np.array_equal(got[bad], ref[bad], equal_nan=True)
        assert maxdiff(got[~bad], ref[~bad]) <= 2e-3


def test_ragged_strided_list():
    """A list of images of different sizes, some of them strided views (no copy is made)."""
    big = rand_img(50, 70)
    views = [big[3:40, 5:60], rand_img(21, 33), big[::2, ::-3], big.transpose(1, 0, 2)]
    tviews = [to_torch(big)[3:40, 5:60], to_torch([views[1]])[0],
              to_torch(big)[::2].flip(1)[:, ::3], to_torch(big).permute(1, 0, 2)]
    assert all(tuple(t.shape) == v.shape for t, v in zip(tviews, views))
    assert any(not t.is_contiguous() for t in tviews)
    boxes = [(0, 0, *v.shape[:2]) for v in views]
    boxes[0] = (2.5, 1.25, 30.0, 40.5)
    a = preprocess_args(4, 3, boxes, (16, 20), rot90=[0, 1, 2, 3], angles=[0, 0, 0, 12.0])
    for interp, aa in (("bilinear", True), ("bilinear", False), ("nearest", False)):
        got, ref = both(views, a, interp, aa, od="uint8", timages=tviews)
        assert maxdiff(got, ref) <= 1, interp


def test_shipped_configs_agree():
    """Every shipped tile gives the same result (edge tiles, several tiles per image)."""
    imgs = np.stack([rand_img(26, 34) for _ in range(2)])
    a = preprocess_args(2, 3, [(0, 0, 26, 34)] * 2, (19, 37), angles=[0.0, 45.0])
    ref = None
    for cfg in tp.SHIPPED_CONFIGS:
        got, nref = both(imgs, a, config=cfg, layout="NCHW")
        assert maxdiff(got, nref) <= 2e-3
        if ref is None:
            ref = got
        assert np.array_equal(got, ref), cfg


def test_empty():
    img = to_torch(np.zeros((0, 5, 5, 3), np.uint8))
    out = tp.preprocess_forward(img, *preprocess_args(0, 3, np.zeros((0, 4)), (4, 4)), "bilinear", True,
                                "float32", "NCHW")
    assert tuple(out.shape) == (0, 3, 4, 4)
    img = to_torch(np.zeros((2, 5, 5, 3), np.uint8))
    out = tp.preprocess_forward(img, *preprocess_args(2, 3, [(0, 0, 5, 5)] * 2, (0, 4)), "bilinear", True,
                                "uint8", "NHWC")
    assert tuple(out.shape) == (2, 0, 4, 3)
    out = tp.preprocess_forward([], *preprocess_args(0, 3, np.zeros((0, 4)), (4, 4)), "bilinear", True,
                                "float32", "NCHW")
    assert out.shape[0] == 0


# ------------------------------------------------------------- tables: one upload, memoised

def _geometry(n=3):
    imgs = np.stack([rand_img(20, 24) for _ in range(n)])
    boxes = [(0, 0, 20, 24), (1, 2, 15, 19), (2.5, 0, 17, 23.5)][:n]
    a = preprocess_args(n, 3, boxes, (9, 11), flips=[(True, False)] * n, rot90=[1] * n,
                        angles=[0.0, 30.0, 0.0][:n], mean=[1.0, 2.0, 3.0], scale=[0.5, 0.25, 2.0])
    return imgs, list(a)


def test_packed_tables_round_trip():
    """Every table comes back out of the one packed buffer with its dtype, shape and values, at
    an 8-byte aligned offset; the scalars stay beside it."""
    imgs, a = _geometry()
    _, _, _, cch, meta, shapes = tp._image_table(to_torch(imgs))
    t = taps.gpu_tables(meta, shapes, cch, *a, "bicubic", True)
    packed = taps.pack_tables(t)
    views = packed.views(torch.from_numpy(packed.data), tp._view)
    arrays = {k: v for k, v in t.items() if isinstance(v, np.ndarray)}
    assert set(views) == set(arrays) and len(arrays) == 10
    for k, v in arrays.items():
        assert packed.offsets[k][0] % 8 == 0
        assert views[k].numpy().dtype == v.dtype and views[k].shape == v.shape, k
        assert np.array_equal(views[k].numpy(), v), k
    assert packed.scalars == {k: v for k, v in t.items() if k not in arrays}


def test_tables_built_once_per_geometry_and_again_on_any_change(monkeypatch):
    """A repeated call reuses its uploaded tables; any change of what the tables depend on (the
    caller's crop array changed in place, size, filter, flips, strides) builds new ones, and
    every call stays right."""
    tp._TABLES.clear()
    built = []
    real = taps.gpu_tables
    monkeypatch.setattr(taps, "gpu_tables", lambda *a, **k: built.append(1) or real(*a, **k))
    imgs, a = _geometry()
    timgs = to_torch(imgs)

    def check(args, interp="bilinear", aa=True, images=imgs, timages=timgs):
        got, ref = both(images, args, interp, aa, layout="NCHW", timages=timages)
        assert maxdiff(got, ref) <= 2e-3

    for _ in range(3):
        check(a)
    assert len(built) == 1
    a[0][1] = (3.0, 1.0, 12.0, 20.0)  # in place: the key holds bytes, not the array
    check(a)
    assert len(built) == 2
    check(a, "bicubic")
    check(a, "bicubic", False)
    assert len(built) == 4
    b = list(a)
    b[5] = (7, 13)
    check(b)
    b = list(a)
    b[1] = np.ascontiguousarray(~a[1])
    check(b)
    assert len(built) == 6
    tall = np.stack([rand_img(40, 24) for _ in range(3)])
    check(a, images=tall[:, ::2], timages=to_torch(tall)[:, ::2])  # other strides, same shape
    assert len(built) == 7
    check(a)  # the first geometry is still kept
    assert len(built) == 7


def test_table_memo_evicts_least_recent_and_skips_large():
    memo = taps.TableMemo(size=2, max_bytes=100)
    memo.put("a", 1, 10)
    memo.put("b", 2, 10)
    assert memo.get("a") == 1  # "b" is now the least recent
    memo.put("c", 3, 10)
    assert (memo.get("a"), memo.get("b"), memo.get("c")) == (1, None, 3)
    memo.put("d", 4, 101)
    assert memo.get("d") is None and len(memo) == 2
    memo.clear()
    assert len(memo) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_table_memo_in_a_forked_child_starts_empty_and_unlocked():
    """A child forked while another thread holds the memo's lock neither hangs nor sees the
    parent's (device) tables."""
    memo = taps.TableMemo()
    memo.put("parent", 1, 10)
    memo._lock.acquire()  # as if another thread were inside get() at the fork
    try:
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only if the memo works and is empty
            ok = memo.get("parent") is None
            memo.put("child", 2, 10)
            os._exit(0 if ok and memo.get("child") == 2 else 1)
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung on the memo's lock")
        assert os.waitstatus_to_exitcode(done[1]) == 0
    finally:
        memo._lock.release()
    assert memo.get("parent") == 1


def test_config_round_trip_and_space():
    d = tp.PreprocessConfig.default()
    assert d == tp.SHIPPED_CONFIGS[0]
    for cfg in tp.SHIPPED_CONFIGS:
        assert tp.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    sp = tp.PreprocessConfig.space(32, 224, 224, 3)
    assert sp[0] == d and set(sp) == set(tp.SHIPPED_CONFIGS)
    tiny = tp.PreprocessConfig.space(1, 1, 1, 3)
    assert tiny[0] == d and all(c.block_y <= 2 for c in tiny[1:])
    for bad in (dict(block_y=3, block_x=32), dict(block_y=8, block_x=0),
                dict(block_y=512, block_x=512)):
        with pytest.raises(ValueError):
            tp.PreprocessConfig.from_dict(bad)
    with pytest.raises(ValueError):
        tp.PreprocessConfig(True, 32)


# ------------------------------------------------------------ compiled for sm_80 / sm_90 (no GPU)

def _job(cfg, cc, in_t="*u8", out_t="*fp32", affine=True, nearest=False, c=3, index_i64=False,
         asm=()):
    from triton_compile import CompileJob

    sig = {"src_ptr": in_t, "meta_ptr": "*i64", "yst_ptr": "*i32", "yw_ptr": "*fp32",
           "xst_ptr": "*i32", "xw_ptr": "*fp32", "aff_ptr": "*fp64", "fill_ptr": "*fp32",
           "perm_ptr": "*i32", "mean_ptr": "*fp32", "scale_ptr": "*fp32", "out_ptr": out_t}
    for name in ("out_h", "out_w", "tiles_y", "tiles_x", "KY", "KX", "on", "oc", "oy", "ox"):
        sig[name] = "i32"
    const = {"C": c, "CP": 4 if c == 3 else c, "NMETA": taps.NMETA, "BLOCK_Y": cfg.block_y,
             "BLOCK_X": cfg.block_x, "HAS_AFFINE": affine, "NEAREST": nearest,
             "OUT_U8": out_t == "*u8", "INDEX_I64": index_i64}
    return CompileJob("kernelkit.kernels.triton.preprocess", "preprocess_kernel", sig, const,
                      cc=cc, num_warps=cfg.num_warps, num_stages=1, asm=asm,
                      label=f"{cfg} {in_t}->{out_t} aff={affine} nearest={nearest} "
                            f"i64={index_i64} sm_{cc}")


@pytest.mark.slow
def test_compiles_for_sm80_and_sm90():
    from triton_compile import SHARED_MEMORY_LIMIT, compile_many

    d = tp.PreprocessConfig.default()
    jobs = [_job(cfg, cc) for cfg in tp.SHIPPED_CONFIGS for cc in (80, 90)]
    jobs += [_job(d, 90, "*fp32", out_t, affine=False) for out_t in ("*fp16", "*bf16", "*u8")]
    jobs += [_job(d, 80, "*u8", "*bf16", nearest=True, c=1)]
    for job, res in zip(jobs, compile_many(jobs), strict=True):
        assert res.ok, f"{job.label}:\n{res.error}"
        assert res.metadata["shared"] <= SHARED_MEMORY_LIMIT[job.cc], job.label
        assert res.metadata.get("stack", 0) == 0 and res.metadata.get("local", 0) == 0, \
            (job.label, res.metadata)


def test_64_bit_indexing_gives_the_same_results(monkeypatch):
    """The kernel's INDEX_I64 path (an image or an output image of 2**30 elements or more),
    forced on small images: the same results as the Numba kernel, on the table path (resize,
    every filter) and the affine path (rotation), strided and NCHW."""
    monkeypatch.setattr(tp, "INT32_MAX", 64)
    imgs = np.stack([rand_img(33, 45) for _ in range(3)])
    a = preprocess_args(3, 3, [(0, 0, 33, 45), (2, 4, 28, 37), (0, 0, 33, 45)], (24, 31),
                        angles=[30.0, 0.0, 0.0], rot90=[0, 1, 0],
                        flips=[(True, False), (False, False), (False, True)])
    big = np.stack([rand_img(66, 90) for _ in range(3)])
    strided = big[:, ::2, ::2]  # (3, 33, 45, 3), every stride doubled
    for interp in ("bilinear", "nearest", "bicubic"):
        got, ref = both(imgs, a, interp, True, od="uint8")
        assert maxdiff(got, ref) <= 1, interp
        got, ref = both(strided, a, interp, False, od="float32", layout="NCHW",
                        timages=torch.from_numpy(big).to(DEV)[:, ::2, ::2])
        assert maxdiff(got, ref) <= 2e-3, interp


@pytest.mark.slow
def test_64_bit_indexing_offsets_every_image_pixel_in_64_bits():
    """An image of 2**31 elements (uint8 (1, 27000, 27000, 3)) failed a bare assert (and
    wrapped past it under python -O), and an output image of 2**31 elements (3 x 26756 x 26756,
    which check_size passed) was stored through wrapped int32 offsets. With INDEX_I64, every
    pointer into an image (input taps, output) takes a 64-bit offset; only the per-channel
    tables and the taps' small steps stay int32. Read from the TTIR for sm_90."""
    import re

    from triton_compile import compile_many

    d = tp.PreprocessConfig.default()
    jobs = [_job(d, 90, affine=aff, index_i64=i64, asm=("ttir",))
            for aff in (False, True) for i64 in (True, False)]
    small = ("perm", "mean", "scale", "wx", "wy")  # channel tables; a tap's step of one row
    for job, res in zip(jobs, compile_many(jobs), strict=True):
        assert res.ok, f"{job.label}:\n{res.error}"
        narrow = set(re.findall(r"%([a-z]+)\w* = tt\.addptr [^:]*: [^,]*, tensor<[0-9x]+xi32>",
                                res.asm["ttir"]))
        if job.constexprs["INDEX_I64"]:
            assert narrow <= set(small), (job.label, narrow - set(small))
        else:
            assert "optr" in narrow, (job.label, narrow)  # (the check sees int32 offsets)
