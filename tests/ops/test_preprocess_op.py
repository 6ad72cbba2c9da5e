"""kernelkit.preprocess and kernelkit.augment through the ops layer, on every CPU backend."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from resample_ref import crop_resize

import kernelkit

CPU_BACKENDS = ["numba", "torch"]


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def images(rng, n=3, h=37, w=53, c=3):
    return rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)


def identity(**kw):
    return dict(mean=0.0, std=1.0, **kw)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("flip", [None, "horizontal", "vertical", "both"])
@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
def test_crop_flip_rot90_layout_are_exact(backend, flip, rotate, rng):
    imgs = images(rng)
    top, left, h, w = 3, 5, 20, 31
    size = (w, h) if rotate in (90, 270) else (h, w)
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, size=size, crop=(top, left, h, w), flip=flip,
                                   rotate=rotate, **identity())
        nhwc = kernelkit.preprocess(imgs, size=size, crop=(top, left, h, w), flip=flip,
                                    rotate=rotate, layout="NHWC", out_dtype="uint8", **identity())
    ref = imgs[:, top:top + h, left:left + w]
    if flip in ("horizontal", "both"):
        ref = ref[:, :, ::-1]
    if flip in ("vertical", "both"):
        ref = ref[:, ::-1]
    ref = np.rot90(ref, rotate // 90, axes=(1, 2))
    np.testing.assert_array_equal(out, ref.transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(nhwc, ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("flip", [None, "horizontal", "vertical", "both"])
@pytest.mark.parametrize("rotate", [0, 90, 180, 270])
@pytest.mark.parametrize("hw,size", [((60, 80), (30, 30)), ((6, 6), (1, 1)), ((12, 18), (8, 12)),
                                     ((7, 9), (3, 5)), ((26, 30), (23, 11))],
                         ids=["halves", "one", "two_thirds", "odd", "float_ties"])
def test_nearest_after_a_flip_or_quarter_turn_breaks_ties_as_torch(backend, flip, rotate, hw,
                                                                     size, rng):
    # crop, flip, turn, then torch's nearest-exact resize: at an exact tie (an even number of
    # source pixels per output pixel) the Numba kernel took the pixel after the tie in source
    # order where the axis was reversed (it mirrored the resized table), torch's the one before;
    # and 26 -> 23, 30 -> 11 have ties that float64 put just below (off without a flip too)
    imgs = images(rng, h=hw[0], w=hw[1])
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, size=size, flip=flip, rotate=rotate,
                                   interpolation="nearest", **identity())
    ref = torch.from_numpy(imgs).permute(0, 3, 1, 2).double()
    if flip in ("horizontal", "both"):
        ref = ref.flip(-1)
    if flip in ("vertical", "both"):
        ref = ref.flip(-2)
    ref = torch.rot90(ref, rotate // 90, dims=(-2, -1))
    ref = torch.nn.functional.interpolate(ref, size=size, mode="nearest-exact")
    np.testing.assert_array_equal(out, ref.numpy().astype(np.float32))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("flip", ["horizontal", "vertical", "both"])
@pytest.mark.parametrize("angle", [30.0, -45.0, 135.0, 200.0])
@pytest.mark.parametrize("hw,size", [((4, 4), (5, 5)), ((6, 8), (7, 9)), ((10, 10), (10, 10))])
def test_nearest_rotation_of_a_flipped_image_is_that_of_the_pre_flipped_image(backend, flip,
                                                                             angle, hw, size, rng):
    # crop -> flip -> rotate: an odd output over an even crop puts pixels on exact ties. The
    # Numba kernel broke them right and down in the source, so a flip sent them the other way
    # from rotating a pre-flipped image (and from the torch backend): 4 x 4 -> 5 x 5 at 30
    # degrees, centre pixel 100 instead of 90
    imgs = images(rng, n=2, h=hw[0], w=hw[1])
    pre = imgs[:, :, ::-1] if flip in ("horizontal", "both") else imgs
    pre = np.ascontiguousarray(pre[:, ::-1] if flip in ("vertical", "both") else pre)
    kw = dict(size=size, rotate=angle, interpolation="nearest", layout="NHWC", **identity())
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, flip=flip, **kw)
        ref = kernelkit.preprocess(pre, **kw)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("hw,size", [((48, 64), (24, 20)), ((37, 53), (13, 29)), ((20, 30), (41, 67)),
                                      ((1, 1), (5, 4)), ((1, 17), (3, 5)), ((480, 640), (224, 224))])
def test_antialias_matches_pil(backend, hw, size, rng):
    imgs = images(rng, n=2, h=hw[0], w=hw[1])
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, size=size, antialias=True, out_dtype="uint8",
                                   layout="NHWC", **identity())
    for i in range(2):
        ref = np.asarray(Image.fromarray(imgs[i]).resize(size[::-1], Image.BILINEAR))
        diff = np.abs(out[i].astype(int) - ref.astype(int))
        assert diff.max() <= 1, f"max {diff.max()} levels from PIL"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("hw,size", [((48, 64), (24, 20)), ((37, 53), (13, 29)), ((20, 30), (41, 67)),
                                      ((480, 640), (224, 224))])
def test_two_tap_matches_opencv_and_torch(backend, hw, size, rng):
    imgs = images(rng, n=2, h=hw[0], w=hw[1])
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, size=size, antialias=False, layout="NHWC", **identity())
    t = torch.nn.functional.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(),
                                        size=size, mode="bilinear", align_corners=False)
    assert np.abs(out - t.permute(0, 2, 3, 1).numpy()).max() <= 1e-3 * 255
    for i in range(2):
        ref = cv2.resize(imgs[i], size[::-1], interpolation=cv2.INTER_LINEAR)
        # cv2 works in 11-bit fixed point and rounds: within one level of the exact value.
        assert np.abs(out[i] - ref.astype(np.float32)).max() <= 1.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("out_dtype", ["float32", "float16", "bfloat16", "uint8"])
def test_normalise_channel_order_and_dtypes(backend, out_dtype, rng):
    imgs = torch.from_numpy(images(rng, n=2, h=30, w=30))
    mean, std = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)
    kw = dict(size=30, mean=mean, std=std, channel_order="bgr2rgb", out_dtype=out_dtype)
    if out_dtype == "uint8":
        kw.update(mean=0, std=1)
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, **kw)
    assert isinstance(out, torch.Tensor) and out.dtype == getattr(torch, out_dtype)
    x = imgs.permute(0, 3, 1, 2).flip(1).float()
    if out_dtype == "uint8":
        torch.testing.assert_close(out, x.to(torch.uint8), rtol=0, atol=0)
        return
    # the statistics are the output channels' (they were read in input order: a BGR image
    # with "bgr2rgb" and ImageNet's RGB mean put B's mean on R, 190 levels apart)
    ref = (x - torch.tensor(mean)[:, None, None]) * (1 / torch.tensor(std))[:, None, None]
    torch.testing.assert_close(out.float(), ref.to(getattr(torch, out_dtype)).float(), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_ragged_float_and_single_channel(backend, rng):
    ragged = [rng.random((h, w, 1), dtype=np.float32) for h, w in ((31, 17), (8, 64), (50, 50))]
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(ragged, size=(16, 12), mean=0.5, std=0.25)
    assert out.shape == (3, 1, 16, 12) and out.dtype == np.float32
    for i, img in enumerate(ragged):
        t = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None],
                                            size=(16, 12), mode="bilinear", antialias=True)
        # float inputs: no uint8 level to allow; float32 rounding of the two filter passes and the
        # normalisation, a few ulps at outputs of magnitude <= 2 (measured: 7e-7; was 4 / 255)
        np.testing.assert_allclose(out[i], ((t[0] - 0.5) * 4).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("hw, size", [((64, 48), (100, 1)), ((2, 1), (4, 1)), ((9, 5), (3, 1)),
                                      ((9, 5), (1, 1)), ((5, 9), (1, 4))])
def test_antialiased_resize_to_one_column_weighs_each_rows_window(backend, hw, size, rng):
    """torch's antialiased interpolate to one column weighs every output row with the first
    row's window ((2, 1) -> (4, 1) gave the first row four times); the torch backend then
    failed the Numba kernel's check and returned its own wrong result."""
    img = rng.random((*hw, 3), dtype=np.float32)
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess([img], size=size, layout="NHWC", **identity())[0]
    ref = crop_resize(img, (0, 0, *hw), size)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_arbitrary_rotation_matches_opencv(backend, rng):
    img = images(rng, n=1, h=41, w=41)
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(img, size=41, rotate=30.0, fill=7.0, layout="NHWC",
                                   **identity())
    m = cv2.getRotationMatrix2D((20.0, 20.0), 30.0, 1.0)  # counter-clockwise, about the centre
    ref = cv2.warpAffine(img[0], m, (41, 41), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=(7, 7, 7))
    inner = np.s_[3:-3, 3:-3]  # border pixels straddle the fill edge; compare the interior
    assert np.abs(out[0][inner] - ref[inner].astype(np.float32)).max() <= 1.0


@pytest.mark.parametrize("kw", [dict(size=(60, 80), rotate=20.0),
                                dict(size=(64, 64), rotate=-71.0, crop=(10, 30, 200, 150),
                                     flip="horizontal", fill=7.0),
                                dict(size=(300, 400), rotate=33.0, interpolation="bicubic"),
                                # nearest: the torch backend sampled bilinearly; an odd
                                # output's centre on an even crop's is a tie
                                dict(size=(51, 71), rotate=60.0, interpolation="nearest"),
                                dict(size=(29, 43), rotate=-28.87, interpolation="nearest",
                                     crop=(1, 2, 58, 56))],
                         ids=["down", "crop-flip-fill", "up-bicubic", "nearest", "nearest-tie"])
def test_arbitrary_rotation_is_one_sampling_the_same_on_every_backend(kw, rng):
    """Rotation and resize are one map from the output grid, sampled bilinearly or nearest (the
    kernels' way, as documented); torch's chain rotated at the crop's size and then antialiased,
    130 levels off the Numba kernel on a noisy image downscaled, so the result depended on the
    tuner's pick."""
    img = images(rng, n=1, h=240, w=320)[0]
    out = {}
    for backend in CPU_BACKENDS:
        with kernelkit.use(backend=backend):
            out[backend] = kernelkit.preprocess([img], mean=0.0, std=1.0, **kw)[0]
    assert out["torch"].shape == (3, *kw["size"])
    np.testing.assert_allclose(out["numba"], out["torch"], rtol=0, atol=0.05)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_rotate_90_degrees_equals_quarter_turn(backend, rng):
    img = images(rng, n=1, h=21, w=21)
    with kernelkit.use(backend=backend):
        exact = kernelkit.preprocess(img, size=21, rotate=90, **identity())
        near = kernelkit.preprocess(img, size=21, rotate=90.0 + 1e-9, **identity())
    assert np.abs(exact - near)[:, :, 1:-1, 1:-1].max() <= 1e-3


def test_backends_agree_within_one_level(rng):
    imgs = [images(rng, n=1, h=h, w=w)[0] for h, w in ((480, 640), (333, 500), (97, 101))]
    kw = dict(size=224, mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4), crop=[(10, 20, 400, 500), None, (0, 0, 97, 50)],
              flip=[None, "horizontal", "vertical"])
    outs = {}
    for backend in CPU_BACKENDS:
        with kernelkit.use(backend=backend):
            outs[backend] = kernelkit.preprocess(imgs, **kw)
    level = 1 / 57.1
    assert np.abs(outs["numba"] - outs["torch"]).max() <= 1.01 * level


# -- augmentation --------------------------------------------------------------------------------
def test_augment_is_reproducible_across_splits_orders_and_workers():
    sizes = [(480, 640), (500, 375), (100, 900), (64, 64)] * 5
    full = kernelkit.augment(range(20), sizes, seed=11, epoch=3, degrees=15, vflip=0.2)
    halves = [kernelkit.augment(range(a, b), sizes[a:b], seed=11, epoch=3, degrees=15, vflip=0.2)
              for a, b in ((0, 7), (7, 20))]
    assert halves[0].crop + halves[1].crop == full.crop
    assert halves[0].rotate + halves[1].rotate == full.rotate
    order = list(range(19, -1, -1))  # a worker drawing the samples in another order
    rev = kernelkit.augment(order, [sizes[i] for i in order], seed=11, epoch=3, degrees=15, vflip=0.2)
    assert rev.flip[::-1] == full.flip and rev.crop[::-1] == full.crop
    other_epoch = kernelkit.augment(range(20), sizes, seed=11, epoch=4, degrees=15, vflip=0.2)
    assert other_epoch.crop != full.crop
    for (top, left, h, w), (H, W) in zip(full.crop, sizes):
        assert top >= 0 and left >= 0 and top + h <= H and left + w <= W and h > 0 and w > 0


def test_augment_in_a_process_pool_matches():
    import concurrent.futures
    import multiprocessing

    sizes = [(300, 400)] * 8
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        parts = list(pool.map(_aug_crops, [range(0, 3), range(3, 8)], [sizes[:3], sizes[3:]]))
    assert parts[0] + parts[1] == kernelkit.augment(range(8), sizes, seed=5).crop


def _aug_crops(idx, sizes):
    return kernelkit.augment(list(idx), sizes, seed=5).crop


def test_augmented_batch_is_the_same_on_every_backend(rng):
    imgs = [images(rng, n=1, h=h, w=w)[0] for h, w in ((120, 160), (90, 70))]
    aug = kernelkit.augment([3, 4], [im.shape[:2] for im in imgs], seed=2, quarter_turns=True)
    outs = []
    for backend in CPU_BACKENDS:
        with kernelkit.use(backend=backend):
            outs.append(kernelkit.preprocess(imgs, size=32, mean=0, std=1, out_dtype="uint8",
                                             **aug.kwargs()))
    assert np.abs(outs[0].astype(int) - outs[1].astype(int)).max() <= 1


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input(rng):
    imgs = images(rng)
    ok = dict(size=8, mean=0, std=1)
    cases = [
        (lambda: kernelkit.preprocess(images(rng, c=4), **ok), ValueError, "1 or 3 channels"),
        (lambda: kernelkit.preprocess(imgs, crop=(30, 0, 10, 10), **ok), ValueError, "lies outside"),
        # a sub-pixel box ran exactly on Numba and truncated on torch (the reference); NaN got
        # "cannot convert float NaN to integer"
        (lambda: kernelkit.preprocess(imgs, crop=(0, 0, 9.5, 10), **ok), ValueError,
         r"crop box of image 0 must be whole pixels, got \(top=0, left=0, height=9.5"),
        (lambda: kernelkit.preprocess(imgs, crop=(float("nan"), 0, 5, 5), **ok), ValueError,
         "whole pixels"),
        (lambda: kernelkit.preprocess(imgs, antialias="no", **ok), TypeError,
         "'antialias' must be a bool, got 'no'"),  # (was taken as True)
        (lambda: kernelkit.preprocess(imgs, rotate=10, fill=float("nan"), **ok), ValueError,
         "'fill' must be finite"),
        (lambda: kernelkit.preprocess(imgs, rotate="90", **ok), TypeError,
         "'rotate' must be one value .* got str '90'"),  # (was: "got '9'")
        # (was a TypeError, "'flip' must be one value for all images", which True is)
        (lambda: kernelkit.preprocess(imgs, flip=True, **ok), ValueError,
         r"flip=True does not say which axis to flip: give one of \('none', 'horizontal'"),
        (lambda: kernelkit.preprocess(imgs, flip=np.True_, **ok), ValueError,
         "flip=True does not say which axis"),
        (lambda: kernelkit.preprocess(imgs, size=0, mean=0, std=1), ValueError, "'size' must be positive"),
        (lambda: kernelkit.preprocess(imgs[:1], size=8, mean=0, std=1, crop=(0, 0, 5)),
         ValueError, r"'crop' must be None or a \(top, left, height, width\) box for all"),
        (lambda: kernelkit.preprocess(imgs, size=10**9, mean=0, std=1), ValueError,
         r"'size' \(1000000000, 1000000000\) gives"),
        (lambda: kernelkit.preprocess(imgs, size=8, mean=(1, 2), std=1), ValueError, "one value per channel"),
        (lambda: kernelkit.preprocess(imgs, size=8, mean=0, std=(1, 0, 1)), ValueError, "non-zero"),
        (lambda: kernelkit.preprocess([imgs[0], imgs[1].astype(np.float32)], **ok), TypeError, "mixes dtypes"),
        (lambda: kernelkit.preprocess([], **ok), ValueError, "empty batch"),
        (lambda: kernelkit.preprocess(imgs[:0], **ok), ValueError, "empty batch"),
        (lambda: kernelkit.preprocess(imgs[0], **ok), ValueError, r"\(N, H, W, C\)"),
        (lambda: kernelkit.preprocess(imgs.astype(np.int16), **ok), TypeError, "uint8"),
        (lambda: kernelkit.preprocess(imgs, out_dtype="bfloat16", **ok), TypeError, "numpy has no bfloat16"),
        (lambda: kernelkit.preprocess(imgs, interpolation="lanczos", **ok), ValueError, "interpolation"),
        (lambda: kernelkit.preprocess(imgs, flip=["h", "v"], **ok), ValueError, "one per image"),
        (lambda: kernelkit.preprocess(imgs, flip="sideways", **ok), ValueError,
         "'flip' must be one of .*'horizontal'.*got 'sideways'"),  # (was: "got 8" values)
        (lambda: kernelkit.preprocess(imgs, channel_order=(0, 0, 1), **ok), ValueError, "permutation"),
        (lambda: kernelkit.preprocess("img.png", **ok), TypeError, "'images' must be"),
    ]
    for fn, exc, match in cases:
        with pytest.raises(exc, match=match) as info:
            fn()
        assert str(info.value).startswith("preprocess:")


def test_repeated_calls_reuse_the_plan(rng, monkeypatch):
    """Like matmul and conv2d, a call with the signature of an earlier one skips `prepare`: same
    shapes, dtypes and arguments reuse the plan; any change (crop, a ragged image's size) does not."""
    from kernelkit.ops import preprocess as pp_op

    batch = images(rng, n=2, h=31, w=45)
    ragged = [images(rng, n=1, h=29, w=41)[0], images(rng, n=1, h=37, w=22)[0]]
    kw = dict(size=(16, 20), mean=(1.0, 2.0, 3.0), std=np.array([4.0, 5.0, 6.0]), flip="horizontal")
    first = kernelkit.preprocess(batch, **kw)
    first_ragged = kernelkit.preprocess(ragged, **kw)
    calls = []
    real = pp_op.prepare
    monkeypatch.setattr(pp_op, "prepare", lambda *a, **k: calls.append(1) or real(*a, **k))
    np.testing.assert_array_equal(kernelkit.preprocess(batch.copy(), **kw), first)
    np.testing.assert_array_equal(kernelkit.preprocess([x.copy() for x in ragged], **kw),
                                  first_ragged)
    assert calls == []
    other = kernelkit.preprocess(batch, **{**kw, "crop": (1, 2, 20, 30)})
    assert calls == [1] and not np.array_equal(other, first)
    kernelkit.preprocess([ragged[0], ragged[1][:-1]], **kw)
    assert calls == [1, 1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_statistics_changed_in_place_are_used(rng, dtype):
    """A torch tensor hashes by identity: a mean or std changed in place kept the plan memoised
    with the old values (a silently wrong normalisation). numpy ones were keyed by value."""
    batch = images(rng, n=1, h=30, w=40)
    mean, std = torch.full((3,), 100.0, dtype=dtype), torch.full((3,), 50.0, dtype=dtype)
    first = kernelkit.preprocess(batch, size=8, mean=mean, std=std)
    mean += 50.0
    std /= 2
    again = kernelkit.preprocess(batch, size=8, mean=mean, std=std)
    np.testing.assert_allclose(again, (first - 1.0) * 2, rtol=1e-5, atol=1e-4)
    kept = np.array([1.0, 2.0, 3.0])
    first = kernelkit.preprocess(batch, size=8, mean=kept, std=1.0)
    kept += 1.0
    np.testing.assert_allclose(kernelkit.preprocess(batch, size=8, mean=kept, std=1.0),
                               first - 1.0, rtol=1e-5, atol=1e-4)


# -- normalisation units --------------------------------------------------------------------------
IMAGENET_01 = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.fixture
def fresh_unit_warnings(monkeypatch):
    import importlib

    mod = importlib.import_module("kernelkit.ops.preprocess_args")
    monkeypatch.setattr(mod, "_WARNED_UNITS", set())


def test_stats_in_unit_range_match_input_units_times_255(rng, fresh_unit_warnings):
    imgs = images(rng, n=2, h=40, w=50)
    m, s = np.array(IMAGENET_01["mean"]), np.array(IMAGENET_01["std"])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right unit: no warning
        unit = kernelkit.preprocess(imgs, size=16, stats_unit="unit", **IMAGENET_01)
        inp = kernelkit.preprocess(imgs, size=16, mean=m * 255, std=s * 255)
    np.testing.assert_allclose(unit, inp, rtol=1e-6, atol=1e-6)
    # against float64: torchvision's ToTensor (x / 255) then Normalize, no resize (size = image)
    full = kernelkit.preprocess(imgs, size=(40, 50), stats_unit="unit", **IMAGENET_01)
    ref = (imgs.astype(np.float64) / 255 - m) / s
    np.testing.assert_allclose(full, ref.transpose(0, 3, 1, 2), atol=1e-5)
    assert full.min() > -2.2 and full.max() < 2.7  # the range torchvision users expect


def test_stats_that_look_like_the_other_unit_warn_once(rng, fresh_unit_warnings):
    imgs = images(rng, n=1)
    with pytest.warns(UserWarning, match=r"look like \[0, 1\] units.*stats_unit='unit'"):
        out = kernelkit.preprocess(imgs, size=8, **IMAGENET_01)
    assert out.max() > 100  # read in input units, as documented: the values are huge
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        kernelkit.preprocess(images(rng, n=2), size=8, **IMAGENET_01)  # once per process
        kernelkit.preprocess(imgs, size=8, mean=0, std=1)  # identity: never suspicious
        kernelkit.preprocess(imgs, size=8, mean=(123.7, 116.3, 103.5), std=58.0)
    assert not [w for w in seen if "look like" in str(w.message)]
    with pytest.warns(UserWarning, match=r"look like input units.*stats_unit='input'"):
        kernelkit.preprocess(imgs, size=8, mean=(123.7, 116.3, 103.5), std=58.0,
                             stats_unit="unit")
    with pytest.raises(ValueError, match="preprocess: 'stats_unit' must be one of"):
        kernelkit.preprocess(imgs, size=8, mean=0, std=1, stats_unit="percent")


def test_the_unit_warning_points_at_the_callers_line(rng, fresh_unit_warnings, monkeypatch):
    # it pointed into kernelkit/ops/preprocess.py (a fixed stacklevel, one frame short), and
    # through nn.Preprocess further in
    import importlib

    from kernelkit.nn import Preprocess

    mod = importlib.import_module("kernelkit.ops.preprocess_args")
    # (sizes of their own: a call whose plan is memoised does not check its statistics again)
    for call in (lambda: kernelkit.preprocess(images(rng, n=1), size=(7, 9), **IMAGENET_01),
                 lambda: Preprocess((7, 11), **IMAGENET_01)(torch.from_numpy(images(rng, n=1)))):
        monkeypatch.setattr(mod, "_WARNED_UNITS", set())
        with pytest.warns(UserWarning, match="look like") as seen:
            call()
        assert [w.filename for w in seen if "look like" in str(w.message)] == [__file__]


def test_the_gpu_kernels_round_nearest_as_the_cpu_kernels():
    """The Triton and CuPy kernels spell taps.NEAREST_ROUND as a literal."""
    from pathlib import Path

    from kernelkit.kernels import taps

    root = Path(kernelkit.__file__).parent / "kernels"
    for source in (root / "triton" / "preprocess.py", root / "cupy" / "preprocess.cu"):
        text = source.read_text()
        assert text.count(repr(taps.NEAREST_ROUND)) == 2, source
        assert "+ 0.5)" not in text, source


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, None])
@pytest.mark.parametrize("ragged", [False, True])
def test_a_record_arrays_field_is_read_as_its_values(backend, ragged, rng):
    """float32 pixels stored beside a mask byte (a field of a numpy record array: pixels 13
    bytes apart) failed an assert in the Numba kernel ("every candidate failed" undispatched),
    and gave garbage under python -O. Such a view is copied; the result is the contiguous
    copy's."""
    rec = np.zeros((2, 29, 31), dtype=[("rgb", "<f4", 3), ("mask", "u1")])
    rec["rgb"] = rng.random((2, 29, 31, 3), dtype=np.float32) * 255
    img = rec["rgb"]
    assert img.strides[2] == 13
    with kernelkit.use(backend=backend):
        want = kernelkit.preprocess(np.ascontiguousarray(img), size=(11, 17), **identity())
        got = kernelkit.preprocess([img[0], img[1]] if ragged else img, size=(11, 17),
                                   **identity())
    # (dispatched, the batch and the ragged list may run on different backends: float rounding)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_a_ragged_batch_with_one_wide_image_runs_in_groups_of_like_scale(backend, layout, rng,
                                                                        monkeypatch):
    """Every image's tap tables were padded to the batch's longest: one 16 x 200000 strip among
    256 photos of 32 px (antialiased to 224) took 4.18 s and 6.2 GB a call, 0.14 s and 0.8 GB
    in groups of like scale. Here with small images (the split's size floor lowered): each
    image's output is what it gives alone, rows in the batch's order, quarter turns included."""
    from kernelkit.ops import preprocess as op

    monkeypatch.setattr(op, "SPLIT_MIN_TAPS", 0)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for h, w in ((12, 10), (11, 13), (300, 8), (10, 12), (13, 11), (12, 12))]
    kw = dict(size=(6, 7), rotate=[0, 90, 270, 0, 0, 180], layout=layout, **identity())
    groups = []
    real = op.scale_groups
    monkeypatch.setattr(op, "scale_groups", lambda spec: groups.append(real(spec)) or groups[-1])
    with kernelkit.use(backend=backend):
        got = kernelkit.preprocess(imgs, **kw)
        assert groups and [2] in [list(g) for g in groups[0][0]]  # (it split: the strip alone)
        for i, img in enumerate(imgs):
            alone = kernelkit.preprocess([img], **{**kw, "rotate": kw["rotate"][i]})
            np.testing.assert_array_equal(got[i:i + 1], alone)


def test_scale_groups_split_only_where_padding_wastes():
    from kernelkit.kernels.taps import PreprocessSpec
    from kernelkit.ops.preprocess import SPLIT_WASTE, scale_groups

    def spec(boxes, rot90=None, antialias=True):
        n = len(boxes)
        return PreprocessSpec(np.asarray(boxes, np.float64), np.zeros((n, 2), bool),
                              np.asarray(rot90 or [0] * n), np.zeros(n), np.zeros(n, np.float32),
                              (224, 224), np.zeros(3, np.float32), np.ones(3, np.float32),
                              np.arange(3), "bilinear", antialias, "float32", "NCHW")

    photos = [(0, 0, 480, 640)] * 255
    assert scale_groups(spec(photos)) is None  # (one scale: nothing to split)
    idx, order = scale_groups(spec(photos + [(0, 0, 16, 200000)]))
    assert [len(g) for g in idx] == [255, 1] and list(idx[1]) == [255]
    assert np.array_equal(np.concatenate(idx)[order], np.arange(256))
    assert scale_groups(spec(photos + [(0, 0, 16, 200000)], antialias=False)) is None
    assert scale_groups(spec(photos[:2] + [(0, 0, 900, 1300)])) is None  # (under the floor)
    assert SPLIT_WASTE > 1


@pytest.mark.parametrize("kind", ["bfloat16", "negated_float64", "int64", "conj_imag_float64"])
@pytest.mark.parametrize("entry", ["op", "module"])
def test_statistics_as_tensors_of_any_kind_normalise_by_their_values(kind, entry):
    """A mean given as a float64 tensor torch negates lazily (``torch._neg_view``, a view from
    ``x.conj().imag``) raised "Can't call numpy() on Tensor that has negative bit set" in the op
    and in kernelkit.nn.Preprocess; a bfloat16 one raised "unsupported ScalarType BFloat16" in
    the module. A complex one gave up its imaginary parts with a warning: a TypeError now."""
    img = np.random.default_rng(2).integers(0, 256, (2, 6, 7, 3), dtype=np.uint8)
    values = [100.0, 110.0, 120.0]
    mean = {"bfloat16": lambda: torch.tensor(values, dtype=torch.bfloat16),
            "negated_float64": lambda: torch._neg_view(-torch.tensor(values, dtype=torch.float64)),
            "int64": lambda: torch.tensor(values).long(),
            "conj_imag_float64": lambda: torch.complex(  # (values, negated lazily)
                torch.zeros(3, dtype=torch.float64), -torch.tensor(values).double()).conj().imag,
            }[kind]()
    run = (lambda m: kernelkit.preprocess(torch.from_numpy(img), size=5, mean=m, std=50.0)) \
        if entry == "op" else \
        (lambda m: kernelkit.nn.Preprocess(size=5, mean=m, std=50.0)(torch.from_numpy(img)))
    for _ in range(2):
        torch.testing.assert_close(run(mean), run(values), rtol=0, atol=0)
    with pytest.raises(TypeError, match="'mean' must be a number"):
        run(torch.tensor(values, dtype=torch.complex64))


def test_a_nested_tensor_is_a_ragged_batch_and_a_list_of_meta_images_a_clear_error():
    """A nested tensor (torch's container of a ragged image batch) raised "Could not run
    'kernelkit::preprocess' with arguments from the 'NestedTensorCPU' backend"; a list of meta
    images raised "Cannot copy out of meta tensor" from inside the plan."""
    g = torch.Generator().manual_seed(6)
    imgs = [torch.rand(6, 7, 3, generator=g) * 255, torch.rand(9, 5, 3, generator=g) * 255]
    kw = dict(size=4, mean=(1.0, 2.0, 3.0), std=(50.0, 60.0, 70.0), flip=["horizontal", None])
    torch.testing.assert_close(kernelkit.preprocess(torch.nested.nested_tensor(imgs), **kw),
                               kernelkit.preprocess(imgs, **kw), rtol=0, atol=0)
    with pytest.raises(TypeError, match="preprocess: a list of images must hold their data"):
        kernelkit.preprocess([x.to("meta") for x in imgs], **kw)
    with pytest.raises(TypeError, match=r"conv2d: 'x' is a nested tensor"):
        kernelkit.conv2d(torch.nested.nested_tensor([x.permute(2, 0, 1) for x in imgs]),
                         torch.randn(4, 3, 3, 3, generator=g))
