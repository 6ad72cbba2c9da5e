"""Autocast: a patched layer follows torch's autocast rules whichever backend wins its tuning.

Issue 11: under torch.autocast("cpu", torch.bfloat16) a patched layer returned bfloat16 where
torch won its tuning and float32 where Numba won (a patched ResNet then raised TypeError in the
next conv), and a patched MLP ignored autocast. The tuner's choice is stood in for by a chooser
that prefers one backend wherever it can run the problem, so the test does not depend on timing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from models import SmallResNet, mlp
from torch import nn

import kernelkit.nn as knn
from kernelkit.autotune import tuner
from kernelkit.core import Choice


def _prefer(backend: str):
    def choose(problem, cands, runner, verify, settings):
        usable, _ = tuner.split_candidates(problem, cands, settings)
        for c in usable:
            if c.backend == backend:
                return Choice(c.name, c.space(problem)[0], "forced")
        return tuner.default_choice(problem, usable)

    return choose


def _layer_dtypes(model: nn.Module) -> list:
    """Records the output dtype of every Linear/Conv2d (forward hooks survive patching)."""
    seen: list = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            m.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    return seen


@pytest.mark.parametrize("winner", ["numba", "torch"])
@pytest.mark.parametrize("make, shape", [(SmallResNet, (2, 3, 8, 8)), (mlp, (4, 16))],
                         ids=["cnn", "mlp"])
def test_autocast_bf16_dtype_does_not_depend_on_the_winner(monkeypatch, tmp_path, winner, make,
                                                           shape):
    torch.manual_seed(0)
    ref = make()
    model = copy.deepcopy(ref)
    knn.patch(model)
    assert any(isinstance(m, (knn.Linear, knn.Conv2d)) for m in model.modules())
    want_dtypes, got_dtypes = _layer_dtypes(ref), _layer_dtypes(model)
    x = torch.randn(*shape)
    monkeypatch.setattr(tuner, "choose", _prefer(winner))
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))  # fresh plan memos and choices
    for m in (model, ref):
        with torch.autocast("cpu", torch.bfloat16):
            out = m(x)
        out.float().square().mean().backward()
        if m is model:
            got = out
    want = out
    assert got.dtype == want.dtype == torch.bfloat16
    assert got_dtypes == want_dtypes
    assert set(got_dtypes) == {torch.bfloat16}
    torch.testing.assert_close(got.float(), want.float(), rtol=1.6e-2, atol=1e-2)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.grad.dtype == q.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=5e-2)


def test_autocast_leaves_float64_and_follows_the_region_dtype():
    """torch's autocast casts float32 only (float64 stays), to the region's own dtype."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    knn.patch(model)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", torch.float16):
        assert model(x).dtype == torch.float16
    model.double()
    with torch.autocast("cpu", torch.bfloat16):
        assert model(x.double()).dtype == torch.float64
    assert model(x.double()).dtype == torch.float64


def _outcome(fn):
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - the outcome compared is the exception's type
        return type(exc)


@pytest.mark.parametrize("winner", ["numba", "torch"])
@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("layer_dtype, x_dtype", [
    (torch.complex64, torch.complex64), (torch.float32, torch.float64),
    (torch.float32, torch.int64), (torch.float64, torch.float32),
    (torch.float64, torch.float64), (torch.float32, torch.complex64)])
def test_autocast_of_operands_it_does_not_cast_gives_torchs_result_or_error(
        monkeypatch, tmp_path, winner, layer, layer_dtype, x_dtype):
    """Under CPU autocast, a call with an operand autocast leaves alone (float64, complex,
    integer) went to the registered op: a complex layer raised TypeError where torch runs it,
    and mixed dtypes raised TypeError where torch raises RuntimeError. It now runs as torch's
    (as without autocast where nothing is cast, else torch's op)."""
    monkeypatch.setattr(tuner, "choose", _prefer(winner))
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    ref = (nn.Linear(8, 4) if layer == "linear" else nn.Conv2d(3, 5, 3, padding=1)) \
        .to(layer_dtype)
    model = knn.patch(nn.Sequential(copy.deepcopy(ref))).model
    assert isinstance(model[0], (knn.Linear, knn.Conv2d))
    shape = (3, 8) if layer == "linear" else (2, 3, 6, 6)
    x = torch.randn(shape, dtype=torch.float64).mul(4)
    x = x.to(x_dtype) if x_dtype.is_floating_point or x_dtype.is_complex else \
        x.round().to(x_dtype)
    for _ in range(2):  # (the first call decides the route, the second runs it)
        with torch.autocast("cpu", torch.bfloat16):
            got, want = _outcome(lambda: model(x)), _outcome(lambda: ref(x))
        if isinstance(want, type):
            assert got is want
        else:
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("make, shape", [(lambda: nn.Conv2d(3, 8, 3, padding=1), (2, 3, 8, 8)),
                                         (lambda: nn.Linear(16, 8), (4, 16))],
                         ids=["conv", "linear"])
def test_torch_compile_and_export_of_a_patched_layer_under_autocast(make, shape, grad):
    """Under autocast a patched layer calls the custom op, whose autocast rule noted its cast
    copies' data pointers: under torch.compile and torch.export those are FakeTensors, whose
    data_ptr raises ("Cannot access data pointer of Tensor (e.g. FakeTensor)"), so every
    compile and export of a patched model under autocast failed."""
    torch.manual_seed(0)
    layer = make()
    ref = copy.deepcopy(layer)
    knn.patch(layer)
    x = torch.randn(*shape)
    torch._dynamo.reset()
    with torch.set_grad_enabled(grad), torch.autocast("cpu", torch.bfloat16):
        want = ref(x)
        got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.02)
    if not grad:
        with torch.autocast("cpu", torch.bfloat16):
            program = torch.export.export(layer, (x,))
            assert program.module()(x).dtype == torch.bfloat16


@pytest.mark.parametrize("winner", ["torch-cpu", "numba-cpu"])
def test_under_autocast_a_size_torch_won_runs_torchs_own_op(winner, monkeypatch):
    """Every autocast call went through the registered op (tens of microseconds of Python
    dispatch): a patched encoder under bfloat16 autocast ran 1.62x torch where torch had won
    every size. Where the tuner chose torch for the call in the autocast dtype, the layer now
    calls torch's op (whose autocast casts as torch's layer's would); where a kernel won, the
    kernel route on the operands cast (not the registered op: its trial and recheck count go
    on, `test_under_autocast_a_kernel_route_is_tried_in_the_model_and_rechecked`)."""
    from kernelkit import core
    from kernelkit.nn import linear
    from kernelkit.ops import dispatch

    asked = []

    def choice_for(call, settings=None):
        asked.append(call.problem.dtype)
        cand = core.get("matmul", winner)
        return core.Choice(winner, cand.space(call.problem)[0], "forced")

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    through_op = []
    real = linear._through_op
    monkeypatch.setattr(linear, "_through_op",
                        lambda *a: through_op.append(1) or real(*a))
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    ref = copy.deepcopy(layer)
    knn.patch(layer)
    x = torch.randn(5, 16)
    with torch.autocast("cpu", torch.bfloat16):
        for _ in range(3):
            y = layer(x)
            want = ref(x)
            assert y.dtype == want.dtype == torch.bfloat16
            torch.testing.assert_close(y.float(), want.float(), atol=0.05, rtol=0.02)
    assert set(asked) == {"bfloat16"}  # decided for the cast dtype
    if winner == "torch-cpu":
        assert len(asked) == 1 and through_op == []  # once; torch's own op on every call
    else:
        assert through_op == []  # (the route's autograd Function asks for its own plan)
        assert "numba-cpu" in str(knn.where(layer))


def test_under_autocast_a_kernel_route_is_tried_in_the_model_and_rechecked(monkeypatch):
    """Under autocast a layer whose tuner chose a kernel ran the registered op, never its route:
    the route's in-model trial against torch never advanced (`kernelkit.nn.pending()` never
    reached 0, and the README's "call until pending() is 0" looped for good), and a choice the
    tuner revisits after some calls was never asked again (a user hunt)."""
    from kernelkit import core
    from kernelkit.nn import _route
    from kernelkit.ops import dispatch

    asked = []
    recheck = [0]

    def choice_for(call, settings=None):
        asked.append(call.problem.dtype)
        cand = core.get("matmul", "numba-cpu")
        return core.Choice("numba-cpu", cand.space(call.problem)[0], "measured",
                           recheck_after=recheck[0])

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8))
    knn.patch(layer)
    x = torch.randn(5, 16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        layer(x)
        assert knn.pending(layer) == 1
        for _ in range(4 * _route.TRIAL_CALLS):
            y = layer(x)
        assert knn.pending(layer) == 0 and y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), torch.nn.functional.linear(
            x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()).float())
    _route.drop_routes(layer[0].__dict__)
    recheck[0], asked[:] = 3, []
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for _ in range(7):
            layer(x)
    assert len(asked) >= 2  # (asked again once the 3 calls were used)


def test_under_autocast_a_layer_fed_more_sizes_than_its_routes_finds_torchs_op(monkeypatch):
    """Under autocast a route was looked up among the layer's last MAX_ROUTES (64) routes only,
    never among the sizes settled for torch: a layer fed more lengths than that (a transformer's
    sequence lengths) made a route on every call again, each from a cast copy of the whole
    weight, 2.5-3.6x torch's time for good (a user hunt: Linear(2048, 8192), 149 lengths)."""
    from kernelkit.nn import _route

    _force_choice(monkeypatch, "torch-cpu", "measured")
    made = []
    real = _route._new_route
    monkeypatch.setattr(_route, "_new_route", lambda *a: made.append(1) or real(*a))
    layer = nn.Sequential(nn.Linear(16, 8))
    ref = copy.deepcopy(layer)
    knn.patch(layer)
    xs = [torch.randn(1, t, 16) for t in range(1, _route.MAX_ROUTES + 40)]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for x in xs:
            layer(x)
        first = len(made)
        for x in xs:
            y = layer(x)
            assert y.dtype == torch.bfloat16
            torch.testing.assert_close(y, ref(x), rtol=0, atol=0)
    assert len(made) == first  # (no route made again, no weight cast for it)


def test_under_autocast_each_grad_mode_runs_its_own_trial(monkeypatch):
    """A trial whose inference went to torch first made every later autocast call take torch's
    op, so the training trial never ran and `pending(grad=True)` stayed 1 (a review)."""
    from kernelkit.nn import _route

    _force_choice(monkeypatch, "numba-cpu", "measured")
    monkeypatch.setattr(_route, "TRIAL_MARGIN", 1e9)  # (inference: the kernel cannot win)
    layer = knn.patch(nn.Sequential(nn.Linear(64, 64))).model
    x = torch.randn(8, 64)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for _ in range(4 * _route.TRIAL_CALLS):
            layer(x)
    assert knn.pending(layer, grad=False) == 0
    for _ in range(4 * (_route.TRIAL_CALLS + _route.TRIAL_FORWARD_ONLY_AFTER)):
        with torch.autocast("cpu", torch.bfloat16):
            y = layer(x)
        y.float().sum().backward()
    assert knn.pending(layer, grad=True) == 0


@pytest.mark.parametrize("kind", ["dense", "sliced"])
def test_under_autocast_a_new_size_of_a_settled_bucket_casts_nothing(kind, monkeypatch):
    """A new size whose size bucket the tuner settled for torch takes torch's op without a
    route made from cast copies of the weight, a sliced input too (its cast copy is contiguous:
    the bucket was keyed on that, and no key of the slice matched; a review)."""
    from kernelkit.nn import _route

    _force_choice(monkeypatch, "torch-cpu", "measured")
    made = []
    real = _route._new_route
    monkeypatch.setattr(_route, "_new_route", lambda *a: made.append(1) or real(*a))
    layer = knn.patch(nn.Sequential(nn.Linear(16, 8))).model
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for t in range(65, 97):  # (one size bucket: 96)
            big = torch.randn(1, t, 32)
            x = big[..., :16] if kind == "sliced" else big[..., :16].contiguous()
            y = layer(x)
            torch.testing.assert_close(y, torch.nn.functional.linear(
                x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()))
    assert len(made) == 1


def test_under_autocast_a_kernel_route_casts_the_weight_once_while_it_is_unchanged(monkeypatch):
    """Without grad the kernel route cast the weight on every call, where torch's autocast keeps
    its cast: a Linear(2048, 2048) paid 0.4 ms a call, more than torch's whole call, and its
    in-model trial (timed on cast operands) could not see it (a review). Inside
    `frozen_weights()` the cast is kept while the weight is unchanged; changed in place, it is
    cast again. (Outside it each call casts, and its trial is charged for it: see
    `test_under_autocast_a_trial_charges_the_kernel_for_its_casts`.)"""
    import kernelkit

    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    x = torch.randn(4, 32)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), kernelkit.frozen_weights():
        layer(x)
        held = dict(layer[0].__dict__["_kk_casts"])
        for _ in range(3):
            layer(x)
        assert held and all(v.wc is held[k].wc
                            for k, v in layer[0].__dict__["_kk_casts"].items())
        layer[0].weight.mul_(2)
        y = layer(x)
    want = torch.nn.functional.linear(x.bfloat16(), layer[0].weight.bfloat16(),
                                      layer[0].bias.bfloat16())
    torch.testing.assert_close(y, want, rtol=0.02, atol=0.05)


def _force_choice(monkeypatch, candidate: str, source: str) -> None:
    """The tuner's choice for every call made `candidate` (its first config), from `source`."""
    from kernelkit import core
    from kernelkit.ops import dispatch

    def choice_for(call, settings=None):
        cand = core.get(call.problem.op, candidate)
        return core.Choice(candidate, cand.space(call.problem)[0], source)

    monkeypatch.setattr(dispatch, "choice_for", choice_for)


@pytest.mark.parametrize("frozen", [False, True], ids=["per-call", "frozen-forgotten"])
def test_under_autocast_a_weight_changed_through_data_gives_the_new_result(frozen, monkeypatch):
    """The kernel route kept its weight cast while the weight's version was unchanged, but an
    update through ``param.data`` (an EMA model's, older optimizers') changes no version: the
    layer then returned the old weight's result, silently (a user hunt: max error 0.58 on
    outputs of 0.23). Casts are kept only inside `frozen_weights()`, whose contract names
    ``param.data`` and `forget_packed_weights()`, which drops them."""
    import kernelkit

    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    x = torch.randn(4, 32)
    scope = kernelkit.frozen_weights(frozen)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), scope:
        for _ in range(3):
            layer(x)
        for p in layer.parameters():
            p.data.mul_(-0.5)
        if frozen:
            kernelkit.forget_packed_weights()
        y = layer(x)
    want = torch.nn.functional.linear(x.bfloat16(), layer[0].weight.bfloat16(),
                                      layer[0].bias.bfloat16())
    torch.testing.assert_close(y, want, rtol=0.02, atol=0.05)


def test_under_autocast_a_trial_charges_the_kernel_for_its_casts(monkeypatch):
    """A layer's in-model trial times the kernel and torch's op on operands cast beforehand, so
    a weight cast made for the kernel on every call (outside `frozen_weights()`; torch's
    autocast keeps its own for a region) was not counted: a kernel route that won its trial by
    less than the cast cost ran slower than torch's op for good (a review). The kernel's
    samples now include the call's casts; with them, torch wins a close trial."""
    from kernelkit.nn import _route

    _force_choice(monkeypatch, "numba-cpu", "measured")
    now = [0.0]
    monkeypatch.setattr(_route, "_clock", lambda: now[0])
    real_cast = _route._cast_params

    def slow_cast(*a):  # (a cast made takes 1 s of the trial's clock)
        out = real_cast(*a)
        if len(out) < 3 or out[2]:
            now[0] += 1.0
        return out

    monkeypatch.setattr(_route, "_cast_params", slow_cast)
    layer = knn.patch(nn.Sequential(nn.Linear(16, 8))).model
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for _ in range(4 * _route.TRIAL_CALLS):
            layer(x)
    trial = _route._trial_of(next(iter(layer[0].__dict__["_kk_routes"].values())))
    kernel_s, aten_s = trial.verdicts[False]
    assert kernel_s >= 1.0 and aten_s < 1.0
    assert trial.decided(False) is trial.aten


def test_under_autocast_a_kept_cast_is_dropped_after_a_fused_optimizer_step(monkeypatch):
    """A fused optimizer step changes the weights without bumping their versions; inside
    `frozen_weights()` the kept autocast casts are dropped after any optimizer step, as the
    kept conv packs are (the step hook is registered with the first cast kept, too)."""
    import collections

    from torch.optim import optimizer as torch_optimizer

    import kernelkit
    from kernelkit import frozen

    # (a fresh process's state: no step hook registered yet by earlier tests)
    monkeypatch.setattr(torch_optimizer, "_global_optimizer_post_hooks",
                        collections.OrderedDict())
    monkeypatch.setattr(frozen, "_WATCHING", [False])
    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, fused=True)
    x = torch.randn(4, 32)
    with kernelkit.frozen_weights():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            layer(x)
        version = layer[0].weight._version
        layer(x).square().sum().backward()
        opt.step()
        assert layer[0].weight._version == version  # (the premise: no version bump)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
            y = layer(x)
    want = torch.nn.functional.linear(x.bfloat16(), layer[0].weight.bfloat16(),
                                      layer[0].bias.bfloat16())
    torch.testing.assert_close(y, want, rtol=0.02, atol=0.05)


def test_under_autocast_with_grad_a_layer_called_in_a_loop_casts_its_weight_once(monkeypatch):
    """With grad, the kernel route cast the weight on every call and each call's graph kept its
    copy for the backward: a layer called K times in one forward (a tied or looped layer) held
    K bfloat16 copies of its weight where torch's autocast, which casts once per region, holds
    one (20 calls of a Linear(2048, 2048): 160 MB against 8 MB,
    bench/probes/autocast_tied_memory_probe.py). A cast is used again while a graph still holds
    it (and the weight is the same tensor, version and storage) within its region, from the
    layer's first forward that calls it again (whose second call casts anew: only from then on
    are the casts' regions noted); the gradients are torch's."""
    from kernelkit.nn import _route

    _force_choice(monkeypatch, "numba-cpu", "forced")
    made = []
    real = _route._cast_params
    monkeypatch.setattr(_route, "_cast_params", lambda *a: (lambda r: made.append(r[2]) or r)(
        real(*a)))
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 32))
    layer = knn.patch(copy.deepcopy(ref)).model
    x = torch.randn(4, 32, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):  # (a first forward: the layer is seen looped)
        layer(layer(x))
    assert made == [True, True]
    made.clear()
    for model in (layer, ref):
        with torch.autocast("cpu", torch.bfloat16):
            h = x
            for _ in range(5):
                h = model(h)
        h.float().square().sum().backward()
        if model is layer:
            assert made == [True, False, False, False, False]
            got = [p.grad.clone() for p in layer.parameters()]
    for g, p in zip(got, ref.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0.05, atol=0.05)
    made.clear()
    with torch.autocast("cpu", torch.bfloat16):  # (the last graph was freed: a cast anew)
        kept = layer(x)
        layer[0].weight.data = layer[0].weight.data * -1.0  # (a swap: new storage)
        y = layer(x)
    assert made == [True, True] and kept.grad_fn is not None
    torch.testing.assert_close(y, torch.nn.functional.linear(
        x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()),
        rtol=0.02, atol=0.05)


def test_under_autocast_with_grad_a_cast_is_not_used_past_its_region(monkeypatch):
    """A cast used again while an earlier call's graph held it outlived its autocast region: a
    kept output kept the cast, an update through ``param.data`` (which changes no version)
    followed, and the next region's call gave the old weight's result (a review: error 2.9 on
    outputs of 2.0). torch's autocast casts again in each region; so does the layer now."""
    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 32))).model
    x = torch.randn(4, 32, requires_grad=True)  # (an inner layer's input: its graph saves w)
    for looped in (False, True):  # (a layer seen called again within a forward, and not)
        if looped:
            with torch.autocast("cpu", torch.bfloat16):
                layer(layer(x))
        _region_then_data_update(layer, x)


def _region_then_data_update(layer, x) -> None:
    with torch.autocast("cpu", torch.bfloat16):
        kept = layer(x)
    with torch.no_grad():
        for p in layer.parameters():
            p.data.mul_(-0.5)
    with torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
    assert kept.grad_fn is not None
    torch.testing.assert_close(y, torch.nn.functional.linear(
        x.detach().bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()),
        rtol=0.02, atol=0.05)


def test_under_autocast_inference_tensor_weights_run_inside_frozen_weights(monkeypatch):
    """A model made under `torch.inference_mode` has weights without a version counter: inside
    `frozen_weights()` the kept cast's check read it and raised RuntimeError ("Inference tensors
    do not track version counter"; a review). They are cast on every call, as the conv packs
    them on every call."""
    import kernelkit

    _force_choice(monkeypatch, "numba-cpu", "forced")
    with torch.inference_mode():
        layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    x = torch.randn(4, 32)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16), \
            kernelkit.frozen_weights():
        layer(x)
        layer[0].weight.mul_(-0.5)
        y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(
        x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()),
        rtol=0.02, atol=0.05)


def test_under_autocast_a_call_after_frozen_weights_casts_anew(monkeypatch):
    """A cast kept inside `frozen_weights()` is the tensor itself, outside a weak reference: the
    first call without grad after the block called the tensor and raised TypeError ("'Tensor'
    object is not callable"; a review), the README's inference recipe followed by any plain
    call. Outside the block the kept cast is dropped and the weight cast anew."""
    import kernelkit

    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    x = torch.randn(4, 32)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        with kernelkit.frozen_weights():
            layer(x)
        layer[0].weight.data.mul_(-0.5)
        y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(
        x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()),
        rtol=0.02, atol=0.05)


def test_under_autocast_grad_enabled_inside_inference_mode_runs(monkeypatch):
    """`torch.enable_grad()` inside `torch.inference_mode()` records no graph, so the region
    probe's product had no grad_fn and the call raised AttributeError (a review); torch's own
    layer runs there."""
    _force_choice(monkeypatch, "numba-cpu", "forced")
    layer = knn.patch(nn.Sequential(nn.Linear(32, 16))).model
    x = torch.randn(4, 32)
    with torch.inference_mode(), torch.enable_grad(), torch.autocast("cpu", torch.bfloat16):
        y = layer(x)
    torch.testing.assert_close(y, torch.nn.functional.linear(
        x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16()),
        rtol=0.02, atol=0.05)


def test_under_autocast_the_region_check_holds_with_a_float64_default_dtype(monkeypatch):
    """The region probe's canary took the default dtype: under float64 autocast left it alone,
    its node never changed, and a cast outlived its region again (a kept output, a
    ``param.data`` update, the next region: error 2.8; a review)."""
    _force_choice(monkeypatch, "numba-cpu", "forced")
    monkeypatch.setattr("kernelkit.nn._route._CANARIES", {})
    layer = knn.patch(nn.Sequential(nn.Linear(32, 32))).model
    x = torch.randn(4, 32, requires_grad=True)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.autocast("cpu", torch.bfloat16):  # (called again within a forward: from
            layer(layer(x))  # now on its casts note their regions)
        _region_then_data_update(layer, x)
    finally:
        torch.set_default_dtype(default)


def test_under_autocast_a_weight_that_starts_needing_grad_in_a_region_gets_it(monkeypatch):
    """A cast made while the weight needed no gradient (no graph) was used again after
    ``requires_grad_(True)`` in the same region: the weight got no gradient where torch's
    layer gives one (a review)."""
    _force_choice(monkeypatch, "numba-cpu", "forced")
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(32, 16))
    layer = knn.patch(copy.deepcopy(ref)).model
    x = torch.randn(4, 32, requires_grad=True)
    for model in (layer, ref):
        model[0].weight.requires_grad_(False)
        with torch.autocast("cpu", torch.bfloat16):
            first = model(x)
            model[0].weight.requires_grad_(True)
            y = model(x)
        (y.float().sum() + first.float().sum()).backward()
    assert layer[0].weight.grad is not None
    torch.testing.assert_close(layer[0].weight.grad, ref[0].weight.grad, rtol=0.02, atol=0.05)


def test_under_autocast_inside_frozen_weights_a_kept_cast_keeps_its_conv_pack(monkeypatch):
    """Inside `frozen_weights()` the conv kept its packed weight across calls, but under
    autocast its kept cast was marked as a per-call copy, so it was packed on every call (a
    review). A cast used again is not a copy: packed once."""
    import kernelkit
    from kernelkit.kernels.numba import _packs

    _force_choice(monkeypatch, "numba-cpu", "forced")
    kept = []
    real = _packs.keep
    monkeypatch.setattr(_packs, "keep", lambda *a: kept.append(1) or real(*a))
    layer = knn.patch(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1))).model
    # 28 px: planes whose weight the kernel packs (on small planes it reads it where it lies,
    # in bfloat16 too since conv2d.TAP_PAIRS, and keeps nothing)
    x = torch.randn(2, 8, 28, 28)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), kernelkit.frozen_weights():
        for _ in range(4):
            y = layer(x)
    assert len(kept) == 1
    torch.testing.assert_close(y, torch.nn.functional.conv2d(
        x.bfloat16(), layer[0].weight.bfloat16(), layer[0].bias.bfloat16(), padding=1),
        rtol=0.02, atol=0.05)
