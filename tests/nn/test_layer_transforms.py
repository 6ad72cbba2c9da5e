"""Patched layers where kernelkit's kernels leave the tensors to torch: torch.func transforms,
forward-mode AD, TorchScript, torch.fx symbolic traces, dispatch modes, meta tensors, tensor
subclasses, complex dtypes and sparse inputs. Where torch's own layer works, the patched one gives
torch's result (it runs torch's op there; a kernelkit kernel computes on plain tensors' memory).
Each test runs with the Numba kernels forced, where a kernel route would otherwise run; each
names what it raised before."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jacrev, jvp, vmap

import kernelkit
from kernelkit.nn import _route, patch

TOL = dict(rtol=1e-4, atol=1e-5)


def _pair(kind: str, activation: str | None = None) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    """(torch's layer, its patched twin with the same parameters, an input)."""
    torch.manual_seed(0)
    if kind == "linear":
        ref, x = nn.Linear(7, 5), torch.randn(3, 7)
    else:
        ref, x = nn.Conv2d(3, 4, 3, padding=1, groups=1), torch.randn(2, 3, 6, 5)
    m = copy.deepcopy(ref)
    m = patch(m).model if isinstance(m, (nn.Linear, nn.Conv2d)) else m
    if activation is not None:  # the fused activation, as torch's chain computes it
        m.activation = activation
        act = {"relu": torch.relu, "silu": nn.functional.silu}[activation]
        ref = nn.Sequential(ref, nn.Module())
        ref[1].forward = act
    return ref, m, x


@pytest.fixture(autouse=True)
def _numba():
    with kernelkit.use(backend="numba"):
        yield


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("eager_first", [False, True])
def test_vmap_grad_and_jacrev_of_a_patched_layer_give_torchs(kind, eager_first):
    ref, m, x = _pair(kind, "silu")
    if eager_first:  # a kernel route memoised for this size before the transform
        torch.testing.assert_close(m(x), ref(x), **TOL)
        assert [_route.describe(r) for r in m.__dict__["_kk_routes"].values()] == ["numba-cpu"]
    xs = torch.stack([x, 2 * x])
    torch.testing.assert_close(vmap(m)(xs), vmap(ref)(xs), **TOL)
    torch.testing.assert_close(grad(lambda t: m(t).square().sum())(x),
                               grad(lambda t: ref(t).square().sum())(x), **TOL)
    torch.testing.assert_close(jacrev(m)(x[:1]), jacrev(ref)(x[:1]), **TOL)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_per_sample_gradients_of_a_patched_layer_give_torchs(kind):
    """torch.func's per-sample gradients: vmap over grad of functional_call."""
    ref, m, x = _pair(kind)

    def per_sample(model):
        params = {k: v.detach() for k, v in model.named_parameters()}
        loss = lambda p, t: functional_call(model, p, (t[None],)).square().sum()
        return vmap(grad(loss), in_dims=(None, 0))(params, x)

    got, want = per_sample(m), per_sample(ref)
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], **TOL)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_forward_mode_ad_through_a_patched_layer_gives_torchs_tangent(kind):
    ref, m, x = _pair(kind, "relu")
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        got = fwAD.unpack_dual(m(fwAD.make_dual(x, tangent)))
        want = fwAD.unpack_dual(ref(fwAD.make_dual(x, tangent)))
    torch.testing.assert_close(got.primal, want.primal, **TOL)
    assert got.tangent is not None
    torch.testing.assert_close(got.tangent, want.tangent, **TOL)
    torch.testing.assert_close(jvp(m, (x,), (tangent,))[1], jvp(ref, (x,), (tangent,))[1], **TOL)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding="same", groups=2, bias=False),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"])
def test_torchscript_of_a_patched_model_runs_torchs_ops_and_saves(activation):
    """torch.jit.script compiles a patched model (its layers run torch's ops in TorchScript),
    with each fused activation; the scripted model saves and loads, and takes unbatched input."""
    ref, m = _model(), _model()
    patch(m)
    for layer in (m[0], m[6]):
        layer.activation = activation
    act = {None: lambda y: y, "relu": torch.relu, "gelu": nn.functional.gelu,
           "gelu_tanh": lambda y: nn.functional.gelu(y, approximate="tanh"),
           "silu": nn.functional.silu}[activation]
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = act(ref[6](ref[4:6](ref[3](ref[1:3](act(ref[0](x)))))))
        eager = m(x)
        scripted = torch.jit.script(m)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        torch.testing.assert_close(eager, want, **TOL)
        torch.testing.assert_close(scripted(x), want, **TOL)
        torch.testing.assert_close(loaded(x), want, **TOL)
        conv = torch.jit.script(m[0])
        torch.testing.assert_close(conv(x[0]), act(ref[0](x[0])), **TOL)  # unbatched (C, H, W)


@pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_torchscript_of_a_layer_after_its_eager_calls(backend):
    """A layer scripts after it has run (evaluate, then script for deployment: the usual order).
    Before, torch.jit.script typed the memos its calls keep and raised "Cannot create dict for
    key type" once one was keyed by tuples (the size buckets torch's op won)."""
    for kind in ("linear", "conv"):
        ref, m, x = _pair(kind)
        with torch.no_grad(), kernelkit.use(backend=backend):
            want = ref(x)
            torch.testing.assert_close(m(x), want, **TOL)
        kept = [name for name in _route.ROUTE_STATE if m.__dict__.get(name)]
        assert kept, "the call kept no memo: nothing for TorchScript to skip"
        with torch.no_grad():
            torch.testing.assert_close(torch.jit.script(m)(x), want, **TOL)


class _Tagged(torch.Tensor):
    """A tensor subclass that dispatches as torch.Tensor (as a user's or a library's would)."""


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def test_torch_tools_that_trace_or_fake_see_a_patched_model_as_torchs():
    """torch.fx's symbolic trace (what FX quantization and torchvision's feature extractor use),
    meta tensors, FakeTensorMode, FlopCounterMode and tensor subclasses, on a model whose layers
    chose the Numba kernels. Before: the trace raised TraceError, meta and FakeTensorMode raised,
    FlopCounterMode counted no FLOPs for the patched layers."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ref, m = _model(), _model()
    patch(m)
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(m(x), want, **TOL)  # the kernel routes exist for this size
        assert {w for _, _, w in kernelkit.nn.where(m)} == {"numba-cpu"}, kernelkit.nn.where(m)
        traced = torch.fx.symbolic_trace(m)
        torch.testing.assert_close(traced(x), want, **TOL)
        ops = {n.target for n in traced.graph.nodes if n.op == "call_function"}
        assert torch.conv2d in ops and torch._C._nn.linear in ops, ops
        assert copy.deepcopy(m).to("meta")(x.to("meta")).shape == want.shape
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            assert m(mode.from_tensor(x)).shape == want.shape
        assert _flops(m, x) == _flops(ref, x) > 0
        torch.testing.assert_close(m(x.as_subclass(_Tagged)).as_subclass(torch.Tensor), want,
                                   **TOL)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_an_fx_trace_of_layers_with_a_fused_activation_runs_as_torchs(activation):
    """torch.fx.symbolic_trace raised "symbolically traced variables cannot be used as inputs to
    control flow" on a layer with GELU (its CPU +inf fix branched on the input's device)."""
    m = nn.Sequential(kernelkit.nn.Linear(6, 4, activation=activation),
                      nn.Unflatten(1, (1, 2, 2)),
                      kernelkit.nn.Conv2d(1, 2, 1, activation=activation))
    x = torch.randn(3, 6)
    x[0, 0] = float("inf")
    traced = torch.fx.symbolic_trace(m)
    torch.testing.assert_close(traced(x), m(x), equal_nan=True)


def test_a_weight_swapped_for_a_subclass_runs_torchs_op():
    """A patched layer whose weight becomes a tensor subclass (as a quantization library's
    weight does) runs F.linear / F.conv2d on it, for a size whose kernel route exists and for a
    new one. Before: TypeError from the kernel's checks."""
    for kind in ("linear", "conv"):
        ref, m, x = _pair(kind)
        with torch.no_grad():
            torch.testing.assert_close(m(x), ref(x), **TOL)  # a Numba route for this size
            for layer in (ref, m):
                layer.weight = nn.Parameter(layer.weight.detach().as_subclass(_Tagged))
            for t in (x, torch.cat([x, x])):
                got = m(t)
                assert type(got) is _Tagged
                torch.testing.assert_close(got.as_subclass(torch.Tensor),
                                           ref(t).as_subclass(torch.Tensor), **TOL)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_complex_weights_and_sparse_inputs_run_torchs_op(kind):
    """A complex-valued layer (no kernelkit kernel computes complex) and a sparse input to a
    Linear give torch's results. Before: TypeError (dtype) and RuntimeError (a reshape of the
    sparse input) from the route's kernel."""
    torch.manual_seed(0)
    ref = (nn.Linear(7, 5, dtype=torch.complex64) if kind == "linear"
           else nn.Conv2d(3, 4, 3, padding=1, dtype=torch.complex64))
    m = patch(copy.deepcopy(ref)).model
    x = torch.randn(2, 7, dtype=torch.complex64) if kind == "linear" \
        else torch.randn(2, 3, 6, 5, dtype=torch.complex64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref(x), **TOL)
        if kind == "linear":
            real, twin = _pair("linear")[:2]
            dense = torch.randn(3, 7)
            torch.testing.assert_close(twin(dense), real(dense), **TOL)  # a Numba route first
            torch.testing.assert_close(twin(dense.to_sparse()), real(dense.to_sparse()), **TOL)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_batched_gradients_through_a_patched_layer_give_torchs(kind):
    """`autograd.grad(..., is_grads_batched=True)` and `jacobian(vectorize=True)`: the kernel
    route's backward took torch's legacy batched tensors, and its kernel's launcher raised
    "Batching rule not implemented for aten::detach"."""
    ref, m, x = _pair(kind)
    x = x.double().requires_grad_()
    ref, m = ref.double(), m.double()
    y, want_y = m(x), ref(x)
    v = torch.randn(3, *y.shape, dtype=torch.float64)
    (got,) = torch.autograd.grad(y, x, v, is_grads_batched=True)
    (want,) = torch.autograd.grad(want_y, x, v, is_grads_batched=True)
    torch.testing.assert_close(got, want)
    jac = torch.autograd.functional.jacobian(m, x[:1].detach(), vectorize=True)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(ref, x[:1].detach()))


def test_kernelkit_matmul_takes_batched_gradients_as_torch_matmul():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(kernelkit.matmul(a, b), (a, b), v, is_grads_batched=True)
    want = torch.autograd.grad(a @ b, (a, b), v, is_grads_batched=True)
    for g_, w_ in zip(got, want):
        torch.testing.assert_close(g_, w_)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_a_nested_tensor_into_a_patched_linear_runs_torchs_op():
    # a nested tensor of strided layout is a plain torch.Tensor with no sizes: "NestedTensorImpl
    # doesn't support sizes" from the route's signature
    ref, m, _ = _pair("linear")
    nt = torch.nested.nested_tensor([torch.randn(2, 7), torch.randn(3, 7)])
    with torch.no_grad():
        for got, want in zip(m(nt).unbind(), ref(nt).unbind()):
            torch.testing.assert_close(got, want, **TOL)
        with torch.autocast("cpu", torch.bfloat16):
            assert [t.shape for t in m(nt).unbind()] == [t.shape for t in ref(nt).unbind()]


@pytest.mark.parametrize("how", ["deepcopy", "averaged_model"])
def test_a_layer_that_ran_and_was_then_parametrized_copies(how, monkeypatch):
    """torch's parametrize gives a parametrized layer a `__deepcopy__` that copies `__dict__` as
    it is, past the layer's own copy rule: the copy shared the original's routes, and a counted
    route (a choice the tuner revisits) recursed in `__getattr__` until RecursionError, in
    `copy.deepcopy`, `AveragedModel` (EMA, SWA) and `prepare_fx` (a user hunt). The memos copy
    empty: the copy decides its own routes."""
    from torch.nn.utils import parametrizations
    from torch.optim.swa_utils import AveragedModel

    from kernelkit import core
    from kernelkit.ops import dispatch

    def choice_for(call, settings=None):  # a choice asked again after 5 calls: a counted route
        cand = core.get(call.problem.op, "torch-cpu")
        return core.Choice("torch-cpu", cand.space(call.problem)[0], "model", recheck_after=5)

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    patch(m)
    x = torch.randn(8, 16)
    with torch.no_grad():
        m(x)
    assert any(type(r).__name__ == "_Counted" for r in m[2].__dict__["_kk_routes"].values())
    parametrizations.orthogonal(m[2])
    parametrizations.spectral_norm(m[0])
    copied = copy.deepcopy(m) if how == "deepcopy" else AveragedModel(m).module
    assert not copied[2].__dict__.get("_kk_routes")
    with torch.no_grad():
        torch.testing.assert_close(copied(x), m(x), rtol=0, atol=0)
