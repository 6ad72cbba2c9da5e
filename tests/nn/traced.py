"""What torch.compile traces: the FX graphs dynamo hands a recording backend."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def dynamo_graphs(model: nn.Module, run: Callable[[nn.Module], object]) -> list:
    """The FX graphs dynamo hands the backend while ``run`` calls
    ``torch.compile(model, fullgraph=True)`` (after a reset: nothing cached from earlier)."""
    graphs: list = []

    def backend(gm, inputs):
        graphs.append(gm.graph)
        return gm.forward

    torch._dynamo.reset()
    run(torch.compile(model, backend=backend, fullgraph=True))
    return graphs
