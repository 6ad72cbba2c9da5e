"""Drop-in torch modules and model patching.

- `Linear`, `Conv2d`: `torch.nn.Linear` / `torch.nn.Conv2d` computed by kernelkit, with an
  optional fused activation. In eager mode each call runs torch's own op where torch won the
  tuning for that size (so a patched layer never costs more than a dict lookup over torch), and
  the kernelkit kernel elsewhere; under autograd, torch.compile and autocast they go through the
  registered custom ops (`torch.ops.kernelkit.*`).
- `patch(model)`, `unpatch(model)`: swap the layers of a model in place and report what was
  swapped and what was left, with the reason; `where(model)`: where each layer ran.

Example:
    >>> import kernelkit.nn  # doctest: +SKIP
    >>> report = kernelkit.nn.patch(model)  # doctest: +SKIP
"""

from __future__ import annotations

from .conv import Conv2d
from .linear import Linear
from .patching import PatchReport, patch, unpatch, where

__all__ = ["Linear", "Conv2d", "patch", "unpatch", "where", "PatchReport"]
