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


def test_operand_slots_are_apart_from_scratch_and_each_other_and_reused():
    _workspace.release()
    s = _workspace.scratch(1000, np.float32)
    a = _workspace.operand(1000, np.float32, 0)
    b = _workspace.operand(1000, np.float32, 1)
    for x in (a, b):
        assert x.shape == (1000,) and x.dtype == np.float32 and x.ctypes.data % 64 == 0
    assert not np.shares_memory(a, b) and not np.shares_memory(a, s)
    assert not np.shares_memory(b, s)
    assert np.shares_memory(_workspace.operand(10, np.uint32, 0), a)  # the slot's buffer again
    grown = _workspace.operand(100_000, np.float32, 1)
    assert grown.shape == (100_000,) and grown.ctypes.data % 64 == 0
    assert _workspace.operand(0, np.float32, 2).shape == (0,)
    big = _workspace.OPERAND_MAX_BYTES // 4 + 1  # above the cap: a new array every call
    assert not np.shares_memory(_workspace.operand(big, np.float32, 3),
                                _workspace.operand(big, np.float32, 3))
    _workspace.release()
    assert not np.shares_memory(_workspace.operand(1000, np.float32, 0), a)


def test_half_precision_calls_in_a_row_are_each_right_and_keep_earlier_results():
    """float16 and bfloat16 operands are widened into the thread's operand slots: each of several
    calls in a row (new inputs of the same shape, so the same slots) is right, and a result
    already returned does not change under the next call (it never views a slot)."""
    import torch

    from kernelkit import arrays
    from kernelkit.kernels.numba import matmul as nm  # (bfloat16 as its uint16 bits)

    rng = np.random.default_rng(7)
    for tdtype in (torch.float16, torch.bfloat16):
        results, refs = [], []
        for _ in range(3):
            a = torch.from_numpy(rng.standard_normal((1, 37, 53), dtype=np.float32)).to(tdtype)
            b = torch.from_numpy(rng.standard_normal((1, 53, 29), dtype=np.float32)).to(tdtype)
            got = nm.matmul_forward(arrays.torch_to_numpy(a), arrays.torch_to_numpy(b))
            results.append((got, got.copy()))
            refs.append(a.double() @ b.double())
        for (got, kept), ref in zip(results, refs):
            np.testing.assert_array_equal(got, kept)
            wide = (torch.from_numpy(got.view(np.int16)).view(torch.bfloat16) if got.dtype == np.uint16
                    else torch.from_numpy(got)).double()
            torch.testing.assert_close(wide, ref, rtol=1e-2, atol=1e-2 * np.sqrt(53))
    x1, x2 = (rng.standard_normal((2, 6, 9, 8), dtype=np.float32) for _ in range(2))
    w1, w2 = (rng.standard_normal((5, 6, 3, 3), dtype=np.float32) for _ in range(2))
    y1 = nc.conv2d_forward(x1.astype(np.float16), w1.astype(np.float16), None, (1, 1),
                           (1, 1, 1, 1), (1, 1), 1, None, "NCHW")
    kept = y1.copy()
    y2 = nc.conv2d_forward(x2.astype(np.float16), w2.astype(np.float16), None, (1, 1),
                           (1, 1, 1, 1), (1, 1), 1, None, "NCHW")
    np.testing.assert_array_equal(y1, kept)
    for y, x, w in ((y1, x1, w1), (y2, x2, w2)):
        ref = conv2d_ref(x.astype(np.float16).astype(np.float64),
                         w.astype(np.float16).astype(np.float64), padding=(1, 1, 1, 1))
        np.testing.assert_allclose(y.astype(np.float64), ref, rtol=1e-2, atol=1e-2 * np.sqrt(54))
