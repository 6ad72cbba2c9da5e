"""Packed conv weights kept across calls, for weights that live in torch tensors, inside
`kernelkit.frozen_weights()` (opt-in: see why at the end).

A conv layer in inference runs on the same weight every call, and packing it costs a deep layer
at batch 1 a third to a half of its time (512x512x3x3: 0.87 ms on one Zen 5 core against a
convolution of about 1 ms; `docs/performance.md`). torch gives what makes keeping the packed copy
safe: every in-place change of a tensor (an optimizer step, ``copy_``, ``fill_``, ``zero_``)
bumps its version counter, which the views of its memory share. So a weight that is a numpy view
of a torch tensor, in a launch the ops layer made for torch tensors (`kernelkit.threads.LOCAL`;
never for numpy data), is keyed by its memory and layout and the packing's geometry, and its
packed copy is used while the tensor's version is the one it was packed at. The entry holds a
reference to that tensor, so its memory cannot be freed and reused by another tensor of the same
key while the entry lives, unless the tensor's storage moves in place (``share_memory_()``, as
``model.share_memory()`` and a spawned worker's argument do, frees the old block): an entry whose
tensor no longer lives where it was packed is dropped. Before, a conv built after
``share_memory()`` whose weight landed on the old block, at the same version, convolved with the
first layer's weight (found by a user hunt, under the serving allocator setting
``MALLOC_MMAP_THRESHOLD_``). Numpy weights are never kept: nothing tells when their contents
change, and neither are inference tensors (made under ``torch.inference_mode``: they have no
version counter). Changes made through another tensor or array that shares the weight's memory
but not its version counter are not seen: a numpy view (``torch.from_numpy(w.numpy())``), a
tensor ``set_`` onto its storage, and ``.data`` (below).

At most PACK_CACHE_BYTES of packed weights are kept, least recently used first out.

Why opt-in: changes made through ``param.data`` do not bump the parameter's version either
(``.data`` is an alias with a counter of its own), and older training loops, EMA updates and
``torch.autograd.gradcheck`` change weights that way; kept packs would then be stale. As with
IPEX's ``ipex.optimize`` or ``torch.jit.freeze``, the user says when weights are frozen.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from kernelkit import frozen as _frozen
from kernelkit import threads as _threads
from kernelkit.devices import imported_torch

PACK_CACHE_BYTES = 256 << 20

_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)

# key -> (owner tensor, version, packed array, the owner's data_ptr() when packed)
_ENTRIES: OrderedDict = OrderedDict()
_BYTES = [0]
_SEEN = [0]  # the `frozen.generation()` the entries belong to


def owner(weight: np.ndarray):
    """The torch tensor whose memory ``weight`` views (through its ``base`` chain), or None; None
    unless the ops layer passed this launch torch tensors (``kernelkit.threads.LOCAL``): a numpy
    array a user made from a tensor can change without the tensor's version counting it. None
    for the copies an autocast region casts each call (``LOCAL.cast_copies``): kept, every
    call's copy was packed anew and held until the cache was full."""
    torch = imported_torch()
    if torch is None or not getattr(_threads.LOCAL, "torch_data", False) \
            or not _frozen.weights_frozen():
        return None
    b = weight.base
    while b is not None and not isinstance(b, torch.Tensor):
        b = getattr(b, "base", None)
    # an inference tensor (made under torch.inference_mode) has no version counter: nothing
    # would tell when it changes, so it is packed on every call (reading its _version raised)
    if b is None or b.is_inference():
        return None
    copies = getattr(_threads.LOCAL, "cast_copies", None)
    return None if copies and b.data_ptr() in copies else b


def lookup(key: tuple, tensor) -> np.ndarray | None:
    """The packed weight kept for ``key`` if ``tensor`` has not changed since, else None."""
    with _LOCK:
        if _SEEN[0] != _frozen.generation():  # forget_packed_weights() since
            _clear()
            _SEEN[0] = _frozen.generation()
        entry = _ENTRIES.get(key)
        if entry is None:
            return None
        if entry[1] != tensor._version or entry[0].data_ptr() != entry[3]:
            _drop(key)  # (changed in place, or its storage moved: see the module's docstring)
            return None
        _ENTRIES.move_to_end(key)
        return entry[2]


def keep(key: tuple, tensor, version: int, packed: np.ndarray) -> None:
    """Keep ``packed`` for ``key``: ``tensor`` at ``version`` (read before packing)."""
    if packed.nbytes > PACK_CACHE_BYTES:
        return
    _frozen.watch_optimizer_steps()
    with _LOCK:
        if key in _ENTRIES:
            _drop(key)
        _ENTRIES[key] = (tensor, version, packed, tensor.data_ptr())
        _BYTES[0] += packed.nbytes
        while _BYTES[0] > PACK_CACHE_BYTES:
            _drop(next(iter(_ENTRIES)))


def clear() -> None:
    """Forget every packed weight."""
    with _LOCK:
        _clear()


def _clear() -> None:
    _ENTRIES.clear()
    _BYTES[0] = 0


def _drop(key: tuple) -> None:
    _BYTES[0] -= _ENTRIES.pop(key)[2].nbytes
