"""Drop-in torch modules and model patching.

- `Linear`, `Conv2d`: `torch.nn.Linear` / `torch.nn.Conv2d` computed by kernelkit, with an
  optional fused activation. In eager mode each call runs torch's own op where torch won the
  tuning for that size (so a patched layer never costs more than a dict lookup over torch), and
  the kernelkit kernel elsewhere; under autograd, torch.compile and autocast they go through the
  registered custom ops (`torch.ops.kernelkit.*`).
- `Preprocess`: `kernelkit.preprocess` (crop, flip, resize, normalise, layout in one pass) as a
  module, traced as `torch.ops.kernelkit.preprocess` under torch.compile and torch.export.
- `patch(model)`, `unpatch(model)`: swap the layers of a model in place and report what was
  swapped and what was left, with the reason; `where(model)`: where each layer ran;
  `pending(model)`: how many layers still have their in-model trial to run.

Example:
    >>> import kernelkit.nn  # doctest: +SKIP
    >>> report = kernelkit.nn.patch(model)  # doctest: +SKIP
"""

from __future__ import annotations

from ._route import pending
from .conv import Conv2d
from .linear import Linear
from .patching import PatchReport, patch, unpatch, where
from .preprocess import Preprocess

__all__ = ["Linear", "Conv2d", "Preprocess", "patch", "unpatch", "where", "pending",
           "PatchReport"]
