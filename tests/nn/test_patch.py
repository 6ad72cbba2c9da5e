"""kernelkit.nn.patch / unpatch keep what torch users rely on: the same Parameters, hooks, mode,
device, dtype and state_dict keys; the model itself patched; a report of what was swapped and
left; unpatch back to plain torch. Each test names the problem of issue 11 it covers."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from models import SmallResNet, mlp
from torch import nn

import kernelkit
import kernelkit.nn as knn

BACKENDS = ["torch", "numba"]


def test_import_kernelkit_nn_names():
    # issue 11: `import kernelkit.nn` / `from kernelkit.nn import patch` (in a fresh process)
    code = ("import kernelkit.nn; from kernelkit.nn import patch, unpatch, Linear, Conv2d, "
            "PatchReport; import kernelkit; assert kernelkit.nn.patch is patch")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_keeps_spectral_norm_forward_pre_hook(backend):
    # issue 11: patch() dropped forward hooks on Linear (spectral_norm output off by up to 2.87)
    torch.manual_seed(0)
    model = nn.Sequential(nn.utils.spectral_norm(nn.Linear(16, 8)), nn.ReLU(),
                          nn.utils.spectral_norm(nn.Linear(8, 4))).double().eval()
    x = torch.randn(5, 16, dtype=torch.float64)
    with torch.no_grad():
        want = model(x)
    knn.patch(model)
    assert isinstance(model[0], knn.Linear) and model[0]._forward_pre_hooks
    with torch.no_grad(), kernelkit.use(backend=backend):
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


class _Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_patched_layer_reads_parametrized_normed_and_reassigned_weights(kind, backend):
    # the layer reads its weight and bias from its parameter dict (nn.Module.__getattr__ costs
    # 0.5 us a read); a parametrization, weight_norm's hook and a weight or bias assigned after
    # the first call must still be what the layer computes with
    torch.manual_seed(0)
    make = ((lambda: nn.Linear(6, 6)) if kind == "linear"
            else (lambda: nn.Conv2d(6, 6, 1)))
    x = torch.randn(3, 6, dtype=torch.float64) if kind == "linear" \
        else torch.randn(2, 6, 5, 5, dtype=torch.float64)
    plain = [make().double() for _ in range(3)]
    plain[1] = torch.nn.utils.weight_norm(plain[1])
    with torch.no_grad():
        wants = [m(x) for m in plain]
    patched = [knn.patch(m).model for m in plain]  # (a weight-normed layer does not deepcopy)
    assert all(isinstance(m, (knn.Linear, knn.Conv2d)) for m in patched)
    # patch leaves a parametrized torch layer alone (its class is a subclass); a kernelkit layer
    # parametrized after patching keeps kernelkit's forward
    parametrize = torch.nn.utils.parametrize.register_parametrization
    parametrize(plain[0], "weight", _Symmetric())
    parametrize(patched[0], "weight", _Symmetric())
    assert isinstance(patched[0], (knn.Linear, knn.Conv2d))
    with torch.no_grad():
        wants[0] = plain[0](x)
    with torch.no_grad(), kernelkit.use(backend=backend):
        for want, got in zip(wants, patched, strict=True):
            torch.testing.assert_close(got(x), want, rtol=1e-10, atol=1e-10)
        layer = patched[2]
        layer(x)  # the route is memoised; the parameters are read per call
        layer.weight = nn.Parameter(torch.randn_like(layer.weight))
        layer.bias = None
        want = (torch.nn.functional.linear(x, layer.weight) if kind == "linear"
                else torch.nn.functional.conv2d(x, layer.weight))
        torch.testing.assert_close(layer(x), want, rtol=1e-10, atol=1e-10)


def test_patch_keeps_forward_and_backward_hooks_and_their_handles():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3))
    seen = []
    fwd = model[0].register_forward_hook(lambda m, i, o: seen.append("fwd"))
    model[0].register_full_backward_hook(lambda m, gi, go: seen.append("bwd"))
    knn.patch(model)
    assert isinstance(model[0], knn.Linear)
    model(torch.randn(2, 6, requires_grad=True)).sum().backward()
    assert seen == ["fwd", "bwd"]
    fwd.remove()  # the handle still refers to the layer's own hook dict
    model(torch.randn(2, 6))
    assert seen == ["fwd", "bwd"]


def test_patch_keeps_eval_mode():
    # issue 11: patch() turned eval-mode Linear layers back to training=True
    model = SmallResNet().eval()
    knn.patch(model)
    assert not any(m.training for m in model.modules())
    model.train()
    knn.patch(model)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("make", [lambda: nn.Linear(5, 3), lambda: nn.Conv2d(2, 4, 3)],
                         ids=["linear", "conv2d"])
def test_patch_a_model_that_is_a_layer(make):
    # issue 11: patch() did nothing when the model itself is an nn.Linear
    torch.manual_seed(0)
    layer = make()
    params = list(layer.parameters())
    report = knn.patch(layer)
    assert report.model is layer and isinstance(layer, (knn.Linear, knn.Conv2d))
    assert report.swapped[0][0] == ""  # the model itself
    assert all(p is q for p, q in zip(layer.parameters(), params))


def test_patch_keeps_parameters_optimizer_state_dict_dtype_device():
    torch.manual_seed(0)
    model = SmallResNet().double()
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before patching
    ids = [id(p) for p in model.parameters()]
    report = knn.patch(model)
    assert len(report.swapped) == 7  # stem, 4 block convs, 1 downsample conv, head
    assert [id(p) for p in model.parameters()] == ids
    assert list(model.state_dict()) == keys
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in model.parameters())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for m in (model, ref):
        o = torch.optim.SGD(m.parameters(), lr=0.1) if m is ref else opt
        o.zero_grad()
        m(x).square().sum().backward()
        o.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-9)
    ref.load_state_dict(model.state_dict())  # the same keys load both ways


def test_patch_report_names_what_was_left_and_why():
    # issue 11: no report of what was swapped; padding_mode='reflect' left to torch, said so
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                          nn.Conv2d(4, 4, 3), nn.ConvTranspose2d(4, 2, 2), nn.Flatten(),
                          nn.LazyLinear(3))
    report = knn.patch(model)
    assert [name for name, _ in report.swapped] == ["1"]
    left = {name: why for name, _, why in report.left}
    assert "padding_mode='reflect'" in left["0"]
    assert "ConvTranspose2d" in left["2"]
    assert "LazyLinear" in left["4"]
    assert type(model[0]) is nn.Conv2d
    text = str(report)
    assert "swapped 1 layer(s), left 3" in text and "reflect" in text


def test_unpatch_restores_plain_torch_layers():
    # issue 11: there was no unpatch
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    x = torch.randn(2, 3, 6, 6)
    want = model(x)
    knn.patch(model)
    report = knn.unpatch(model)
    assert [type(m) for m in model] == [nn.Conv2d, nn.Flatten, nn.Linear]
    assert len(report.swapped) == 2 and not report.left
    assert not hasattr(model[0], "activation") and "_kk_routes" not in model[0].__dict__
    torch.testing.assert_close(model(x), want)
    fused = knn.Linear(3, 3, activation="relu")
    assert "fused activation='relu'" in knn.unpatch(fused).left[0][2]
    # a layer parametrized after patching was skipped without a word in the report
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    knn.patch(model)
    nn.utils.parametrizations.weight_norm(model[0])
    report = knn.unpatch(model)
    assert [r[0] for r in report.left] == ["0"] and "parametrized after patching" in \
        report.left[0][2]
    assert type(model[1]) is nn.Linear


@pytest.mark.parametrize("backend", BACKENDS)
def test_patched_conv2d_accepts_unbatched_input(backend):
    # issue 11: the patched Conv2d rejected the unbatched (C, H, W) input torch accepts
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1)).double()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    want = conv(x)
    knn.patch(conv)
    assert isinstance(conv[0], knn.Conv2d)
    with kernelkit.use(backend=backend):
        got = conv(x)
        got_grad = conv(x.requires_grad_())
    assert got.shape == (5, 7, 6) == got_grad.shape
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_grad, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("case", [
    dict(c=4, k=6, r=3, groups=2, bias=False, padding=1),
    dict(c=4, k=4, r=3, groups=4, bias=True, padding="same"),  # depthwise
    dict(c=3, k=5, r=2, groups=1, bias=True, padding="same", channels_last=True),
    dict(c=3, k=4, r=3, groups=1, bias=False, padding=0, stride=2, channels_last=True),
])
def test_patched_conv2d_matches_torch_float64(backend, grad, case):
    """groups, bias=False, 'same' with an even kernel, stride, channels_last: as nn.Conv2d, against
    torch's float64 result, output memory format included, and the gradients too."""
    case = dict(case)
    cl = case.pop("channels_last", False)
    c, k, r = case.pop("c"), case.pop("k"), case.pop("r")
    torch.manual_seed(0)
    ref = nn.Conv2d(c, k, r, **case).double()
    layer = nn.Sequential(copy.deepcopy(ref))
    knn.patch(layer)
    assert isinstance(layer[0], knn.Conv2d)
    x = torch.randn(2, c, 7, 8, dtype=torch.float64)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    xr, xk = x.clone().requires_grad_(grad), x.clone().requires_grad_(grad)
    with kernelkit.use(backend=backend), torch.set_grad_enabled(grad):
        got = layer(xk)
    want = ref(xr)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert got.is_contiguous(memory_format=torch.channels_last) == \
        want.is_contiguous(memory_format=torch.channels_last)
    if grad:
        g = torch.randn_like(want)
        with kernelkit.use(backend=backend):
            got.backward(g)
        want.backward(g)
        torch.testing.assert_close(xk.grad, xr.grad, rtol=1e-10, atol=1e-10)
        for p, q in zip(layer.parameters(), ref.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(16,), (3, 16), (2, 5, 16)])
def test_patched_linear_matches_torch_float64_any_batch_dims(backend, shape):
    torch.manual_seed(0)
    model = mlp().double()
    ref = copy.deepcopy(model)
    knn.patch(model)
    assert isinstance(model[0], knn.Linear)
    x = torch.randn(*shape, dtype=torch.float64)
    with kernelkit.use(backend=backend):
        got = model(x)
        got.sum().backward()
    want = ref(x)
    want.sum().backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("features", [(0, 3), (4, 0), (0, 0)], ids=str)
def test_patched_linear_with_no_input_or_output_features_matches_torch(backend, grad, features):
    # a patched nn.Linear(0, 3) raised "cannot reshape tensor of 0 elements into shape [-1, 0]"
    # (as did the op's backward for nn.Linear(4, 0)); torch gives the bias
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="zero-element"):  # (torch's own, on the init)
        model = nn.Linear(*features).double()
    nn.init.normal_(model.bias)
    ref = copy.deepcopy(model)
    knn.patch(model)
    x = torch.randn(2, 5, features[0], dtype=torch.float64, requires_grad=grad)
    xr = x.detach().clone().requires_grad_(grad)
    with kernelkit.use(backend=backend), torch.set_grad_enabled(grad):
        got, want = model(x), ref(xr)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        if grad:
            got.sum().backward()
            want.sum().backward()
            torch.testing.assert_close(x.grad, xr.grad)
            torch.testing.assert_close(model.bias.grad, ref.bias.grad)
    with torch.no_grad():  # the registered op too (what torch.compile and export trace)
        torch.testing.assert_close(torch.ops.kernelkit.linear(x, model.weight, model.bias, None,
                                                              False), want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_weight_swapped_for_another_size_gives_its_output_size(backend):
    # growing a head after its first call: the route reshaped to the old out_features
    # ("shape '[2, 3, 5]' is invalid for input of size 54") for 3-D inputs
    torch.manual_seed(0)
    head = nn.Linear(8, 5)
    knn.patch(head)
    x = torch.randn(2, 3, 8)
    with kernelkit.use(backend=backend):
        head(x)
        head.weight = nn.Parameter(torch.randn(9, 8))
        head.bias = nn.Parameter(torch.randn(9))
        for grad in (False, True):
            with torch.set_grad_enabled(grad):
                torch.testing.assert_close(head(x), nn.functional.linear(x, head.weight,
                                                                         head.bias))


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_optimizer_step_between_two_backwards_works_as_in_torch(backend):
    # the kernel route saved the weight although the input needs no gradient, so the second
    # backward raised "modified by an inplace operation" where torch's layer works
    grads = []
    for patched in (False, True):
        torch.manual_seed(0)
        layer = nn.Linear(8, 5)
        if patched:
            knn.patch(layer)
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        x = torch.randn(4, 8)
        with kernelkit.use(backend=backend):
            y = layer(x)
        y.pow(2).mean().backward(retain_graph=True)
        opt.step()
        opt.zero_grad()
        y.abs().mean().backward()
        grads.append((layer.weight.grad.clone(), layer.bias.grad.clone()))
    for g, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(g, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_conv_bias_stepped_between_two_backwards_works_as_in_torch(backend):
    # bias-only fine-tuning: the conv's kernel route saved its bias for the backward (torch's
    # does not), so the second backward raised "modified by an inplace operation"
    grads = []
    for patched in (False, True):
        torch.manual_seed(0)
        conv = nn.Conv2d(2, 3, 3)
        conv.weight.requires_grad_(False)
        if patched:
            knn.patch(conv)
        opt = torch.optim.SGD([conv.bias], lr=0.1)
        x = torch.randn(1, 2, 5, 5)
        with kernelkit.use(backend=backend):
            y = conv(x)
        y.pow(2).sum().backward(retain_graph=True)
        opt.step()
        y.mean().backward()
        grads.append(conv.bias.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_patched_layers_raise_torchs_errors_for_bad_input():
    layer, conv = knn.Linear(4, 2), knn.Conv2d(3, 2, 3)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        layer(torch.randn(3, 5))
    with pytest.raises(RuntimeError, match="expected input"):
        conv(torch.randn(1, 4, 8, 8))
    # an input smaller than the kernel raised kernelkit's ValueError, not torch's RuntimeError
    for backend in BACKENDS:
        with kernelkit.use(backend=backend), \
                pytest.raises(RuntimeError, match="Kernel size can't be greater"):
            knn.Conv2d(3, 8, 5)(torch.randn(1, 3, 3, 3))
    with pytest.raises(ValueError, match="Conv2d: 'padding_mode' must be 'zeros'"):
        knn.Conv2d(3, 2, 3, padding_mode="reflect")


def test_patched_model_pickles_and_deepcopies_after_running():
    torch.manual_seed(0)
    model = SmallResNet()
    knn.patch(model)
    x = torch.randn(2, 3, 8, 8)
    with kernelkit.use(backend="numba"):
        want = model(x)  # routes (closures over bound kernels) exist now
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        twin = copy.deepcopy(model)
        for m in (loaded, twin):
            assert isinstance(m.stem, knn.Conv2d) and "_kk_routes" not in m.stem.__dict__
            torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_parametrization_added_after_patching_runs_once_a_call(backend):
    """Making a route for a new input shape read `m.weight` again (two more runs on a Linear, one
    on a Conv2d): a spectral norm then did extra power iterations, and its layer drifted from
    torch's (0.43 apart after two SGD steps with sequences of varying length)."""
    lin = nn.Linear(6, 4)
    knn.patch(lin)
    torch.nn.utils.parametrizations.spectral_norm(lin)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    knn.patch(conv)
    torch.nn.utils.parametrizations.spectral_norm(conv)
    runs = []
    for layer in (lin, conv):
        layer.parametrizations.weight[0].register_forward_hook(lambda *_: runs.append(1))
    with kernelkit.use(backend=backend):
        for t in range(1, 6):  # a new shape each call: a new route each call
            lin(torch.randn(2, t, 6))
            conv(torch.randn(1, 3, 4 + t, 5))
    assert len(runs) == 10


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_geometry_or_activation_set_after_a_call_is_used(backend):
    """A Numba route kept the stride, padding and dilation (and a Linear its activation) of the
    call that made it: a backbone "dilated" after a first forward kept its old output size."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    lin = nn.Linear(5, 3)
    ref_conv, ref_lin = copy.deepcopy(conv), copy.deepcopy(lin)
    knn.patch(conv)
    knn.patch(lin)
    x, v = torch.randn(2, 3, 9, 9), torch.randn(4, 5)
    with kernelkit.use(backend=backend):
        conv(x)
        lin(v)
        for m in (conv, ref_conv):
            m.stride, m.padding, m.dilation = (2, 2), (2, 2), (2, 2)
        lin.activation = "relu"
        torch.testing.assert_close(conv(x), ref_conv(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(lin(v), torch.relu(ref_lin(v)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_weight_of_another_shape_or_layout_set_after_a_call_is_used_as_torch_would(backend):
    """A route's plan was bound for the weight of its first call: a Linear's weight of other input
    features, or a conv's of other channels, failed an assert in the Numba launcher (under
    ``python -O``: an out-of-bounds read, NaN or 1e35 returned), and a conv weight made
    channels_last kept the first call's NCHW output."""
    lin, conv = nn.Linear(32, 32), nn.Conv2d(8, 16, 3, padding=1, bias=False)
    knn.patch(lin)
    knn.patch(conv)
    x, v = torch.randn(2, 8, 12, 12), torch.randn(4, 32)
    with kernelkit.use(backend=backend), torch.no_grad():
        lin(v)
        conv(x)
        routes = dict(conv.__dict__.get("_kk_routes", {}))
        conv(x)  # the same weight: the same route (a conv without a bias kept none)
        assert conv.__dict__.get("_kk_routes", {}) == routes
        lin.weight = nn.Parameter(torch.randn(32, 16))
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            lin(v)
        conv.weight.data = torch.randn(16, 4, 3, 3)
        with pytest.raises(RuntimeError, match="channels"):
            conv(x)
        for weight in (torch.randn(24, 32), torch.randn(32, 24).t()):  # other rows, strides
            lin.weight.data = weight
            lin.bias.data = torch.randn(weight.shape[0])
            for _ in range(2):  # torch's op, then a route made for this weight
                torch.testing.assert_close(lin(v), F.linear(v, weight, lin.bias), rtol=1e-4,
                                           atol=1e-4)
        conv.weight.data = torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last)
        for _ in range(2):
            y = conv(x)
            want = F.conv2d(x, conv.weight, conv.bias, padding=1)
            torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
            assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()


def test_a_lazy_layer_not_yet_called_is_left_with_why():
    """Its reason read "a subclass of _LazyConvXdMixin (LazyConv2d) may change forward"."""
    model = nn.Sequential(nn.LazyLinear(4), nn.LazyConv2d(3, 3))
    report = knn.patch(model)
    assert len(report.left) == 2
    assert all("not initialised yet" in why for _, _, why in report.left), report.left


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("channels", [(3, 0), (0, 4)], ids=["no_out", "no_in"])
def test_a_conv_without_channels_is_left_to_torch(channels, backend):
    # patched, Conv2d(3, 0) returned an empty result where torch raises, and Conv2d(0, 4) a
    # (1, 4, 3, 3) of act(bias) where torch returns (1, 0, 3, 3)
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="zero-element"):
        conv = nn.Conv2d(*channels, 3)
    model = nn.Sequential(copy.deepcopy(conv))
    report = knn.patch(model)
    assert type(model[0]) is nn.Conv2d and not report.swapped
    why = {name: why for name, _, why in report.left}["0"]
    assert ("no output channels" if channels[1] == 0 else "no input channels") in why
    x = torch.randn(1, channels[0], 5, 5)
    with kernelkit.use(backend=backend):
        if channels[1] == 0:
            with pytest.raises(RuntimeError, match="expected weight to be at least 1"):
                model(x)
        else:
            assert model(x).shape == conv(x).shape == (1, 0, 3, 3)


@pytest.mark.parametrize("mode", ["reflect", "circular", "replicate"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_padding_mode_set_after_patching_is_torchs(backend, mode):
    """`patch` leaves a reflect-padded conv to torch, but a pass that sets `padding_mode` over a
    model's convs after patching (or between calls) reached kernelkit's kernels, which pad with
    zeros: the output was a zero-padded conv's, silently (0.84 off torch's). Eager, autocast
    (the registered op's route) and a traced call all take torch's op for such a layer."""
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 4, 3, padding=1)
    conv = copy.deepcopy(ref)
    knn.patch(conv)
    x = torch.randn(2, 4, 7, 6)
    with kernelkit.use(backend=backend):
        conv(x)  # (a route made under zero padding first)
        for m in (ref, conv):
            m.padding_mode = mode
        torch.testing.assert_close(conv(x), ref(x), rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", torch.bfloat16):
            torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
        traced = torch.jit.trace(conv, x, check_trace=False)
        torch.testing.assert_close(traced(x), ref(x), rtol=1e-4, atol=1e-4)


def test_a_compiled_patched_layer_deepcopies_and_pickles_as_torchs():
    """`layer.compile()` binds `_compiled_call_impl` to the layer; torch's state for pickle and
    deepcopy leaves it out, the patched layers' kept it: a deepcopy (an EMA twin) ran the
    original's forward, and torch.save raised PicklingError."""
    torch.manual_seed(0)
    for layer in (nn.Linear(4, 4), nn.Conv2d(2, 3, 3)):
        knn.patch(layer)
        layer.compile()  # (lazy: nothing is compiled until a call)
        twin = copy.deepcopy(layer)
        assert "_compiled_call_impl" not in twin.__dict__
        with torch.no_grad():
            twin.weight.zero_()
            twin.bias.zero_()
        x = torch.randn(2, 4) if isinstance(layer, nn.Linear) else torch.randn(1, 2, 5, 5)
        assert twin(x).abs().max().item() == 0
        buf = io.BytesIO()
        torch.save(layer, buf)
        buf.seek(0)
        assert isinstance(torch.load(buf, weights_only=False), type(layer))


def test_patched_layers_take_their_input_by_torchs_keyword():
    """torch's layers name forward's argument `input`; the patched ones named it `x`, and
    `self.fc(input=h)` raised TypeError."""
    torch.manual_seed(0)
    for ref, x in ((nn.Linear(4, 3), torch.randn(2, 4)),
                   (nn.Conv2d(2, 3, 3), torch.randn(1, 2, 5, 5))):
        layer = copy.deepcopy(ref)
        knn.patch(layer)
        torch.testing.assert_close(layer(input=x), ref(input=x))


@pytest.mark.parametrize("own", ["attribute", "module"])
def test_a_layer_with_an_activation_of_its_own_is_left_with_why(own):
    """kernelkit's layers keep their fused activation in `activation`; patching set it to None
    over a layer's own attribute (a child module so named left the state_dict) and unpatch
    deleted it."""
    layer = nn.Linear(4, 4)
    layer.activation = "tanh" if own == "attribute" else nn.PReLU()
    keys = set(layer.state_dict())
    report = knn.patch(layer)
    assert type(layer) is nn.Linear and not report.swapped
    assert "attribute 'activation' of its own" in report.left[0][2]
    assert set(layer.state_dict()) == keys
    assert layer.activation == "tanh" if own == "attribute" else isinstance(layer.activation,
                                                                          nn.PReLU)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fused_activations_layer_stepped_between_two_backwards_works_as_torchs_chain(
        backend, activation):
    """With a fused activation the kernel route saved input, weight and bias to recompute the
    pre-activation in the backward, whatever the gradients read: an optimizer step between two
    backwards (a Linear whose input needs no gradient; a conv's bias-only fine-tuning) raised
    "modified by an inplace operation" where torch's layer and activation work."""
    act = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu,
           "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}[activation]
    grads = []
    for patched in (False, True):
        torch.manual_seed(0)
        lin, conv = nn.Linear(8, 5), nn.Conv2d(2, 3, 3)
        conv.weight.requires_grad_(False)
        if patched:
            lin, conv = (knn.Linear(8, 5, activation=activation),
                         knn.Conv2d(2, 3, 3, activation=activation))
            torch.manual_seed(0)
            lin.load_state_dict(nn.Linear(8, 5).state_dict())
            conv.load_state_dict(nn.Conv2d(2, 3, 3).state_dict())
            conv.weight.requires_grad_(False)
        opt = torch.optim.SGD([*lin.parameters(), conv.bias], lr=0.1)
        x, v = torch.randn(4, 8), torch.randn(1, 2, 5, 5)
        with kernelkit.use(backend=backend):
            y, z = lin(x), conv(v)
            if not patched:
                y, z = act(y), act(z)
        (y.pow(2).mean() + z.pow(2).sum()).backward(retain_graph=True)
        opt.step()
        opt.zero_grad()
        (y.abs().mean() + z.mean()).backward()
        grads.append((lin.weight.grad, lin.bias.grad, conv.bias.grad))
    for g, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_inplace_activation_after_a_channels_last_conv_trains_as_torchs(backend):
    """A channels_last conv's result was the permuted view of the kernel's NHWC output, made
    inside the eager autograd Function: `nn.ReLU(inplace=True)` after a patched conv (a common
    CNN block) raised "a view ... created inside a custom Function" at backward."""
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True),
                        nn.Conv2d(8, 4, 3)).to(memory_format=torch.channels_last)
    pat = copy.deepcopy(ref)
    knn.patch(pat)
    x = torch.randn(2, 3, 9, 9).contiguous(memory_format=torch.channels_last)
    with kernelkit.use(backend=backend):
        pat(x).square().sum().backward()
    ref(x).square().sum().backward()
    for p, q in zip(pat.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_a_kernel_conv_layers_training_step_runs_the_forward_plan_its_route_bound(activation):
    """The eager Function ran the pre-activation plan for an unfused conv (a second plan, chosen
    under the knobs of the first training call) instead of the forward its route had bound (the
    kernel that won the layer); a review found it. One plan is prepared, for the route."""
    from kernelkit.ops import conv2d as conv_ops

    conv = knn.Conv2d(3, 4, 3, padding=1, activation=activation)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    prepared = []
    real = conv_ops.prepare_forward
    try:
        conv_ops.prepare_forward = lambda *a, **k: prepared.append(1) or real(*a, **k)
        with kernelkit.use(backend="numba"):
            for _ in range(2):
                conv(x).sum().backward()
    finally:
        conv_ops.prepare_forward = real
    assert len(prepared) == 1
