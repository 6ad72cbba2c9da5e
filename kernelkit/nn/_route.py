"""How a kernelkit.nn module runs one call in eager mode: the route, memoised per signature.

A patched layer must cost what torch's layer costs, plus at most a few microseconds, so the
module does not go through the custom op on every call. Per call signature (input shape, strides,
dtype, device, whether autograd records, the knobs) it asks the tuner once and keeps one of three
routes:

- ``aten``: the vendor (torch) candidate won on the data's own device: call torch's functional
  op directly (F.linear / F.conv2d), which is exactly what the torch module does, autograd and
  all. Cost: torch's own call plus one dict lookup.
- ``kernel``: a kernelkit kernel won and autograd does not record: the bound plan of the chosen
  kernel, with no custom-op dispatch in between.
- ``op``: a kernelkit kernel won and autograd records: the registered custom op
  (``torch.ops.kernelkit.*``), whose autograd formula dispatches (and tunes) each backward
  product on its own.

Under torch.compile and under autocast the module always calls the custom op: its fake kernel
and its autocast rule are what tracing and autocast need (see ops/torch_ops.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import core
from .. import settings as _settings
from ..ops import dispatch

Route = Callable[[Any, torch.Tensor], torch.Tensor]  # (module, x) -> y; never closes over the module
MAX_ROUTES = 64  # per module; cleared rather than grown by many one-off shapes


def grad_on(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                        or (bias is not None and bias.requires_grad))


def signature(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
    """What a route depends on, cheaply (about 1 us)."""
    return (x.shape, x.stride(), x.dtype, x.device, weight.dtype, grad_on(x, weight, bias),
            _settings.token())


def lookup(module: torch.nn.Module, sig: tuple) -> Route | None:
    routes = module.__dict__.get("_kk_routes")
    return None if routes is None else routes.get(sig)


def store(module: torch.nn.Module, sig: tuple, route: Route) -> Route:
    # a plain attribute: not in state_dict, and copied (not shared) by deepcopy; routes never
    # capture the module, so a copy's routes act on the copy
    routes = module.__dict__.setdefault("_kk_routes", {})
    if len(routes) >= MAX_ROUTES:
        routes.clear()
    routes[sig] = route
    return route


def chosen(call: core.Call) -> tuple[core.Candidate, core.Config]:
    """The tuner's candidate and config for a prepared (no-grad) call."""
    choice = dispatch.choice_for(call)
    return core.get(call.problem.op, choice.candidate), choice.config


def runs_aten(cand: core.Candidate, call: core.Call) -> bool:
    """The vendor won on the data's own device: torch's functional op is the same kernel."""
    return cand.vendor and cand.device == call.problem.device


def routes_through_op() -> bool:
    """Tracing (torch.compile, export) and autocast always go through the registered op."""
    return torch.compiler.is_compiling() or torch._C._is_any_autocast_enabled()
