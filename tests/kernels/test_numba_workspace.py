"""The per-thread scratch the Numba convs pack into: aligned, the size asked, reused by the
thread's next call, separate between threads, and results that do not depend on what an earlier
call left in it."""

from __future__ import annotations

import threading

import numpy as np
from reference import conv2d_ref

from kernelkit.kernels.numba import _workspace
from kernelkit.kernels.numba import conv2d as nc


def test_scratch_is_aligned_sized_and_reused():
    _workspace.release()
    a = _workspace.scratch(1000, np.float32)
    assert a.shape == (1000,) and a.dtype == np.float32 and a.ctypes.data % 64 == 0
    b = _workspace.scratch(10, np.float64)
    assert b.shape == (10,) and b.dtype == np.float64 and b.ctypes.data % 64 == 0
    assert np.shares_memory(a, b)  # the same buffer, not a new allocation
    c = _workspace.scratch(100_000, np.uint32)  # larger: grows
    assert c.shape == (100_000,) and c.ctypes.data % 64 == 0
    assert _workspace.scratch(0, np.float32).shape == (0,)


def test_threads_get_their_own_scratch():
    mine = _workspace.scratch(256, np.float32)
    theirs = []
    th = threading.Thread(target=lambda: theirs.append(_workspace.scratch(256, np.float32)))
    th.start()
    th.join()
    assert not np.shares_memory(mine, theirs[0])


def test_a_conv_after_a_poisoned_scratch_is_unchanged():
    """Every layout and algorithm that packs into the scratch: a result computed after the
    scratch was filled with NaN equals the one computed on a fresh scratch."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 11, 13), dtype=np.float32)
    w = rng.standard_normal((20, 12, 3, 3), dtype=np.float32)
    # stride 1 with both side pads: the shared-pad grid (its lead zeros come from the scratch)
    for stride, pad in (((1, 2), (1, 1, 0, 2)), ((1, 1), (1, 2, 2, 1)), ((1, 1), (0, 0, 1, 1))):
        ref = conv2d_ref(x, w, stride=stride, padding=pad)
        for kernel in ("shift", "gemm", "auto"):
            for layout in ("NCHW", "NHWC"):
                xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
                cfg = nc.Conv2dConfig(24, 16, 64, kernel)

                def conv(xl=xl, layout=layout, cfg=cfg, stride=stride, pad=pad):
                    y = nc.conv2d_forward(xl, w, None, stride, pad, (1, 1), 1, None, layout, cfg)
                    return y.transpose(0, 3, 1, 2) if layout == "NHWC" else y

                _workspace.release()
                fresh = conv()
                _workspace.scratch(1 << 20, np.float32)[:] = np.nan
                np.testing.assert_array_equal(conv(), fresh)
                np.testing.assert_allclose(fresh, ref, rtol=1e-4, atol=1e-4 * np.sqrt(12 * 9))



def test_outputs_on_torch_data_come_from_torchs_allocator(monkeypatch):
    """While a call's data are torch tensors, a new output is torch's allocation seen as numpy
    (numpy's own allocation path runs cold inside a torch model); 64-byte aligned either way,
    of the asked dtype and size, and a dtype torch lacks falls back to numpy."""
    import torch

    from kernelkit import threads

    for dtype in (np.float32, np.float64, np.float16, np.uint8, np.uint16):
        for size in (0, 1, 37, 4099):
            monkeypatch.setattr(threads.LOCAL, "torch_data", True, raising=False)
            a = _workspace.aligned_empty(size, dtype)
            monkeypatch.setattr(threads.LOCAL, "torch_data", False)
            b = _workspace.aligned_empty(size, dtype)
            for arr in (a, b):
                assert arr.dtype == dtype and arr.shape == (size,) and arr.flags.writeable
                assert size == 0 or arr.ctypes.data % 64 == 0
            from_torch = isinstance(a.base, torch.Tensor)
            assert from_torch == (np.dtype(dtype) != np.uint16), dtype
            assert not isinstance(b.base, torch.Tensor)
