"""torch.jit.trace of patched models and of kernelkit's ops on torch tensors: the trace records
torch's op or the registered kernelkit op, never a kernel's result baked in as a constant."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kernelkit
from kernelkit.nn import patch


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, groups=2, padding=1), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 5)).eval()


@pytest.mark.parametrize("backend", ["numba", None])
def test_trace_of_a_patched_model_replays_on_new_inputs(backend):
    """Before: the patched Linear's route reached the tuner with traced sizes and raised
    AttributeError ('Tensor' object has no attribute 'bit_length')."""
    ref, m = _net(), _net()
    patch(m)
    x, x2 = torch.randn(2, 3, 7, 7), torch.randn(2, 3, 7, 7) * 3
    with torch.no_grad(), kernelkit.use(backend=backend):
        m(x)  # (an undecided layer traces torch's op)
        traced = torch.jit.trace(m, x)
        torch.testing.assert_close(traced(x2), ref(x2), rtol=1e-4, atol=1e-4)
    ops = {n.kind() for n in traced.inlined_graph.nodes()}
    if backend == "numba":  # the layers never chose torch: the trace holds the registered ops
        assert {"kernelkit::conv2d", "kernelkit::linear"} <= ops, ops


def test_trace_of_the_functional_ops_records_the_registered_op():
    """Before: with the Numba kernel chosen, tracing kernelkit.matmul raised TypeError (a
    traced size in the cache key); a result computed outside torch would be a constant."""
    def f(a, b, x, w):
        return kernelkit.matmul(a, b) + kernelkit.conv2d(x, w, padding="same",
                                                          activation="relu").sum()

    rng = np.random.default_rng(0)
    t = lambda *s: torch.from_numpy(rng.standard_normal(s, dtype=np.float32))
    args = (t(4, 5), t(5, 3), t(2, 3, 9, 9), t(4, 3, 3, 3))
    new = (t(4, 5), t(5, 3), t(2, 3, 9, 9), t(4, 3, 3, 3))
    with kernelkit.use(backend="numba"):
        for _ in range(3):  # the Numba plans memoised for these sizes first (the ops' fast path)
            f(*args)
        traced = torch.jit.trace(f, args)
        torch.testing.assert_close(traced(*new), f(*new), rtol=1e-4, atol=1e-3)
    ops = {n.kind() for n in traced.graph.nodes()}
    assert {"kernelkit::matmul", "kernelkit::conv2d"} <= ops, ops


def test_trace_of_the_conv_backward_ops_replays_on_new_inputs():
    def f(g, w, x):
        return (kernelkit.conv2d_backward_input(g, w, x.shape, stride=2, padding=1),
                kernelkit.conv2d_backward_weight(x, g, w.shape, stride=2, padding=1))

    x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
    g = torch.randn(2, 4, 5, 5)
    with kernelkit.use(backend="numba"):
        for _ in range(3):  # memoised first
            f(g, w, x)
        traced = torch.jit.trace(f, (g, w, x))
        g2, x2 = torch.randn(2, 4, 5, 5), torch.randn(2, 3, 9, 9)
        for got, want in zip(traced(g2, w, x2), f(g2, w, x2)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_trace_of_functional_preprocess_says_to_trace_the_module():
    imgs = torch.randint(0, 255, (2, 12, 10, 3), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="preprocess: torch.jit.trace cannot record"):
        torch.jit.trace(lambda i: kernelkit.preprocess(i, size=8, mean=0.5, std=0.25), imgs)
    pre = kernelkit.nn.Preprocess(size=8, mean=0.5, std=0.25)
    traced = torch.jit.trace(pre, imgs)
    imgs2 = torch.randint(0, 255, (2, 12, 10, 3), dtype=torch.uint8)
    torch.testing.assert_close(traced(imgs2), pre(imgs2))
    # a list of images of any sizes: the module's trace was told to trace the module
    with pytest.raises(RuntimeError, match="cannot record a list of images .* one \\(N, H, W, C"):
        torch.jit.trace(pre, ([imgs[0], imgs[1, :9]],))
