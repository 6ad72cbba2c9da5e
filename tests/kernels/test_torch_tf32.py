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


def test_the_bound_plans_take_the_tf32_path_for_cuda_tensors(monkeypatch):
    """Torch's candidates bind one closure per CPU problem (`_bind_forward`); CPU data run on
    the GPU reaches that closure with CUDA tensors, and a float32 product there must go through
    the general path's TF32 switch, not straight to torch's call (stand-in tensors, no GPU)."""
    from kernelkit.kernels.torch import conv2d as tconv
    from kernelkit.kernels.torch import matmul as tmm

    seen = []
    monkeypatch.setattr(tconv, "conv2d_forward", lambda *args: seen.append("conv") or "general")
    monkeypatch.setattr(tmm, "matmul_forward", lambda *args: seen.append("matmul") or "general")
    conv_opts = types.SimpleNamespace(geometry_args=((1, 1), (1, 1, 1, 1), (1, 1), 1),
                                      activation=None, tf32=False)
    conv_problem = types.SimpleNamespace(shapes=((1, 2, 5, 5), (3, 2, 3, 3)), device="cpu",
                                         dtype="float32", options=conv_opts, layout="NCHW")
    mm_opts = types.SimpleNamespace(bias=False, activation=None, tf32=False)
    mm_problem = types.SimpleNamespace(options=mm_opts, device="cpu", dtype="float32")
    conv = tconv._bind_forward(conv_problem)
    mm = tmm._bind_forward(mm_problem)
    cuda = tensor(torch.float32)
    assert conv(cuda, None, None) == "general" and mm(cuda, None, None) == "general"
    assert seen == ["conv", "matmul"]
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    torch.testing.assert_close(conv(x, w, None), torch.nn.functional.conv2d(x, w, padding=1),
                               rtol=0, atol=0)
    assert seen == ["conv", "matmul"]  # (CPU tensors: torch's call, straight)
