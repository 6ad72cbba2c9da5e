"""kernelkit inside torch: the custom op, autograd through it, torch.compile, nn.Linear, patch()."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import kernelkit
from kernelkit.kernels import ACTIVATIONS
from kernelkit.ops.torch_ops import matmul_op


def _batched_matmul(lib, g):
    a = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    b = torch.randn(7, 6, generator=g, requires_grad=True)
    return (a, b), (lambda: kernelkit.matmul(a, b)) if lib else (lambda: torch.matmul(a, b))


def _broadcast_matmul(lib, g):
    a = torch.randn(2, 1, 4, 5, generator=g, requires_grad=True)
    b = torch.randn(3, 5, 2, generator=g, requires_grad=True)
    return (a, b), (lambda: kernelkit.matmul(a, b)) if lib else (lambda: torch.matmul(a, b))


def _channels_last_conv(lib, g):
    x = torch.randn(2, 3, 8, 7, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(4, 3, 3, 3, generator=g)
    x.requires_grad_(), w.requires_grad_()
    return (x, w), (lambda: kernelkit.conv2d(x, w, padding=1)) if lib \
        else (lambda: torch.nn.functional.conv2d(x, w, padding=1))


def _registered_ops(lib, g):
    """The registered ops called directly (their autograd is torch.library's, not the eager
    Function's)."""
    a = torch.randn(3, 5, 7, generator=g, requires_grad=True)
    w = torch.randn(6, 7, generator=g, requires_grad=True)
    x = torch.randn(2, 3, 8, 7, generator=g).contiguous(memory_format=torch.channels_last)
    k = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    x.requires_grad_()
    ops = torch.ops.kernelkit
    if lib:
        calls = (lambda: ops.matmul(a, w.mT, None, None, False),
                 lambda: ops.linear(a, w, None, None, False),
                 lambda: ops.conv2d(x, k, None, [1, 1], [1, 1, 1, 1], [1, 1], 1, None, None,
                                    False))
    else:
        calls = (lambda: a @ w.mT, lambda: torch.nn.functional.linear(a, w),
                 lambda: torch.nn.functional.conv2d(x, k, padding=1))

    def fn():
        ys = [call() for call in calls]
        for y in ys:
            y.add_(0.25)  # (on each op's own result)
        return torch.cat([y.flatten() for y in ys])

    return (a, w, x, k), fn


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("case", [_batched_matmul, _broadcast_matmul, _channels_last_conv,
                                  _registered_ops],
                         ids=["batched_matmul", "broadcast_matmul", "channels_last_conv",
                              "registered_ops"])
def test_an_inplace_op_on_a_result_with_grad_works_as_on_torchs(backend, case):
    """A batched product's result (the kernel's (M, N) output reshaped) and a channels_last
    conv's (the NHWC output permuted) were views made inside the eager autograd Function:
    `y.relu_()` or `y += 1` on them raised at backward ("... is a view and is being modified
    inplace"), where torch's own results take it."""
    grads = []
    for lib in (True, False):
        inputs, fn = case(lib, torch.Generator().manual_seed(5))
        with kernelkit.use(backend=backend):
            y = fn()
            y.mul_(2).sub_(0.5)
            y.relu_()
        y.square().sum().backward()
        grads.append([t.grad for t in inputs])
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_compile_cache_tag_of_an_install_without_source_files_is_its_version(
        monkeypatch):
    """A zipped or frozen install has no source file to hash: the tag raised there, inside the
    hook that registers the ops' stand-ins with torch.compile, and took them down with it."""
    from kernelkit.ops import compiled, torch_ops

    for missing in ("/no/such/bundle.pyz/kernelkit/ops/torch_ops.py", None):
        monkeypatch.setattr(torch_ops, "__file__", missing)
        assert compiled.compile_cache_tag().startswith(f"kernelkit-{kernelkit.__version__}-")


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("route, a_shape", [
    (route, shape) for route in ("patched_linear", "matmul", "registered_op")
    for shape in ((5, 16), (3, 5, 16), (16,))
    if not (route == "registered_op" and len(shape) == 1)])  # (the op takes matrices)
def test_a_weight_used_transposed_gets_a_gradient_laid_out_as_the_weight(backend, route,
                                                                          a_shape):
    """`x @ W.t()` (a patched Linear, or the op on a weight's transpose): the weight's gradient,
    as `torch.autograd.grad` and a tensor hook see it, came transposed (strides (1, out)) where
    torch's is contiguous, and the usual flattening `g.view(-1)` raised."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 16, generator=g, dtype=torch.float64)
    a = torch.randn(*a_shape, generator=g, dtype=torch.float64, requires_grad=True)
    layer = kernelkit.nn.Linear(16, 8, bias=False, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(w)
    w = layer.weight if route == "patched_linear" else w.clone().requires_grad_()
    hooked = []
    w.register_hook(lambda gw: hooked.append(gw.view(-1)))  # (raises on a transposed layout)
    with kernelkit.use(backend=backend):
        if route == "patched_linear":
            y = layer(a)
        elif route == "matmul":
            y = kernelkit.matmul(a, w.t())
        else:
            y = matmul_op()(a, w.t(), None, None, False)
    grad_out = torch.randn(y.shape, generator=g, dtype=torch.float64)
    ga, gw = torch.autograd.grad(y, (a, w), grad_out)
    assert len(hooked) == 1
    w_ref = w.detach().clone().requires_grad_()
    want_a, want_w = torch.autograd.grad(torch.matmul(a, w_ref.t()), (a, w_ref), grad_out)
    assert gw.stride() == want_w.stride() == (16, 1)
    torch.testing.assert_close(gw, want_w, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, want_a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_fused_relus_result_changed_in_place_raises_at_backward_as_torchs(backend):
    """The ReLU's gradient is read from its result, as torch's relu saves it (the backward no
    longer recomputes the product): changing that result in place before the backward raises as
    torch's chain does, rather than giving the gradient of the unchanged graph."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(4, 5, generator=g, requires_grad=True)
    b = torch.randn(5, 3, generator=g)
    with kernelkit.use(backend=backend):
        ours = kernelkit.matmul(a, b, activation="relu")
    for y in (torch.relu(a @ b), ours):
        y.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


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


@pytest.mark.parametrize("backend", [None, "numba"])
def test_under_torchs_deterministic_flag_a_sizes_calls_give_the_same_bits(backend, tmp_path,
                                                                           monkeypatch):
    """`torch.use_deterministic_algorithms(True)`: the same inputs give the same bits call after
    call. Before, on a fresh cache a conv's first call ran the cost model's config and the next
    measured and switched to another, whose sums run in another order (the weight gradient
    1.9e-7 apart); a first call's stand-in while kernels compiled, and a layer's in-model trial,
    switch kernels the same way. Under the flag a size's choice is made once, as under
    KERNELKIT_TUNE=pinned."""
    g = torch.Generator().manual_seed(4)
    # (a reduction long enough for the configs' blockings to sum in another order)
    x, w = torch.randn(8, 32, 28, 28, generator=g), torch.randn(64, 32, 3, 3, generator=g)
    a, b = torch.randn(96, 1500, generator=g), torch.randn(1500, 200, generator=g)
    layer = torch.nn.Conv2d(32, 64, 3, padding=1)
    kernelkit.nn.patch(layer)
    from kernelkit.autotune import tuner

    measured = []  # (whether a measurement picks another config than the model's is noise)
    real = tuner.measure_all
    monkeypatch.setattr(tuner, "measure_all", lambda *a, **k: measured.append(1) or real(*a, **k))
    runs = []
    torch.use_deterministic_algorithms(True)
    try:
        with kernelkit.use(backend=backend, cache_dir=tmp_path, compile="background"):
            for _ in range(4):
                xs, ws, a_s = (t.clone().requires_grad_() for t in (x, w, a))
                y = kernelkit.conv2d(xs, ws, padding=1)
                c = kernelkit.matmul(a_s, b, activation="gelu")
                z = layer(xs)
                (y.square().sum() + c.square().sum() + z.square().sum()).backward()
                runs.append([t.detach() for t in (y, c, z, xs.grad, ws.grad, a_s.grad,
                                                  layer.weight.grad)])
                layer.zero_grad()
    finally:
        torch.use_deterministic_algorithms(False)
    assert not measured and not layer.__dict__.get("_kk_trials")
    for run in runs[1:]:
        for got, want in zip(run, runs[0]):
            assert torch.equal(got, want)


def _compiled_cases():
    g = torch.Generator().manual_seed(6)
    a, b, v = (torch.randn(3, 5, 7, generator=g), torch.randn(7, 4, generator=g),
               torch.randn(7, generator=g))
    x, w = torch.randn(2, 3, 9, 8, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    bias = torch.randn(4, generator=g)
    images = torch.randint(0, 256, (2, 10, 12, 3), dtype=torch.uint8, generator=g)
    return {
        "matmul": (lambda: kernelkit.matmul(a, b, activation="gelu"),
                   lambda: torch.nn.functional.gelu(a @ b), "kernelkit.matmul"),
        "matmul_vector": (lambda: kernelkit.matmul(a, v), lambda: a @ v, "kernelkit.matmul"),
        "conv2d": (lambda: kernelkit.conv2d(x, w, bias, padding="same", activation="relu"),
                   lambda: torch.relu(torch.nn.functional.conv2d(x, w, bias, padding="same")),
                   "kernelkit.conv2d"),
        "conv2d_channels_last": (
            lambda: kernelkit.conv2d(x.contiguous(memory_format=torch.channels_last), w,
                                     stride=2),
            lambda: torch.nn.functional.conv2d(x, w, stride=2), "kernelkit.conv2d"),
        "conv2d_unbatched": (lambda: kernelkit.conv2d(x[0], w, padding=1),
                             lambda: torch.nn.functional.conv2d(x[0], w, padding=1),
                             "kernelkit.conv2d"),
        "preprocess": (lambda: kernelkit.preprocess(images, size=6, mean=(1.0, 2.0, 3.0),
                                                    std=(50.0, 60.0, 70.0)),
                       lambda: kernelkit.preprocess(images, size=6, mean=(1.0, 2.0, 3.0),
                                                    std=(50.0, 60.0, 70.0)),
                       "kernelkit.preprocess"),
    }


@pytest.mark.parametrize("name", list(_compiled_cases()))
def test_the_ops_called_in_compiled_code_trace_as_their_registered_op(name):
    """kernelkit.matmul / conv2d / preprocess called in code torch.compile traces: the graph
    holds the registered op, fullgraph=True included. Before, dynamo traced into the ops'
    Python (the plan memo, the knobs): fullgraph raised "torch.* op returned non-Tensor", and
    without it dynamo broke the graph about ten times, then failed its own assert ("Guard failed
    on the same frame it was created")."""
    ours, want, op = _compiled_cases()[name]
    targets: list = []

    def backend(gm, inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(ours, backend=backend, fullgraph=True)()
    assert any(t.startswith(op) for t in targets), targets
    torch.testing.assert_close(got, want(), rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(ours, backend="eager")(), want(),
                               rtol=1e-4, atol=1e-4)


def test_torchs_compile_caches_are_keyed_on_kernelkits_registrations(tmp_path, monkeypatch):
    """torch's FX-graph and AOTAutograd caches key a graph on its ops' names, not on their
    registered backward: after an upgrade of kernelkit, a step compiled before ran the old
    backward formula from the cache (shown with a custom op whose backward changed between two
    processes: torch 2.13 gave the first process's gradient in the second). kernelkit's version
    and its registrations' digest now go into ``torch.compiler.config.cache_key_tag`` when
    dynamo loads, after a tag of the user's own."""
    import subprocess
    import sys
    from pathlib import Path

    from kernelkit.ops import compiled, torch_ops

    code = ("import kernelkit, torch\n"
            "torch.compile(lambda x: x + 1, backend='eager')(torch.ones(2))\n"
            "from kernelkit.ops.compiled import compile_cache_tag\n"
            "print(torch.compiler.config.cache_key_tag, compile_cache_tag(), sep='|')\n")
    for user_tag in ("", "mine"):
        env = {**os.environ, "TORCH_COMPILE_CACHE_KEY_TAG": user_tag,
               "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300, check=True).stdout.strip().splitlines()[-1]
        tag, ours = out.split("|")
        assert ours.startswith(f"kernelkit-{kernelkit.__version__}-")
        assert tag == (f"{user_tag};{ours}" if user_tag else ours)
    # an edit of the registrations changes the tag
    edited = tmp_path / "torch_ops.py"
    edited.write_bytes(Path(torch_ops.__file__).read_bytes() + b"\n# edited\n")
    before = compiled.compile_cache_tag()
    monkeypatch.setattr(torch_ops, "__file__", str(edited))
    assert compiled.compile_cache_tag() != before


@pytest.mark.parametrize("op", ["matmul", "conv2d"])
def test_the_ops_in_compiled_code_under_func_grad_run_torchs_ops(op):
    """torch.compile(torch.func.grad(f)) where f calls kernelkit.matmul / conv2d: the traced
    stand-in called the registered op, which fails under the transform ("RuntimeError when
    making fake tensor call"); as in eager, torch's own ops run there (a review found it)."""
    g = torch.Generator().manual_seed(8)
    if op == "matmul":
        w, x = torch.randn(8, 5, generator=g), torch.randn(6, 8, generator=g)
        f = lambda v: kernelkit.matmul(v, w, activation="relu").square().sum()
    else:
        w, x = torch.randn(4, 3, 3, 3, generator=g), torch.randn(2, 3, 8, 8, generator=g)
        f = lambda v: kernelkit.conv2d(v, w, padding=1).square().sum()
    want = torch.func.grad(f)(x)
    torch._dynamo.reset()
    got = torch.compile(torch.func.grad(f), backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(got, want)


def _default_device_cases():
    g = torch.Generator().manual_seed(5)
    x, w, b = (torch.randn(2, 6, 9, 8, generator=g), torch.randn(4, 6, 3, 3, generator=g),
               torch.randn(4, generator=g))
    a, m = torch.randn(33, 40, generator=g), torch.randn(40, 17, generator=g)
    imgs = torch.randint(0, 256, (3, 30, 41, 3), generator=g, dtype=torch.uint8)
    norm = dict(size=16, mean=(120.0, 110.0, 100.0), std=(60.0, 61.0, 62.0))
    model = torch.nn.Sequential(torch.nn.Conv2d(6, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 9 * 8, 5))
    patched = copy.deepcopy(model)
    kernelkit.nn.patch(patched)
    return {
        "conv2d": (lambda: kernelkit.conv2d(x, w, b, padding=1, activation="relu"),
                   lambda: torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))),
        "matmul_bf16": (lambda: kernelkit.matmul(a.bfloat16(), m.bfloat16()),
                        lambda: (a.bfloat16().double() @ m.bfloat16().double()).bfloat16()),
        "matmul_f16": (lambda: kernelkit.matmul(a.half(), m.half()),
                       lambda: (a.half().double() @ m.half().double()).half()),
        "preprocess": (lambda: kernelkit.preprocess(imgs, **norm), None),
        "preprocess_rotated_nearest": (
            lambda: kernelkit.preprocess(imgs, rotate=30.0, interpolation="nearest", **norm),
            None),
        "patched_model": (lambda: patched(x), lambda: model(x)),
    }


@pytest.mark.parametrize("mode", ["context", "set_default_device"])
@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("case", list(_default_device_cases()))
def test_a_programs_default_device_leaves_cpu_calls_on_the_cpu(case, backend, mode):
    """A program's default device (`with torch.device("meta")`, `torch.set_default_device`)
    changes where torch's factories put new tensors, not where a call on CPU tensors runs:
    kernelkit's results stay CPU tensors with torch's values. Before, the Numba kernels'
    workspace (`_workspace._torch_empty`) came out on meta ("can't convert meta device type
    tensor to numpy"), and the torch backend's nearest rotation put its fill value there."""
    ours, theirs = _default_device_cases()[case]
    with kernelkit.use(backend=backend):
        want = ours() if theirs is None else theirs()  # (preprocess: its own result outside)
        if mode == "context":
            with torch.device("meta"):
                got = ours()
        else:
            torch.set_default_device("meta")
            try:
                got = ours()
            finally:
                torch.set_default_device(None)
    assert got.device.type == "cpu"
    tol = 2e-2 if case.startswith("matmul_") else 1e-4  # (half precision: one rounding apart)
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


def test_kernel_calls_show_in_torchs_profiler_by_op_and_candidate():
    """A kernel's call made no profiler event: under inference_mode a patched model's layers,
    and the ops on plain tensors or numpy arrays, left their time out of `torch.profiler`'s
    tables (0.21 of 6.6 ms recorded for a three-layer model on the Numba kernels). Each now
    shows as ``kernelkit::<op> [<candidate>]``; torch's own kernels keep torch's events."""
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(4)
    x, w = torch.randn(2, 3, 9, 9, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    a, b = torch.randn(5, 7, generator=g), torch.randn(7, 6, generator=g)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 7 * 7, 5))
    kernelkit.nn.patch(model)
    conv, mm = "kernelkit::conv2d [numba-cpu]", "kernelkit::matmul [numba-cpu]"
    calls = {"model": (lambda: model(x), {conv, mm}),
             "conv2d": (lambda: kernelkit.conv2d(x, w), {conv}),
             "matmul": (lambda: kernelkit.matmul(a, b), {mm}),
             "matmul_numpy": (lambda: kernelkit.matmul(a.numpy(), b.numpy()), {mm})}
    for backend in ("numba", "torch"):
        with kernelkit.use(backend=backend), torch.inference_mode():
            for call, _ in calls.values():
                call()  # (decided and compiled outside the profile)
            for name, (call, want) in calls.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    call()
                names = {e.key for e in prof.key_averages()}
                ours = {n for n in names if n.startswith("kernelkit::")}
                assert ours == (want if backend == "numba" else set()), (name, names)
                if backend == "torch" and name != "matmul_numpy":
                    assert names & {"aten::conv2d", "aten::mm", "aten::addmm", "aten::linear"}
