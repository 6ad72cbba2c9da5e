"""Kernel-level tests of the Numba matmul: numerics, every layout, every path, the epilogue, asm."""

from __future__ import annotations

import re

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import MATMUL_ALIGNED, MATMUL_ODD, assert_matmul_close, matmul_ref

from kernelkit.kernels.numba import _gemm
from kernelkit.kernels.numba import matmul as nm
from kernelkit.kernels.numba.matmul import MatmulConfig, matmul_forward

DTYPES = [np.float32, np.float64]
ACTS = [None, "relu", "gelu", "gelu_tanh", "silu"]
# Blocks far smaller than the defaults, so that modest shapes cross every block boundary.
TINY_CFG = {np.float32: MatmulConfig(mc=24, kc=16, nc=64), np.float64: MatmulConfig(24, 16, 32)}
PATHS = ["small", "serial", "parallel"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    """Force one of the three code paths whatever the problem size."""
    if request.param == "small":
        monkeypatch.setattr(nm, "SMALL_WORK", 1 << 62)
    elif request.param == "serial":
        monkeypatch.setattr(nm, "SMALL_WORK", 0)
        monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62)
    else:
        monkeypatch.setattr(nm, "SMALL_WORK", 0)
        monkeypatch.setattr(nm, "SERIAL_WORK", 0)
    return request.param


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", MATMUL_ODD + MATMUL_ALIGNED)
def test_shapes(dtype, mkn, path):
    m, k, n = mkn
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a, b = rand(rng, (2, m, k), dtype), rand(rng, (2, k, n), dtype)
    out = matmul_forward(a, b, config=TINY_CFG[dtype])
    assert out.dtype == dtype and out.shape == (2, m, n) and out.flags.c_contiguous
    assert_matmul_close(out, a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 0, 5, 3), (0, 4, 5, 3), (3, 4, 5, 0), (2, 4, 0, 3)])
@pytest.mark.parametrize("act", [None, "gelu"])
def test_empty_dims(dtype, shape, act, path):
    bn, m, k, n = shape
    rng = np.random.default_rng(1)
    a, b, bias = rand(rng, (bn, m, k), dtype), rand(rng, (bn, k, n), dtype), rand(rng, n, dtype)
    for bb in (None, bias):
        out = matmul_forward(a, b, bb, act)
        assert out.shape == (bn, m, n) and out.dtype == dtype
        assert_matmul_close(out, a, b, bb, act)  # K == 0: act(bias or 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", ["tiny", "default"])
def test_multi_block(dtype, cfg, path):
    """Every dim spans several blocks and ends in a partial MR / NR tile."""
    mr, nr = _gemm.tile_shape(dtype)
    if cfg == "tiny":
        c = TINY_CFG[dtype]
        m, k, n = 3 * c.mc + mr + 1, 2 * c.kc + 5, 2 * c.nc + nr + 3
    else:
        c = MatmulConfig.default(dtype)
        m, k, n = c.mc + mr + 1, c.kc + 7, 2 * nr + 5
    rng = np.random.default_rng(2)
    a, b, bias = rand(rng, (1, m, k), dtype), rand(rng, (1, k, n), dtype), rand(rng, n, dtype)
    out = matmul_forward(a, b, bias, "relu", config=c)
    assert_matmul_close(out, a, b, bias, "relu")


def _layouts(rng, bn, m, k, n, dtype):
    """(name, a, b) with transposed, strided, negative-stride and broadcast views."""
    a, b = rand(rng, (bn, m, k), dtype), rand(rng, (bn, k, n), dtype)
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)  # column-major A
    bt = np.ascontiguousarray(b.transpose(0, 2, 1)).transpose(0, 2, 1)
    big_a = rand(rng, (bn, 2 * m, 3 * k), dtype)
    big_b = rand(rng, (bn, 3 * k, 2 * n), dtype)
    return [
        ("contig", a, b),
        ("transposed", at, bt),
        ("strided", big_a[:, ::2, ::3], big_b[:, ::3, ::2]),
        ("negative", a[:, ::-1, ::-1], b[::-1, :, ::-1]),
        ("neg-transposed", at[:, ::-1], bt[:, :, ::-1]),
        ("broadcast-a", np.broadcast_to(a[:1], a.shape), b),
        ("broadcast-b", a, np.broadcast_to(bt[:1], b.shape)),
        ("readonly", *(x.copy() for x in (a, b))),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts(dtype, path):
    rng = np.random.default_rng(3)
    for name, a, b in _layouts(rng, 3, 29, 37, 41, dtype):
        if name == "readonly":
            a.setflags(write=False)
            b.setflags(write=False)
        bias = rand(rng, 2 * 41, dtype)[::-2]  # strided, negative bias
        out = matmul_forward(a, b, bias, "silu", config=TINY_CFG[dtype])
        assert out.flags.c_contiguous, name
        assert_matmul_close(out, a, b, bias, "silu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
def test_activations_bias(dtype, act, path):
    rng = np.random.default_rng(4)
    a, b = rand(rng, (2, 33, 45), dtype), rand(rng, (2, 45, 50), dtype)
    bias = rand(rng, 50, dtype)
    for bb in (None, bias):
        out = matmul_forward(a, b, bb, act, config=TINY_CFG[dtype])
        assert_matmul_close(out, a, b, bb, act)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_inf(dtype, path):
    rng = np.random.default_rng(5)
    a, b = rand(rng, (1, 30, 40), dtype), rand(rng, (1, 40, 35), dtype)
    a[0, 3, 7] = np.nan
    a[0, 10, :] = 0.0
    b[0, :, 11] = 0.0
    b[0, 5, 11] = np.inf  # 0 * inf = nan in row 10 only; other rows of column 11 get +-inf
    a[0, 20, 2] = np.inf
    bias = rand(rng, 35, dtype)
    bias[4] = -np.inf
    for act in ACTS:
        out = matmul_forward(a, b, bias, act, config=TINY_CFG[dtype])
        assert_matmul_close(out, a, b, bias, act)
    out = matmul_forward(a, b)
    assert np.isnan(out[0, 10, 11]) and np.isnan(out[0, 3]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_config_in_space(dtype):
    m, k, n = 150, 300, 170
    space = MatmulConfig.space(dtype, m, n, k)
    assert 1 <= len(space) <= 6 + len(nm.KERNELS) - 1 and space[0] == MatmulConfig.default(dtype)
    assert len(set(space)) == len(space)
    rng = np.random.default_rng(6)
    a, b, bias = rand(rng, (1, m, k), dtype), rand(rng, (1, k, n), dtype), rand(rng, n, dtype)
    for cfg in space:
        assert MatmulConfig.from_dict(cfg.to_dict()) == cfg
        out = matmul_forward(a, b, bias, "gelu_tanh", config=cfg)
        assert_matmul_close(out, a, b, bias, "gelu_tanh")
    for cfg in MatmulConfig.space(dtype, 2000, 2000, 2000) + MatmulConfig.space(dtype, 1, 1, 1):
        assert cfg.mc % _gemm.tile_shape(dtype)[0] == 0 and cfg.nc % _gemm.tile_shape(dtype)[1] == 0


def test_config_contract():
    d = MatmulConfig.default(np.float32)
    assert d == MatmulConfig.default(np.dtype("float32"))
    assert MatmulConfig.from_dict(d.to_dict()) == d and hash(d) == hash(MatmulConfig(**d.to_dict()))
    with pytest.raises(ValueError):
        MatmulConfig(0, 16, 32)
    for dt in DTYPES:
        c = MatmulConfig.default(dt)
        item = np.dtype(dt).itemsize
        assert c.kc * _gemm.tile_shape(dt)[1] * item <= 2 * 1024 * 1024  # B sliver: cache-sized


@pytest.mark.parametrize("dtype", DTYPES)
def test_no_stale_packing_data(dtype, path):
    """Edge tiles are zero-padded: a NaN-filled earlier call leaves nothing behind."""
    rng = np.random.default_rng(7)
    cfg = TINY_CFG[dtype]
    nan_a = np.full((1, 61, 45), np.nan, dtype)
    nan_b = np.full((1, 45, 77), np.nan, dtype)
    assert np.isnan(matmul_forward(nan_a, nan_b, config=cfg)).all()
    for m, k, n in [(13, 7, 33), (25, 17, 3), (1, 45, 65)]:
        a, b = rand(rng, (1, m, k), dtype), rand(rng, (1, k, n), dtype)
        out = matmul_forward(a, b, config=cfg)
        assert_matmul_close(out, a, b)
        assert np.isnan(matmul_forward(nan_a, nan_b, config=cfg)).all()


def _strided_readonly(rng, bn, m, k, n):
    """Strided, read-only float32 (A, B, bias) views: the argument types of the compiled entry
    points (no new compile)."""
    a = rand(rng, (bn, m, 2 * k), np.float32)[:, :, ::2]
    b = rand(rng, (bn, k, 2 * n), np.float32)[:, :, ::2]
    bias = rand(rng, 2 * n, np.float32)[::2]
    for x in (a, b, bias):
        x.setflags(write=False)
    return a, b, bias


@pytest.mark.parametrize("nthr", [1, 2, 3, 5])
@pytest.mark.parametrize("bmn", [(1, 50, 70), (4, 30, 50), (3, 5, 90), (5, 2, 3)])
def test_thread_partition(nthr, bmn):
    """Every (thread, thread count) share of the work, run one after the other, covers C once."""
    bn, m, n = bmn
    k = 21
    a, b, bias = _strided_readonly(np.random.default_rng(8), bn, m, k, n)
    out = np.full((bn, m, n), np.nan, np.float32)
    c = TINY_CFG[np.float32]
    share = nm.pack_share(m, n, k, c.mc, c.kc, c.nc, np.float32)
    ws = np.full(nthr * share, np.nan, np.float32)
    for t in range(nthr):
        nm._gemm_part(t, nthr, a, b, bias, True, 1, out, c.mc, c.kc, c.nc, ws, share)
    assert_matmul_close(out, a, b, bias, "relu")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.integers(1, 300), st.integers(1, 300), st.integers(1, 700),
       st.integers(1, 5), st.integers(1, 600), st.integers(1, 900), st.integers(1, 3000),
       st.booleans())
def test_pack_share_holds_every_share_of_every_block(nbat, m, n, k, nthr, mc, kc, nc, pairs):
    """`pack_share` bounds the packed A block (from a 16-element boundary) plus B panel that
    `_blocks` gives any thread's share, so no call falls back to a fresh allocation; for the
    bfloat16 kernel in K pairs (its kc is twice the config's, made even)."""
    mr, nr = nm.tile_shape(np.float32)
    if pairs:  # (the share function gets twice the config's kc, in K values)
        share = nm.pack_share(m, n, k, mc, 2 * kc, nc, np.uint32)
    else:
        share = nm.pack_share(m, n, k, mc, kc, nc, np.float32)
    for t in range(nthr):
        _, _, r0, r1, c0, c1 = nm._share.py_func(t, nthr, nbat, m, n, mr, nr)
        if r1 <= r0 or c1 <= c0:
            continue
        if pairs:
            bmc, bkc, bnc = nm._blocks.py_func(r1 - r0, c1 - c0, k, mc, 2 * kc, nc, mr, nr)
            bkc = (bkc + (bkc & 1) + 1) // 2
        else:
            bmc, bkc, bnc = nm._blocks.py_func(r1 - r0, c1 - c0, k, mc, kc, nc, mr, nr)
        assert -(-bmc * bkc // 16) * 16 + bnc * bkc <= share
    assert share % 16 == 0


def test_num_threads_one(monkeypatch):
    monkeypatch.setattr(nm, "SMALL_WORK", 0)
    monkeypatch.setattr(nm, "SERIAL_WORK", 0)
    rng = np.random.default_rng(9)
    a, b = rand(rng, (3, 40, 30), np.float32), rand(rng, (3, 30, 50), np.float32)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        assert_matmul_close(matmul_forward(a, b), a, b)
    finally:
        numba.set_num_threads(old)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kc", [0, 1, 5, 64])
def test_ukernel(dtype, kc):
    """The micro-kernel alone on packed panels: overwrite, then accumulate, with a row stride."""
    mr, nr = _gemm.tile_shape(dtype)
    rng = np.random.default_rng(10)
    ap = rand(rng, 3 + kc * mr, dtype)
    bp = rand(rng, 5 + kc * nr, dtype)
    ldc = nr + 7
    c = np.full(2 + mr * ldc, 7.0, dtype)
    _ukernel_probe(kc, ap, 3, bp, 5, c, 2, ldc, 0)
    ref = ap[3:].reshape(kc, mr).T.astype(np.float64) @ bp[5:].reshape(kc, nr)
    got = c[2:].reshape(mr, ldc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[:, :nr], ref, rtol=tol, atol=tol * max(kc, 1))
    assert (got[:, nr:] == 7.0).all() and (c[:2] == 7.0).all()  # nothing outside the tile
    _ukernel_probe(kc, ap, 3, bp, 5, c, 2, ldc, 1)
    np.testing.assert_allclose(got[:, :nr], 2 * ref, rtol=tol, atol=tol * max(kc, 1))


@numba.njit  # not cached, so that its assembly can be inspected
def _ukernel_probe(kc, ap, aoff, bp, boff, cp, coff, ldc, acc):
    _gemm.ukernel(kc, ap, aoff, bp, boff, cp, coff, ldc, acc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ukernel_assembly(dtype):
    """The micro-kernel's K loop is vector FMAs on zmm (or ymm) registers, with no gathers."""
    x = np.zeros(1, dtype)
    sig = (numba.intp, numba.typeof(x), numba.intp, numba.typeof(x), numba.intp,
           numba.typeof(x), numba.intp, numba.intp, numba.intp)
    _ukernel_probe.compile(sig)
    asm = _ukernel_probe.inspect_asm(sig)
    suffix = "ps" if dtype == np.float32 else "pd"
    fmas = re.findall(rf"vfmadd\w*{suffix}\s+[^\n]*%([xyz])mm", asm)
    mr, nr = _gemm.tile_shape(dtype)
    w_zmm = 64 // np.dtype(dtype).itemsize
    assert fmas, "no packed vector FMA in the micro-kernel"
    assert set(fmas) <= {"y", "z"}, f"FMAs on xmm registers: {set(fmas)}"
    width = w_zmm if "z" in fmas else w_zmm // 2
    assert len(fmas) >= mr * nr // width, f"{len(fmas)} FMAs for a {mr}x{nr} tile"
    assert "vgather" not in asm and "vscatter" not in asm


def test_pack_assembly_has_no_gathers():
    for fn in (_gemm.pack_a, _gemm.pack_b):
        probe = numba.njit(fn.py_func)  # uncached copy
        x = np.zeros(1, np.float32)
        ix = numba.intp
        if fn is _gemm.pack_a:
            sig = (numba.typeof(x), ix, ix, ix, ix, ix, numba.typeof(x), ix)
        else:
            sig = (numba.typeof(x), ix, ix, ix, ix, ix, numba.typeof(x), ix, ix, ix)
        probe.compile(sig)
        asm = probe.inspect_asm(sig)
        assert "vgather" not in asm, fn.__name__
        assert re.search(r"vmovups\s+[^\n]*%[yz]mm", asm), f"{fn.__name__}: no vector copies"


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DTYPES), st.integers(1, 40), st.integers(1, 100),
       st.sampled_from(["rows", "cols", "step", "neg"]), st.data())
def test_pack_b_writes_nr_column_slivers(dtype, kb, nb, layout, data):
    """Slivers s0..s1 of a kb x nb region of B hold B[p, s*NR + c] at s*NR*kb + p*NR + c, the
    columns past nb zero; nothing else of the (poisoned) destination is written. Row runs
    (row-major, stepped) are dealt out row by row, column runs sliver by sliver."""
    _, nr = _gemm.tile_shape(dtype)
    slivers = -(-nb // nr)
    s0 = data.draw(st.integers(0, slivers - 1))
    s1 = data.draw(st.integers(s0 + 1, slivers))
    rng = np.random.default_rng(kb * 1000 + nb)
    full = rand(rng, (2 * kb + 1, 3 * nb + 2), dtype)
    b = {"rows": full[:kb, :nb], "cols": np.asfortranarray(full[:kb, :nb]),
         "step": full[1::2, 2::3][:kb, :nb], "neg": full[::-1, ::-1][:kb, :nb]}[layout]
    # the packer takes a flat view and element strides, as _operand gives them
    flat = b.T.reshape(-1) if layout == "cols" else full.reshape(-1)
    item = b.itemsize
    s_k, s_n = b.strides[0] // item, b.strides[1] // item
    off = (b.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // item
    dst = np.full(slivers * nr * kb + 7, np.nan, dtype)
    _gemm.pack_b(flat, off, s_k, s_n, kb, nb, dst, 3, s0, s1)
    padded = np.zeros((kb, slivers * nr), dtype)
    padded[:, :nb] = b
    want = padded.reshape(kb, slivers, nr).transpose(1, 0, 2)[s0:s1].reshape(-1)
    lo, hi = 3 + s0 * nr * kb, 3 + s1 * nr * kb
    np.testing.assert_array_equal(dst[lo:hi], want)
    assert np.isnan(dst[:lo]).all() and np.isnan(dst[hi:]).all()


# ----------------------------------------------------------------------------------- hypothesis

@st.composite
def problems(draw):
    dtype = draw(st.sampled_from(DTYPES))
    bn = draw(st.integers(1, 3))
    m, k, n = (draw(st.integers(0, 70)) for _ in range(3))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)

    def operand(rows, cols):
        kind = draw(st.sampled_from(["c", "t", "step", "neg", "bcast"]))
        if kind == "t":
            x = rand(rng, (bn, cols, rows), dtype).transpose(0, 2, 1)
        elif kind == "step":
            x = rand(rng, (bn, 2 * rows + 1, 3 * cols + 1), dtype)[:, 1::2, ::3][:, :rows, :cols]
        elif kind == "neg":
            x = rand(rng, (bn, rows, cols), dtype)[::-1, ::-1, ::-1]
        elif kind == "bcast":
            x = np.broadcast_to(rand(rng, (1, rows, cols), dtype), (bn, rows, cols))
        else:
            x = rand(rng, (bn, rows, cols), dtype)
        return x

    a, b = operand(m, k), operand(k, n)
    bias = rand(rng, n, dtype) if draw(st.booleans()) else None
    act = draw(st.sampled_from(ACTS))
    cfg = draw(st.sampled_from([None, TINY_CFG[dtype], MatmulConfig(12, 8, 32),
                                *(MatmulConfig(12, 8, 32, kern) for kern in UNPACKED)]))
    return a, b, bias, act, cfg


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(problems())
def test_hypothesis_random(path, prob):
    a, b, bias, act, cfg = prob
    out = matmul_forward(a, b, bias, act, config=cfg)
    assert_matmul_close(out, a, b, bias, act)


def test_half_narrowing_rounds_like_torch_on_every_kind_of_float32():
    """float32 -> bfloat16 bits rounds to nearest even, keeps NaN, overflows to Inf and keeps
    subnormals and signed zeros: against torch's own conversion, on random bit patterns (every
    exponent, NaNs included) and the edge values; float16 through numpy, widening exact."""
    import torch

    from kernelkit.kernels.numba import _half

    rng = np.random.default_rng(5)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0x7F7FFFFF, 0x7F7F8000, 0x3F808000, 0x3F818000, 0x00000001, 0x80000000,
                      0x7F800000, 0xFF800000, 0x7F800001, 0xFFFFFFFF, 0x7FC00000], np.uint32)
    x = np.concatenate([bits, edges]).view(np.float32)
    got = torch.from_numpy(_half.narrow(x, "H").view(np.int16)).view(torch.bfloat16)
    want = torch.from_numpy(x).to(torch.bfloat16)
    nan = want.isnan()
    assert torch.equal(got.isnan(), nan)
    assert torch.equal(got[~nan].view(torch.int16), want[~nan].view(torch.int16))
    # widening is exact, both ways round trip
    assert torch.equal(torch.from_numpy(_half.widen(_half.narrow(x, "H")))[~nan],
                       want.float()[~nan])
    h = _half.narrow(x[np.isfinite(x)], "e")
    assert h.dtype == np.float16 and np.array_equal(_half.widen(h), h.astype(np.float32))


def test_float16_conversions_in_integer_code_match_the_cpus():
    """The float16 conversions for targets without F16C (integer code: LLVM's fpext/fptrunc on
    half call a helper Numba does not link, and the process aborted) against F16C's and numpy's:
    every float16 bit pattern widened exactly; float32 values of every exponent, the rounding
    ties, 65504-65536, the subnormals and zeros, Inf and NaN narrowed alike (a NaN stays a NaN of
    its sign)."""
    import numba

    from kernelkit.kernels.numba import _half

    @numba.njit
    def soft(h, x, wide, narrow):
        for i in range(h.size):
            wide[i] = _half._soft_half_bits_to_float(h[i])
        for i in range(x.size):
            narrow[i] = _half._soft_float_to_half_bits(x[i])

    h = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32)
    halves = h.view(np.float16).astype(np.float32)
    ties = (halves[:-1] + np.diff(halves) / 2)[np.isfinite(halves[:-1] + np.diff(halves) / 2)]
    edges = np.array([65504, 65519.99, 65520, 65535, 65536, 1e-8, 2**-24, 2**-25, 3 * 2**-26,
                      2**-14, 2**-14 - 2**-25, 0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan],
                     np.float32)
    x = np.concatenate([bits.view(np.float32), ties.astype(np.float32), edges,
                        np.nextafter(ties, np.inf).astype(np.float32),
                        np.nextafter(ties, -np.inf).astype(np.float32)])
    wide, narrow = np.empty(h.size, np.float32), np.empty(x.size, np.uint16)
    soft(h, x, wide, narrow)
    want_wide = h.view(np.float16).astype(np.float32)
    nan = np.isnan(want_wide)
    assert np.array_equal(np.isnan(wide), nan)
    assert np.array_equal(wide[~nan].view(np.uint32), want_wide[~nan].view(np.uint32))
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    nan = np.isnan(x)
    assert np.array_equal(narrow[~nan], want[~nan].view(np.uint16))
    assert np.isnan(narrow[nan].view(np.float16)).all()
    assert np.array_equal(np.signbit(narrow[nan].view(np.float16)), np.signbit(x[nan]))
    if _half.f16c():  # (and as the CPU's own instructions give them)
        assert np.array_equal(narrow[~nan], _half.narrow(x, "e").view(np.uint16)[~nan])


def test_a_target_without_f16c_converts_float16_and_runs_half_precision():
    """On a compile target without F16C (``NUMBA_CPU_NAME=generic``: a baseline x86-64, QEMU's
    qemu64) float16 widening and narrowing, a bfloat16 matmul and a float16 one, and every
    preprocess call aborted the process ("LLVM ERROR: Symbol not found: __extendhfsf2"; a user
    hunt). They run, and agree with numpy and float64."""
    import os
    import subprocess
    import sys
    import tempfile

    code = (
        "import numpy as np\n"
        "from kernelkit.kernels.numba import _half\n"
        "from kernelkit.kernels.numba.matmul import matmul_forward\n"
        "assert not _half.f16c()\n"
        "x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)\n"
        "h = _half.narrow(x, 'e')\n"
        "assert np.array_equal(h, x.astype(np.float16))\n"
        "assert np.array_equal(_half.widen(h), h.astype(np.float32))\n"
        "a, b = x[:1].astype(np.float16), x[:1].transpose(0, 2, 1).astype(np.float16)\n"
        "ref = a.astype(np.float64) @ b.astype(np.float64)\n"
        "for a_, b_ in ((a, b), (_half.narrow(a.astype(np.float32), 'H'),\n"
        "                       _half.narrow(b.astype(np.float32), 'H'))):\n"
        "    c = _half.widen(matmul_forward(a_, b_))\n"
        "    assert np.allclose(c, ref, rtol=0.02, atol=0.05), (c, ref)\n"
        "import kernelkit\n"
        "img = (np.random.default_rng(1).random((2, 20, 30, 3)) * 255).astype(np.uint8)\n"
        "with kernelkit.use(backend='numba'):\n"
        "    y32, y16 = (kernelkit.preprocess(img, size=(8, 8), mean=0.5, std=0.25,\n"
        "                                     out_dtype=dt) for dt in ('float32', 'float16'))\n"
        "assert np.array_equal(y16, y32.astype(np.float16))\n"
        "print('ok')\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CPU_NAME="generic", KERNELKIT_NUMBA_CACHE_DIR=cache)
        env.pop("NUMBA_CPU_FEATURES", None)
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=900)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# ------------------------------------------------------------------ unpacked small/skinny kernels

UNPACKED = [k for k in nm.KERNELS if k not in ("packed", "amx", "amx_w")]  # (amx*: bfloat16 only)
# GEMV both ways, one row / column of tiles and their edges, K not a multiple of the 4-row step,
# the odd sizes (small), and sizes just past the register tile
SKINNY = [(1, 1, 1), (1, 37, 129), (1, 300, 1), (5, 300, 1), (3, 1000, 3), (2, 9, 700),
          (7, 13, 5), (6, 16, 16), (13, 17, 130), (97, 61, 89), (64, 64, 64), (17, 3, 33)]


@pytest.fixture(params=["serial", "parallel"])
def threads_path(request, monkeypatch):
    """The unpacked kernels on the calling thread, or in a parallel region whatever the size."""
    monkeypatch.setattr(nm, "SERIAL_WORK", 1 << 62 if request.param == "serial" else 0)
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", UNPACKED)
@pytest.mark.parametrize("mkn", SKINNY, ids=str)
def test_unpacked_kernels_shapes(dtype, kernel, mkn, threads_path):
    m, k, n = mkn
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    cfg = MatmulConfig(24, 16, 64, kernel)
    for bn in (1, 3):
        a, b, bias = rand(rng, (bn, m, k), dtype), rand(rng, (bn, k, n), dtype), rand(rng, n, dtype)
        out = matmul_forward(a, b, bias, "relu", config=cfg)
        assert out.dtype == dtype and out.shape == (bn, m, n) and out.flags.c_contiguous
        assert_matmul_close(out, a, b, bias, "relu")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", UNPACKED)
def test_unpacked_kernels_layouts(dtype, kernel, threads_path):
    """Every stride pattern, and the shapes each kernel is fast for (the ones it reads in place)."""
    rng = np.random.default_rng(11)
    cfg = MatmulConfig(24, 16, 64, kernel)
    for m, k, n in [(29, 37, 41), (1, 67, 90), (4, 50, 1), (13, 70, 35)]:
        for name, a, b in _layouts(rng, 2, m, k, n, dtype):
            if name == "readonly":
                a.setflags(write=False)
                b.setflags(write=False)
            bias = rand(rng, 2 * n, dtype)[::-2]
            out = matmul_forward(a, b, bias, "silu", config=cfg)
            assert out.flags.c_contiguous, name
            assert_matmul_close(out, a, b, bias, "silu")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the reference's
@pytest.mark.parametrize("kernel", UNPACKED)
def test_unpacked_kernels_nan_inf_and_poison(kernel):
    """NaN/Inf propagate; every output element is written (the output starts as poison: the
    previous call's NaNs in a recycled buffer would show)."""
    rng = np.random.default_rng(12)
    cfg = MatmulConfig(24, 16, 64, kernel)
    a, b = rand(rng, (1, 30, 40), np.float32), rand(rng, (1, 40, 35), np.float32)
    a[0, 3, 7] = np.nan
    a[0, 10, :] = 0.0
    b[0, :, 11] = 0.0
    b[0, 5, 11] = np.inf
    a[0, 20, 2] = np.inf
    for act in ACTS:
        assert_matmul_close(matmul_forward(a, b, None, act, config=cfg), a, b, None, act)
    nan_a, nan_b = np.full((1, 9, 20), np.nan, np.float32), np.full((1, 20, 19), np.nan, np.float32)
    for _ in range(3):
        assert np.isnan(matmul_forward(nan_a, nan_b, config=cfg)).all()
        a, b = rand(rng, (1, 9, 20), np.float32), rand(rng, (1, 20, 19), np.float32)
        assert_matmul_close(matmul_forward(a, b, config=cfg), a, b)


@pytest.mark.parametrize("kernel", UNPACKED)
@pytest.mark.parametrize("nthr", [1, 2, 3, 5])
@pytest.mark.parametrize("bmn", [(1, 50, 70), (4, 30, 50), (3, 5, 90), (5, 2, 3), (1, 1, 300)])
def test_unpacked_thread_partition(kernel, nthr, bmn):
    """Every thread's share of an unpacked kernel, run one after the other, covers C once."""
    bn, m, n = bmn
    k = 21
    a, b, bias = _strided_readonly(np.random.default_rng(13), bn, m, k, n)
    out = np.full((bn, m, n), np.nan, np.float32)
    part = nm._compiled(np.dtype(np.float32)).unpacked[kernel]
    for t in range(nthr):
        part(t, nthr, a, b, bias, True, 1, out, 64)
    assert_matmul_close(out, a, b, bias, "relu")


# ------------------------------------------------ the tile kernel on float16 / bfloat16 operands

HALF_NAMES = ["float16", "bfloat16"]
# one rounding of the output (half an ulp) and float32 sums: float16 2^-11, bfloat16 2^-8
HALF_RTOL = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


def half_rand(rng, shape, name):
    """Random float16, or bfloat16 as the uint16 bits the CPU kernels take."""
    x = rng.standard_normal(shape).astype(np.float32)
    return x.astype(np.float16) if name == "float16" else (x.view(np.uint32) >> 16).astype(np.uint16)


def half_f64(x):
    if x is None or x.dtype != np.uint16:
        return None if x is None else x.astype(np.float64)
    return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def assert_half_close(out, a, b, bias, act, name):
    ref = matmul_ref(half_f64(a), half_f64(b), half_f64(bias), act)
    got = half_f64(out)
    assert out.dtype == (np.float16 if name == "float16" else np.uint16) and out.shape == ref.shape
    assert out.flags.c_contiguous
    np.testing.assert_allclose(got, ref, rtol=HALF_RTOL[name],
                               atol=1e-5 * np.sqrt(max(a.shape[2], 1)), equal_nan=True)


@pytest.mark.parametrize("name", HALF_NAMES)
@pytest.mark.parametrize("mkn", SKINNY, ids=str)
def test_tile_kernel_on_half_operands(name, mkn, threads_path, monkeypatch):
    """float16 / bfloat16 on the tile kernel, each thread widening what its share reads: every
    shape of the skinny set, batches of 1 and 3, bias and activation; the output starts as NaN
    (every element must be written) and the operand buffers hold NaN from an earlier call."""
    from kernelkit.kernels.numba import _workspace

    poisoned = _workspace.empty_bits16

    def nan_output(shape):
        out = poisoned(shape)
        out[...] = 0x7E00 if name == "float16" else 0x7FC0
        return out

    monkeypatch.setattr(_workspace, "empty_bits16", nan_output)
    m, k, n = mkn
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    cfg = MatmulConfig(24, 16, 64, "tile")
    for bn in (1, 3):
        for slot in range(4):
            _workspace.operand(1 << 16, np.float32, slot)[:] = np.nan
        a, b = half_rand(rng, (bn, m, k), name), half_rand(rng, (bn, k, n), name)
        bias = half_rand(rng, n, name)
        assert_half_close(matmul_forward(a, b, bias, "relu", config=cfg), a, b, bias, "relu", name)
        assert_half_close(matmul_forward(a, b, None, None, config=cfg), a, b, None, None, name)


@pytest.mark.parametrize("name", HALF_NAMES)
def test_tile_kernel_on_half_operands_layouts_and_nan(name, threads_path):
    """Transposed, strided, negative-stride and unaligned half-precision operands on the tile
    kernel, and NaN / Inf in them."""
    rng = np.random.default_rng(15)
    cfg = MatmulConfig(24, 16, 64, "tile")
    m, k, n = 29, 37, 41
    a, b = half_rand(rng, (2, m, k), name), half_rand(rng, (2, k, n), name)
    at = np.ascontiguousarray(a.transpose(0, 2, 1)).transpose(0, 2, 1)
    big_b = half_rand(rng, (2, 3 * k, 2 * n), name)
    for a_, b_ in ((at, b), (a[:, ::-1, ::-1], big_b[:, ::3, ::2]), (at[:, ::-1], b[::-1, :, ::-1])):
        bias = half_rand(rng, 2 * n, name)[::-2]
        assert_half_close(matmul_forward(a_, b_, bias, "silu", config=cfg), a_, b_, bias, "silu",
                          name)
    raw_a, raw_b = np.zeros(a.nbytes + 1, np.uint8), np.zeros(b.nbytes + 1, np.uint8)
    ua = np.frombuffer(raw_a.data, a.dtype, a.size, offset=1).reshape(a.shape)  # odd addresses
    ub = np.frombuffer(raw_b.data, b.dtype, b.size, offset=1).reshape(b.shape)
    ua[...], ub[...] = a, b
    assert not ua.flags.aligned and not ub.flags.aligned
    assert_half_close(matmul_forward(ua, ub, None, None, config=cfg), ua, ub, None, None, name)
    a, b = a.copy(), b.copy()
    nan, inf = (0x7E00, 0x7C00) if name == "float16" else (0x7FC0, 0x7F80)
    a.view(np.uint16)[0, 3, 7] = nan
    b.view(np.uint16)[1, 5, 11] = inf
    assert_half_close(matmul_forward(a, b, None, None, config=cfg), a, b, None, None, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ukernel_strided(dtype):
    """The in-place micro-kernel: A through (row, column) strides of either sign, B rows
    ``b_rs`` apart; overwrite, then accumulate; nothing written outside the tile."""
    mr, nr = _gemm.tile_shape(dtype)
    kc = 9
    rng = np.random.default_rng(14)
    a = rand(rng, (mr, 3 * kc), dtype)[:, ::-3]  # negative column stride
    b = rand(rng, (kc, nr + 5), dtype)
    af = a.base.reshape(-1)
    aoff = (a.__array_interface__["data"][0] - af.__array_interface__["data"][0]) // a.itemsize
    bf = b.reshape(-1)
    ldc = nr + 3
    c = np.full(mr * ldc, 7.0, dtype)
    s_m, s_k = (st // a.itemsize for st in a.strides)
    _ukernel_strided_probe(kc, af, aoff, s_m, s_k, bf, 2, nr + 5, c, 0, ldc, 0)
    ref = a.astype(np.float64) @ b[:, 2:2 + nr]
    got = c.reshape(mr, ldc)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(got[:, :nr], ref, rtol=tol, atol=tol * kc)
    assert (got[:, nr:] == 7.0).all()
    _ukernel_strided_probe(kc, af, aoff, s_m, s_k, bf, 2, nr + 5, c, 0, ldc, 1)
    np.testing.assert_allclose(got[:, :nr], 2 * ref, rtol=tol, atol=tol * kc)


@numba.njit
def _ukernel_strided_probe(kc, ap, aoff, a_rs, a_cs, bp, boff, b_rs, cp, coff, ldc, acc):
    _gemm.ukernel_strided(kc, ap, aoff, a_rs, a_cs, bp, boff, b_rs, cp, coff, ldc, acc)


@pytest.mark.parametrize("dtype", DTYPES)
def test_space_offers_the_unpacked_kernels_where_they_fit(dtype):
    """The tuner can only pick what the space offers: GEMV and small M get ``rows``, ``x @ W.T``
    with few outputs ``dots``, small matrices ``tile``; a big square product none of them."""
    kernels = lambda m, k, n, layout="NN": [c.kernel for c in MatmulConfig.space(dtype, m, n, k,
                                                                                   layout)]
    assert kernels(1, 4096, 4096)[:2] == ["packed", "rows"]
    assert "rows" in kernels(8, 4096, 4096) and "rows" in kernels(3, 1000, 3)
    assert "dots" in kernels(1, 4096, 4096, "NT") and "dots" in kernels(512, 512, 1)
    assert "tile" in kernels(64, 64, 64) and "tile" in kernels(97, 61, 89)
    assert kernels(2048, 2048, 2048).count("packed") == len(kernels(2048, 2048, 2048))
    for m, k, n in [(1, 4096, 4096), (64, 64, 64), (3, 1000, 3), (2048, 2048, 2048)]:
        space = MatmulConfig.space(dtype, m, n, k)
        assert space[0] == MatmulConfig.default(dtype) and len(set(space)) == len(space)
        assert all(MatmulConfig.from_dict(c.to_dict()) == c for c in space)
    with pytest.raises(ValueError, match="kernel"):
        MatmulConfig(24, 16, 64, "gemv")
    # an entry cached before the kernel field existed still loads (as the packed GEMM)
    assert MatmulConfig.from_dict({"mc": 24, "kc": 16, "nc": 64}).kernel == "packed"


@pytest.mark.parametrize("hardware", [True, False], ids=["f16c", "numpy"])
def test_float16_conversion_matches_ieee_on_every_bit_pattern(hardware, monkeypatch):
    """float16 -> float32 on all 65536 bit patterns, and float32 -> float16 on random bit patterns
    of every exponent and the edges (largest half, the first value that rounds to Inf, ties,
    subnormals, signed zeros, Inf, NaN), against torch's conversion: bit for bit (NaN as NaN);
    with the F16C loops and with numpy's fallback; strided and multi-dimensional inputs."""
    import torch

    from kernelkit.kernels.numba import _half

    if hardware and not _half.f16c():
        pytest.skip("this CPU has no F16C")  # the numpy fallback case still runs
    monkeypatch.setattr(_half, "f16c", lambda: hardware)
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    wide = _half.widen(every.reshape(256, 256)[:, ::-1])  # reversed columns: a strided view
    want = torch.from_numpy(every.reshape(256, 256)[:, ::-1].copy()).float().numpy()
    nan = np.isnan(want)
    assert wide.dtype == np.float32 and np.array_equal(np.isnan(wide), nan)
    assert np.array_equal(wide.view(np.uint32)[~nan], want.view(np.uint32)[~nan])

    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    edges = np.array([0x477FE000, 0x477FEFFF, 0x477FF000, 0x3F801000, 0x3F803000, 0x33800000,
                      0x33000000, 0x33000001, 0x80000000, 0x00000000, 0x7F800000, 0xFF800000,
                      0x7FC00000, 0xFFFFFFFF], np.uint32)
    x = np.concatenate([bits, edges]).view(np.float32).reshape(-1, 2)[:, ::-1]
    got = _half.narrow(x, "e")
    ref = torch.from_numpy(x.copy()).half().numpy()
    nan = np.isnan(ref)
    assert got.dtype == np.float16 and got.shape == x.shape
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint16)[~nan], ref.view(np.uint16)[~nan])


OPTIMISED_SCRIPT = r"""
import numpy as np
from kernelkit.kernels.numba import conv2d as nc, matmul as nm
f = np.float32
geo = ((1, 1), (0, 0, 0, 0), (1, 1), 1, None, "NCHW")  # stride ... layout
bad = [lambda: nm.matmul_forward(np.ones((1, 4, 32), f), np.ones((1, 16, 32), f)),
       lambda: nm.matmul_forward(np.ones((1, 4, 8), f), np.ones((1, 8, 5), f), np.ones(3, f)),
       lambda: nc.conv2d_forward(np.ones((2, 8, 6, 6), f), np.ones((4, 4, 3, 3), f), None,
                                 *geo),
       lambda: nc.conv2d_forward(np.ones((2, 4, 6, 6), f), np.ones((4, 4, 3, 3), f),
                                 np.ones(5, f), *geo)]
for call in bad:
    try:
        call()
        print("returned")
    except ValueError:
        print("ValueError")
"""


def test_the_launchers_shape_checks_hold_under_python_O():
    """They were asserts: `python -O` dropped them and the kernels read out of bounds (a patched
    Linear whose weight was swapped for one of other input features returned NaN)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-O", "-c", OPTIMISED_SCRIPT], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ValueError"] * 4, r.stdout


@pytest.mark.parametrize("dtype", [np.float16, np.uint16, np.float32], ids=str)
def test_empty_products_of_mismatched_operands_raise(dtype):
    """An empty half-precision product returns before it computes (torch's strides for its
    result); it still checks that the operands multiply, as float32's path does (a review: a
    (0, 3, 8) by (2, 7, 5) product returned (0, 3, 5))."""
    with pytest.raises(ValueError, match="do not multiply"):
        matmul_forward(np.zeros((0, 3, 8), dtype), np.zeros((2, 7, 5), dtype))
    assert matmul_forward(np.zeros((2, 0, 8), dtype), np.zeros((2, 8, 5), dtype)).shape \
        == (2, 0, 5)
