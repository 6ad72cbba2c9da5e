"""kernelkit.nn.Preprocess and kernelkit.preprocess under torch's own tools: TorchScript, torch.fx
symbolic traces, meta tensors, FakeTensorMode, vmap and dispatch modes. Each gives what eager
gives (or, without data, its shape and its errors). Before, Preprocess raised under
torch.jit.script (a recursive forward), fx (control flow on a Proxy), meta tensors ("Cannot copy
out of meta tensor") and FakeTensorMode (TypeError: got FakeTensor), as did kernelkit.preprocess."""

from __future__ import annotations

import io

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.func import vmap
from torch.utils.flop_counter import FlopCounterMode

import kernelkit
from kernelkit.nn import Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KW = dict(size=(9, 13), mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4), crop=(1, 2, 15, 20),
          flip="horizontal", channel_order="rgb2bgr", out_dtype="bfloat16", layout="NHWC")
MODULE_KW = {**KW, "out_dtype": torch.bfloat16}


def _images(n=2, h=23, w=31, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), generator=g, dtype=torch.uint8)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        Preprocess((10, 12), mean=MEAN, std=STD, stats_unit="unit", flip="vertical",
                   channel_order="bgr2rgb", antialias=False),
        torch.nn.Conv2d(3, 4, 3, padding=1)).eval()


def test_torch_jit_script_runs_the_registered_op_and_saves():
    model, imgs = _model(), _images()
    scripted = torch.jit.script(model)
    assert "kernelkit.preprocess" in getattr(scripted, "0").code
    with torch.no_grad():
        torch.testing.assert_close(scripted(imgs), model(imgs), rtol=0, atol=0)
        torch.testing.assert_close(getattr(scripted, "0")(imgs[0]), model[0](imgs[0]), rtol=0,
                                   atol=0)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        torch.testing.assert_close(torch.jit.load(buf)(imgs), model(imgs), rtol=0, atol=0)


@pytest.mark.parametrize("root", ["model", "module"])
def test_fx_symbolic_trace_records_one_preprocess_node(root):
    model, imgs = _model(), _images()
    traced = torch.fx.symbolic_trace(model if root == "model" else model[0])
    calls = [n for n in traced.graph.nodes if n.op == "call_function"]
    assert [n.target.__name__ for n in calls] == ["_preprocess_batch"]
    want = model(imgs) if root == "model" else model[0](imgs)
    torch.testing.assert_close(traced(imgs), want, rtol=0, atol=0)
    if root == "module":  # the leaf reads the rank at run time
        torch.testing.assert_close(traced(imgs[1]), want[1], rtol=0, atol=0)


def test_meta_and_fake_images_give_the_shape_and_dtype():
    module, imgs = Preprocess(**MODULE_KW), _images()
    want = kernelkit.preprocess(imgs, **KW)
    assert want.shape == (2, 9, 13, 3) and want.dtype == torch.bfloat16
    for got in (module(imgs.to("meta")), kernelkit.preprocess(imgs.to("meta"), **KW)):
        assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(imgs)
        for got in (module(fake), kernelkit.preprocess(fake, **KW)):
            assert got.shape == want.shape and got.dtype == want.dtype
    assert module(imgs[0].to("meta")).shape == want.shape[1:]


@pytest.mark.parametrize("bad", [dict(layout="NCWH"), dict(interpolation="area"), dict(size=0),
                                 dict(std=0.0), dict(mean=(1.0, 2.0)), dict(flip="sideways"),
                                 dict(out_dtype="int8")],
                         ids=lambda d: next(iter(d)))
def test_meta_images_raise_what_real_ones_raise(bad):
    imgs, kw = _images(), {**KW, **bad}
    with pytest.raises((TypeError, ValueError)) as real:
        kernelkit.preprocess(imgs, **kw)
    with pytest.raises(real.type) as meta:
        kernelkit.preprocess(imgs.to("meta"), **kw)
    assert str(meta.value) == str(real.value)


@pytest.mark.parametrize("images", [torch.zeros(5, 7, 3, dtype=torch.uint8),
                                    torch.zeros(1, 5, 7, 2, dtype=torch.uint8),
                                    torch.zeros(1, 5, 7, 3, dtype=torch.float64)],
                         ids=["unbatched", "two_channels", "float64"])
def test_meta_images_of_the_wrong_kind_name_the_argument(images):
    with pytest.raises((TypeError, ValueError), match="preprocess: .*images"):
        kernelkit.preprocess(images.to("meta"), **KW)


@pytest.mark.parametrize("bad", [dict(rotate=15.0), dict(crop=[(0, 0, 5, 5), (1, 1, 5, 5)]),
                                 dict(flip=["horizontal", None])], ids=lambda d: next(iter(d)))
def test_per_image_geometry_without_plain_tensors_says_so(bad):
    kernelkit.preprocess(_images(), **{**KW, **bad})  # plain tensors: fine
    with pytest.raises(TypeError, match=f"preprocess: .*'{next(iter(bad))}'.*plain tensors"):
        kernelkit.preprocess(_images().to("meta"), **{**KW, **bad})


def test_vmap_matches_a_loop():
    module = Preprocess(**MODULE_KW)
    stacks = torch.stack([_images(seed=1), _images(seed=2)])
    want = torch.stack([module(x) for x in stacks])
    torch.testing.assert_close(vmap(module)(stacks), want, rtol=0, atol=0)
    got = vmap(lambda x: kernelkit.preprocess(x, **KW))(stacks)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_dispatch_mode_sees_the_op_and_the_result_is_eagers():
    module, imgs = Preprocess(**MODULE_KW), _images()
    want = module(imgs)
    with FlopCounterMode(display=False):
        torch.testing.assert_close(module(imgs), want, rtol=0, atol=0)
        torch.testing.assert_close(kernelkit.preprocess(imgs, **KW), want, rtol=0, atol=0)
