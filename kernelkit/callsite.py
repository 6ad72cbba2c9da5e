"""Warnings that point at the user's line, not into kernelkit or torch."""

from __future__ import annotations

import os
import sys
import warnings

_SKIPPED = (os.path.dirname(os.path.abspath(__file__)) + os.sep,)


def _library_dirs() -> tuple[str, ...]:
    """kernelkit's directory, and torch's where it is imported (a module's ``forward`` is
    called through torch.nn.Module's ``__call__``)."""
    torch = sys.modules.get("torch")
    path = getattr(torch, "__file__", None)
    return _SKIPPED + ((os.path.dirname(path) + os.sep,) if path else ())


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stacklevel of the first caller outside kernelkit and torch:
    a fixed stacklevel was a frame short on one path (kernelkit.preprocess) and several on
    another (nn.Preprocess through torch's module call)."""
    skip = _library_dirs()
    frame, level = sys._getframe(1), 2  # (stacklevel 2: our caller)
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    if frame is None:  # no user frame (a kernelkit thread's: the background compile): our
        level = 2  # caller, not "sys:1" past the stack's end
    warnings.warn(message, category, stacklevel=level)
