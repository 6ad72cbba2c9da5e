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


def test_the_bound_plans_leave_the_gpu_candidates_to_the_tf32_path(monkeypatch):
    """Torch's candidates bind one closure per problem (`_bind_forward`) only for the CPU
    candidate, whose data is on the CPU by then; the GPU candidate's plan (CPU data run on the
    GPU too) must be the general path, where a float32 product takes the TF32 switch. Before,
    the closure asked each call's device (stand-in tensors, no GPU)."""
    from kernelkit.kernels.torch import conv2d as tconv
    from kernelkit.kernels.torch import matmul as tmm

    seen = []
    monkeypatch.setattr(tconv, "conv2d_forward", lambda *args: seen.append("conv") or "general")
    monkeypatch.setattr(tmm, "matmul_forward", lambda *args: seen.append("matmul") or "general")
    conv_opts = types.SimpleNamespace(geometry_args=((1, 1), (1, 1, 1, 1), (1, 1), 1),
                                      activation=None, tf32=False)
    mm_opts = types.SimpleNamespace(bias=False, activation=None, tf32=False)
    for data in ("cpu", "cuda"):
        conv_problem = types.SimpleNamespace(shapes=((1, 2, 5, 5), (3, 2, 3, 3)), device=data,
                                             dtype="float32", options=conv_opts, layout="NCHW")
        mm_problem = types.SimpleNamespace(options=mm_opts, device=data, dtype="float32")
        assert tconv._bind_forward(conv_problem, "cuda") is None
        assert tmm._bind_forward(mm_problem, "cuda") is None
        conv = tconv._bind_forward(conv_problem, "cpu")
        mm = tmm._bind_forward(mm_problem, "cpu")
        x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
        torch.testing.assert_close(conv(x, w, None), torch.nn.functional.conv2d(x, w, padding=1),
                                   rtol=0, atol=0)
        a, b = torch.randn(3, 4), torch.randn(4, 5)
        torch.testing.assert_close(mm(a, b, None), a @ b, rtol=0, atol=0)
    assert seen == []  # (the CPU closures: torch's call, straight)


@pytest.mark.parametrize("op", ["conv2d", "matmul"])
def test_only_the_cpu_candidate_binds_torch_s_call_directly(op):
    """`core.bound` tells an entry's `bind` the candidate's device: torch's CPU candidate gets the
    one-closure plan, its GPU candidate the op's general launch (no GPU needed to bind)."""
    from kernelkit import core
    from kernelkit.ops import conv2d as conv_op
    from kernelkit.ops import matmul as matmul_op

    if op == "conv2d":
        call = conv_op.prepare_forward(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), padding=1)
    else:
        call = matmul_op.prepare(torch.randn(3, 4), torch.randn(4, 5))
    names = {name: getattr(core.get(op, name).launcher(call.problem, {}), "__qualname__", "")
             for name in ("torch-cpu", "torch-cuda")}
    assert names["torch-cpu"] == "_bind_forward.<locals>.plan"
    assert names["torch-cuda"] != "_bind_forward.<locals>.plan"
