"""The CUDA handoff's ordering, checked without a GPU through a recording stand-in for torch.cuda:
a ring slot is rewritten only after its previous copy's event, every batch gets its own event,
the copy runs on the handoff's stream, and the consumer's stream waits for the event and is
recorded on the tensor. (The GPU itself runs it in bench/gpu_check.py's pipeline row.)"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from kernelkit.data.handoff import Handoff

LOG: list[tuple] = []


class _Event:
    count = 0

    def __init__(self):
        _Event.count += 1
        self.id = _Event.count

    def record(self, stream):
        LOG.append(("record", self.id, stream))

    def synchronize(self):
        LOG.append(("sync", self.id))


class _Stream:
    def __init__(self, name):
        self.name = name

    def wait_event(self, event):
        LOG.append(("wait", self.name, event.id))


class _DeviceTensor(torch.Tensor):
    def record_stream(self, stream):
        LOG.append(("record_stream", stream.name))


class _Cuda:
    Event = _Event
    current = _Stream("consumer")

    @staticmethod
    @contextlib.contextmanager
    def stream(s):
        LOG.append(("enter", s.name))
        yield
        LOG.append(("exit", s.name))

    @staticmethod
    def current_stream(device):
        return _Cuda.current


class _Torch:
    cuda = _Cuda

    @staticmethod
    def from_numpy(a):
        return torch.from_numpy(a)

    @staticmethod
    def empty(shape, dtype, pin_memory=False, device=None):
        LOG.append(("pinned" if pin_memory else "device", tuple(shape)))
        t = torch.empty(shape, dtype=dtype)
        return t if pin_memory else t.as_subclass(_DeviceTensor)


def _handoff(depth):
    h = Handoff.__new__(Handoff)  # as __init__ builds it on a GPU machine
    h.depth, h.torch, h.device, h.cuda = depth, _Torch, "cuda:0", True
    h.stream, h.pinned, h.events, h.slot = _Stream("copy"), [None] * depth, [None] * depth, 0
    return h


def test_the_ring_waits_for_a_slots_last_copy_and_the_consumer_waits_for_its_batch():
    LOG.clear()
    h = _handoff(depth=2)
    batches = [np.full((2, 3), i, np.float32) for i in range(3)] + [np.full((1, 3), 3, np.float32)]
    sent = [h.send(b) for b in batches]
    got = [h.receive(t, ev) for t, ev in sent]
    for b, t in zip(batches, got):
        assert np.array_equal(t.numpy(), b)
    ids = [ev.id for _, ev in sent]
    assert len(set(ids)) == 4  # an event per batch
    syncs = [e for e in LOG if e[0] == "sync"]
    # batch 2 reuses slot 0 after batch 0's copy, batch 3 slot 1 after batch 1's
    assert syncs == [("sync", ids[0]), ("sync", ids[1])]
    assert LOG.index(("sync", ids[0])) < LOG.index(("record", ids[2], h.stream))
    # each batch's device tensor made and its event recorded inside the copy stream's context
    for i in ids:
        rec = LOG.index(("record", i, h.stream))
        assert LOG[rec - 2] == ("enter", "copy") and LOG[rec - 1][0] == "device"
        assert LOG[rec + 1] == ("exit", "copy")
    waits = [e for e in LOG if e[0] == "wait"]
    assert waits == [("wait", "consumer", i) for i in ids]
    assert [e for e in LOG if e[0] == "record_stream"] == [("record_stream", "consumer")] * 4
    # pinned buffers: one per slot, and a new one when the batch shape changes (the last batch)
    assert [e for e in LOG if e[0] == "pinned"] == [("pinned", (2, 3))] * 2 + [("pinned", (1, 3))]


def test_cpu_and_numpy_handoffs_pass_batches_through():
    b = np.ones((2, 3), np.float32)
    same, ev = Handoff(None).send(b)
    assert same is b and ev is None
    t, ev = Handoff("cpu").send(b)
    assert isinstance(t, torch.Tensor) and ev is None and t.data_ptr() == b.ctypes.data


def test_a_cuda_device_torch_cannot_see_is_refused_with_what_to_do(monkeypatch):
    """`Loader(device="cuda")` without a GPU said only that torch sees none; `device="cuda:1"`
    on a one-GPU machine went on to torch's "invalid device ordinal" inside a stream's
    creation. Both now say what there is (torch.cuda patched to each situation)."""
    import pytest

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"'device' is 'cuda' but torch sees no CUDA device "
                                         r"\(device='cpu' gives CPU tensors, None numpy arrays\)"):
        Handoff("cuda", depth=2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"'device' is 'cuda:1' but torch sees 1 CUDA device"):
        Handoff("cuda:1", depth=2)
