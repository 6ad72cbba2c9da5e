"""The eager route of a patched layer (kernelkit/nn/_route.py): torch's own op where torch won,
the kernel without the custom op's dispatch elsewhere, the custom op under torch.compile.
What these routes cost is measured in bench/test_bench_nn.py, never here."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from traced import dynamo_graphs

import kernelkit
import kernelkit.nn as knn


class _Log(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops(fn) -> list[str]:
    with _Log() as log:
        fn()
    return log.ops


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_where_torch_won_the_layer_calls_torchs_own_op(grad):
    torch.manual_seed(0)
    layer, conv = nn.Sequential(nn.Linear(8, 4)), nn.Sequential(nn.Conv2d(3, 4, 3))
    knn.patch(layer)
    knn.patch(conv)
    x, xc = torch.randn(2, 8), torch.randn(1, 3, 6, 6)
    with kernelkit.use(backend="torch"), torch.set_grad_enabled(grad):
        layer(x), conv(xc)  # decide the route
        lin_ops, conv_ops = _ops(lambda: layer(x)), _ops(lambda: conv(xc))
    assert not any("kernelkit" in op for op in lin_ops + conv_ops)
    assert any("addmm" in op for op in lin_ops)
    assert any("convolution" in op for op in conv_ops)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_where_a_kernel_won_eager_calls_skip_the_custom_op(grad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()
    ref = [p.detach().clone() for p in model.parameters()]
    knn.patch(model)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with kernelkit.use(backend="numba"), torch.set_grad_enabled(grad):
        model(x)
        ops = _ops(lambda: model(x))
    assert not any("kernelkit" in op for op in ops)
    want = nn.functional.linear(
        nn.functional.conv2d(x, ref[0], ref[1]).flatten(1), ref[2], ref[3])
    with kernelkit.use(backend="numba"):
        torch.testing.assert_close(model(x), want, rtol=1e-10, atol=1e-10)


def _graph_of(layer, x) -> str:
    return str(dynamo_graphs(layer, lambda compiled: compiled(x))[0])


@pytest.mark.parametrize("eager_backend, traced", [
    (None, "linear"),  # never ran in eager mode: torch's op (no in-model evidence for a kernel)
    ("torch", "linear"),  # torch won every size seen: torch's op, so Inductor fuses around it
    ("numba", "kernelkit.linear"),  # a kernelkit kernel won: the custom op
])
def test_what_torch_compile_traces(eager_backend, traced):
    layer = nn.Sequential(nn.Linear(8, 4))
    knn.patch(layer)
    x = torch.randn(2, 8)
    if eager_backend:
        with kernelkit.use(backend=eager_backend):
            layer(x)
    graph = _graph_of(layer, x)
    assert traced in graph
    if traced == "linear":
        assert "kernelkit" not in graph


def test_eager_autograd_functions_double_backward_float64():
    """kernelkit.matmul / conv2d on tensors that need gradients use autograd Functions in eager
    mode; a backward with create_graph runs the custom ops, so gradgradcheck holds."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    with kernelkit.use(backend="numba"):
        mm = lambda a, b: kernelkit.matmul(a, b, activation="gelu")
        conv = lambda x, w: kernelkit.conv2d(x, w, padding=1, activation="silu")
        assert torch.autograd.gradcheck(mm, (a, b)) and torch.autograd.gradgradcheck(mm, (a, b))
        assert torch.autograd.gradcheck(conv, (x, w))
        assert torch.autograd.gradgradcheck(conv, (x, w))


def _numba_chosen(monkeypatch, numba_s: float):
    """The tuner's choice for any matmul: numba-cpu, from a measured entry with numba at
    `numba_s` and torch-cpu at 1 ms."""
    from kernelkit import core
    from kernelkit.autotune import cache as cache_mod
    from kernelkit.ops import dispatch

    numba = core.get("matmul", "numba-cpu")
    entry = {"trials": [{"candidate": "numba-cpu", "config": {}, "median": numba_s},
                        {"candidate": "torch-cpu", "config": {}, "median": 1e-3}]}

    class Cache:
        def get(self, key):
            return entry

    monkeypatch.setattr(dispatch, "choice_for", lambda call, settings=None: core.Choice(
        "numba-cpu", numba.space(call.problem)[0], "cache"))
    monkeypatch.setattr(cache_mod, "cache_for", lambda path: Cache())


@pytest.mark.parametrize("numba_s, route", [(0.9e-3, "torch (aten)"), (0.5e-3, "numba-cpu")],
                         ids=["won_by_11_percent", "won_by_2x"])
def test_a_layer_leaves_torch_only_for_a_clear_measured_win(numba_s, route, monkeypatch):
    """The tuner chose numba for the layer's size; the layer takes it only when the measured
    entry has numba at least KERNEL_MARGIN faster than torch (a small measured win did not hold
    inside a model on a shared machine; torch's route keeps Inductor's fusions)."""
    from kernelkit.nn import _route

    assert _route.KERNEL_MARGIN > 1 / 0.9  # so the first case is a win too small to take
    _numba_chosen(monkeypatch, numba_s)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert [r for _, _, r in knn.where(layer)] == [route]


def test_a_route_chosen_while_kernels_compile_is_kept_until_a_compile_finishes(monkeypatch):
    """While Numba compiles, a layer runs torch's op without deciding again on every call (a
    decision costs about a millisecond); once a compile job finishes it asks the tuner again."""
    from kernelkit import compiling, core
    from kernelkit.ops import dispatch

    asked = []

    def choice_for(call, settings=None):
        asked.append(call.problem.shapes)
        return core.Choice("torch-cpu", {}, "warming")

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    monkeypatch.setattr(compiling, "finished", compiling.finished)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        assert len(asked) == 1
        monkeypatch.setattr(compiling, "finished", compiling.finished + 1)  # a job finished
        layer(x)
        layer(x)
    assert len(asked) == 2


def _timed_by(monkeypatch, cost, backward_cost=None):
    """The InContext trial's clock made fake: each call of a route advances it by
    cost(torch's op ran, grad enabled), and the route's backward (where it runs) by
    backward_cost(torch's op ran). Both routes of kernelkit.nn.linear are wrapped: torch's op
    (`linear._aten`) and the kernel route's two paths (`_route.kernel_route`'s arguments)."""
    from kernelkit.nn import _route, linear

    now = {"t": 0.0}

    class Backward(torch.autograd.Function):  # an identity whose backward takes `cost_s`
        @staticmethod
        def forward(ctx, y, cost_s):
            ctx.cost_s = cost_s
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            now["t"] += ctx.cost_s
            return grad, None

    def timed(route, aten):
        def run(m, x, w, b):
            now["t"] += cost(aten, torch.is_grad_enabled())
            y = route(m, x, w, b)
            if backward_cost is not None and y.requires_grad:
                y = Backward.apply(y, backward_cost(aten))
            return y
        return run

    kernel_route = _route.kernel_route
    monkeypatch.setattr(linear, "_aten", timed(linear._aten, True))
    monkeypatch.setattr(_route, "kernel_route", lambda plan, grad, aten, name, w, b: kernel_route(
        timed(plan, False), timed(grad, False), aten, name, w, b))
    monkeypatch.setattr(_route, "_clock", lambda: now["t"])


@pytest.mark.parametrize("kernel_s, route", [(2e-3, "torch (aten)"), (0.5e-3, "numba-cpu"),
                                             (0.98e-3, "torch (aten)")],
                         ids=["kernel_slower_in_the_model", "kernel_faster_in_the_model",
                              "a_tie_stays_with_torch"])
def test_a_kernel_keeps_the_layer_only_if_it_wins_inside_the_model(kernel_s, route, monkeypatch):
    """The tuner measured numba 2x faster alone; the layer's first calls alternate the kernel
    and torch's op, timed where they run, and the kernel keeps the layer only if its median is
    lower by TRIAL_MARGIN (a win measured alone turned into a loss inside ResNet-50 on this VM;
    a 2% win is a tie). Outputs are right on every call."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else kernel_s)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):
            assert [r for _, _, r in knn.where(layer)] in ([], ["numba-cpu"])  # deciding
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    (trial,) = layer._kk_routes.values()
    assert trial.verdict == pytest.approx((kernel_s, 1e-3))
    assert [r for _, _, r in knn.where(layer)] == [route]
    assert layer._kk_aten_only == (route == "torch (aten)")  # what torch.compile traces


@pytest.mark.parametrize("hooks", ["checkpoint", "save_on_cpu"])
def test_checkpointed_and_offloaded_layers_run_torchs_op_while_a_trial_decides(hooks,
                                                                                monkeypatch):
    """torch.utils.checkpoint(use_reentrant=False) recomputes the forward in the backward and
    checks that it saved the same tensors: a layer in its in-model trial ran the kernel route in
    one and torch's op in the other (CheckpointError: "A different number of tensors was saved
    during the original forward and recomputation"). Inside saved-tensor hooks a layer with grad
    runs torch's op, and its trial waits."""
    from torch.utils.checkpoint import checkpoint

    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.5e-3)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    ref = copy.deepcopy(layer)
    knn.patch(layer)
    x = torch.randn(3, 8, requires_grad=True)
    for _ in range(3 * (_route.TRIAL_CALLS + 1)):
        layer.zero_grad()
        x.grad = None
        if hooks == "checkpoint":
            y = checkpoint(layer, x, use_reentrant=False)
        else:
            with torch.autograd.graph.save_on_cpu():
                y = layer(x)
        y.square().sum().backward()
        want = ref(x.detach())
        torch.testing.assert_close(y, want)
    assert [r for _, _, r in knn.where(layer)] in ([], ["numba-cpu"])  # the trial still waits
    layer.zero_grad()
    _train_step(layer, x.detach())  # outside the hooks: the trial goes on


def test_the_in_model_trial_counts_grad_and_no_grad_calls_apart(monkeypatch):
    """A loop alternating inference and training calls: compared across modes, the kernel would
    get every cheap no-grad call and torch every training call, and the slower kernel would
    win. Compared within a mode, torch's op wins."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: (10 if grad else 1) * (1 if aten else 1.5) * 1e-3)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    for i in range(4 * (_route.TRIAL_CALLS + 1)):
        with torch.set_grad_enabled(i % 2 == 1):
            layer(x)
    assert [r for _, _, r in knn.where(layer)] == ["torch (aten)"]


def _train_step(layer, x):
    layer.zero_grad()
    layer(x).square().sum().backward()


def _trialled_both_ways(monkeypatch, kernel_s: float):
    """A patched Linear whose tuner chose numba, after its in-model trial ran in both grad
    modes: torch's op 1 ms forward and 1 ms backward, the kernel `kernel_s` forward and 3 ms
    backward (the training verdict is taken at the next training call). (layer, x)."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else kernel_s,
              backward_cost=lambda aten: 1e-3 if aten else 3e-3)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    for _ in range(2 * (_route.TRIAL_CALLS + 1)):
        with torch.no_grad():
            layer(x)
        _train_step(layer, x)
    return layer, x


def test_training_is_decided_on_forward_plus_backward_apart_from_inference(monkeypatch):
    """The kernel's forward is 2x faster but its backward 3x slower (torch's joint backward
    against one product per input): inference keeps the kernel, training steps go to torch's
    op. Decided on inference calls alone, the training step would run the slower route (the
    patched MobileNetV2's batch-1 training step ran 0.86-0.89x torch that way)."""
    layer, x = _trialled_both_ways(monkeypatch, 0.5e-3)
    (trial,) = layer._kk_routes.values()
    assert trial.verdicts[False] == pytest.approx((0.5e-3, 1e-3))
    assert list(trial.verdicts) == [False]  # training: decided at the next training call,
    # after its backward
    _train_step(layer, x)
    assert trial.verdicts[True] == pytest.approx((3.5e-3, 2e-3))
    assert trial.winners == {False: trial.kernel, True: trial.aten}
    assert [r for _, _, r in knn.where(layer)] == ["numba-cpu"]  # inference still runs it
    ref = nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref)
    y = layer(x)
    torch.testing.assert_close(y, ref)
    assert "Addmm" in type(y.grad_fn.next_functions[0][0]).__name__  # torch's own op


def test_a_training_step_keeps_a_kernel_only_on_a_wider_win(monkeypatch):
    """The kernel is 7% faster forward and backward: it keeps inference (TRIAL_MARGIN 1.05),
    but a training trial needs TRIAL_MARGIN_GRAD (1.1): three samples of a training step's
    layer spread more, and a 6% training verdict made a patched ResNet-50 training step 0.965x
    torch on a 2-core Zen 4."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 1e-3 / 1.07,
              backward_cost=lambda aten: 1e-3 if aten else 1e-3 / 1.07)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    for _ in range(2 * (_route.TRIAL_CALLS + 1) + 1):
        with torch.no_grad():
            layer(x)
        _train_step(layer, x)
    (trial,) = layer._kk_routes.values()
    assert trial.winners == {False: trial.kernel, True: trial.aten}
    assert trial.verdicts[True] == pytest.approx((2e-3 / 1.07, 2e-3))


def test_a_layer_whose_trial_has_not_decided_traces_torchs_op_until_it_does(monkeypatch):
    """A trial still open (one eager call made) is no in-model evidence that the kernel beats
    compiled torch, as for a layer no eager call decided: both grad modes trace torch's op. Once
    the inference trial decides for the kernel by COMPILE_MARGIN, the next trace takes the custom
    op. Before, the open trial traced the custom op in both grad modes."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.4e-3)
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        layer(x)
        assert knn.pending(layer) == 1
        assert "kernelkit" not in _graph_of(layer, x)
    assert "kernelkit" not in _graph_of(layer, x.requires_grad_())
    with torch.no_grad():
        x = x.detach()
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):
            layer(x)
        assert knn.pending(layer) == 0
        assert "kernelkit.linear" in _graph_of(layer, x)


@pytest.mark.parametrize("kernel_s, infer_traced", [(0.4e-3, "kernelkit.linear"),
                                                    (0.8e-3, "linear")],
                         ids=["won_inference_by_2.5x", "won_inference_by_1.25x"])
def test_torch_compile_traces_each_grad_mode_as_its_trial_decided(kernel_s, infer_traced,
                                                                  monkeypatch):
    """The kernel won the layer's inference trial and lost its training one (forward plus
    backward): a compiled training graph traces torch's op, and a compiled inference graph the
    custom op only if the kernel won by COMPILE_MARGIN (Inductor's graph around torch's op is
    faster than the eager op the trial timed). On a 2-core Zen 4 a compiled ResNet-50 training
    step ran 0.89-0.92x compiled torch with one or two custom-op convs that had won their
    trials by 1.05-1.2x."""
    from kernelkit.nn import _route

    assert 2.5 > _route.COMPILE_MARGIN > 1.25
    layer, x = _trialled_both_ways(monkeypatch, kernel_s)
    _train_step(layer, x)
    (trial,) = layer._kk_routes.values()
    assert trial.winners == {False: trial.kernel, True: trial.aten}
    assert (layer._kk_aten_only, layer._kk_aten_only_grad) == (infer_traced == "linear", True)
    monkeypatch.undo()  # (the fake clock's wrappers out of the way of dynamo)
    with torch.no_grad():
        graph = _graph_of(layer, x)
    assert infer_traced in graph and (infer_traced != "linear" or "kernelkit" not in graph)
    graph = _graph_of(layer, x)
    assert "linear" in graph and "kernelkit" not in graph


def test_a_grad_mode_without_backward_is_decided_on_its_forwards(monkeypatch):
    """Forward calls with grad enabled and no backward (a validation loop without no_grad):
    the trial must still end, on the forward times, after TRIAL_FORWARD_ONLY_AFTER calls."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 2e-3,
              backward_cost=lambda aten: 1e-3)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    for _ in range(2 * _route.TRIAL_FORWARD_ONLY_AFTER - 1):
        layer(x)
    (trial,) = layer._kk_routes.values()
    assert trial.winners[True] is None
    layer(x)
    layer(x)
    assert trial.verdicts[True] == pytest.approx((2e-3, 1e-3))
    assert [r for _, _, r in knn.where(layer)] == ["torch (aten)"]


@pytest.mark.parametrize("make", ["conv_bias_relu", "conv_no_bias", "linear", "kernelkit_conv",
                                  "frozen_weight"])
def test_the_trial_clocks_a_layers_backward_on_its_own_nodes(make, monkeypatch):
    """`_clock_backward` finds the node that gives the weight's gradient behind each route's
    output (torch's ops, with a bias and an activation after the product; kernelkit's autograd
    Function) and clocks from the gradient's arrival to that node's end; a frozen weight clocks
    nothing; no hook is left on the parameters."""
    from kernelkit.nn import _route
    from kernelkit.ops.conv2d import ConvPlans
    from kernelkit.ops.torch_ops import eager_conv2d

    ticks = iter(range(1, 100))
    monkeypatch.setattr(_route, "_clock", lambda: float(next(ticks)))
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=make != "frozen_weight")
    b = None if make == "conv_no_bias" else torch.randn(4, requires_grad=make != "frozen_weight")
    if make == "linear":
        x, w = torch.randn(5, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
        y = nn.functional.linear(x, w, b)
    elif make == "kernelkit_conv":
        plans = ConvPlans((1, 1), (1, 1, 1, 1), (1, 1), 1, "relu", None, False)
        y = eager_conv2d()(x, w, b, plans)
    else:
        y = torch.relu(nn.functional.conv2d(x, w, b, padding=1))
    sample = [0.5, None]
    _route._clock_backward(y, w, b, sample)
    if make == "frozen_weight":
        assert sample == [0.5, 0.0]
        return
    assert sample[1] is None
    y.sum().backward()
    assert sample[1] == 1.0  # two clock reads: the gradient's arrival, then the product's end
    assert not w._backward_hooks


def test_one_layer_is_in_trial_at_a_time_the_others_run_torch_meanwhile(monkeypatch):
    """Two kernel-routed layers: the first one called holds the trial until it decides, the
    second runs torch's op meanwhile (its kernel would otherwise be timed next to the first's
    kernel, not next to where the settled model runs); then the second is tried. `pending`
    counts the layers still to decide."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.5e-3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    knn.patch(model)
    x = torch.randn(3, 8)
    ref = model[1](model[0](x)).detach()  # (grad mode: no trial runs)
    calls = 2 * (_route.TRIAL_CALLS + 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref)
        first, second = (next(iter(layer._kk_routes.values())) for layer in model)
        assert knn.pending(model) == 2
        for _ in range(calls - 1):
            assert second.samples[False] == ([], [])  # waiting: torch's op, untimed
            torch.testing.assert_close(model(x), ref)
        assert first.winners[False] is first.kernel and second.winners[False] is None
        assert _route.pending(model) == 1
        for _ in range(calls):
            torch.testing.assert_close(model(x), ref)
        assert second.winners[False] is second.kernel and _route.pending(model) == 0
    assert [r for _, _, r in knn.where(model)] == ["numba-cpu", "numba-cpu"]


def test_a_trial_left_idle_hands_its_slot_on(monkeypatch):
    """A layer that started its trial on a one-off input size and is never called again must not
    keep every other layer on torch: after TRIAL_SLOT_IDLE_S without a call its slot is taken."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.5e-3)
    monkeypatch.setattr(_route, "TRIAL_SLOT_IDLE_S", 0.01)
    one_off, layer = nn.Linear(8, 4), nn.Linear(8, 4)
    knn.patch(one_off)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        one_off(torch.randn(7, 8))
        for _ in range(12):  # 10 ms of (fake) torch calls, then its trial
            layer(x)
        assert _route.pending(layer) == 1
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):
            layer(x)
        assert _route.pending(layer) == 0
        assert _route.pending(one_off) == 1


def test_pending_counts_only_the_current_settings_routes(monkeypatch):
    """Routes made under other knobs (e.g. a tuning pass under KERNELKIT_TUNE=measure) stay in
    the layer's memo but are never called again: `pending` must not wait for them."""
    import kernelkit
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.5e-3)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        with kernelkit.use(tune="measure"):
            layer(x)  # a route (and a trial) under other settings
            assert knn.pending(layer) == 1
        _route._SLOTS[False][0] = None  # (that trial is left behind, as a tuning pass leaves it)
        assert knn.pending(layer) == 0  # nothing made under the current settings yet
        layer(x)
        assert knn.pending(layer) == 1
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):
            layer(x)
        assert knn.pending(layer) == 0 and len(layer._kk_routes) == 2


def test_a_trial_made_under_other_settings_hands_its_slot_on_at_once(monkeypatch):
    """A tuning pass (KERNELKIT_TUNE=measure) starts a trial that is never called again once the
    default settings are back: the layers' trials under those must not wait its idle time."""
    import kernelkit
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else 0.5e-3)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(3, 8)
    with torch.no_grad():
        with kernelkit.use(tune="measure"):
            layer(x)
        left_behind = _route._SLOTS[False][0]
        assert left_behind is not None
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):  # 8 ms of (fake) time, not 1 s
            layer(x)
        assert knn.pending(layer) == 0
        assert left_behind.winners[False] is None


def test_no_in_model_trial_where_a_choice_is_asked_for_or_ranks_must_agree():
    from kernelkit.nn import _route

    x = torch.randn(2, 3)
    assert _route.checks_in_context(x)
    with kernelkit.use(backend="numba"):
        assert not _route.checks_in_context(x)
    with kernelkit.use(tune="pinned"):
        assert not _route.checks_in_context(x)
    assert not _route.checks_in_context(torch.randn(2, 3, device="meta"))


def _rows_timed(monkeypatch, aten_per_row: float, kernel_per_row: float) -> dict:
    """`_timed_by` with each call's cost proportional to its input's rows (the work of a
    Linear): per row `aten_per_row` for torch's op, `kernel_per_row` for the kernel. Returns the
    dict whose "rows" the test sets before each call."""
    rows = {"rows": 1}
    _timed_by(monkeypatch, lambda aten, grad: rows["rows"] * (aten_per_row if aten
                                                                else kernel_per_row))
    return rows


def test_varying_input_sizes_of_one_size_bucket_share_one_in_model_trial(monkeypatch):
    """NLP-style inputs: every call a new sequence length. Each length is a new route, and each
    route started its own trial: none ever had its TRIAL_CALLS + 1 calls of each kind, so the
    layer stayed in trial (half its calls on the slower route, every other layer of the model
    held on torch's op by the one-layer-at-a-time slot) for good. Lengths of one size bucket
    (the tuner's, `autotune.key.bucket`) now share one trial, whose samples are per unit of
    work; a decided bucket decides each new length of it at its first call."""
    from kernelkit.autotune.key import bucket
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    rows = _rows_timed(monkeypatch, 1e-5, 0.5e-5)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    lengths = list(range(33, 33 + 2 * (_route.TRIAL_CALLS + 1)))
    assert len({bucket(n) for n in lengths}) == 1
    with torch.no_grad():
        for n in lengths:
            rows["rows"] = n
            x = torch.randn(n, 8)
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
        assert knn.pending(layer) == 0
        rows["rows"] = 45  # a new length of the bucket: decided at its first call
        assert bucket(rows["rows"]) == bucket(lengths[0])
        layer(torch.randn(rows["rows"], 8))
        assert knn.pending(layer) == 0
    trials = {id(_route._trial_of(r).lead) for r in layer._kk_routes.values()}
    assert len(trials) == 1
    assert {r for _, _, r in knn.where(layer)} == {"numba-cpu"}
    lead = _route._trial_of(next(iter(layer._kk_routes.values())))
    assert lead.verdict == pytest.approx((33 * 0.5e-5, 33 * 1e-5))  # per the lead's work


def test_another_size_bucket_has_its_own_in_model_trial(monkeypatch):
    """A verdict holds for the sizes it was taken on: 17 rows and 100 rows (other buckets) are
    tried apart, and each keeps its own winner."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    rows = _rows_timed(monkeypatch, 1e-5, 0.5e-5)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        for n in (17, 100):
            rows["rows"] = n
            x = torch.randn(n, 8)
            for _ in range(2 * (_route.TRIAL_CALLS + 1)):
                layer(x)
            assert knn.pending(layer) == 0
    leads = {id(_route._trial_of(r).lead) for r in layer._kk_routes.values()}
    assert len(leads) == 2


def _torch_chosen(monkeypatch, source: str = "cache", recheck_after: int = 0) -> list:
    """The tuner's choice for any matmul: torch-cpu (`source`, `recheck_after` as given).
    Returns the list of the problems' first shapes the tuner was asked for."""
    from kernelkit import core
    from kernelkit.ops import dispatch

    asked = []

    def choice_for(call, settings=None):
        asked.append(call.problem.shapes[0])
        return core.Choice("torch-cpu", {}, source, recheck_after)

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    return asked


def test_new_sizes_of_a_size_bucket_torch_won_take_torchs_op_without_asking_again(
        monkeypatch):
    """NLP-style inputs, every call a new length: each new length prepared its call and asked
    the tuner (0.5-1 ms), and once 64 sizes were memoised the memo was cleared, so nearly every
    call paid it: a patched Linear(64, 64) fed lengths 1-512 ran 634 us a call against torch's
    62. The tuner's choice is per size bucket: a bucket that chose torch is asked once."""
    from kernelkit.autotune.key import bucket

    asked = _torch_chosen(monkeypatch)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    lengths = [n for n in range(1, 200)] * 2
    with torch.no_grad():
        for n in lengths:
            x = torch.randn(2, n, 8)
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert len(asked) == len({bucket(2 * n) for n in lengths})
    assert {r for _, _, r in knn.where(layer)} == {"torch (aten)"}
    assert layer._kk_aten_only and layer._kk_aten_only_grad


def test_the_route_memo_drops_its_oldest_sizes_not_all_of_them(monkeypatch):
    from kernelkit.nn import _route

    _torch_chosen(monkeypatch)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        for n in range(1, _route.MAX_ROUTES + 11):
            layer(torch.randn(n, 8))
    kept = [sig[0][0] for sig in layer._kk_routes]
    assert kept == list(range(11, _route.MAX_ROUTES + 11))


def test_more_sizes_than_the_route_memo_holds_find_torchs_op_without_a_new_route(
        monkeypatch):
    """Past MAX_ROUTES sizes every call of a new length made a route again (its size bucket,
    the memo's bookkeeping: 4.7 us over torch's call where a memoised one costs 1). Sizes whose
    bucket torch settled are remembered apart, many more of them, and found without a route;
    dropping the routes (a changed layer, unpatch) drops them too."""
    from kernelkit.nn import _route

    _torch_chosen(monkeypatch)
    made = []
    new_route = _route._new_route
    monkeypatch.setattr(_route, "_new_route", lambda *a: made.append(a[-1]) or new_route(*a))
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    lengths = range(1, 3 * _route.MAX_ROUTES)
    with torch.no_grad():
        for n in lengths:
            layer(torch.randn(n, 8))
        assert len(made) == len(lengths)
        for n in reversed(lengths):
            x = torch.randn(n, 8)
            torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight, layer.bias))
    assert len(made) == len(lengths)  # (the second pass made none)
    assert len(layer._kk_routes) == _route.MAX_ROUTES
    assert "_kk_aten_sigs" not in copy.deepcopy(layer).__dict__
    knn.unpatch(layer)
    assert not any(k.startswith("_kk_") for k in layer.__dict__)


@pytest.mark.parametrize("how", ["recheck_after", "warming"])
def test_a_size_bucket_whose_choice_the_tuner_revisits_is_asked_again(how, monkeypatch):
    """A choice made without measuring (the tuner counts the bucket's calls until measuring
    pays) is asked again for each new size; a stand-in while kernels compile holds for the bucket
    until a compile job finishes."""
    from kernelkit import compiling

    asked = _torch_chosen(monkeypatch, source="warming" if how == "warming" else "model",
                          recheck_after=5 if how == "recheck_after" else 0)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        for n in (17, 18, 19):
            layer(torch.randn(n, 8))
        assert len(asked) == (3 if how == "recheck_after" else 1)
        if how == "warming":
            monkeypatch.setattr(compiling, "finished", compiling.finished + 1)
            layer(torch.randn(20, 8))
            layer(torch.randn(17, 8))  # (memoised before the job finished: asked again too)
            assert len(asked) == 2


def test_a_conv_asks_once_per_size_bucket_of_its_images(monkeypatch):
    """The conv's buckets: each dim as the tuner buckets it, the channels exact; an unbatched
    image is a bucket of its own."""
    from kernelkit import core
    from kernelkit.autotune.key import bucket
    from kernelkit.ops import dispatch

    asked = []

    def choice_for(call, settings=None):
        asked.append(call.problem.shapes[0])
        return core.Choice("torch-cpu", {}, "cache")

    monkeypatch.setattr(dispatch, "choice_for", choice_for)
    layer = nn.Conv2d(3, 4, 3, padding=1)
    knn.patch(layer)
    sizes = [(h, w) for h in range(17, 30) for w in (20, 23)]
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(2, 3, h, w)
            torch.testing.assert_close(layer(x), nn.functional.conv2d(x, layer.weight,
                                                                      layer.bias, padding=1))
        layer(torch.randn(3, 17, 20))
    assert len(asked) == len({(bucket(h), bucket(w)) for h, w in sizes}) + 1


def test_threads_calling_one_layer_with_new_sizes_share_its_memo(monkeypatch):
    """Two threads that both found the memo full dropped the same oldest size: the second
    `del` raised KeyError out of the layer's forward."""
    import random
    import threading

    _torch_chosen(monkeypatch)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    errors = []

    def serve(seed):
        rng = random.Random(seed)
        try:
            with torch.no_grad():
                for _ in range(400):
                    layer(torch.randn(rng.randint(1, 600), 8))
        except Exception as exc:  # noqa: BLE001 - what the test looks for
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_sizes_of_a_decided_bucket_show_its_verdict_before_their_next_call(monkeypatch):
    """Lengths of one bucket, one call each, torch faster in the model: the trial decided for
    torch, but the sizes called before the verdict still showed the kernel in `where` and kept
    torch.compile tracing the custom op (`_kk_aten_only` False) until each was called again."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    rows = _rows_timed(monkeypatch, 0.5e-5, 1e-5)  # torch twice as fast
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        for n in range(33, 33 + 2 * (_route.TRIAL_CALLS + 1)):
            rows["rows"] = n
            layer(torch.randn(n, 8))
    assert knn.pending(layer, False) == 0
    assert {r for _, _, r in knn.where(layer)} == {"torch (aten)"}
    assert layer._kk_aten_only


def test_a_tuned_config_is_tried_apart_from_the_stand_in_that_lost(monkeypatch):
    """A stand-in (run while better kernels compiled) lost its bucket's trial; the tuned config
    the tuner then chose for the bucket would have taken that verdict without a trial."""
    from kernelkit import compiling, core
    from kernelkit.nn import _route
    from kernelkit.ops import dispatch

    _numba_chosen(monkeypatch, 0.5e-3)
    numba = core.get("matmul", "numba-cpu")
    source = {"source": "warming"}
    monkeypatch.setattr(dispatch, "choice_for", lambda call, settings=None: core.Choice(
        "numba-cpu", numba.space(call.problem)[0 if source["source"] == "warming" else -1],
        source["source"]))
    cost = {"kernel": 2e-3}
    _timed_by(monkeypatch, lambda aten, grad: 1e-3 if aten else cost["kernel"])
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    x = torch.randn(40, 8)
    with torch.no_grad():
        for _ in range(2 * (_route.TRIAL_CALLS + 1)):
            layer(x)
        assert [r for _, _, r in knn.where(layer)] == ["torch (aten)"]  # the stand-in lost
        source["source"], cost["kernel"] = "cache", 0.5e-3  # compiled, and tuned
        monkeypatch.setattr(compiling, "finished", compiling.finished + 1)
        for _ in range(2 * (_route.TRIAL_CALLS + 1) + 1):
            layer(torch.randn(41, 8))  # a new size of the bucket: its own trial
    assert knn.pending(layer, False) == 0
    assert "numba-cpu" in {r for _, shape, r in knn.where(layer) if shape == (41, 8)}


def test_a_weight_swapped_for_another_layout_asks_the_tuner_again(monkeypatch):
    """A bucket torch won is kept per weight: a conv weight made channels_last is another
    problem for the tuner, asked at the next new size rather than taking the old verdict."""
    from kernelkit import core
    from kernelkit.ops import dispatch

    asked = []
    monkeypatch.setattr(dispatch, "choice_for", lambda call, settings=None: asked.append(1)
                        or core.Choice("torch-cpu", {}, "cache"))
    layer = nn.Conv2d(3, 4, 3, padding=1)
    knn.patch(layer)
    with torch.no_grad():
        layer(torch.randn(2, 3, 17, 20))
        layer(torch.randn(2, 3, 18, 20))
        assert len(asked) == 1
        layer.weight.data = layer.weight.data.to(memory_format=torch.channels_last)
        layer(torch.randn(2, 3, 19, 20))
    assert len(asked) == 2


def test_flags_read_under_other_knobs_are_read_again_at_a_new_size_of_a_torch_bucket(
        monkeypatch):
    _torch_chosen(monkeypatch)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        layer(torch.randn(17, 8))
        assert layer._kk_aten_only
        # as a tuning pass under other knobs leaves them (kernel routes: custom ops traced)
        layer.__dict__.update(_kk_aten_only=False, _kk_aten_only_grad=False,
                              _kk_aten_token=("other knobs",))
        layer(torch.randn(18, 8))  # a new size of the bucket, under the default knobs
    assert layer._kk_aten_only and layer._kk_aten_only_grad


def test_pending_counts_open_trials_not_input_sizes(monkeypatch):
    """Lengths of one bucket share one trial: `pending` said 8 (one per length) where one trial
    was open, and a benchmark waiting for it to reach 0 on varying lengths could wait for good."""
    from kernelkit.nn import _route

    _numba_chosen(monkeypatch, 0.5e-3)
    _rows_timed(monkeypatch, 1e-5, 0.5e-5)
    layer = nn.Linear(8, 4)
    knn.patch(layer)
    with torch.no_grad():
        for n in range(33, 33 + _route.TRIAL_CALLS):
            layer(torch.randn(n, 8))
        assert len(layer._kk_routes) == _route.TRIAL_CALLS and knn.pending(layer) == 1


def test_a_forced_numpy_backend_runs_numpy_in_a_patched_linear():
    # numpy's candidate counted as torch's op ("the vendor"), so the layer ran F.linear
    layer = nn.Linear(4, 3)
    knn.patch(layer)
    x = torch.randn(2, 4)
    with kernelkit.use(backend="numpy"):
        y = layer(x)
        assert knn.where(layer) == [("", (2, 4), "numpy-cpu")]
    torch.testing.assert_close(y, nn.functional.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("vendor_ms,want", [(1.1, "torch (aten)"), (2.0, "numba-cpu")])
def test_an_adopted_distributed_choice_routes_by_the_deciding_ranks_entry(monkeypatch, tmp_path,
                                                                          vendor_ms, want):
    """In a distributed job a rank adopts another rank's choice with that rank's measured entry.
    On a machine of another kind the entry is not stored in its own cache, and the layer's
    KERNEL_MARGIN rule (torch's op where torch is within 1.2x of the kernel) read its own empty
    cache: that rank ran the kernel where the deciding rank ran torch's op."""
    import types

    import torch.distributed as dist

    from kernelkit import core
    from kernelkit.autotune import shared, tuner

    store, group = dist.HashStore(), object()
    fake = types.SimpleNamespace(
        PrefixStore=dist.PrefixStore,
        distributed_c10d=types.SimpleNamespace(_get_default_store=lambda: store,
                                               _get_default_group=lambda: group))
    monkeypatch.setattr(tuner, "distributed_peers", lambda: fake)
    real_choose = tuner.choose

    def choose(problem, cands, runner, verify, settings):  # another rank decided it, elsewhere
        key = tuner.make_key(problem, tuner.forced_suffix(settings))
        cand = core.get(problem.op, "numba-cpu")
        entry = {"trials": [{"candidate": "numba-cpu", "median": 1.0},
                            {"candidate": "torch-cpu", "median": vendor_ms}]}
        payload = ({"candidate": cand.name, "config": cand.space(problem)[0],
                    "source": "measured"}, 0, "another kind of machine", entry)
        import pickle

        dist.PrefixStore("kernelkit/choices", store).compare_set(
            f"{settings.tune}|{key}#0", "", pickle.dumps(payload))
        return real_choose(problem, cands, runner, verify, settings)

    monkeypatch.setattr(tuner, "choose", choose)
    tuner.clear_memo()
    layer = knn.Linear(128, 10)
    with kernelkit.use(cache_dir=str(tmp_path)), torch.no_grad():
        layer(torch.randn(8, 128))
    assert [r for _, _, r in knn.where(layer)] == [want]
    tuner.clear_memo()
    shared.reset()


def test_where_and_pending_read_while_another_thread_runs_the_model():
    """A notebook trains in a thread and checks on it from a cell: `where` and `pending`
    iterated a layer's routes while the forward added and evicted them ("dictionary changed
    size during iteration")."""
    import threading
    import time

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    knn.patch(model)
    stop, errors = threading.Event(), []

    def run():
        i = 0
        with torch.no_grad():
            while not stop.is_set():
                model(torch.randn(1 + i % 300, 16))
                i += 1

    worker = threading.Thread(target=run)
    worker.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                knn.where(model)
                knn.pending(model)
            except RuntimeError as exc:
                errors.append(exc)
                break
    finally:
        stop.set()
        worker.join(30)
    assert errors == []
