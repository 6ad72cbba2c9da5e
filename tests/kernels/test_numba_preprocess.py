"""Kernel-level tests of the Numba fused preprocess: geometry, resize filters against PIL / OpenCV /
torch, rotation, normalisation, output dtypes, layouts, ragged and strided input, configs.

Library conventions matched, and the cases where a library deviates by more than 1 uint8 level
(each is named in the test that meets it):

* ``nearest`` is torch ``nearest-exact`` (bit-exact). PIL ``NEAREST`` and OpenCV
  ``INTER_NEAREST_EXACT`` compute the same ``floor((dst + 0.5) * scale)`` but accumulate the
  position (PIL, in double) or round it to fixed point (OpenCV), so where ``(dst + 0.5) * scale``
  is an exact integer (640 -> 224: every 7th column) they can pick the pixel before it.
  OpenCV ``INTER_NEAREST`` uses ``floor(dst * scale)``, a different convention, not tested.
* ``bicubic`` on uint8: PIL and torch (uint8 path) round and clamp the intermediate image between
  their horizontal and vertical passes, which on noise images with cubic overshoot moves results by
  tens of levels; compared on smooth images (PIL) and on float input (torch).
* OpenCV ``warpAffine`` on uint8 quantises source positions to 1/32 pixel; compared on smooth
  images (and exactly-ish on float32 input), torch ``grid_sample`` on noise.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from reference import preprocess_args

from kernelkit.kernels import taps
from kernelkit.kernels.numba.preprocess import PreprocessConfig, preprocess_forward

RNG = np.random.default_rng(20240611)


def rand_img(h, w, c=3, dtype=np.uint8):
    img = RNG.integers(0, 256, (h, w, c), dtype=np.uint8)
    return img.astype(dtype) if dtype != np.uint8 else img


def smooth_img(h, w, c=3):
    small = RNG.integers(0, 256, (max(2, h // 6), max(2, w // 6), c), dtype=np.uint8)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, c)
    return np.ascontiguousarray(cv2.GaussianBlur(big, (0, 0), 1.5).reshape(h, w, c))


def run(images, boxes=None, size=None, *, flips=None, rot90=None, angles=None, fill=None,
        mean=None, scale=None, perm=None, interp="bilinear", aa=True, od="float32",
        layout="NHWC", config=None):
    """preprocess_forward with identity defaults; ``images`` one (H, W, C) array, a batch, a list."""
    single = isinstance(images, np.ndarray) and images.ndim == 3
    batch = images[None] if single else images
    n = len(batch)
    c = batch[0].shape[2] if n else batch.shape[-1]
    if boxes is None:
        boxes = [(0, 0, im.shape[0], im.shape[1]) for im in batch]
    boxes = np.array(boxes, np.float64).reshape(n, 4)
    if size is None:
        size = (int(boxes[0, 2]), int(boxes[0, 3]))
    out = preprocess_forward(
        batch, *preprocess_args(n, c, boxes, size, flips, rot90, angles, fill, mean, scale, perm),
        interp, aa, od, layout, config)
    return out[0] if single else out


def u8(img, *a, **k):
    return run(img, *a, od="uint8", **k).astype(np.int64)


def geom_ref(img, box, flips, k):
    t, l, h, w = (int(v) for v in box)
    c = img[t:t + h, l:l + w]
    if flips[0]:
        c = c[:, ::-1]
    if flips[1]:
        c = c[::-1]
    return np.ascontiguousarray(np.rot90(c, k))


def maxdiff(a, b):
    return int(np.abs(np.asarray(a, np.int64) - np.asarray(b, np.int64)).max())


def t_nchw(img):
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]


def from_t(t):
    return t[0].permute(1, 2, 0).numpy()


SHAPES = [  # (H, W), (out_h, out_w): odd sizes, down and up, tiny
    ((37, 53), (17, 29)), ((37, 53), (100, 71)), ((64, 48), (32, 24)), ((31, 17), (31, 40)),
    ((1, 1), (5, 3)), ((1, 9), (3, 4)), ((9, 1), (4, 3)), ((120, 160), (56, 56)),
]


# ------------------------------------------------------------------------------- exact geometry

@pytest.mark.parametrize("k", range(4))
@pytest.mark.parametrize("flips", [(False, False), (True, False), (False, True), (True, True)])
def test_geometry_exact(k, flips):
    """Crop (touching borders) + flip + rot90, identity size: bit-exact vs numpy slicing."""
    img = rand_img(13, 19)
    boxes = [(0, 0, 13, 19), (2, 3, 11, 16), (0, 7, 5, 12), (12, 0, 1, 19)]
    for box in boxes:
        ref = geom_ref(img, box, flips, k)
        size = ref.shape[:2]
        for interp, aa in (("nearest", False), ("bilinear", True), ("bilinear", False),
                           ("bicubic", True), ("bicubic", False)):
            got = run(img, [box], size, flips=[flips], rot90=[k], interp=interp, aa=aa)
            assert np.array_equal(got, ref.astype(np.float32)), (box, interp, aa)
        assert np.array_equal(run(img, [box], size, flips=[flips], rot90=[k], od="uint8"), ref)


def test_geometry_commutes_with_resize():
    """Flip / rot90 then resize == resize then flip / rot90 (symmetric filters). Bit-exact for
    even k (same taps, same order); odd k sums the two axes in the other order (float32)."""
    img = rand_img(41, 29)
    box = (3, 2, 35, 26)
    for interp, aa in (("bilinear", True), ("bilinear", False), ("bicubic", True)):
        base = run(img, [box], (23, 17), interp=interp, aa=aa)
        for k in range(4):
            for fl in [(False, False), (True, False), (False, True), (True, True)]:
                size = (23, 17) if k % 2 == 0 else (17, 23)
                got = run(img, [box], size, flips=[fl], rot90=[k], interp=interp, aa=aa)
                ref = geom_ref(base, (0, 0, 23, 17), fl, k)
                if k % 2 == 0:
                    assert np.array_equal(got, ref), (k, fl)
                else:
                    np.testing.assert_allclose(got, ref, atol=2e-3, rtol=0)


def test_layouts_bit_exact():
    imgs = rand_img(4 * 37, 45).reshape(4, 37, 45, 3)
    for od in ("float32", "uint8", "float16", "bfloat16"):
        nhwc = run(imgs, size=(21, 30), od=od, layout="NHWC", flips=[(True, False)] * 4)
        nchw = run(imgs, size=(21, 30), od=od, layout="NCHW", flips=[(True, False)] * 4)
        assert nchw.shape == (4, 3, 21, 30) and nchw.flags.c_contiguous
        assert np.array_equal(nchw, nhwc.transpose(0, 3, 1, 2))


# ------------------------------------------------------------------- resize vs PIL / cv2 / torch

@pytest.mark.parametrize("shape,size", SHAPES)
@pytest.mark.parametrize("c", [3, 1])
def test_antialias_vs_pil_and_torch(shape, size, c):
    img = rand_img(*shape, c)
    got = u8(img, size=size)
    mode_img = Image.fromarray(img if c == 3 else img[:, :, 0])
    pil = np.asarray(mode_img.resize(size[::-1], Image.BILINEAR)).reshape(got.shape)
    assert maxdiff(got, pil) <= 1          # PIL: fixed-point weights, uint8 between passes
    t = t_nchw(img)
    tu8 = from_t(F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True))
    assert maxdiff(got, tu8) <= 1
    tf = from_t(F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False,
                              antialias=True))
    assert np.abs(run(img, size=size) - tf).max() < 0.02  # float paths: float32 rounding only


@pytest.mark.parametrize("shape,size", SHAPES)
def test_bilinear_vs_cv2_and_torch(shape, size):
    img = rand_img(*shape)
    got = u8(img, size=size, aa=False)
    cv = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR).reshape(got.shape)
    assert maxdiff(got, cv) <= 1           # cv2: 11-bit fixed-point weights, also upscaling
    t = t_nchw(img)
    tu8 = from_t(F.interpolate(t, size=size, mode="bilinear", align_corners=False,
                               antialias=False))
    assert maxdiff(got, tu8) <= 1
    tf = from_t(F.interpolate(t.float(), size=size, mode="bilinear", align_corners=False,
                              antialias=False))
    # torch computes the source position in float32: ~1e-5 px, times a gradient of <= 255
    assert np.abs(run(img, size=size, aa=False) - tf).max() < 0.02


@pytest.mark.parametrize("shape,size", SHAPES + [((480, 640), (224, 224))])
def test_nearest_exact(shape, size):
    img = rand_img(*shape)
    got = u8(img, size=size, interp="nearest")
    tn = from_t(F.interpolate(t_nchw(img), size=size, mode="nearest-exact"))
    assert np.array_equal(got, tn)
    # PIL NEAREST / cv2 INTER_NEAREST_EXACT: same rule, but at exact-integer positions they may
    # take the pixel before (see the module docstring): compare where the position is no tie.
    oh, ow = size
    ry = ((np.arange(oh) + 0.5) * shape[0] / oh) % 1 != 0
    rx = ((np.arange(ow) + 0.5) * shape[1] / ow) % 1 != 0
    pil = np.asarray(Image.fromarray(img).resize((ow, oh), Image.NEAREST))
    cvn = cv2.resize(img, (ow, oh), interpolation=cv2.INTER_NEAREST_EXACT).reshape(pil.shape)
    sel = np.ix_(ry, rx)
    assert np.array_equal(got[sel], pil[sel]) and np.array_equal(got[sel], cvn[sel])


@pytest.mark.parametrize("shape,size", SHAPES)
def test_bicubic(shape, size):
    img = rand_img(*shape)
    t = t_nchw(img).float()
    # antialias=True: PIL's bicubic (a = -0.5) = torch bicubic antialias=True
    ta = from_t(F.interpolate(t, size=size, mode="bicubic", align_corners=False, antialias=True))
    assert np.abs(run(img, size=size, interp="bicubic") - ta).max() < 0.05
    # antialias=False: cv2 INTER_CUBIC / torch bicubic (a = -0.75), replicated edges
    tn = from_t(F.interpolate(t, size=size, mode="bicubic", align_corners=False,
                              antialias=False))
    assert np.abs(run(img, size=size, interp="bicubic", aa=False) - tn).max() < 0.05
    cv = cv2.resize(img, size[::-1], interpolation=cv2.INTER_CUBIC).reshape(tn.shape)
    assert maxdiff(u8(img, size=size, interp="bicubic", aa=False), cv) <= 1
    # PIL uint8: intermediate clamping makes noise images differ; smooth images agree
    sm = smooth_img(*shape)
    pil = np.asarray(Image.fromarray(sm).resize(size[::-1], Image.BICUBIC)).reshape(tn.shape)
    assert maxdiff(u8(sm, size=size, interp="bicubic"), pil) <= 1


def test_crop_box_and_float_box():
    img = rand_img(50, 60)
    got = u8(img, [(7, 11, 31, 43)], (20, 25))
    pil = np.asarray(Image.fromarray(np.ascontiguousarray(img[7:38, 11:54])).resize(
        (25, 20), Image.BILINEAR))
    assert maxdiff(got, pil) <= 1
    # a fractional box is sampled exactly: output o reads top + (o + 0.5) * h / out_h - 0.5
    fbox = (7.5, 11.25, 30.0, 40.5)
    sx, sy = 25 / 40.5, 20 / 30.0
    a = np.array([[sx, 0, sx * (0.5 - 11.25) - 0.5], [0, sy, sy * (0.5 - 7.5) - 0.5]])
    ref = cv2.warpAffine(img.astype(np.float32), a, (25, 20), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(run(img, [fbox], (20, 25), aa=False) - ref).max() < 0.01


# ----------------------------------------------------------------------------------- rotation

def _rot_matrix(h, w, k, angle, size):
    hp, wp = (h, w) if k % 2 == 0 else (w, h)
    oh, ow = size
    m = np.vstack([cv2.getRotationMatrix2D(((wp - 1) / 2, (hp - 1) / 2), angle, 1.0), [0, 0, 1]])
    s = np.array([[ow / wp, 0, 0.5 * ow / wp - 0.5], [0, oh / hp, 0.5 * oh / hp - 0.5], [0, 0, 1]])
    return (s @ m)[:2]


ROT_CASES = [((3, 5, 30, 41), (False, False), 0, 30.0, (30, 41)),
             ((3, 5, 30, 41), (True, False), 1, -17.0, (25, 33)),
             ((0, 0, 40, 50), (True, True), 3, 90.0, (60, 70)),
             ((0, 0, 40, 50), (False, True), 2, 123.4, (20, 20))]


@pytest.mark.parametrize("box,fl,k,angle,size", ROT_CASES)
def test_rotation(box, fl, k, angle, size):
    fill = 77.0
    img = rand_img(40, 50)
    got = run(img, [box], size, flips=[fl], rot90=[k], angles=[angle], fill=[fill])
    r = geom_ref(img, box, fl, k).astype(np.float64)
    a = _rot_matrix(int(box[2]), int(box[3]), k, angle, size)
    # torch grid_sample (float64) on the rot90'd crop: fill via sampling (img - fill) + fill
    ainv = np.linalg.inv(np.vstack([a, [0, 0, 1]]))
    ys, xs = np.mgrid[0:size[0], 0:size[1]]
    sx = ainv[0, 0] * xs + ainv[0, 1] * ys + ainv[0, 2]
    sy = ainv[1, 0] * xs + ainv[1, 1] * ys + ainv[1, 2]
    hp, wp = r.shape[:2]
    grid = torch.from_numpy(np.stack([(2 * sx + 1) / wp - 1, (2 * sy + 1) / hp - 1], -1)[None])
    gs = from_t(F.grid_sample(t_nchw(r - fill), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)) + fill
    assert np.abs(got - gs).max() < 1e-3
    # cv2.warpAffine, BORDER_CONSTANT with the fill: float32 input, and uint8 on a smooth image
    cvf = cv2.warpAffine(r.astype(np.float32), a, size[::-1], flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)
    assert np.abs(got - cvf).max() < 0.01
    sm = smooth_img(40, 50)
    cv8 = cv2.warpAffine(geom_ref(sm, box, fl, k), a, size[::-1], flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(fill,) * 4)
    got8 = u8(sm, [box], size, flips=[fl], rot90=[k], angles=[angle], fill=[fill])
    assert maxdiff(got8, cv8) <= 1
    # nearest: round-to-nearest source pixel of the same map
    gotn = u8(img, [box], size, flips=[fl], rot90=[k], angles=[angle], fill=[fill],
              interp="nearest")
    ix, iy = np.floor(sx + 0.5).astype(int), np.floor(sy + 0.5).astype(int)
    inside = (ix >= 0) & (ix < wp) & (iy >= 0) & (iy < hp)
    refn = np.where(inside[..., None], r[iy.clip(0, hp - 1), ix.clip(0, wp - 1)], fill)
    # positions within 1e-9 of a .5 tie may round either way
    tie = (np.abs((sx % 1) - 0.5) < 1e-9) | (np.abs((sy % 1) - 0.5) < 1e-9)
    assert np.array_equal(gotn[~tie], refn[~tie].astype(np.int64))


def test_mixed_batch_rotation_and_axis():
    imgs = rand_img(2 * 30, 40).reshape(2, 30, 40, 3)
    both = run(imgs, size=(16, 20), angles=[0.0, 15.0], fill=[0.0, 9.0])
    assert np.array_equal(both[0], run(imgs[0], size=(16, 20)))
    assert np.array_equal(both[1], run(imgs[1], size=(16, 20), angles=[15.0], fill=[9.0]))


# ------------------------------------------------------------- normalise, channels, out dtypes

def test_normalise_perm_and_dtypes():
    img = rand_img(45, 61)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    scale = (1 / np.array([58.395, 57.12, 57.375], np.float32)).astype(np.float32)
    perm = [2, 1, 0]
    raw = run(img, size=(19, 23))
    got = run(img, size=(19, 23), mean=mean, scale=scale, perm=perm)
    ref = (raw[..., perm] - mean) * scale          # float32 arithmetic, as specified
    assert np.array_equal(got, ref)
    # channel_perm == reading a channel-reversed image
    assert np.array_equal(run(img, size=(19, 23), perm=perm),
                          run(np.ascontiguousarray(img[..., ::-1]), size=(19, 23)))
    f16 = run(img, size=(19, 23), mean=mean, scale=scale, perm=perm, od="float16")
    assert f16.dtype == np.uint16 or f16.dtype == np.float16
    assert np.array_equal(f16.view(np.uint16), ref.astype(np.float16).view(np.uint16))
    bf = run(img, size=(19, 23), mean=mean, scale=scale, perm=perm, od="bfloat16")
    assert bf.dtype == np.uint16
    tb = torch.from_numpy(ref).to(torch.bfloat16).view(torch.uint16).numpy()
    assert np.array_equal(bf, tb)
    # uint8: round half to even, saturate
    u = run(img, size=(19, 23), mean=np.full(3, -100, np.float32), scale=np.full(3, 0.7, np.float32),
            od="uint8")
    assert np.array_equal(u, np.clip(np.rint((raw + 100) * np.float32(0.7)), 0, 255))


def test_special_values_conversions():
    """bf16 / f16 / uint8 conversion of NaN, inf, ties and saturation, through float32 input."""
    vals = np.array([0.5, 1.5, 2.5, -3.0, 300.0, 1e5, np.inf, -np.inf, np.nan, 1 + 2**-8,
                     1 + 3 * 2**-9, 65519.0, 65520.0, 1e-8, -0.0], np.float32)
    img = vals.reshape(1, -1, 1)
    f = run(img)
    assert np.array_equal(f, img, equal_nan=True)
    bf = run(img, od="bfloat16").ravel()
    tb = torch.from_numpy(vals).to(torch.bfloat16).view(torch.uint16).numpy()
    nan = np.isnan(vals)
    assert np.array_equal(bf[~nan], tb[~nan])
    # NaN -> the canonical quiet NaN 0x7FC0 (c10's scalar conversion; torch's vectorised CPU
    # path gives 0xFFFF): any NaN bit pattern is a NaN to the consumer.
    assert (bf[nan] == 0x7FC0).all()
    h = run(img, od="float16").view(np.uint16)
    with np.errstate(over="ignore"):
        ref16 = vals.astype(np.float16)
    assert np.array_equal(h, ref16.view(np.uint16).reshape(h.shape))
    q = run(img, od="uint8").ravel()
    assert list(q[:9]) == [0, 2, 2, 0, 255, 255, 255, 0, 0]


def test_float_input_and_strides():
    imgs = rand_img(3 * 33, 47).reshape(3, 33, 47, 3)
    ref = run(imgs, size=(20, 26), flips=[(True, True)] * 3, rot90=[1, 2, 3], od="float32")
    # float32 input: same arithmetic, bit-exact
    assert np.array_equal(run(imgs.astype(np.float32), size=(20, 26), flips=[(True, True)] * 3,
                              rot90=[1, 2, 3]), ref)
    # strided views: channel-reversed view + perm, transposed memory, every-other-column
    big = rand_img(33, 94)
    view = big[:, ::2]
    cont = np.ascontiguousarray(view)
    for v in (view, np.asfortranarray(cont)):
        assert np.array_equal(run(v, size=(20, 26)), run(cont, size=(20, 26)))
    neg = cont[::-1, ::-1]
    assert np.array_equal(run(neg, size=(20, 26)), run(np.ascontiguousarray(neg), size=(20, 26)))
    assert np.array_equal(run(cont[..., ::-1], size=(20, 26), perm=[2, 1, 0]),
                          run(cont, size=(20, 26)))


def test_ragged_list():
    imgs = [rand_img(31, 40), rand_img(17, 9), rand_img(64, 50)[::2, 1::3], rand_img(1, 1)]
    boxes = [(0, 0, 31, 40), (2, 1, 15, 8), (5, 0, 20, 17), (0, 0, 1, 1)]
    kw = dict(flips=[(False, False), (True, False), (False, True), (True, True)],
              rot90=[0, 1, 2, 3], angles=[0.0, 0.0, 10.0, 0.0], fill=[1.0, 2.0, 3.0, 4.0])
    out = run(imgs, boxes, (12, 14), layout="NCHW", **kw)
    assert out.shape == (4, 3, 12, 14)
    for i in range(4):
        one = run(imgs[i], [boxes[i]], (12, 14), layout="NCHW",
                  **{k: [v[i]] for k, v in kw.items()})
        assert np.array_equal(out[i], one)


def test_gray_c1():
    img = rand_img(29, 35, 1)
    got = u8(img, size=(13, 50), flips=[(True, False)])
    pil = np.asarray(Image.fromarray(img[:, ::-1, 0]).resize((50, 13), Image.BILINEAR))
    assert maxdiff(got[..., 0], pil) <= 1


# ------------------------------------------------------------------------------ configs, misc

def test_configs_identical():
    imgs = rand_img(2 * 70, 90).reshape(2, 70, 90, 3)
    space = PreprocessConfig.space(2, 33, 41, 3)
    assert space[0] == PreprocessConfig.default() and 1 <= len(space) <= 6
    for aa in (True, False):
        ref = run(imgs, size=(33, 41), aa=aa, flips=[(True, False), (False, False)])
        for cfg in space + [PreprocessConfig(1, 1), PreprocessConfig(3, 7)]:
            assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
            got = run(imgs, size=(33, 41), aa=aa, flips=[(True, False), (False, False)],
                      config=cfg)
            assert np.array_equal(got, ref), cfg
    with pytest.raises(ValueError):
        PreprocessConfig(0, 0)



@pytest.mark.parametrize("shares", [2, 3, 7, 200])
def test_shares_split_rows_not_tasks(monkeypatch, shares):
    """The launch splits the batch's output rows, not its tasks, between threads: with any number
    of shares (more than the rows of an image, fewer than the tasks) and any `rows`, every output
    row is written once and the result is bit-identical to one share's. Runs the shares in turn
    on this thread; the output starts NaN-poisoned (float32) so an unwritten row shows."""
    from kernelkit.kernels.numba import preprocess as npp

    def poisoned(shape, dtype):
        out = np.empty(shape, dtype)
        out.fill(np.nan if np.dtype(dtype).kind == "f" else 0)
        return out

    monkeypatch.setattr(npp, "_empty_aligned", poisoned)
    imgs = rand_img(3 * 50, 61).reshape(3, 50, 61, 3)  # 3 images: odd against 2 threads
    one = run(imgs, size=(29, 37), config=PreprocessConfig(29, 0))
    assert np.isfinite(one).all()
    monkeypatch.setattr(npp, "_run", lambda fn, nthr, *a: [fn(t, shares, *a) for t in range(shares)])
    for rows in (1, 5, 29, 224):
        got = run(imgs, size=(29, 37), config=PreprocessConfig(rows, 0))
        assert np.array_equal(got, one), rows

@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (0, 0, 2)], ids=str)
@pytest.mark.parametrize("aa", [True, False], ids=["antialias", "2tap"])
def test_store_paths_identical(perm, aa):
    """Plain stores into the planes and streaming stores through the row buffer write the same
    bits, for every channel permutation (a non-permutation takes the generic path), in rows wide
    enough for the streaming path (>= 64) with a ragged tail, and at a NaN pixel."""
    imgs = rand_img(2 * 61, 157).reshape(2, 61, 157, 3).astype(np.float32)
    imgs[1, 30:33, 76:79, 1] = np.nan  # a block: every filter reads some of it
    kw = dict(size=(29, 83), aa=aa, perm=perm, layout="NCHW", mean=[1.0, 2.0, 3.0],
              scale=[0.5, 0.25, 2.0], flips=[(True, False), (False, True)])
    plain = run(imgs, config=PreprocessConfig(4, 0, False), **kw)
    stream = run(imgs, config=PreprocessConfig(4, 0, True), **kw)
    assert np.array_equal(plain, stream, equal_nan=True)
    assert np.isnan(plain[1]).any() == (1 in perm) and not np.isnan(plain[0]).any()
    ref = run(imgs, **{**kw, "perm": (0, 1, 2), "mean": [0, 0, 0], "scale": [1, 1, 1]})
    for c, pc in enumerate(perm):
        want = (ref[:, pc] - kw["mean"][c]) * np.float32(kw["scale"][c])
        assert np.array_equal(plain[:, c], want, equal_nan=True), c
    with pytest.raises(ValueError, match="stream"):
        PreprocessConfig(4, 0, 1)


NONFINITE_CASES = [  # (H, W), (out_h, out_w), C, antialias, flips, tile_w: every hpass path
    ((30, 45), (18, 14), 3, True, (False, False), 0),    # window edges on pixel centres
    ((57, 83), (19, 23), 3, True, (True, True), 0),      # wide C == 3 path, reversed axes
    ((41, 67), (13, 29), 1, True, (False, False), 8),    # one channel, tiled vertical pass
    ((23, 37), (11, 17), 4, True, (True, False), 0),     # generic C
    ((29, 31), (29, 31), 3, False, (False, False), 0),   # identity: one tap per output
    ((17, 19), (31, 40), 3, False, (False, True), 0),    # 2-tap upscale
    ((60, 50), (20, 25), 3, True, (False, False), 0),    # integer ratios
]


@pytest.mark.parametrize("shape,size,c,aa,flips,tile_w", NONFINITE_CASES, ids=str)
def test_a_nan_or_inf_reaches_only_the_outputs_whose_windows_weigh_it(shape, size, c, aa, flips,
                                                                      tile_w):
    """A NaN or inf pixel shows in exactly the outputs that give it a nonzero weight (the float64
    reference's dense matrices): the tap tables pad an image's windows with zero weights to one
    length, and those padding taps must not multiply it in (0 * NaN is NaN). Every other output
    equals the resize of the image without it. Antialiased: torch reads its window's own taps
    too, but also the ones of weight exactly 0 where a window edge falls on a pixel centre."""
    from resample_ref import axis_matrix

    (h, w), (oh, ow) = shape, size
    img = RNG.uniform(0, 255, (h, w, c)).astype(np.float32)
    bad = np.zeros((h, w, c), bool)
    for v in (np.nan, np.inf, -np.inf, np.nan):
        y, x, ch = RNG.integers(h), RNG.integers(w), RNG.integers(c)
        img[y, x, ch], bad[y, x, ch] = v, True
    got = run(img, flips=[flips], size=size, aa=aa, config=PreprocessConfig(4, tile_w))
    wy = axis_matrix(0.0, h, h, oh, "bilinear", aa)
    wx = axis_matrix(0.0, w, w, ow, "bilinear", aa)
    if flips[0]:
        wx = wx[:, ::-1]
    if flips[1]:
        wy = wy[:, ::-1]
    reach = np.einsum("oh,hwc,pw->opc", np.abs(wy) > 1e-9, bad, np.abs(wx) > 1e-9) > 0
    assert np.array_equal(~np.isfinite(got), reach)
    clean = np.where(bad, 0.0, img)
    want = np.einsum("oh,hwc,pw->opc", wy, clean, wx)
    assert np.allclose(got[~reach], want[~reach], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("c", [1, 3])
def test_a_bicubic_weight_of_zero_inside_a_window_does_not_read_its_nan(c):
    """A 3x antialiased bicubic downscale weighs the pixels 3 away from an output's centre 0
    inside its window (the filter is 0 at 1 and 2 support units): NaNs there stay out. Pixel i
    and output o: offset d = i - 3o - 1, weight nonzero iff |d| < 6 and |d| != 3. The finite
    outputs equal torch's bicubic antialiased resize of the image without the NaNs."""
    h, w = 60, 45
    img = RNG.uniform(0, 255, (h, w, c)).astype(np.float32)
    bad = np.zeros((h, w, c), bool)
    bad[RNG.integers(h, size=6), RNG.integers(w, size=6), RNG.integers(c, size=6)] = True
    img[bad] = np.nan
    got = run(img, size=(20, 15), interp="bicubic")

    def reads(n_in, n_out):
        d = np.abs(np.arange(n_in)[None, :] - 3 * np.arange(n_out)[:, None] - 1)
        return (d < 6) & (d != 3)

    reach = np.einsum("oh,hwc,pw->opc", reads(h, 20), bad, reads(w, 15)) > 0
    assert np.array_equal(np.isnan(got), reach) and reach.any() and not reach.all()
    clean = t_nchw(np.where(bad, 0.0, img).astype(np.float32))
    want = from_t(F.interpolate(clean, size=(20, 15), mode="bicubic", antialias=True))
    assert np.allclose(got[~reach], want[~reach], rtol=1e-5, atol=1e-3)


def test_empty():
    assert run(np.zeros((0, 5, 5, 3), np.uint8), np.zeros((0, 4)), (3, 3)).shape == (0, 3, 3, 3)
    assert run(rand_img(5, 5), size=(0, 3)).shape == (0, 3, 3)


def test_taps_are_windows_inside_the_crop():
    for interp, aa in (("bilinear", True), ("bilinear", False), ("bicubic", True),
                       ("bicubic", False), ("nearest", False)):
        t = taps.axis_taps([3.0, 0.0], [20.0, 1.0], [30, 1], 7, interp, aa)
        for n, (lo, hi) in enumerate(((3, 23), (0, 1))):
            k = t.ntaps[n]
            assert (t.start[n] >= lo).all() and (t.start[n] + k <= hi).all()
            np.testing.assert_allclose(t.weight[n, :, :k].sum(-1), 1, rtol=1e-6)
