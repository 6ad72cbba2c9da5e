"""The bfloat16 GEMM and conv2d on Intel AMX tiles (``_amx``): packing, where they are offered,
the products.

The packing tests and the fallback run everywhere (plain Numba); the product needs AMX-BF16 and
Linux's permission for the tile data, and runs only where ``_amx.available()`` (an Intel Xeon of
the Sapphire Rapids generation or later). Elsewhere nothing AMX is compiled: an amx config (from a
cache written on such a machine) falls back to the other bfloat16 paths, tested here too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import MATMUL_ALIGNED, MATMUL_ODD, assert_conv2d_close, assert_matmul_close
from test_numba_bf16conv import CASES, _ids, make
from test_numba_bf16dot import _strided, as_bf16, bits

import kernelkit
from kernelkit.arrays import torch_to_numpy, with_dtype
from kernelkit.core import Problem
from kernelkit.kernels.convgeom import ConvOptions
from kernelkit.kernels.numba import _amx
from kernelkit.kernels.numba import _workspace as nm_workspace
from kernelkit.kernels.numba import conv2d as nc
from kernelkit.kernels.numba import matmul as nm
from kernelkit.kernels.numba.conv2d import Conv2dConfig, conv2d_forward
from kernelkit.kernels.numba.matmul import MatmulConfig, matmul_forward

POISON16, POISON32 = np.uint16(0xBEEF), np.uint32(0xDEADBEEF)
needs_amx = pytest.mark.skipif(not _amx.available(),
                               reason="no AMX-BF16 here (or Linux refused the tile data)")


@pytest.mark.parametrize("mb,kb,rows", [(1, 1, 32), (5, 33, 32), (32, 32, 32), (40, 70, 64)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_a_writes_16_row_strips_of_1kib_tiles(mb, kb, rows, layout):
    rng = np.random.default_rng(mb * 100 + kb)
    buf = rng.integers(0, 2**16, mb * kb, dtype=np.uint16)
    off, s_m, s_k, a = _strided(buf, mb, kb, layout)
    kpad = -(-kb // 32) * 32
    dst = np.full(rows * kpad + 1, POISON16, np.uint16)
    _amx.pack_a(buf, off, s_m, s_k, mb, kb, dst, rows)
    pad = np.zeros((rows, kpad), np.uint16)
    pad[:mb, :kb] = a
    # (strip, K step, row in strip, value in step): tile (s, t) is 16 x 32 values in a row
    want = pad.reshape(rows // 16, 16, kpad // 32, 32).transpose(0, 2, 1, 3).reshape(-1)
    assert np.array_equal(dst[:-1], want)
    assert dst[-1] == POISON16  # nothing past the padded rows


@pytest.mark.parametrize("kb,nb", [(1, 1), (2, 16), (7, 19), (32, 32), (33, 5), (64, 48)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_b_writes_16_column_slivers_of_k_pairs(kb, nb, layout):
    rng = np.random.default_rng(kb * 100 + nb)
    buf = rng.integers(0, 2**16, kb * nb, dtype=np.uint16)
    off, s_k, s_n, b = _strided(buf, kb, nb, layout)
    kpad = -(-kb // 32) * 32
    slivers = -(-nb // 32) * 2
    dst = np.full(slivers * 16 * kpad // 2 + 1, POISON32, np.uint32)
    _amx.pack_b(buf, off, s_k, s_n, kb, nb, dst, slivers)
    pad = np.zeros((kpad, slivers * 16), np.uint32)
    pad[:kb, :nb] = b
    want = (pad[0::2] | (pad[1::2] << 16))  # (kpad/2, cols): pair q of column c
    want = want.reshape(kpad // 2, slivers, 16).transpose(1, 0, 2).reshape(-1)
    assert np.array_equal(dst[:-1], want)
    assert dst[-1] == POISON32


def test_the_amx_kernel_is_offered_exactly_where_the_cpu_has_it():
    def kernels(dtype, m, k, n):
        p = Problem("matmul", ((1, m, k), (1, k, n)), dtype, "NN", "numpy", "cpu")
        return {c.kernel for c in nm.space(p)}

    assert ("amx" in kernels("bfloat16", 256, 256, 256)) is _amx.available()
    assert ("amx" in kernels("float16", 256, 256, 256)) is _amx.available()  # bfloat16 halves
    assert "amx" not in kernels("float32", 256, 256, 256)
    assert "amx" not in kernels("bfloat16", 4, 4, 4)  # tiny: the unpacked loop
    assert "amx" not in kernels("float16", 4, 4, 4)


@pytest.mark.parametrize("k", [1, 31, 64, 700, 2048, 2100, 3 * 2100, 40000])
def test_amx_configs_are_valid_at_any_depth(k):
    """Both configs' blocks are multiples of 32 whatever K (K = 2100 gave the second an nc of
    48, which MatmulConfig rejects: the whole space() call raised)."""
    for config in nm.amx_configs(k):
        assert config.kernel == "amx"
        assert all(v % 32 == 0 and v > 0 for v in (config.mc, config.kc, config.nc))


def test_amx_blocks_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        MatmulConfig(1024, 100, 256, "amx")
    MatmulConfig(100, 100, 100, "packed")  # the other kernels keep their own rules


TINY = MatmulConfig(32, 32, 32, "amx")  # every dim crosses the A chunks, K blocks and C buffers


def _product_cases(a, b, bias, config):
    out = as_bf16(matmul_forward(bits(a), bits(b), config=config))
    assert out.shape == (a.shape[0], a.shape[1], b.shape[2])
    assert_matmul_close(out, a, b, acc="float32")
    out = as_bf16(matmul_forward(bits(a), bits(b), bits(bias), "gelu", config))
    assert_matmul_close(out, a, b, bias, "gelu", acc="float32")


@pytest.mark.parametrize("available", [True, False], ids=["amx", "no-amx"])
def test_an_amx_config_without_amx_falls_back(available, monkeypatch):
    """A cache written on a machine with AMX names the amx kernel; read on a machine without
    it (or with the permission refused) the product still comes out, through another path."""
    if available and not _amx.available():
        pytest.skip("no AMX-BF16 here: the fallback case covers this machine")
    monkeypatch.setattr(_amx, "available", lambda: available)
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 45, 70, generator=g)
    b = torch.randn(2, 70, 37, generator=g)
    bias = torch.randn(37, generator=g)
    _product_cases(a.bfloat16(), b.bfloat16(), bias.bfloat16(), TINY)
    _f16_cases(a, b, bias, TINY)
    _product_cases(a.bfloat16(), b.bfloat16(), bias.bfloat16(), nm.AMX_W)


@needs_amx
@pytest.mark.parametrize("mkn", MATMUL_ODD + MATMUL_ALIGNED, ids=str)
@pytest.mark.parametrize("config", [nm.amx_configs(64)[0], TINY],
                         ids=["default", "tiny"])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_amx_gemm_matches_float64(mkn, config, threads, monkeypatch):
    monkeypatch.setattr(nm, "SMALL_WORK", 0)  # the AMX path, whatever the size
    monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    m, k, n = mkn
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a = torch.randn(2, m, k, generator=g).bfloat16()
    b = torch.randn(2, k, n, generator=g).bfloat16()
    _product_cases(a, b, torch.randn(n, generator=g).bfloat16(), config)


@needs_amx
def test_amx_gemm_strides_panels_nan_inf(monkeypatch):
    """Transposed, sliced and reversed views; more columns than one packed B panel; NaN / Inf
    propagate as torch's do."""
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    monkeypatch.setattr(nm, "AMX_PANEL", 64)  # three panels of B's 153 columns
    g = torch.Generator().manual_seed(3)
    a = torch.randn(3, 41, 67, generator=g).bfloat16()
    b = torch.randn(3, 82, 153, generator=g).bfloat16()
    au = bits(a).transpose(0, 2, 1)[:, ::-1]  # (3, 67, 41): transposed, rows reversed
    bu = bits(b)[:, ::-2]                       # (3, 41, 153): every other row, reversed
    out = as_bf16(matmul_forward(au, bu, config=TINY))
    assert_matmul_close(out, as_bf16(au), as_bf16(bu), acc="float32")
    x = torch.randn(1, 30, 20, generator=g).bfloat16()
    x[0, 3, 5], x[0, 7, 0] = float("nan"), float("inf")
    y = torch.randn(1, 20, 40, generator=g).bfloat16()
    out = as_bf16(matmul_forward(bits(x), bits(y), config=TINY))
    assert_matmul_close(out, x, y, acc="float32")
    assert torch.equal(out.isnan(), torch.matmul(x, y).isnan())


@needs_amx
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 80), k=st.integers(1, 80), n=st.integers(1, 90),
       blocks=st.tuples(*[st.sampled_from([32, 64, 96])] * 3), seed=st.integers(0, 2**16),
       dtype=st.sampled_from(["bfloat16", "float16"]))
def test_amx_gemm_hypothesis(m, k, n, blocks, seed, dtype):
    """bfloat16, and float16 as its bfloat16 halves, through any blocking."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(1, m, k, generator=g).to(getattr(torch, dtype))
    b = torch.randn(1, k, n, generator=g).to(getattr(torch, dtype))
    old = nm.SMALL_WORK
    nm.SMALL_WORK = 0
    try:
        out = matmul_forward(torch_to_numpy(a), torch_to_numpy(b),
                             config=MatmulConfig(*blocks, "amx"))
    finally:
        nm.SMALL_WORK = old
    assert_matmul_close(with_dtype(out, dtype), a, b, acc="float32")


# ------------------------------------------------- amx_w: the weight's rows read in place as tiles

def test_amx_w_is_offered_for_a_weight_stored_along_k():
    def kernels(dtype, m, k, n, layout):
        p = Problem("matmul", ((1, m, k), (1, k, n)), dtype, layout, "numpy", "cpu")
        return [c.kernel for c in nm.space(p)]

    assert ("amx_w" in kernels("bfloat16", 8, 256, 256, "NT")) is _amx.available()
    assert "amx_w" not in kernels("bfloat16", 8, 256, 256, "NN")  # B rows contiguous: "amx"
    assert "amx_w" not in kernels("float16", 8, 256, 256, "NT")
    assert "amx_w" not in kernels("float32", 8, 256, 256, "NT")
    if _amx.available():  # first where A has fewer rows than B has columns (a skinny input)
        assert kernels("bfloat16", 8, 256, 256, "NT")[0] == "amx_w"
        assert kernels("bfloat16", 512, 256, 256, "NT")[0] == "amx"


def _linear_case(m, k, n, seed, batch=1, shared=True, act=None, bias=True):
    """(a, b, bias) bfloat16 tensors with b = W^T of a (N, K) weight, as F.linear hands it."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, m, k, generator=g).bfloat16()
    w = torch.randn(1 if shared else batch, n, k, generator=g).bfloat16()
    b = w.transpose(1, 2)
    if shared:
        b = b.expand(batch, k, n)
    bb = torch.randn(n, generator=g).bfloat16() if bias else None
    return a, b, bb


def _amx_w_check(a, b, bias, act=None):
    au, bu = torch_to_numpy(a), torch_to_numpy(b)  # (strides kept: b^T rows, stride-0 batch)
    out = as_bf16(matmul_forward(au, bu, None if bias is None else bits(bias), act, nm.AMX_W))
    assert out.shape == (a.shape[0], a.shape[1], b.shape[2])
    assert_matmul_close(out, a, b, bias, act, acc="float32")
    return out


AMX_W_CASES = [  # (M, K, N): whole tiles read in place, or the packed fallback, K odd or tiny
    (1, 64, 64), (5, 128, 96), (33, 64, 32), (100, 96, 160),
    (7, 70, 40), (3, 33, 5), (40, 31, 64), (1, 1, 1), (65, 2, 33), (2, 257, 31)]


@needs_amx
@pytest.mark.parametrize("mkn", AMX_W_CASES + MATMUL_ALIGNED + MATMUL_ODD[:9], ids=str)
@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_amx_w_gemm_matches_float64(mkn, threads, monkeypatch):
    monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    monkeypatch.setattr(nm, "_workspace", _PoisonedOut())
    m, k, n = mkn
    a, b, bias = _linear_case(m, k, n, seed=m * 1000 + k * 10 + n)
    _amx_w_check(a, b, None)
    _amx_w_check(a, b, bias, "gelu")


@needs_amx
@pytest.mark.parametrize("shared", [True, False], ids=["one weight", "a weight per batch"])
def test_amx_w_gemm_batches_strides_nan_inf(shared, monkeypatch):
    """Batches over one broadcast weight (their rows in one product) or a weight each; a
    weight stored along N (plain B, copied first), a strided A; NaN / Inf as torch's."""
    monkeypatch.setattr(nm, "SERIAL_WORK", 0)
    monkeypatch.setattr(nm, "_workspace", _PoisonedOut())
    a, b, bias = _linear_case(9, 64, 96, seed=11, batch=3, shared=shared)
    _amx_w_check(a, b, bias, "relu")
    _amx_w_check(a.transpose(1, 2).contiguous().transpose(1, 2), b.contiguous(), None)
    a[0, 2, 5], a[1, 0, 0], b[0, 3, 7] = float("nan"), float("inf"), -float("inf")
    out = _amx_w_check(a, b, None)
    assert torch.equal(out.isnan(), torch.matmul(a.float(), b.float()).isnan())


@needs_amx
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 100), n=st.integers(1, 100),
       seed=st.integers(0, 2**16))
def test_amx_w_gemm_hypothesis(m, k, n, seed):
    a, b, bias = _linear_case(m, k, n, seed)
    _amx_w_check(a, b, bias)


# ------------------------------------------------------------------ float16 as bfloat16 halves

F16_FINITE = np.arange(2**16, dtype=np.uint32)[(np.arange(2**16) & 0x7C00) != 0x7C00].astype(
    np.uint16)


def _halves_ref(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) bfloat16 bits of float16 bits ``h`` through torch: hi = bfloat16(x) rounded to
    nearest even, lo = bfloat16(x - hi) (exact), lo 0 for Inf / NaN."""
    x = torch.from_numpy(h.view(np.float16).astype(np.float32))
    hi = x.bfloat16()
    lo = (x - hi.float()).bfloat16()
    lo[~torch.isfinite(x)] = 0
    return bits(hi), bits(lo)


def test_split_f16_is_exact_on_every_float16():
    """hi + lo is the float16 value exactly, for all 63488 finite patterns (subnormals, the
    largest, both zeros); Inf and NaN are flagged, with hi Inf / NaN of the same sign."""
    got = np.array([_amx.split_f16(np.uint16(h)) for h in range(2**16)], np.int64)
    hi, lo, bad = got[:, 0].astype(np.uint16), got[:, 1].astype(np.uint16), got[:, 2]
    finite = (np.arange(2**16) & 0x7C00) != 0x7C00
    assert np.array_equal(bad, (~finite).astype(np.int64))
    value = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    widen = lambda u: (u.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert np.array_equal(widen(hi[finite]) + widen(lo[finite]), value[finite])
    want_hi, want_lo = _halves_ref(np.arange(2**16, dtype=np.uint32).astype(np.uint16))
    assert np.array_equal(hi[finite], want_hi[finite])  # hi: round to nearest even
    assert np.array_equal(lo, want_lo)
    assert np.array_equal(np.isnan(widen(hi[~finite])), np.isnan(value[~finite]))
    assert np.array_equal(widen(hi[~finite])[~np.isnan(value[~finite])],
                          value[~finite][~np.isnan(value[~finite])])


def _segments_ref(m: np.ndarray, axis: int, order: tuple[int, int, int]) -> np.ndarray:
    """The three segments of ``m`` (float16 bits) along ``axis``, each its hi (0) or lo (1)
    halves padded with zeros to an even length (``_amx.f16_segment``)."""
    halves = _halves_ref(np.ascontiguousarray(m))
    k = m.shape[axis]
    pad = [(0, 0), (0, 0)]
    pad[axis] = (0, k % 2)
    return np.concatenate([np.pad(halves[g], pad) for g in order], axis=axis)


@pytest.mark.parametrize("mb,kb,rows", [(1, 1, 32), (5, 11, 32), (32, 32, 32), (40, 70, 64)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_a_f16_writes_hi_hi_lo_segments_as_tiles(mb, kb, rows, layout):
    rng = np.random.default_rng(mb * 100 + kb)
    buf = rng.choice(F16_FINITE, mb * kb)
    off, s_m, s_k, a = _strided(buf, mb, kb, layout)
    wide = _segments_ref(a, 1, (0, 0, 1))  # mb x 3L: [hi | hi | lo]
    kpad = -(-wide.shape[1] // 32) * 32
    dst = np.full(rows * kpad + 1, POISON16, np.uint16)
    assert _amx.pack_a_f16(buf, off, s_m, s_k, mb, kb, dst, rows) == 0
    pad = np.zeros((rows, kpad), np.uint16)
    pad[:mb, :wide.shape[1]] = wide
    want = pad.reshape(rows // 16, 16, kpad // 32, 32).transpose(0, 2, 1, 3).reshape(-1)
    assert np.array_equal(dst[:-1], want)
    assert dst[-1] == POISON16


@pytest.mark.parametrize("kb,nb", [(1, 1), (2, 16), (7, 19), (11, 32), (33, 5), (64, 48)])
@pytest.mark.parametrize("layout", ["row", "col", "reversed"])
def test_pack_b_f16_writes_hi_lo_hi_segments_as_pairs(kb, nb, layout):
    rng = np.random.default_rng(kb * 100 + nb)
    buf = rng.choice(F16_FINITE, kb * nb)
    off, s_k, s_n, b = _strided(buf, kb, nb, layout)
    tall = _segments_ref(b, 0, (0, 1, 0))  # 3L x nb: [hi; lo; hi]
    kpad = -(-tall.shape[0] // 32) * 32
    slivers = -(-nb // 32) * 2
    dst = np.full(slivers * 16 * kpad // 2 + 1, POISON32, np.uint32)
    assert _amx.pack_b_f16(buf, off, s_k, s_n, kb, nb, dst, slivers) == 0
    pad = np.zeros((kpad, slivers * 16), np.uint32)
    pad[:tall.shape[0], :nb] = tall
    want = (pad[0::2] | (pad[1::2] << 16)).reshape(kpad // 2, slivers, 16)
    assert np.array_equal(dst[:-1], want.transpose(1, 0, 2).reshape(-1))
    assert dst[-1] == POISON32


def test_the_f16_packers_count_inf_and_nan():
    a = np.full((3, 5), 0x3C00, np.uint16)  # 1.0
    a[0, 1], a[2, 4], a[1, 0] = 0x7C00, 0xFC00, 0x7E00  # Inf, -Inf, NaN
    flat = a.reshape(-1)
    assert _amx.pack_a_f16(flat, 0, 5, 1, 3, 5, np.empty(32 * 32, np.uint16), 32) == 3
    assert _amx.pack_b_f16(flat, 0, 5, 1, 3, 5, np.empty(2 * 16 * 16, np.uint32), 2) == 3


def _f16_cases(a, b, bias, config):
    a16, b16 = a.half().numpy(), b.half().numpy()
    out = matmul_forward(a16, b16, config=config)
    assert out.dtype == np.float16 and out.shape == (a.shape[0], a.shape[1], b.shape[2])
    assert_matmul_close(out, a16, b16, acc="float32")
    out = matmul_forward(a16, b16, bias.half().numpy(), "gelu", config)
    assert_matmul_close(out, a16, b16, bias.half().numpy(), "gelu", acc="float32")


@needs_amx
@pytest.mark.parametrize("mkn", MATMUL_ODD + MATMUL_ALIGNED, ids=str)
@pytest.mark.parametrize("config", [nm.amx_configs(3 * 64)[0], TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("threads", ["serial", "parallel"])
def test_amx_f16_gemm_matches_float64(mkn, config, threads, monkeypatch):
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if threads == "serial" else 0)
    monkeypatch.setattr(nm, "_workspace", _PoisonedOut())
    m, k, n = mkn
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n + 7)
    _f16_cases(torch.randn(2, m, k, generator=g), torch.randn(2, k, n, generator=g),
               torch.randn(n, generator=g), config)


class _PoisonedOut:
    """``_workspace`` whose output arrays start as float16 NaN bits (0xFFFF), so an element the
    kernel never wrote fails the comparison."""

    def __getattr__(self, name):
        return getattr(nm_workspace, name)

    @staticmethod
    def empty_bits16(shape):
        out = nm_workspace.empty_bits16(shape)
        out[...] = 0xFFFF
        return out


@needs_amx
def test_amx_f16_gemm_strides_panels_and_inf_nan_fall_back(monkeypatch):
    """Transposed, sliced and reversed views, three B panels; an operand with Inf or NaN goes
    the float32 way (the split cannot carry them) and gives torch's NaN / Inf pattern."""
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    monkeypatch.setattr(nm, "AMX_PANEL", 64)
    g = torch.Generator().manual_seed(4)
    a = torch.randn(3, 41, 67, generator=g).half().numpy()
    b = torch.randn(3, 82, 153, generator=g).half().numpy()
    au, bu = a.transpose(0, 2, 1)[:, ::-1], b[:, ::-2]  # (3, 67, 41), (3, 41, 153)
    assert_matmul_close(matmul_forward(au, bu, config=TINY), au, bu, acc="float32")
    x = torch.randn(1, 30, 20, generator=g).half()
    x[0, 3, 5], x[0, 7, 0], x[0, 9, 2] = float("nan"), float("inf"), -float("inf")
    y = torch.randn(1, 20, 40, generator=g).half()
    assert nm._matmul_amx(x.numpy().view(np.uint16), y.numpy().view(np.uint16), None, 0, TINY,
                          True) is None
    out = matmul_forward(x.numpy(), y.numpy(), config=TINY)
    assert_matmul_close(out, x.numpy(), y.numpy(), acc="float32")
    want = torch.matmul(x.float(), y.float())
    assert np.array_equal(np.isnan(out), want.isnan().numpy())
    assert np.array_equal(np.isposinf(out), want.isposinf().numpy())


# ------------------------------------------------------------------------------------- conv2d

AMX_CONV = Conv2dConfig(96, 256, 4096, "amx")
AMX_COLS = Conv2dConfig(96, 256, 4096, "amx_cols")
# one group, a square stride: what the amx conv runs (the VDPBF16PS tests' cases, and more)
AMX_EXTRA = [
    (2, 33, 6, 7, 40, 3, 3, (1, 1), (0, 1, 2, 0), (1, 1), 1),  # asymmetric padding, > 32 ch
    (1, 64, 12, 12, 70, 2, 3, (1, 1), (1, 1, 1, 1), (2, 1), 1),  # dilation, K past 2 blocks
    (1, 5, 40, 3, 3, 3, 1, (1, 1), (1, 1, 0, 0), (1, 1), 1),  # tall and narrow
    (2, 40, 15, 12, 33, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride 2: four phases
    (1, 9, 14, 13, 7, 3, 3, (3, 3), (0, 2, 1, 0), (2, 1), 1),  # stride 3, dilation
]
CONV_CASES = [case for case in CASES if case[7][0] == case[7][1] and case[10] == 1] + AMX_EXTRA
# the column conv takes any stride; the last four read the weight in place (C*R*S and K
# multiples of 32), the last one in two column chunks (96 + 32 of its 128 columns) by two
# strips of 32 rows, chunk by chunk (more columns than rows), and strip by strip below
COLS_CASES = [case for case in CASES if case[10] == 1] + AMX_EXTRA + [
    (2, 32, 7, 6, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # in place, two images
    (1, 64, 9, 9, 96, 1, 1, (2, 1), (0, 0, 0, 0), (1, 1), 1),  # in place, 1x1, non-square stride
    (3, 96, 5, 5, 32, 3, 3, (1, 1), (2, 0, 1, 1), (1, 2), 1),  # in place, padded, dilated
    (1, 512, 10, 10, 64, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 2 chunks x 2 strips
]


@pytest.fixture
def poisoned_scratch(monkeypatch):
    """The amx convs' scratch, packed weight and output start as all-ones bytes (NaN as
    float32, NaN pairs as bfloat16), and their threaded paths run whatever the size."""
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 0)
    for name in ("_scratch", "aligned_empty", "empty_bits16"):
        real = getattr(nc, name)

        def poisoned(*args, real=real):
            a = real(*args)
            a.view(np.uint8)[...] = 0xFF
            return a
        monkeypatch.setattr(nc, name, poisoned)


def _conv_amx_check(x_bits, w, b, case, act=None, x_ref=None, config=AMX_CONV, w_bits=None):
    _, _, _, _, _, _, _, st_, pad, dil, g = case
    w_bits = bits(w) if w_bits is None else w_bits
    if config.kernel == "amx":
        assert nc.amx_conv(x_bits, w_bits, st_, g, "NCHW", config)
    else:
        assert nc.amx_cols(w_bits, g, "NCHW", config)
    out = conv2d_forward(x_bits, w_bits, None if b is None else bits(b), st_, pad, dil, g, act,
                         "NCHW", config)
    assert out.dtype == np.uint16 and out.flags.c_contiguous
    assert_conv2d_close(as_bf16(out), as_bf16(x_bits) if x_ref is None else x_ref, w, b,
                        stride=st_, padding=pad, dilation=dil, groups=g, activation=act,
                        acc="float32")


def test_the_amx_conv_is_taken_exactly_where_it_applies(monkeypatch):
    """An amx config on a bfloat16 NCHW single-group forward with a square stride, an amx_cols
    config with any stride, on a CPU with AMX; the tuner offers them there only; elsewhere
    either config runs as "auto"."""
    x, w = np.zeros((1, 8, 5, 5), np.uint16), np.zeros((8, 8, 3, 3), np.uint16)
    monkeypatch.setattr(_amx, "available", lambda: True)
    assert nc.amx_conv(x, w, (1, 1), 1, "NCHW", AMX_CONV)
    assert not nc.amx_conv(x, w, (1, 1), 1, "NCHW", None)
    assert not nc.amx_conv(x, w, (1, 1), 1, "NCHW", Conv2dConfig(96, 256, 4096, "auto"))
    assert nc.amx_conv(x, w, (2, 2), 1, "NCHW", AMX_CONV)
    assert not nc.amx_conv(x, w, (1, 2), 1, "NCHW", AMX_CONV)
    assert not nc.amx_conv(x, w[:, :4], (1, 1), 2, "NCHW", AMX_CONV)
    assert not nc.amx_conv(x, w, (1, 1), 1, "NHWC", AMX_CONV)

    def kernels(dtype, stride, groups):
        opts = ConvOptions(stride=(stride, stride), padding=(1, 1, 1, 1), dilation=(1, 1),
                           groups=groups, bias=False, activation=None)
        p = Problem("conv2d", ((2, 8, 9, 9), (8, 8 // groups, 3, 3), (2, 8, 9 // stride, 9 // stride)),
                    dtype, "NCHW", "torch", "cpu", opts)
        return {c.kernel for c in nc.space(p)}

    assert {"amx", "amx_cols"} <= kernels("bfloat16", 1, 1)
    assert not {"amx", "amx_cols"} & kernels("float32", 1, 1)
    assert {"amx", "amx_cols"} <= kernels("bfloat16", 2, 1)
    assert not {"amx", "amx_cols"} & kernels("bfloat16", 1, 2)
    # the column conv also takes a stride that differs between the axes, the shifted one not
    assert nc.amx_cols(w, 1, "NCHW", AMX_COLS)
    assert not nc.amx_cols(w, 1, "NCHW", AMX_CONV)
    assert not nc.amx_cols(w[:, :4], 2, "NCHW", AMX_COLS)
    assert not nc.amx_cols(w, 1, "NHWC", AMX_COLS)
    monkeypatch.setattr(_amx, "available", lambda: False)
    assert not {"amx", "amx_cols"} & kernels("bfloat16", 1, 1)
    assert not nc.amx_conv(x, w, (1, 1), 1, "NCHW", AMX_CONV)
    assert not nc.amx_cols(w, 1, "NCHW", AMX_COLS)
    x_t, w_t, b_t = make(CONV_CASES[1], 3)  # and the config still runs, on another path
    for config in (AMX_CONV, AMX_COLS):
        out = conv2d_forward(bits(x_t), bits(w_t), bits(b_t), (1, 1), (1, 1, 1, 1), (1, 1), 1,
                             "relu", "NCHW", config)
        assert_conv2d_close(as_bf16(out), x_t, w_t, b_t, stride=(1, 1), padding=(1, 1, 1, 1),
                            dilation=(1, 1), groups=1, activation="relu", acc="float32")


@needs_amx
@pytest.mark.parametrize("case", CONV_CASES, ids=_ids)
def test_amx_conv_matches_float64(case, poisoned_scratch):
    x, w, b = make(case, sum(case[:7]))
    _conv_amx_check(bits(x), w, b, case, "relu")
    _conv_amx_check(bits(x), w, None, case)


@needs_amx
@pytest.mark.parametrize("case", COLS_CASES, ids=_ids)
def test_amx_column_conv_matches_float64(case, poisoned_scratch):
    x, w, b = make(case, sum(case[:7]))
    _conv_amx_check(bits(x), w, b, case, "relu", config=AMX_COLS)
    _conv_amx_check(bits(x), w, None, case, config=AMX_COLS)


@needs_amx
def test_amx_column_conv_in_either_unit_order(poisoned_scratch, monkeypatch):
    case = COLS_CASES[-1]
    x, w, b = make(case, 3)
    for by_chunk in (True, False):
        monkeypatch.setattr(nc, "AMX_COLS_BY_CHUNK", by_chunk)
        _conv_amx_check(bits(x), w, b, case, "relu", config=AMX_COLS)


@needs_amx
@pytest.mark.parametrize("config", [AMX_CONV, AMX_COLS], ids=["amx", "amx_cols"])
@pytest.mark.parametrize("case", [(2, 7, 9, 8, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
                                  (2, 32, 9, 8, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)],
                         ids=["packed", "in-place"])
def test_amx_conv_reads_any_strides_and_propagates_nan_inf(case, config, poisoned_scratch):
    x, w, b = make(case, 5)
    xb = bits(x)
    check = lambda xb, w: _conv_amx_check(xb, w, b, case, config=config)  # noqa: E731
    check(np.ascontiguousarray(xb[:, ::-1])[:, ::-1], w)
    check(np.ascontiguousarray(xb.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2), w)
    x[0, 2, 4, 4] = float("nan")
    x[1, 3, 0, 0] = float("inf")
    check(bits(x), w)
    w2 = w.clone()
    w2[1, 4, 0, 0] = float("inf")
    check(bits(make(case, 6)[0]), w2)
    # a strided weight (read in place only where contiguous: copied first)
    w_strided = np.empty(w.shape[:3] + (2 * w.shape[3],), np.uint16)[..., ::2]
    w_strided[...] = bits(w)
    _conv_amx_check(bits(x), w, b, case, config=config, w_bits=w_strided)


@needs_amx
def test_amx_conv_keeps_a_frozen_weight_until_it_changes():
    """Under frozen_weights() a torch weight is packed once; an in-place change repacks it."""
    case = (1, 20, 6, 6, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    x, w, b = make(case, 9)
    wt = w.clone()
    with kernelkit.frozen_weights():
        for _ in range(2):
            out = conv2d_forward(bits(x), torch_to_numpy(wt), None, (1, 1), (1, 1, 1, 1), (1, 1),
                                 1, None, "NCHW", AMX_CONV)
            assert_conv2d_close(as_bf16(out), x, wt, None, stride=(1, 1), padding=(1, 1, 1, 1),
                                dilation=(1, 1), groups=1, acc="float32")
        wt.mul_(-2)
        out = conv2d_forward(bits(x), torch_to_numpy(wt), None, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                             None, "NCHW", AMX_CONV)
        assert_conv2d_close(as_bf16(out), x, wt, None, stride=(1, 1), padding=(1, 1, 1, 1),
                            dilation=(1, 1), groups=1, acc="float32")


@needs_amx
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.integers(1, 70), hw=st.tuples(st.integers(1, 19),
       st.integers(1, 19)), k=st.integers(1, 70), rs=st.sampled_from([1, 2, 3, 5]),
       stride=st.integers(1, 3), pad=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_amx_conv_hypothesis(n, c, hw, k, rs, stride, pad, seed):
    h, w_ = hw
    assume(h + 2 * pad >= rs and w_ + 2 * pad >= rs)  # an output pixel at least
    case = (n, c, h, w_, k, rs, rs, (stride, stride), (pad,) * 4, (1, 1), 1)
    x, w, b = make(case, seed)
    _conv_amx_check(bits(x), w, b, case)


@needs_amx
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.sampled_from([1, 5, 32, 64]), hw=st.tuples(st.integers(1, 17),
       st.integers(1, 17)), k=st.sampled_from([1, 17, 32, 64]), rs=st.sampled_from([1, 2, 3]),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       pad=st.tuples(st.integers(0, 2), st.integers(0, 2)), seed=st.integers(0, 2**16))
def test_amx_column_conv_hypothesis(n, c, hw, k, rs, stride, pad, seed):
    h, w_ = hw
    assume(h + 2 * pad[0] >= rs and w_ + 2 * pad[1] >= rs)
    case = (n, c, h, w_, k, rs, rs, stride, (pad[0], pad[0], pad[1], pad[1]), (1, 1), 1)
    x, w, b = make(case, seed)
    _conv_amx_check(bits(x), w, b, case, "relu", config=AMX_COLS)


def _columns_reference(x, r, s, stride, padding, dilation):
    """im2col in float64: (C*R*S, N*Ho*Wo), rows in the weight's (c, i, j) order."""
    cols = torch.nn.functional.unfold(x.double(), (r, s), dilation=dilation, padding=0,
                                      stride=stride)  # (N, C*R*S, L)
    return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)


@pytest.mark.parametrize("case", [
    (1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),
    (2, 5, 7, 6, 3, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # odd C*R*S: a zero partner
    (2, 3, 9, 11, 3, 3, 2, (2, 1), (2, 0, 1, 3), (1, 2), 1),  # every geometry at once
    (1, 20, 5, 5, 3, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1: 16 pairs span 32 channels
], ids=_ids)
@pytest.mark.parametrize("threads", [1, 2])
def test_column_packing_writes_rows_of_k_pairs(case, threads):
    """``cols_pack_part`` (no AMX instruction: runs everywhere) against unfold in float64:
    every word of the poisoned buffer written, zero past C*R*S and past N*Ho*Wo columns."""
    n, c, h, w, _, r, s, st_, pad, dil, _ = case
    x = make(case, 11)[0]
    xp = torch.nn.functional.pad(x.float(), (pad[2], pad[3], pad[0], pad[1]))
    ref = _columns_reference(xp, r, s, st_, pad, dil)
    ho, wo = (xp.shape[2] - dil[0] * (r - 1) - 1) // st_[0] + 1, \
        (xp.shape[3] - dil[1] * (s - 1) - 1) // st_[1] + 1
    kall = c * r * s
    kp = -(-kall // 32) * 16
    ncols = -(-n * ho * wo // 32) * 32
    dst = np.full(kp * ncols, POISON32, np.uint32)
    xb = np.ascontiguousarray(bits(x).transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)  # strided
    nc._run(_amx.cols_pack_part, threads, xb, dst, kp, ncols, r, s, *st_, *pad, *dil, ho, wo,
            np.zeros(1, np.int64))
    words = dst.reshape(kp, ncols)
    lo = as_bf16((words & 0xFFFF).astype(np.uint16)).double()
    hi = as_bf16((words >> 16).astype(np.uint16)).double()
    got = torch.stack([lo, hi], 1).reshape(2 * kp, ncols)
    expect = torch.zeros(2 * kp, ncols, dtype=torch.float64)
    expect[:kall, :n * ho * wo] = ref
    torch.testing.assert_close(got, expect, rtol=0, atol=0)
