"""`patch(model)` / `unpatch(model)`: torch layers to kernelkit layers and back, in place.

A layer is patched by changing its class (`layer.__class__ = kernelkit.nn.Linear`), the way
torch.nn.utils.parametrize injects its own classes: the layer stays the same object, so its
Parameter objects (and any optimizer built on them), its hooks and their removable handles,
training mode, device, dtype, buffers, attributes and state_dict keys are all untouched, and a
model that *is* a Linear/Conv2d is patched too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ._route import describe, drop_routes
from .conv import Conv2d
from .linear import Linear

_PATCHES = {nn.Linear: Linear, nn.Conv2d: Conv2d}
_UNPATCHES = {Linear: nn.Linear, Conv2d: nn.Conv2d}


@dataclass
class PatchReport:
    """What `patch` or `unpatch` did to a model.

    Attributes:
        model: the model (the same object that was passed in).
        swapped: (qualified name, torch class -> kernelkit class) of every layer changed; the
            model itself is named "".
        left: (qualified name, class name, why) of every Linear-/conv-like layer left alone.
    """

    model: nn.Module
    swapped: list[tuple[str, str]] = field(default_factory=list)
    left: list[tuple[str, str, str]] = field(default_factory=list)

    def _repr_pretty_(self, printer, cycle: bool) -> None:  # (IPython, Jupyter: the summary,
        printer.text(str(self))                                # not the whole model's repr)

    def __str__(self) -> str:
        lines = [f"swapped {len(self.swapped)} layer(s), left {len(self.left)}"]
        lines += [f"  swapped {name or '(model)'}: {what}" for name, what in self.swapped]
        lines += [f"  left    {name or '(model)'} ({cls}): {why}" for name, cls, why in self.left]
        return "\n".join(lines)


def _why_not(layer: nn.Module) -> str | None:
    """None when `layer` can be patched, else why not; only asked of Linear/conv-like layers."""
    cls = type(layer)
    if cls in (nn.Linear, nn.Conv2d) and _has_own(layer, "activation"):
        # the kernelkit layer's fused activation would overwrite it (and unpatch delete it: a
        # child module so named left the state_dict)
        return "it has an attribute 'activation' of its own (kernelkit's layers use the name)"
    if cls is nn.Linear:
        return None
    if cls is nn.Conv2d:
        if layer.padding_mode != "zeros":
            return f"padding_mode={layer.padding_mode!r} (kernelkit pads with zeros only)"
        if 0 in (layer.in_channels, layer.out_channels):
            # torch raises for no output channels and returns an empty result for no input
            # channels; kernelkit's kernels compute the empty sums (act(bias)) instead
            return (f"no {'output' if layer.out_channels == 0 else 'input'} channels (torch's "
                    "own answer for an empty conv is kept)")
        return None
    if isinstance(layer, (Linear, Conv2d)):
        return "already a kernelkit layer"
    if isinstance(layer, nn.modules.lazy.LazyModuleMixin) and layer.has_uninitialized_params():
        return (f"{cls.__name__} is not initialised yet: call the model once, then patch (it "
                "becomes a plain torch layer at its first call)")
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        # a subclass may change forward, or its parent may read its weights directly
        # (MultiheadAttention's out_proj), or it is parametrized (a generated subclass)
        return f"a subclass of {cls.__mro__[1].__name__} ({cls.__name__}) may change forward"
    return f"no kernelkit op for {cls.__name__}"


def _has_own(layer: nn.Module, name: str) -> bool:
    """Whether `layer` holds `name` itself: a plain attribute, parameter, buffer or child."""
    return any(name in d for d in (layer.__dict__, layer._parameters, layer._buffers,
                                   layer._modules))


def _linear_like(layer: nn.Module) -> bool:
    return isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd, nn.Bilinear))


def patch(model: nn.Module) -> PatchReport:
    """Make every `torch.nn.Linear` and zero-padded `torch.nn.Conv2d` in `model` (the model itself
    included) a kernelkit layer, in place.

    Args:
        model: any torch module.

    Returns:
        A `PatchReport`: what was swapped, and every Linear/conv-like layer left to torch with the
        reason (a padding_mode other than "zeros", a subclass, a layer type kernelkit has no op
        for). `report.model` is `model`.

    Example:
        >>> report = kernelkit.nn.patch(model)  # doctest: +SKIP
        >>> print(report)  # doctest: +SKIP
    """
    report = PatchReport(model)
    for name, layer in model.named_modules(remove_duplicate=True):
        if not _linear_like(layer):
            continue
        why = _why_not(layer)
        if why is not None:
            report.left.append((name, type(layer).__name__, why))
            continue
        new = _PATCHES[type(layer)]
        layer.__class__ = new
        layer.activation = None
        report.swapped.append((name, f"{type(layer).__mro__[1].__name__} -> kernelkit.nn."
                                     f"{new.__name__}"))
    return report


def unpatch(model: nn.Module) -> PatchReport:
    """Make every kernelkit `Linear`/`Conv2d` in `model` (the model itself included) the plain
    torch layer again, in place. A layer with a fused activation has no plain torch equivalent
    and is left (named in the report).

    Args:
        model: any torch module.

    Returns:
        A `PatchReport` of what was restored and what was left.
    """
    report = PatchReport(model)
    for name, layer in model.named_modules(remove_duplicate=True):
        plain = _UNPATCHES.get(type(layer))
        if plain is None:
            if isinstance(layer, tuple(_UNPATCHES)):  # a subclass: parametrize's own class
                report.left.append((name, type(layer).__name__, "parametrized after patching "
                                    "(its class is torch.nn.utils.parametrize's): remove the "
                                    "parametrization first"))
            continue
        if layer.activation is not None:
            report.left.append((name, type(layer).__name__,
                                f"fused activation={layer.activation!r}"))
            continue
        layer.__class__ = plain
        drop_routes(layer.__dict__)
        for attr in ("activation", "_kk_aten_only", "_kk_aten_only_grad"):
            layer.__dict__.pop(attr, None)
        report.swapped.append((name, f"kernelkit.nn.{type(layer).__name__}"
                                     f" -> torch.nn.{plain.__name__}"))
    return report


def where(model: nn.Module) -> list[tuple[str, tuple[int, ...], str]]:
    """Where each kernelkit layer of `model` ran its eager forward calls so far.

    Returns:
        (qualified layer name, input shape, "torch (aten)" or the kernelkit candidate, e.g.
        "numba-cpu"), one per layer and input signature seen. Backward products are dispatched
        (and tuned) per problem on their own; `kernelkit.explain` shows any one of them.
        In a process's first seconds, while Numba compiles in the background, a layer runs a
        stand-in (torch's op) that the first call after the compile decides again: call
        `kernelkit.compiling.wait()` and the model once more before reading this as final
        (`kernelkit warmup` compiles ahead of time).
    """
    out = []
    for name, layer in model.named_modules():
        # (a snapshot: another thread's forward adds and evicts routes meanwhile)
        for sig, route in list(layer.__dict__.get("_kk_routes", {}).items()):
            out.append((name, tuple(sig[0]), describe(route)))
    return out
