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
from kernelkit.ops import conv2d as C
from kernelkit.ops import matmul as M

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


def _memoise(op, args) -> None:
    """Call the op until its plan for these plain tensors is memoised, so that the calls under a
    transform or mode that follow meet the op's repeated-call path (`plain_signature3`)."""
    memo = M._PLANS if op is MATMUL else C._FORWARD
    for _ in range(3):
        op[0](*args)
    assert any(k[0] == "pt" and k[2] == args[0].shape for k in memo), "no plan memoised"


@pytest.mark.parametrize("op", [MATMUL, CONV], ids=["matmul", "conv2d"])
def test_vmap_and_grad_of_an_op_give_torchs(op):
    ours, theirs = op
    args = _args(op)
    _memoise(op, args)  # a Numba plan memoised for these sizes first
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
    _memoise(op, args)
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
    for _ in range(3):  # Numba plans memoised first
        kernelkit.conv2d_backward_input(dy[0], w, x.shape, **geo)
        kernelkit.conv2d_backward_weight(x, dy[0], w.shape, **geo)
    assert any(k[2] == dy[0].shape for k in C._BWD_INPUT) and any(k[2] == x.shape
                                                                  for k in C._BWD_WEIGHT)
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
    _memoise(op, args)
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


def test_a_sparse_operand_after_a_dense_one_with_its_strides_takes_torchs_path():
    # a sparse COO tensor reports strides (0, 0), as a broadcast scalar does: the repeated-call
    # path must not find the dense operand's Numba plan for it
    a = torch.tensor(1.5).expand(4, 6)
    b = _t(6, 3, seed=2)
    for _ in range(3):
        torch.testing.assert_close(kernelkit.matmul(a, b), a @ b, **TOL)
    sparse = (_t(4, 6, seed=1) * (_t(4, 6, seed=3) > 0.5)).to_sparse()
    assert sparse.stride() == a.stride()
    torch.testing.assert_close(kernelkit.matmul(sparse, b), sparse.to_dense() @ b, **TOL)


def test_fx_symbolic_trace_records_each_op_as_one_call():
    # the ops raised "'x' must be a numpy array, torch tensor or cupy array, got Proxy" where
    # the README says an fx trace works; each is now one call node, run on the real tensors
    import torch.fx

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(4, 3, 3, 3))
            self.m = torch.nn.Parameter(torch.randn(8, 5))

        def forward(self, x, images):
            y = kernelkit.conv2d(x, self.w, padding=1, activation="relu")
            z = kernelkit.matmul(y.flatten(1)[:, :8], self.m, activation="gelu")
            return z, kernelkit.preprocess(images, size=6, mean=1.0, std=2.0)

    block = Block()
    gm = torch.fx.symbolic_trace(block)
    called = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert kernelkit.conv2d in called and kernelkit.matmul in called
    assert kernelkit.preprocess in called
    x = torch.randn(2, 3, 6, 6)
    images = torch.randint(0, 256, (2, 10, 12, 3), dtype=torch.uint8)
    for got, want in zip(gm(x, images), block(x, images)):
        torch.testing.assert_close(got, want)


@pytest.fixture
def first_sight():
    """As at a process's first call: torch's tensor types not yet registered (`arrays`
    registers a type on first sight), and the ops' plan memos empty."""
    from kernelkit import arrays

    saved_fns, saved_types = dict(arrays._SIG_OF_TYPE), set(arrays.TENSOR_TYPES)
    for t in [t for t in arrays._SIG_OF_TYPE if t.__module__.startswith("torch")]:
        del arrays._SIG_OF_TYPE[t]
    arrays.TENSOR_TYPES.clear()
    M._PLANS.clear()
    C._FORWARD.clear()
    yield
    arrays._SIG_OF_TYPE.update(saved_fns)
    arrays.TENSOR_TYPES.update(saved_types)


@pytest.mark.parametrize("parameter", [False, True], ids=["tensor", "parameter"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("requires_grad", [False, True], ids=["plain", "grad"])
@pytest.mark.parametrize("op", [MATMUL, CONV], ids=["matmul", "conv2d"])
def test_a_repeated_call_on_plain_tensors_runs_its_memoised_plan(op, requires_grad, with_bias,
                                                                  parameter, first_sight,
                                                                  monkeypatch):
    """The repeated-call key (`plain_signature3`) is the key the plan was stored under
    (`signature3`), with a bias or without, with grad or without, a weight that is a Parameter
    or a tensor, from a process's first call on (`first_sight`): a second call prepares
    nothing. Before, the first call of a process stored its plan under the general key (torch's
    types were registered there), and the second prepared it again."""
    from kernelkit.ops import dispatch

    ours, theirs = op
    a, b, c = (t.requires_grad_(requires_grad) for t in _args(op))
    if parameter:
        b = torch.nn.Parameter(b.detach(), requires_grad=requires_grad)
    if not with_bias:
        c = None
        ours = (lambda f: lambda x, y, z: f(x, y, None))(ours)
    first = ours(a, b, c)

    def no_prepare(*args, **kwargs):
        raise AssertionError("a repeated call prepared its plan again")

    monkeypatch.setattr(M if op is MATMUL else C, "prepare" if op is MATMUL else
                        "prepare_forward", no_prepare)
    again = ours(a, b, c)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    extras = ("k",)
    assert dispatch.plain_signature3(a, b, c, extras) == dispatch.signature3(a, b, c, extras)


def test_the_repeated_call_key_follows_every_knob_as_token_does(monkeypatch):
    """`plain_signature3` reads `settings.token()`'s parts inline: its key must change with
    each environment knob, a `use()` block and the choices' epoch, and equal `signature3`'s."""
    from kernelkit import settings
    from kernelkit.ops import dispatch

    a, b = torch.randn(2, 3), torch.randn(3, 4)
    seen = set()

    def key():
        checked = dispatch.signature3(a, b, None, ("k",))  # (first: registers torch's types)
        k = dispatch.plain_signature3(a, b, None, ("k",))
        assert k == checked and k[-1] == settings.token()
        seen.add(k)

    key()
    for name, value in (("KERNELKIT_TUNE", "off"), ("KERNELKIT_BACKEND", "torch"),
                        ("KERNELKIT_DEVICE", "cpu"), ("KERNELKIT_CACHE_DIR", "/nonexistent"),
                        ("KERNELKIT_COMPILE", "background")):
        monkeypatch.setenv(name, value)
        key()
    with kernelkit.use(tune="off"):
        key()
    settings.new_epoch()
    key()
    assert len(seen) == 8
