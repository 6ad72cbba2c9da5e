"""kernelkit's ops on torch tensors under torch.func transforms and forward-mode AD: torch's
result, tangents included (the ops compute with torch's own ops there). With the Numba kernels
forced, before: vmap raised RuntimeError (a query of the memory format, or a data pointer of a
batched tensor), grad raised RuntimeError (the autograd Function has no setup_context), and
forward-mode AD returned the kernel's result without its tangent."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import grad, jvp, vmap

import kernelkit

TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(autouse=True)
def _numba():
    with kernelkit.use(backend="numba"):
        yield


def _t(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MATMUL = (lambda a, b, bias: kernelkit.matmul(a, b, bias=bias, activation="gelu"),
          lambda a, b, bias: F.gelu(a @ b + bias))
CONV = (lambda x, w, b: kernelkit.conv2d(x, w, b, stride=(1, 2), padding="valid",
                                         activation="relu"),
        lambda x, w, b: F.relu(F.conv2d(x, w, b, stride=(1, 2))))


def _args(op):
    if op is MATMUL:
        return _t(4, 6, seed=1), _t(6, 3, seed=2), _t(3, seed=3)
    return _t(2, 3, 7, 8, seed=1), _t(4, 3, 3, 2, seed=2), _t(4, seed=3)


@pytest.mark.parametrize("op", [MATMUL, CONV], ids=["matmul", "conv2d"])
def test_vmap_and_grad_of_an_op_give_torchs(op):
    ours, theirs = op
    args = _args(op)
    ours(*args)  # a Numba plan memoised for these sizes first
    xs = torch.stack([args[0], -args[0], 0.5 * args[0]])
    torch.testing.assert_close(vmap(ours, in_dims=(0, None, None))(xs, *args[1:]),
                               vmap(theirs, in_dims=(0, None, None))(xs, *args[1:]), **TOL)
    for i in range(3):  # the gradient for each argument
        def loss(fn, t, i=i):
            return fn(*args[:i], t, *args[i + 1:]).square().sum()
        torch.testing.assert_close(grad(lambda t: loss(ours, t))(args[i]),
                                   grad(lambda t: loss(theirs, t))(args[i]), **TOL)


@pytest.mark.parametrize("op", [MATMUL, CONV], ids=["matmul", "conv2d"])
def test_forward_mode_ad_through_an_op_keeps_the_tangent(op):
    ours, theirs = op
    args = _args(op)
    tangents = tuple(torch.randn_like(a) for a in args)
    ours(*args)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(a, t) for a, t in zip(args, tangents)]
        got = fwAD.unpack_dual(ours(*duals))
        want = fwAD.unpack_dual(theirs(*duals))
    torch.testing.assert_close(got.primal, want.primal, **TOL)
    assert got.tangent is not None, "the tangent was dropped"
    torch.testing.assert_close(got.tangent, want.tangent, **TOL)
    torch.testing.assert_close(jvp(ours, args, tangents)[1], jvp(theirs, args, tangents)[1], **TOL)


def test_conv2d_backward_ops_under_vmap_give_torchs():
    x, w = _t(2, 3, 7, 8, seed=1), _t(4, 3, 3, 2, seed=2)
    dy = _t(3, 2, 4, 4, 7, seed=3)  # a vmapped batch of 3 output gradients
    geo = dict(stride=(2, 1), padding=(1, 0), dilation=1, groups=1)
    dx = vmap(lambda g: kernelkit.conv2d_backward_input(g, w, x.shape, **geo))(dy)
    dw = vmap(lambda g: kernelkit.conv2d_backward_weight(x, g, w.shape, **geo))(dy)
    want_dx = vmap(lambda g: torch.nn.grad.conv2d_input(x.shape, w, g, (2, 1), (1, 0)))(dy)
    want_dw = vmap(lambda g: torch.nn.grad.conv2d_weight(x, w.shape, g, (2, 1), (1, 0)))(dy)
    torch.testing.assert_close(dx, want_dx, **TOL)
    torch.testing.assert_close(dw, want_dw, **TOL)


class _Tagged(torch.Tensor):
    """A tensor subclass that dispatches as torch.Tensor."""


@pytest.mark.parametrize("op", [MATMUL, CONV], ids=["matmul", "conv2d"])
def test_an_op_on_meta_fake_and_subclassed_tensors_and_under_a_flop_counter(op):
    """What torch's tools hand an op: meta tensors (shapes only), FakeTensorMode, a tensor
    subclass, a sparse operand, FlopCounterMode. Before: each raised (or, counting FLOPs,
    counted none)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    ours, theirs = op
    args = _args(op)
    want = theirs(*args)
    ours(*args)
    assert ours(*(a.to("meta") for a in args)).shape == want.shape
    with FakeTensorMode() as mode:
        assert ours(*(mode.from_tensor(a) for a in args)).shape == want.shape
    if op is MATMUL:  # a sparse operand: torch.matmul takes it
        torch.testing.assert_close(ours(args[0].to_sparse(), *args[1:]), want, **TOL)
    got = ours(args[0].as_subclass(_Tagged), *args[1:])
    torch.testing.assert_close(got.as_subclass(torch.Tensor), want, **TOL)
    counts = []
    for fn in (ours, theirs):
        with FlopCounterMode(display=False) as counter:
            fn(*args)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0
