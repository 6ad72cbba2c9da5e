"""kernelkit: hand-written Triton, CuPy and Numba kernels behind one autotuned ops layer.

>>> import numpy as np, kernelkit
>>> c = kernelkit.matmul(np.ones((4, 8), np.float32), np.ones((8, 2), np.float32), activation="relu")
"""

from __future__ import annotations

import importlib as _importlib
import inspect as _inspect
from typing import Any

import wrapt as _wrapt

from . import core as _core
from . import threads as _threads
from ._version import __version__
from .augment import Augmentation, augment
from .frozen import forget_packed_weights, frozen_weights
from .heap import heap_kept, keep_heap
from .ops.conv2d import conv2d, conv2d_backward_input, conv2d_backward_weight
from .ops.dispatch import Explanation, explain_call
from .ops.matmul import matmul
from .ops.preprocess import preprocess
from .settings import use

__all__ = ["matmul", "conv2d", "preprocess", "augment", "Augmentation", "conv2d_backward_input", "conv2d_backward_weight", "explain", "use", "frozen_weights", "forget_packed_weights", "keep_heap", "heap_kept", "nn", "data", "Explanation", "__version__"]

# Registration: read every backend's record (kernels/<backend>/__init__.py, data only) now, so a
# process's first call does not pay for finding and importing them.
_core.backends()
_threads.configure_at_import()  # a fork-safe Numba threading layer, before anything launches one


def explain(op: Any, *args: Any, **kwargs: Any) -> Explanation:
    """Show how kernelkit runs `op(*args, **kwargs)`: the candidates, why any were skipped, their
    measured times (measuring now if this size was never measured), and the choice.

    Args:
        op: the op, as a name ("matmul", "conv2d", "preprocess", "conv2d_backward_input", ...)
            or the function (kernelkit.matmul).
        *args, **kwargs: the arguments you would pass to the op.

    Returns:
        An `Explanation`; print it for a table.

    Example:
        >>> print(kernelkit.explain("matmul", a, b))  # doctest: +SKIP
    """
    specs = {s.name: s for s in _core.op_specs()}
    name = op if isinstance(op, str) else getattr(op, "__name__", None)
    if not isinstance(name, str):  # e.g. explain(a, b): the op's arrays without its name
        raise TypeError(f"explain: 'op' must be an op's name or function, one of "
                        f"{sorted(specs)}, got {type(op).__name__}")
    if name not in specs:
        raise ValueError(f"explain: unknown op {name!r}; expected one of {sorted(specs)}")
    prepare = specs[name].prepare
    try:  # (prepare's own TypeError named neither explain nor the op)
        _inspect.signature(prepare).bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"explain: {name} takes the op's own arguments "
                        f"{_inspect.signature(prepare)}: {exc}") from None
    return explain_call(prepare(*args, **kwargs))




def _register_torch_ops(torch_module: Any = None) -> None:
    """Register the ops with torch, so that programs saved by torch.export that call them load in
    a fresh process. Run by `import kernelkit` when torch is loaded already, else right after
    torch's own import finishes (a post-import hook: kernelkit never imports torch itself, and
    `import kernelkit` before `import torch`, the order isort writes, used to leave the ops
    unregistered and `torch.export.load` failing)."""
    from .ops.torch_ops import register_all

    try:
        register_all()
    except Exception as exc:  # noqa: BLE001 - never break the user's `import torch`
        import warnings

        warnings.warn(f"kernelkit: could not register its ops with torch ({exc}); "
                      "torch.export programs that call them will not load", stacklevel=2)


def _substitute_in_compiled_code(dynamo_module: Any = None) -> None:
    """Have dynamo trace the registered op where compiled code calls kernelkit's ops (see
    `ops.compiled.substitute_in_compiled_code`); run once torch._dynamo is imported."""
    from .ops.compiled import substitute_in_compiled_code, tag_compile_caches

    try:
        substitute_in_compiled_code()
    except Exception as exc:  # noqa: BLE001 - never break the user's torch.compile
        import warnings

        warnings.warn(f"kernelkit: could not register its ops' stand-ins with torch.compile "
                      f"({exc}); compiled code that calls kernelkit.matmul/conv2d/preprocess "
                      "breaks its graph there", stacklevel=2)
    try:  # (apart: the stand-ins do not depend on it)
        tag_compile_caches()
    except Exception as exc:  # noqa: BLE001
        import warnings

        warnings.warn(f"kernelkit: could not add its version to torch's compile-cache key "
                      f"({exc}); after an upgrade of kernelkit, clear torch's compile caches",
                      stacklevel=2)


_wrapt.register_post_import_hook(_register_torch_ops, "torch")  # now, if torch is loaded
_wrapt.register_post_import_hook(_substitute_in_compiled_code, "torch._dynamo")
_core.preload_vendors()  # numpy's and (if loaded) torch's CPU kernel modules: no first call pays


def __getattr__(name: str) -> Any:
    if name in ("nn", "data"):  # torch / the decoders, so only on first use
        return _importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'kernelkit' has no attribute {name!r}")
