"""Frozen weights: the user's word that weights change only through torch's own in-place ops.

Inside `frozen_weights()` (or with ``KERNELKIT_FROZEN_WEIGHTS=1``), the Numba conv keeps each
torch weight's packed copy across calls and reuses it while the tensor's version counter is
unchanged (`kernels/numba/_packs.py`), and under autocast a patched layer's kernel route keeps
its cast of the weight and bias alike (`nn/_route.py`). Opt-in, as IPEX's ``ipex.optimize`` and
``torch.jit.freeze`` are: changes made through ``param.data`` or through a numpy view of a weight
do not bump its version (gradcheck, EMA updates and older optimizers make them), and
`forget_packed_weights()` is then needed.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

_frozen: contextvars.ContextVar[bool] = contextvars.ContextVar("kernelkit_frozen", default=False)
_GENERATION = [0]  # bumped by forget_packed_weights: packs kept before are dropped
# os.environ.get costs ~1 us per missing key; the dict behind os.environ answers in ~50 ns
_ENV = getattr(os.environ, "_data", None)
_KEY, _ONE, _ZERO = (os.environ.encodekey("KERNELKIT_FROZEN_WEIGHTS"), b"1", b"0") \
    if isinstance(_ENV, dict) else ("KERNELKIT_FROZEN_WEIGHTS", "1", "0")
if not isinstance(_ENV, dict):
    _ENV = os.environ


@contextlib.contextmanager
def frozen_weights(on: bool = True) -> Iterator[None]:
    """Inference with weights that change only through torch's own in-place ops.

    Inside the block, a conv whose weight is a torch tensor packs it once and reuses the packed
    copy (and a patched layer under autocast its cast of the weight, without grad) while the
    tensor's version counter is unchanged: ``copy_``, ``mul_`` or loading a
    state dict makes it pack again, and so does any torch optimizer's step (fused ones too,
    which leave the version as it was: every kept pack is dropped after a step). Changes torch does not count are not seen:
    through ``param.data``, or through a numpy view of the tensor; call `forget_packed_weights()`
    after those. Numpy weights are never kept.

    Args:
        on: False turns it off inside the block, unless KERNELKIT_FROZEN_WEIGHTS=1 says so for
            the whole process.

    Example:
        >>> model = kernelkit.nn.patch(model).eval()
        >>> with torch.inference_mode(), kernelkit.frozen_weights():
        ...     y = model(x)
    """
    tok = _frozen.set(bool(on))
    try:
        yield
    finally:
        _frozen.reset(tok)


def weights_frozen() -> bool:
    """Inside `frozen_weights()`, or KERNELKIT_FROZEN_WEIGHTS=1 (or true, yes, on)."""
    if _frozen.get():
        return True
    v = _ENV.get(_KEY)
    if v is None or v in (_ONE, _ZERO):  # (the common cases without a call)
        return v == _ONE
    from .envvars import env_flag

    return env_flag("KERNELKIT_FROZEN_WEIGHTS", False)


def forget_packed_weights() -> None:
    """Drop every packed weight kept so far (after changing weights behind torch's version
    counter)."""
    _GENERATION[0] += 1


_WATCHING = [False]


def watch_optimizer_steps() -> None:
    """Make every torch optimizer's step call `forget_packed_weights()` (a global post-step hook,
    registered once, with the first copy kept: a packed weight or an autocast cast). torch's
    fused steps (``Adam(fused=True)``, ``SGD(fused=True)``) change the weights without bumping
    their version, and a patched model trained inside `frozen_weights()` kept convolving with
    its first weights (loss 0.045 -> 0.038 against torch's 0.003 after 10 fused Adam steps)."""
    if _WATCHING[0]:
        return
    from .devices import imported_torch

    if imported_torch() is None:
        return
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(lambda optimizer, args, kwargs: forget_packed_weights())
    # (set once registered; no lock: two threads that both register make a step forget twice,
    # which is harmless, and a lock held by another thread at a fork would hang the child)
    _WATCHING[0] = True


def generation() -> int:
    """How many times `forget_packed_weights` was called."""
    return _GENERATION[0]
