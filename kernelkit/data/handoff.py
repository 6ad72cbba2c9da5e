"""The handoff from host batches to the model's device: on CUDA, a ring of pinned host buffers
and the host-to-device copy on its own stream, ordered by events; on the CPU, the batch as is.

CUDA path, per batch (runs on the loader's producer thread, ahead of the consumer):

1. wait for the ring slot's previous copy (its event) so the pinned buffer can be rewritten;
2. copy the host batch into the pinned buffer (memcpy);
3. on the copy stream: ``device_tensor.copy_(pinned, non_blocking=True)``, record the slot's
   event;
4. the consumer, in ``next()``, makes its current stream wait for that event and records the
   tensor on its stream (``record_stream``) so the caching allocator does not reuse the memory
   while the model still reads it.

So the copy of batch i + 1 overlaps the model's work on batch i. This path needs a GPU and is
not exercised on a CPU-only machine beyond its construction checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class Handoff:
    """Moves host batches (numpy) to `device`.

    Args:
        device: None (keep numpy arrays), "cpu" (torch CPU tensors, zero-copy), or a CUDA device
            ("cuda", "cuda:1", a torch.device).
        depth: pinned buffers in the ring (CUDA): batches that may be in flight at once.
    """

    def __init__(self, device: Any = None, depth: int = 2):
        self.depth = depth
        self.torch = None
        self.device = None
        self.cuda = False
        if device is None:
            return
        import torch

        self.torch = torch
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"Loader: 'device' must be None, 'cpu' or a CUDA device, got "
                             f"{device!r}") from None
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"Loader: 'device' is {device!r} but torch sees no CUDA device "
                                 f"(device='cpu' gives CPU tensors, None numpy arrays)")
            if self.device.index is not None and self.device.index >= torch.cuda.device_count():
                raise ValueError(f"Loader: 'device' is {device!r} but torch sees "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
            self.cuda = True
            self.stream = torch.cuda.Stream(device=self.device)
            self.pinned: list[Any] = [None] * depth
            self.events: list[Any] = [None] * depth  # each slot's last copy
            self.slot = 0
        elif self.device.type != "cpu":
            raise ValueError(f"Loader: 'device' must be None, 'cpu' or a CUDA device, got {device!r}")

    def send(self, batch: Any) -> tuple[Any, Any]:
        """Start moving `batch` (a numpy array, or a tensor: bfloat16); returns (the tensor or array, an event to wait on or None)."""
        if self.torch is None:
            return batch, None
        t = self.torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        if not self.cuda:
            return t, None
        torch = self.torch
        k = self.slot
        self.slot = (k + 1) % self.depth
        buf = self.pinned[k]
        if self.events[k] is not None:
            self.events[k].synchronize()  # the slot's previous copy has left the buffer
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            # (a replaced buffer stays alive until its copy ends: torch's pinned allocator
            # records the copy's event)
            buf = self.pinned[k] = torch.empty(t.shape, dtype=t.dtype, device="cpu",
                                               pin_memory=True)
        buf.copy_(t)
        # a new event per batch: the consumer may wait on batch i's event after this producer
        # has moved on to the slot's next batch
        event = torch.cuda.Event()
        with torch.cuda.stream(self.stream):
            dev = torch.empty(t.shape, dtype=t.dtype, device=self.device)
            dev.copy_(buf, non_blocking=True)
            event.record(self.stream)
        self.events[k] = event
        return dev, event

    def receive(self, item: Any, event: Any) -> Any:
        """On the consumer's thread: order its stream after the copy; the tensor is then ready."""
        if event is not None:
            torch = self.torch
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            item.record_stream(current)
        return item
