"""What a patched layer costs per call: kernelkit.nn.Linear vs torch.nn.Linear on a 4x64 input,
with and without grad, and what the custom op's dispatch alone costs.

Issue 11: a patched Linear cost 22 us vs torch's 6.4 us (33 us with grad). Each pair is timed
interleaved, in blocks, in one process; the overhead is the median of the per-block differences
(so machine drift cancels), and each row's extra_info holds it with the CPU's name. The tuner
decides once, before timing (a fresh private cache, bench/conftest.py); the route it took is in
extra_info.

    flock /tmp/kk-bench.lock python -m pytest bench/test_bench_nn.py --benchmark-only -s

The ResNet rows (`-k resnet`) time whole models; see test_resnet_patched_vs_torch.
"""

from __future__ import annotations

import copy
import statistics
import time

import pytest
import torch
from torch import nn

import kernelkit
import kernelkit.nn as knn
from kernelkit.ops.torch_ops import eager_matmul, matmul_op


def _cpu() -> str:
    from kernelkit import devices

    return devices.cpu_info()["model"]


def _per_call(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def _interleaved(base, other, blocks: int = 31, n: int = 300) -> tuple[float, float, float]:
    """(median base s, median other s, median of per-block other - base s)."""
    bs, os_, diffs = [], [], []
    for _ in range(blocks):
        b = _per_call(base, n)
        o = _per_call(other, n)
        bs.append(b)
        os_.append(o)
        diffs.append(o - b)
    return statistics.median(bs), statistics.median(os_), statistics.median(diffs)


def _route_name(layer) -> str:
    routes = layer.__dict__.get("_kk_routes", {})
    return ",".join(sorted({getattr(r, "__name__", "?").strip("_") for r in routes.values()}))


@pytest.mark.parametrize("backend", [None, "numba"], ids=["auto", "numba"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_linear_4x64_per_call(benchmark, backend, grad):
    torch.manual_seed(0)
    ref = nn.Linear(64, 64)
    layer = copy.deepcopy(ref)
    knn.patch(layer)
    x = torch.randn(4, 64)
    with kernelkit.use(backend=backend) if backend else kernelkit.use(), \
            torch.set_grad_enabled(grad):
        torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)  # decides the route
        t_ref, t_kk, over = _interleaved(lambda: ref(x), lambda: layer(x))
        benchmark.group = f"nn.Linear 64->64 on 4x64, {'grad' if grad else 'no grad'}"
        benchmark.extra_info.update(
            cpu=_cpu(), backend=backend or "auto", route=_route_name(layer),
            torch_us=t_ref * 1e6, patched_us=t_kk * 1e6, overhead_us=over * 1e6,
            ratio=t_kk / t_ref)
        benchmark.pedantic(lambda: layer(x), rounds=200, iterations=20, warmup_rounds=1)
    print(f"\nLinear 4x64 {'grad' if grad else 'no grad'} backend={backend or 'auto'} "
          f"route={_route_name(layer)}: torch {t_ref * 1e6:.2f} us, patched {t_kk * 1e6:.2f} us, "
          f"overhead {over * 1e6:+.2f} us ({t_kk / t_ref:.2f}x) on {_cpu()}")


def test_linear_varying_lengths_per_call(benchmark):
    """NLP-style inputs: a patched Linear(64, 64) fed (L, 64) with L random in 1..512, a new
    length on most calls (more lengths than a layer memoises routes for). Before the size
    buckets (kernelkit/nn/_route.py `_new_route`) each new length asked the tuner again: 634 us
    a call against torch's 62 on a 2-core Zen 4."""
    import random

    from kernelkit import compiling

    torch.manual_seed(0)
    rng = random.Random(0)
    ref = nn.Linear(64, 64)
    layer = copy.deepcopy(ref)
    knn.patch(layer)
    xs = [torch.randn(rng.randint(1, 512), 64) for _ in range(1024)]
    with torch.no_grad():
        layer(xs[0])
        compiling.wait()  # (warming stand-ins are kept only until compiles finish)
        for x in xs:  # the tuner decides each size bucket once, before timing
            layer(x)
        for x in xs[:8]:
            torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-5)
        it = iter(range(10**9))
        t_ref, t_kk, over = _interleaved(lambda: ref(xs[next(it) % len(xs)]),
                                         lambda: layer(xs[next(it) % len(xs)]),
                                         blocks=15, n=len(xs))
        benchmark.group = "nn.Linear 64->64 on (L, 64), L random in 1..512, no grad"
        benchmark.extra_info.update(cpu=_cpu(), route=_route_name(layer),
                                    torch_us=t_ref * 1e6, patched_us=t_kk * 1e6,
                                    overhead_us=over * 1e6, ratio=t_kk / t_ref)
        benchmark.pedantic(lambda: layer(xs[next(it) % len(xs)]), rounds=50, iterations=20,
                           warmup_rounds=1)
    print(f"\nLinear (L, 64), L in 1..512: torch {t_ref * 1e6:.2f} us, patched {t_kk * 1e6:.2f} "
          f"us, overhead {over * 1e6:+.2f} us ({t_kk / t_ref:.2f}x) on {_cpu()}")


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_training_call_per_call(benchmark, kind):
    """One training call (forward + backward) of a small layer on the kernel route (Numba
    forced, its in-model trial taken out) against torch's own layer: what the route costs on top
    of its kernels with grad (kernelkit.nn.Linear 64->64 on 4x64; Conv2d 8->8 3x3 on 1x8x8x8).
    The overhead here includes the Numba kernels' own time, which at these sizes exceeds
    torch's; bench/probes/nn_grad_overhead.py compares the route with its bare launchers."""
    from kernelkit.nn import _route

    torch.manual_seed(0)
    if kind == "linear":
        ref, x = nn.Linear(64, 64), torch.randn(4, 64, requires_grad=True)
    else:
        ref, x = nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.randn(1, 8, 8, 8,
                                                                       requires_grad=True)
    layer = copy.deepcopy(ref)
    knn.patch(layer)
    gy = torch.randn_like(ref(x))
    with kernelkit.use(backend="numba"):
        for _ in range(3):  # tunes the forward and the backward products
            layer(x).backward(gy)
        routes = layer.__dict__["_kk_routes"]
        for sig, r in routes.items():
            if isinstance(r, _route.InContext):
                routes[sig] = r.kernel
        name = ",".join(_route.describe(r) for r in routes.values())
        t_ref, t_kk, over = _interleaved(lambda: ref(x).backward(gy),
                                         lambda: layer(x).backward(gy), blocks=21, n=100)
        benchmark.group = f"training call (forward + backward), {kind}"
        benchmark.extra_info.update(cpu=_cpu(), route=name, torch_us=t_ref * 1e6,
                                    patched_us=t_kk * 1e6, overhead_us=over * 1e6,
                                    ratio=t_kk / t_ref)
        benchmark.pedantic(lambda: layer(x).backward(gy), rounds=100, iterations=10,
                           warmup_rounds=1)
    print(f"\n{kind} training call, route={name}: torch {t_ref * 1e6:.1f} us, patched "
          f"{t_kk * 1e6:.1f} us ({t_kk / t_ref:.2f}x) on {_cpu()}")


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_custom_op_dispatch_cost(benchmark, grad):
    """The same product through torch.ops.kernelkit.matmul (what the layers call under
    torch.compile and autocast), through the eager autograd Function (grad) or kernelkit.matmul
    (no grad), the routes the layers take in eager mode."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(64, 64))
    b = nn.Parameter(torch.randn(64))
    x = torch.randn(4, 64)
    op = matmul_op()
    fn = eager_matmul()
    eager = (lambda: fn(x, w.t(), b, None, False)) if grad else \
        (lambda: kernelkit.matmul(x, w.detach().t(), bias=b.detach()))
    custom = lambda: op(x, w.t(), b, None, False)
    with kernelkit.use(backend="torch"), torch.set_grad_enabled(grad):
        torch.testing.assert_close(custom(), eager())
        t_eager, t_op, over = _interleaved(eager, custom)
        benchmark.group = f"custom-op dispatch, 4x64 @ 64x64, {'grad' if grad else 'no grad'}"
        benchmark.extra_info.update(cpu=_cpu(), eager_us=t_eager * 1e6, custom_op_us=t_op * 1e6,
                                    overhead_us=over * 1e6)
        benchmark.pedantic(custom, rounds=100, iterations=20, warmup_rounds=1)
    print(f"\ncustom op {'grad' if grad else 'no grad'}: eager path {t_eager * 1e6:.2f} us, "
          f"torch.ops.kernelkit.matmul {t_op * 1e6:.2f} us (+{over * 1e6:.2f} us) on {_cpu()}")


class _SmallCNN(nn.Module):
    """conv-bn-relu x3 (one strided) -> pool -> linear: a ResNet-style stem at 32x32."""

    def __init__(self, width: int = 32):
        super().__init__()
        c = width
        self.body = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c),
            nn.ReLU())
        self.head = nn.Linear(2 * c, 10)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("batch", [1, 8])
def test_small_cnn_compiled_inference(benchmark, batch):
    """torch.compile of a patched model (after one eager call decided each layer's route) vs
    torch.compile of the same torch model: Inductor sees torch's own ops where torch won, the
    custom op where a kernelkit kernel won. Interleaved blocks; the ratio is patched / torch."""
    torch.manual_seed(0)
    ref = _SmallCNN().eval()
    patched = copy.deepcopy(ref)
    knn.patch(patched)
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(patched(x), want, rtol=1e-4, atol=1e-4)  # routes decided
        runs = sorted({r for _, _, r in knn.where(patched)})
        c_ref, c_kk = torch.compile(ref), torch.compile(patched)
        torch.testing.assert_close(c_kk(x), want, rtol=1e-4, atol=1e-4)
        c_ref(x)
        t_ref, t_kk, over = _interleaved(lambda: c_ref(x), lambda: c_kk(x), blocks=15, n=20)
        benchmark.group = f"small CNN 32x32 batch {batch}, torch.compile, inference"
        benchmark.extra_info.update(cpu=_cpu(), layers_ran_on=runs, torch_compile_us=t_ref * 1e6,
                                    patched_compile_us=t_kk * 1e6, ratio=t_kk / t_ref)
        benchmark.pedantic(lambda: c_kk(x), rounds=20, iterations=5, warmup_rounds=1)
    print(f"\nsmall CNN batch {batch} compiled: torch.compile {t_ref * 1e6:.0f} us, patched + "
          f"compile {t_kk * 1e6:.0f} us ({t_kk / t_ref:.2f}x; layers on {runs}) on {_cpu()}")


_PAIRS: dict = {}


@pytest.mark.parametrize("mode", ["infer", "train"])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("model", ["resnet18", "resnet50"])
def test_resnet_patched_vs_torch(benchmark, model, batch, mode):
    """ResNet-18/50 (bench/resnets.py, fp32, 224 px, or KERNELKIT_BENCH_RESNET_SIZE), tuned once
    into this session's fresh cache: torch / patched / torch.compile / patched + compile,
    interleaved (KERNELKIT_BENCH_RESNET_REPS rounds, default 5); extra_info holds each median and
    the speed ratios torch / patched (above 1: patched faster). The same measurement as
    bench/probes/nn_resnets.py, which prints the table docs/performance.md quotes."""
    import os

    from resnets import Pair, interleaved

    size = int(os.environ.get("KERNELKIT_BENCH_RESNET_SIZE", 224))
    reps = int(os.environ.get("KERNELKIT_BENCH_RESNET_REPS", 5))
    pair = _PAIRS.get((model, batch))
    if pair is None:
        _PAIRS.clear()  # one pair (and its compiled graphs) alive at a time
        pair = _PAIRS[(model, batch)] = Pair(model, batch, size)
        pair.tune()
    fns = pair.fns(mode, compiled=True)
    for fn in fns.values():  # routes for this mode, compiles
        fn()
    med = interleaved(fns, reps)
    eager, compiled = med["torch"] / med["patched"], med["torch.compile"] / med["patched+compile"]
    benchmark.group = f"{model} batch {batch} {size}px {mode}"
    benchmark.extra_info.update(cpu=_cpu(), median_ms={k: v * 1e3 for k, v in med.items()},
                                eager_ratio=eager, compile_ratio=compiled,
                                routes=sorted({r for _, _, r in knn.where(pair.pat)}))
    benchmark.pedantic(fns["patched"], rounds=3, iterations=1, warmup_rounds=0)
    print(f"\n{model} b{batch} {size}px {mode}: torch {med['torch'] * 1e3:.1f} ms, patched "
          f"{med['patched'] * 1e3:.1f} ms ({eager:.3f}x); torch.compile "
          f"{med['torch.compile'] * 1e3:.1f} ms, patched+compile {med['patched+compile'] * 1e3:.1f}"
          f" ms ({compiled:.3f}x) on {_cpu()}")
