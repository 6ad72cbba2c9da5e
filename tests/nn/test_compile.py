"""torch.compile (Inductor, fullgraph) trains a patched conv model and matches eager.

Issue 11: it failed with BackendCompilerFailed (the conv backward called plain Python functions,
not registered ops); the earlier tests used backend="eager", which hides that.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

import kernelkit
import kernelkit.nn as knn
from kernelkit.ops import conv2d as conv_ops


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def _train(model: nn.Module, fn, x, y, steps: int) -> list[float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_inductor_fullgraph_trains_patched_conv_model_like_eager():
    torch.manual_seed(0)
    model = _model()
    knn.patch(model)
    twin = copy.deepcopy(model)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    # numba runs every kernelkit op here, so the compiled graph really calls kernelkit's kernels
    with kernelkit.use(backend="numba"):
        conv_ops._BWD_INPUT.clear()
        conv_ops._BWD_WEIGHT.clear()
        compiled = _train(model, torch.compile(model, fullgraph=True), x, y, steps=3)
        assert conv_ops._BWD_INPUT and conv_ops._BWD_WEIGHT  # the compiled backward ran them
        eager = _train(twin, twin, x, y, steps=3)
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-5, atol=1e-6)
    assert compiled[-1] < compiled[0]
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
