"""kernelkit.nn.Preprocess and the registered op behind it (torch.ops.kernelkit.preprocess):
the same output as kernelkit.preprocess, a float64 reference, opcheck, torch.compile fullgraph
and export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from resample_ref import crop_resize

import kernelkit
import kernelkit.nn as knn
from kernelkit.nn import Preprocess
from kernelkit.ops.torch_ops import preprocess_op

MEAN, STD = (123.7, 116.3, 103.5), (58.4, 57.1, 57.4)


def _images(n=2, h=23, w=31, c=3, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, h, w, c), generator=g, dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.to(dtype) / 255


def test_importable_from_kernelkit_nn():
    assert knn.Preprocess is Preprocess and "Preprocess" in knn.__all__


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("kw", [
    dict(size=(11, 17)),
    dict(size=9, crop=(2, 3, 15, 20), flip="horizontal", antialias=False, layout="NHWC"),
    dict(size=(30, 40), flip="both", channel_order="rgb2bgr", interpolation="bicubic"),
], ids=["plain", "crop_flip_2tap_nhwc", "upscale_bgr_bicubic"])
def test_matches_kernelkit_preprocess_and_float64_reference(backend, kw):
    imgs = _images()
    module = Preprocess(mean=MEAN, std=STD, **kw)
    fn_kw = {**kw, "mean": MEAN, "std": STD}
    with kernelkit.use(backend=backend):
        got = module(imgs)
        torch.testing.assert_close(got, kernelkit.preprocess(imgs, **fn_kw), rtol=0, atol=0)
    if kw.get("interpolation") == "bicubic":
        return  # the float64 reference below covers bilinear and nearest only
    size = (kw["size"],) * 2 if isinstance(kw["size"], int) else kw["size"]
    box = kw.get("crop", (0, 0, imgs.shape[1], imgs.shape[2]))
    for i, img in enumerate(imgs.numpy()):
        ref = crop_resize(img, box, size, antialias=kw.get("antialias", True))
        if kw.get("flip") in ("horizontal", "both"):  # the crop, mirrored
            ref = ref[:, ::-1]
        ref = (ref - np.array(MEAN)) / np.array(STD)
        out = got[i].numpy() if kw.get("layout") == "NHWC" else got[i].permute(1, 2, 0).numpy()
        # within one uint8 level of the exact value, in normalised units
        assert np.abs(out - ref).max() <= 1.0 / min(STD), (i, np.abs(out - ref).max())


def test_unbatched_image_and_out_dtype():
    imgs = _images(n=1)
    module = Preprocess(16, mean=0.5, std=0.25, stats_unit="unit", out_dtype=torch.bfloat16)
    one = module(imgs[0])
    assert one.shape == (3, 16, 16) and one.dtype == torch.bfloat16
    torch.testing.assert_close(one, module(imgs)[0], rtol=0, atol=0)


def test_one_numpy_image_as_a_batch_of_one():
    # a numpy (H, W, C) image raised "'numpy.ndarray' object has no attribute 'unsqueeze'"; the
    # module's own message says it takes one
    imgs = _images(n=1).numpy()
    module = Preprocess(8, mean=MEAN, std=STD)
    one = module(imgs[0])
    assert type(one) is np.ndarray and one.shape == (3, 8, 8)
    # (the two calls may run on two backends: one may be torch's while Numba compiles)
    np.testing.assert_allclose(one, module(imgs)[0], rtol=1e-5, atol=1e-5)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="'flip'"):
        Preprocess(8, 0.0, 1.0, flip="sideways")
    with pytest.raises(ValueError, match="'channel_order'"):
        Preprocess(8, 0.0, 1.0, channel_order="rgb")
    with pytest.raises(TypeError, match="'out_dtype'"):
        Preprocess(8, 0.0, 1.0, out_dtype="float32")
    with pytest.raises(ValueError, match="preprocess: 'images'"):
        Preprocess(8, 0.0, 1.0)(torch.zeros(2, 2, 3, 4, 5, dtype=torch.uint8))
    # these raised "only 0-dimensional arrays can be converted to Python scalars" and "'list'
    # object has no attribute 'ndim'", naming neither the module nor the argument
    with pytest.raises(TypeError, match="Preprocess: 'mean' must be .* got ndarray of shape"):
        Preprocess(8, np.ones((3, 1)), 1.0)
    with pytest.raises(TypeError, match="Preprocess: 'std' must be .* got 'wide'"):
        Preprocess(8, 0.0, "wide")
    with pytest.raises(TypeError, match="Preprocess: 'images' must be a torch tensor .* got str"):
        Preprocess(8, 0.0, 1.0)("cat.jpg")
    with pytest.raises(TypeError, match=r"a list of images must hold \(H, W, C\) .* got \[\]"):
        Preprocess(8, 0.0, 1.0)([])
    # taken at construction before: size 0 failed at the first call, True ran 1x1 images,
    # 16.0 raised "'float' object is not iterable"
    for size, err, msg in ((0, ValueError, "'size' must be positive"),
                           (True, TypeError, "'size' must be an int or an \\(height, width\\) pair"),
                           (16.0, TypeError, "'size' must be an int .* got 16.0"),
                           ((8, 0), ValueError, "'size' must be positive")):
        with pytest.raises(err, match=msg):
            Preprocess(size, 0.0, 1.0)
    assert Preprocess((8, 9), 0.0, 1.0).size == [8, 9]


def test_a_bad_crop_is_said_at_construction():
    # (1, 2, 3), a fractional box and a negative top were taken, and raised at the first call
    for crop, err, msg in (((1, 2, 3), TypeError, "Preprocess: 'crop' must be None or one"),
                           ((0.5, 0, 4, 4), ValueError, "Preprocess: 'crop' must be whole"),
                           ((-1, 0, 4, 4), ValueError, "top and left >= 0"),
                           ((0, 0, 0, 4), ValueError, "height and width > 0"),
                           ("center", TypeError, "'crop' must be None or one")):
        with pytest.raises(err, match=msg):
            Preprocess(8, 0.0, 1.0, crop=crop)
        module = Preprocess(8, 0.0, 1.0)
        with pytest.raises(err, match=msg):
            module.crop = crop
    assert Preprocess(8, 0.0, 1.0, crop=np.array([1, 2, 3, 4])).crop == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("where", ["meta", "fake"])
def test_an_empty_batch_raises_on_meta_and_fake_tensors_as_on_real_ones(where):
    """The op's fake gave an empty (0, C, H, W) output where the real call raises."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = Preprocess(16, 0.0, 1.0)
    with pytest.raises(ValueError, match="'images' is an empty batch"):
        module(torch.zeros(0, 20, 20, 3, dtype=torch.uint8))
    if where == "meta":
        images = torch.zeros(0, 20, 20, 3, dtype=torch.uint8, device="meta")
        with pytest.raises(ValueError, match="'images' is an empty batch"):
            module(images)
    else:
        with FakeTensorMode() as mode:
            images = mode.from_tensor(torch.zeros(0, 20, 20, 3, dtype=torch.uint8))
            with pytest.raises(ValueError, match="'images' is an empty batch"):
                module(images)


@pytest.mark.parametrize("where", ["meta", "fake"])
@pytest.mark.parametrize("shape,crop,msg", [
    ((2, 20, 30, 3), (0, 0, 100, 100), "lies outside its 20x30 image"),
    ((2, 20, 30, 3), (5, 25, 10, 10), "lies outside its 20x30 image"),
    ((2, 0, 30, 3), None, "image 0 is empty \\(0x30\\)"),
    ((2, 20, 0, 1), None, "image 0 is empty \\(20x0\\)")])
def test_a_bad_crop_or_an_empty_image_raises_on_meta_and_fake_tensors_as_on_real_ones(
        where, shape, crop, msg):
    """The op's fake returned a (2, 3, 8, 8) shape where the real call raises."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = Preprocess(8, 0.0, 1.0)
    if crop is not None:
        module.crop = crop  # (its check at set takes these boxes: their image is unknown there)
    real = torch.zeros(shape, dtype=torch.uint8)
    with pytest.raises(ValueError, match=msg):
        module(real)
    if where == "meta":
        with pytest.raises(ValueError, match=msg):
            module(real.to("meta"))
    else:
        with FakeTensorMode() as mode:
            images = mode.from_tensor(real)
            with pytest.raises(ValueError, match=msg):
                module(images)


def test_statistics_as_arrays_or_tensors_and_a_list_of_images_of_different_sizes():
    # kernelkit.preprocess takes numpy or tensor mean/std and a ragged list of images; the
    # module rejected all three
    imgs = _images(n=2)
    want = kernelkit.preprocess(imgs, size=8, mean=MEAN, std=STD)
    for mean, std in ((np.array(MEAN), np.array(STD)), (torch.tensor(MEAN), torch.tensor(STD))):
        torch.testing.assert_close(Preprocess(8, mean, std)(imgs), want, rtol=0, atol=0)
    module = Preprocess(8, MEAN, STD, channel_order="rgb2bgr")
    small = imgs[1, 3:, 5:]
    got = module([imgs[0], small])
    ref = kernelkit.preprocess([imgs[0], small], size=8, mean=MEAN, std=STD,
                               channel_order=[2, 1, 0])
    assert got.shape == (2, 3, 8, 8)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    torch.testing.assert_close(got[0], module(imgs)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_opcheck(dtype, layout):
    imgs = _images(dtype=dtype, h=13, w=19)
    module = Preprocess((7, 9), mean=MEAN, std=STD, crop=(1, 2, 10, 15), flip="vertical",
                        channel_order=[2, 0, 1], layout=layout,
                        stats_unit="unit" if dtype == torch.float32 else "input")
    if dtype == torch.float32:
        module.mean, module.std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    torch.library.opcheck(preprocess_op(), (imgs, *module.op_args(imgs)))


def test_torch_compile_fullgraph_matches_eager():
    """A model that starts from raw uint8 images compiles as one graph: the preprocess op, then
    torch's (here Inductor's) conv."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(Preprocess(12, mean=MEAN, std=STD),
                                torch.nn.Conv2d(3, 4, 3, padding=1)).eval()
    imgs = _images(h=20, w=24)
    with torch.no_grad():
        want = model(imgs)
        got = torch.compile(model, fullgraph=True)(imgs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_export_traces_the_op():
    model = Preprocess(8, mean=MEAN, std=STD)
    imgs = _images(h=10, w=12)
    ep = torch.export.export(model, (imgs,))
    assert "kernelkit.preprocess" in ep.graph_module.code
    torch.testing.assert_close(ep.module()(imgs), model(imgs), rtol=0, atol=0)


def test_arguments_set_after_construction_take_effect_as_given_to_it():
    # channel_order set later was ignored (the order derived at construction was read), and
    # size = 10 failed at the next call ("'int' object is not iterable")
    imgs = _images(n=2)
    kw = dict(mean=MEAN, std=STD)
    later = Preprocess(8, **kw)
    later(imgs)
    later.channel_order, later.size = "rgb2bgr", 10
    want = Preprocess(10, channel_order="rgb2bgr", **kw)(imgs)
    torch.testing.assert_close(later(imgs), want, rtol=0, atol=0)
    later.channel_order = [2, 0, 1]
    torch.testing.assert_close(later(imgs), Preprocess(10, channel_order=[2, 0, 1], **kw)(imgs),
                               rtol=0, atol=0)
    for bad in ("bgr", 5, [0, "x", 2]):  # (5 was stored, then "'int' object is not iterable")
        with pytest.raises(ValueError, match="'channel_order' must be None"):
            later.channel_order = bad
    assert later.channel_order == [2, 0, 1]
    torch.testing.assert_close(later(imgs), Preprocess(10, channel_order=[2, 0, 1], **kw)(imgs),
                               rtol=0, atol=0)
    with pytest.raises(ValueError, match="'size'"):
        later.size = 0
    with pytest.raises(ValueError, match="'flip' must be None"):
        later.flip = "sideways"
