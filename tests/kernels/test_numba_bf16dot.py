"""The bfloat16 GEMM through AVX-512 BF16 (VDPBF16PS): pair packing, and the product itself.

The packing tests run everywhere (plain Numba); the product needs the instruction and runs only
on a CPU that has it (``_gemm.HAS_BF16_DOT``); elsewhere bfloat16 takes the float32 fallback,
which ``tests/ops/test_matmul_op.py``'s half-precision tests cover on every machine.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import MATMUL_ALIGNED, MATMUL_ODD, assert_matmul_close

from kernelkit.arrays import torch_to_numpy, with_dtype
from kernelkit.kernels.numba import _bf16dot, _gemm, _half
from kernelkit.kernels.numba import matmul as nm
from kernelkit.kernels.numba.matmul import MatmulConfig, matmul_forward

MR, NR = _gemm.TILE["uint32"]
POISON = np.uint32(0xDEADBEEF)
needs_bf16_dot = pytest.mark.skipif(not _gemm.HAS_BF16_DOT,
                                    reason="the CPU (or LLVM < 17) has no AVX-512 BF16")


def bits(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 tensor's bit patterns as the numpy uint16 array the CPU kernels take (the
    ops layer's own conversion)."""
    return torch_to_numpy(t.contiguous())


def as_bf16(u16: np.ndarray) -> torch.Tensor:
    return with_dtype(np.ascontiguousarray(u16), "bfloat16")


def pairs_ref(mat: np.ndarray, lanes: int) -> np.ndarray:
    """The packed words of ``mat`` (lanes x kb: a sliver's rows (A) or columns (B) by K), padded
    to ``lanes`` rows and an even K: word (q, r) = mat[r, 2q] | mat[r, 2q + 1] << 16."""
    rows, kb = mat.shape
    pad = np.zeros((lanes, kb + (kb & 1)), np.uint32)
    pad[:rows, :kb] = mat
    return (pad[:, 0::2] | (pad[:, 1::2] << 16)).T.reshape(-1)  # q-major, then lane


def _strided(buf: np.ndarray, rows: int, cols: int, layout: str):
    """(offset, row stride, column stride, the matrix they address) in a flat ``buf`` holding
    rows * cols elements: row-major, column-major, or row-major read backwards both ways."""
    if layout == "row":
        off, s_r, s_c = 0, cols, 1
    elif layout == "col":
        off, s_r, s_c = 0, 1, rows
    else:
        off, s_r, s_c = rows * cols - 1, -cols, -1
    idx = off + np.arange(rows)[:, None] * s_r + np.arange(cols)[None, :] * s_c
    return off, s_r, s_c, buf[idx]


@pytest.mark.parametrize("mb,kb", [(1, 1), (MR, 2), (MR + 5, 7), (3 * MR, 16), (5, 33)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_a_pairs_layout(mb, kb, layout):
    rng = np.random.default_rng(mb * 100 + kb)
    buf = rng.integers(0, 2**16, mb * kb, dtype=np.uint16)
    off, s_m, s_k, a = _strided(buf, mb, kb, layout)
    kp = (kb + 1) // 2
    nsl = -(-mb // MR)
    dst = np.full(nsl * MR * kp + 3, POISON, np.uint32)
    _bf16dot.pack_a_pairs(buf, off, s_m, s_k, mb, kb, dst, 1)
    assert dst[0] == POISON and np.all(dst[-2:] == POISON)
    for s in range(nsl):
        want = pairs_ref(a[s * MR:(s + 1) * MR].astype(np.uint32), MR)
        assert np.array_equal(dst[1 + s * MR * kp:1 + (s + 1) * MR * kp], want), s


@pytest.mark.parametrize("kb,nb", [(1, 1), (2, NR), (7, NR + 3), (16, 3 * NR), (33, 5)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_b_pairs_layout(kb, nb, layout):
    rng = np.random.default_rng(kb * 100 + nb)
    buf = rng.integers(0, 2**16, kb * nb, dtype=np.uint16)
    off, s_k, s_n, b = _strided(buf, kb, nb, layout)
    kp = (kb + 1) // 2
    nsl = -(-nb // NR)
    dst = np.full(nsl * NR * kp + 1, POISON, np.uint32)
    _bf16dot.pack_b_pairs(buf, off, s_k, s_n, kb, nb, dst, 0, 0, nsl)
    assert dst[-1] == POISON
    for s in range(nsl):
        want = pairs_ref(b[:, s * NR:(s + 1) * NR].T.astype(np.uint32), NR)
        assert np.array_equal(dst[s * NR * kp:(s + 1) * NR * kp], want), s


def test_the_dot_product_path_is_taken_exactly_where_the_cpu_has_it():
    big = nm.SMALL_WORK
    assert nm.bf16_dot("H", big, 1, 1, None) is _gemm.HAS_BF16_DOT
    assert not nm.bf16_dot("H", 4, 4, 4, None)  # tiny: the unpacked float32 loop
    assert not nm.bf16_dot("e", big, 1, 1, None)  # float16 widens to float32
    assert not nm.bf16_dot("H", big, big, 0, None)  # K == 0: act(bias or 0) in the small loop
    assert not nm.bf16_dot("H", big, 1, 1, MatmulConfig(96, 256, 4096, "rows"))


TINY = MatmulConfig(mc=2 * MR, kc=10, nc=2 * NR)  # every dim crosses blocks; kc even, pairs


@needs_bf16_dot
@pytest.mark.parametrize("mkn", MATMUL_ODD + MATMUL_ALIGNED, ids=str)
@pytest.mark.parametrize("config", [None, TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_bf16_gemm_matches_float64(mkn, config, threads, monkeypatch):
    monkeypatch.setattr(nm, "SMALL_WORK", 0)  # the packed path, whatever the size
    monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    m, k, n = mkn
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a = torch.randn(2, m, k, generator=g).bfloat16()
    b = torch.randn(2, k, n, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16()
    out = as_bf16(matmul_forward(bits(a), bits(b), config=config))
    assert out.shape == (2, m, n)
    assert_matmul_close(out, a, b, acc="float32")
    out = as_bf16(matmul_forward(bits(a), bits(b), bits(bias), "gelu", config))
    assert_matmul_close(out, a, b, bias, "gelu", acc="float32")


@needs_bf16_dot
def test_bf16_gemm_strides_nan_inf(monkeypatch):
    """Transposed, sliced and reversed views read where they are; NaN / Inf propagate."""
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 41, 67, generator=g).bfloat16()
    b = torch.randn(3, 82, 53, generator=g).bfloat16()
    au = bits(a).transpose(0, 2, 1)[:, ::-1]  # (3, 67, 41): transposed, rows reversed
    bu = bits(b)[:, ::-2]                       # (3, 41, 53): every other row, reversed
    out = as_bf16(matmul_forward(au, bu, config=TINY))
    assert_matmul_close(out, as_bf16(au), as_bf16(bu), acc="float32")
    x = torch.randn(1, 30, 20, generator=g).bfloat16()
    x[0, 3, 5], x[0, 7, 0] = float("nan"), float("inf")
    y = torch.randn(1, 20, 40, generator=g).bfloat16()
    out = as_bf16(matmul_forward(bits(x), bits(y)))
    assert_matmul_close(out, x, y, acc="float32")


@needs_bf16_dot
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 90),
       kc=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_bf16_gemm_hypothesis(m, k, n, kc, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(1, m, k, generator=g).bfloat16(), torch.randn(1, k, n, generator=g).bfloat16()
    old = nm.SMALL_WORK
    nm.SMALL_WORK = 0
    try:
        out = as_bf16(matmul_forward(bits(a), bits(b), config=MatmulConfig(MR, kc, NR)))
    finally:
        nm.SMALL_WORK = old
    assert_matmul_close(out, a, b, acc="float32")


def test_bf16_conversions_are_exact_and_round_like_torch():
    """widen is exact; narrow (the Numba loops, both sizes of pool) rounds as torch converts."""
    rng = np.random.default_rng(11)
    for size in (1000, _half.PARALLEL_MIN + 7):
        x = rng.standard_normal(size).astype(np.float32) * np.float32(1e3)
        got = as_bf16(_half.narrow(x, "H"))
        assert torch.equal(got.view(torch.int16), torch.from_numpy(x).bfloat16().view(torch.int16))
        assert np.array_equal(_half.widen(bits(got)), got.float().numpy())
