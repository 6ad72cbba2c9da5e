"""kernelkit inside torch: the custom op, autograd through it, torch.compile, nn.Linear, patch()."""

from __future__ import annotations

import copy

import pytest
import torch

import kernelkit
from kernelkit.kernels import ACTIVATIONS
from kernelkit.ops.torch_ops import matmul_op


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_autograd_matches_torch(backend, activation):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    with kernelkit.use(backend=backend):
        (kernelkit.matmul(a, b, bias=bias, activation=activation) * w).sum().backward()
    got = [x.grad.clone() for x in (a, b, bias)]
    for x in (a, b, bias):
        x.grad = None
    z = a @ b + bias
    ref = {None: lambda t: t, "relu": torch.relu, "gelu": torch.nn.functional.gelu,
           "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
           "silu": torch.nn.functional.silu}[activation](z)
    (ref * w).sum().backward()
    for gx, x in zip(got, (a, b, bias)):
        torch.testing.assert_close(gx, x.grad, rtol=1e-9, atol=1e-9)


def test_gradcheck():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: matmul_op()(a, b, c, "silu", False),
                                    (a, b, bias))


def test_opcheck():
    a, b, bias = torch.randn(3, 4, 5), torch.randn(5, 6), torch.randn(6)
    torch.library.opcheck(matmul_op(), (a, b, bias, "relu", False))


def test_linear_and_patch_match_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    x = torch.randn(4, 10, 16)
    ref = model(x)
    plain = copy.deepcopy(model)
    kernelkit.nn.patch(model)
    assert isinstance(model[0], kernelkit.nn.Linear) and isinstance(model[2], kernelkit.nn.Linear)
    torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)
    fused = kernelkit.nn.Linear(16, 32, activation="gelu")
    with torch.no_grad():
        fused.weight.copy_(model[0].weight)
        fused.bias.copy_(model[0].bias)
    torch.testing.assert_close(fused(x), torch.nn.functional.gelu(model[0](x)), rtol=1e-5, atol=1e-5)
    model(x).sum().backward()
    plain(x).sum().backward()
    for got, want in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Linear: 'activation'"):
        kernelkit.nn.Linear(2, 2, activation="tanh")


def test_torch_compile_graph_has_the_custom_op():
    op = matmul_op()
    f = lambda a, b: op(a, b, None, "relu", False) * 2
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(a, b), torch.relu(a @ b) * 2, rtol=1e-5, atol=1e-5)
    layer = kernelkit.nn.Linear(16, 4, activation="silu")
    with torch.no_grad():
        ref = torch.nn.functional.silu(torch.nn.functional.linear(a, layer.weight, layer.bias))
        got = torch.compile(layer, backend="eager", fullgraph=True)(a)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_conv2d_module_and_patch_match_torch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 3, stride=2, padding="valid", bias=False),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 7 * 7, 5))
    x = torch.randn(2, 3, 16, 16)
    ref = model(x)
    plain = copy.deepcopy(model)
    kernelkit.nn.patch(model)
    assert isinstance(model[0], kernelkit.nn.Conv2d) and isinstance(model[4], kernelkit.nn.Linear)
    torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)
    model(x).sum().backward()
    plain(x).sum().backward()
    for got, want in zip(model.parameters(), plain.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)
    fused = kernelkit.nn.Conv2d(3, 8, 3, padding="same", activation="relu")
    with torch.no_grad():
        fused.weight.copy_(model[0].weight)
        fused.bias.copy_(model[0].bias)
        torch.testing.assert_close(fused(x), torch.relu(model[0](x)), rtol=1e-4, atol=1e-4)
        xcl = x.contiguous(memory_format=torch.channels_last)
        assert fused(xcl).is_contiguous(memory_format=torch.channels_last)
        compiled = torch.compile(fused, backend="eager", fullgraph=True)
        torch.testing.assert_close(compiled(x), fused(x))
