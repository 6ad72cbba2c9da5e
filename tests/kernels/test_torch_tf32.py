"""The torch candidate's TF32 switch: written only for a float32 CUDA call whose flag differs
from what is asked, and always restored (no GPU: a stand-in tensor and a stand-in flag set)."""

from __future__ import annotations

import types

import pytest
import torch

from kernelkit.kernels.torch._tf32 import with_tf32


class Flags:
    """`torch.backends.cuda.matmul` / `torch.backends.cudnn` for the test: every write seen."""

    def __init__(self, value: bool) -> None:
        self._value, self.writes = value, []

    @property
    def allow_tf32(self) -> bool:
        return self._value

    @allow_tf32.setter
    def allow_tf32(self, value: bool) -> None:
        self.writes.append(value)
        self._value = value


def tensor(dtype, cuda=True):
    return types.SimpleNamespace(is_cuda=cuda, dtype=dtype)


@pytest.mark.parametrize("dtype, cuda, flag, asked, writes", [
    (torch.float32, True, True, False, [False, True]),  # switched for the call, then restored
    (torch.float32, True, False, True, [True, False]),
    (torch.float32, True, False, False, []),  # already as asked
    (torch.float16, True, True, False, []),  # half precision never reads it
    (torch.bfloat16, True, True, False, []),
    (torch.float32, False, True, False, []),  # CPU tensors never read it
])
def test_tf32_written_only_where_it_matters(dtype, cuda, flag, asked, writes):
    flags, seen = Flags(flag), []
    out = with_tf32(flags, tensor(dtype, cuda), asked, lambda: seen.append(flags.allow_tf32) or 7)
    assert out == 7
    assert seen == [asked if (cuda and dtype == torch.float32) else flag]
    assert flags.writes == writes and flags.allow_tf32 == flag


def test_tf32_restored_when_the_call_raises():
    flags = Flags(True)

    def boom():
        raise RuntimeError("out of memory")
    with pytest.raises(RuntimeError):
        with_tf32(flags, tensor(torch.float32), False, boom)
    assert flags.allow_tf32 is True and flags.writes == [False, True]
