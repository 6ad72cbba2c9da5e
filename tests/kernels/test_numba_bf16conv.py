"""The bfloat16 conv2d forward through AVX-512 BF16: the shifted GEMM on channel pairs.

NCHW bfloat16 forwards on a CPU with VDPBF16PS (``_gemm.HAS_BF16_DOT``) pack the weight and the
zero-padded input as pairs of input channels (uint32 words) and multiply them with
``_gemm.ukernel_taps``; everything else in bfloat16 widens to float32, which
``test_numba_conv2d.py`` and the ops tests cover on every machine. The routing test runs
everywhere; the products need the instruction and skip elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference import assert_conv2d_close

from kernelkit.arrays import torch_to_numpy, with_dtype
from kernelkit.kernels.numba import _gemm
from kernelkit.kernels.numba import conv2d as nc
from kernelkit.kernels.numba.conv2d import Conv2dConfig, conv2d_forward

needs_bf16_dot = pytest.mark.skipif(not _gemm.HAS_BF16_DOT,
                                    reason="the CPU (or LLVM < 17) has no AVX-512 BF16")
# Blocks far smaller than the defaults (kc counts channel pairs), so modest shapes cross them.
TINY = Conv2dConfig(mc=24, kc=5, nc=64, kernel="shift")
# A uint32 poison that reads as two bfloat16 NaNs: a packed word the kernel reads without
# having written it turns the output into NaN.
POISON_PAIR = 0x7FC07FC0

# (N, C, H, W, K, R, S, stride, padding (t, b, l, r), dilation, groups)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # one channel: a pair's lower half
    (2, 3, 7, 5, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # odd C
    (1, 5, 13, 11, 7, 3, 2, (2, 2), (1, 1, 0, 1), (1, 1), 1),  # stride 2, even kernel
    (2, 4, 9, 10, 6, 3, 3, (1, 2), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    (2, 6, 8, 8, 9, 3, 3, (2, 1), (1, 0, 2, 1), (1, 1), 3),  # groups of 2 channels
    (2, 10, 7, 7, 4, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 2),  # groups of 5: odd per group
    (2, 17, 7, 9, 19, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 1),  # 1x1: the copy is the pairing
    (2, 16, 9, 9, 20, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),  # 1x1 stride 2
    (2, 8, 6, 6, 10, 1, 1, (1, 1), (0, 0, 0, 0), (1, 1), 2),  # 1x1 groups: pairs as words
    (1, 12, 5, 5, 7, 1, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # 1x1 padded
    (3, 37, 13, 11, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # primes, several tiles
    (1, 3, 23, 22, 8, 7, 7, (2, 2), (3, 3, 3, 3), (1, 1), 1),  # ResNet's stem
    (1, 24, 3, 3, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # more rows than pixels
]


def _ids(case):
    n, c, h, w, k, r, s, st_, pad, dil, g = case
    return f"n{n}c{c}h{h}w{w}k{k}r{r}s{s}st{st_[0]}{st_[1]}p{''.join(map(str, pad))}g{g}"


def bits(t: torch.Tensor) -> np.ndarray:
    """A bfloat16 tensor's bit patterns as the numpy uint16 array the CPU kernels take (the
    ops layer's own conversion)."""
    return torch_to_numpy(t.contiguous())


def as_bf16(u16: np.ndarray) -> torch.Tensor:
    return with_dtype(np.ascontiguousarray(u16), "bfloat16")


def make(case, seed):
    n, c, h, w, k, r, s, _, _, _, g = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen).bfloat16()
    wt = torch.randn(k, c // g, r, s, generator=gen).bfloat16()
    b = torch.randn(k, generator=gen).bfloat16()
    return x, wt, b


def run_and_check(x_bits, w, b, case, act=None, config=None, x_ref=None):
    _, _, _, _, _, _, _, st_, pad, dil, g = case
    assert nc.bf16_shift(x_bits, bits(w), g, "NCHW", config)
    out = conv2d_forward(x_bits, bits(w), None if b is None else bits(b), st_, pad, dil, g, act,
                         "NCHW", config)
    assert out.dtype == np.uint16 and out.flags.c_contiguous
    assert_conv2d_close(as_bf16(out), as_bf16(x_bits) if x_ref is None else x_ref, w, b,
                        stride=st_, padding=pad, dilation=dil, groups=g, activation=act,
                        acc="float32")


@pytest.fixture
def poisoned(monkeypatch):
    """Every array the launcher allocates starts as NaN (float) or NaN pairs (uint32), its
    kept float32 sums as NaN and its bfloat16 output as NaN bits, and the threaded path runs
    whatever the size."""
    if _gemm.HAS_BF16_DOT:
        nc._pairs_compiled()  # compiled before np.empty is patched: Numba types np.empty
    monkeypatch.setattr(nc, "SERIAL_WORK", 0)
    monkeypatch.setattr(nc, "SERIAL_PACK", 0)
    real_empty, real_operand, real_bits16 = np.empty, nc._workspace.operand, nc.empty_bits16

    def empty(*args, **kwargs):
        a = real_empty(*args, **kwargs)
        if a.dtype == np.uint32:
            a[...] = POISON_PAIR
        elif a.dtype.kind == "f":
            a[...] = np.nan
        return a

    def operand(size, dtype, slot):
        a = real_operand(size, dtype, slot)
        if np.dtype(dtype).kind == "f":
            a[...] = np.nan
        return a

    def bits16(shape):
        a = real_bits16(shape)
        a[...] = POISON_PAIR & 0xFFFF
        return a

    monkeypatch.setattr(nc.np, "empty", empty)
    monkeypatch.setattr(nc._workspace, "operand", operand)
    monkeypatch.setattr(nc, "empty_bits16", bits16)


def test_the_pair_path_is_taken_exactly_where_it_applies(monkeypatch):
    """NCHW bfloat16 forwards on a CPU with AVX-512 BF16, never NHWC, depthwise, or the implicit
    GEMM asked for by the config; on a CPU without it, never."""
    x, w = np.zeros((1, 8, 5, 5), np.uint16), np.zeros((8, 8, 3, 3), np.uint16)
    dw = np.zeros((8, 1, 3, 3), np.uint16)
    monkeypatch.setattr(_gemm, "HAS_BF16_DOT", True)
    assert nc.bf16_shift(x, w, 1, "NCHW", None)
    assert nc.bf16_shift(x, w, 1, "NCHW", Conv2dConfig(24, 16, 64, "auto"))
    assert nc.bf16_shift(x, w[:, :4], 2, "NCHW", None)  # grouped, not depthwise
    assert not nc.bf16_shift(x, w, 1, "NHWC", None)
    assert not nc.bf16_shift(x, dw, 8, "NCHW", None)
    assert not nc.bf16_shift(x, w, 1, "NCHW", Conv2dConfig(24, 16, 64, "gemm"))
    assert not nc.bf16_shift(x, np.zeros((8, 0, 3, 3), np.uint16), 1, "NCHW", None)
    monkeypatch.setattr(_gemm, "HAS_BF16_DOT", False)
    assert not nc.bf16_shift(x, w, 1, "NCHW", None)


@needs_bf16_dot
@pytest.mark.parametrize("config", [None, TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bf16_conv_matches_float64(case, config, poisoned):
    x, w, b = make(case, sum(case[:7]))
    run_and_check(bits(x), w, b, case, "relu", config)
    run_and_check(bits(x), w, None, case, None, config)


@needs_bf16_dot
@pytest.mark.parametrize("config", [None, TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] > 1] + [
    (2, 5, 4, 41, 6, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # output rows past 32 lanes
    (2, 3, 5, 70, 5, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride-2 rows past 16 lanes
    (2, 6, 8, 11, 7, 3, 3, (1, 3), (1, 1, 1, 1), (1, 1), 1),  # column stride 3 (a gather)
], ids=_ids)
def test_bf16_conv_exact_columns_across_images(case, config, poisoned, monkeypatch):
    """The pairs' shifted GEMM with B packed over exact output columns across the images
    (``_conv._shift_exact_unit`` on uint32 words), forced on every batch; the geometry says it
    ran."""
    from kernelkit.kernels.numba import _conv

    monkeypatch.setattr(nc, "SHIFT_EXACT_WASTE", 0.0)
    geos = []
    real_launch = nc._launch
    monkeypatch.setattr(nc, "_launch", lambda fn, tn, p, *a: geos.append(a[-1].copy())
                        or real_launch(fn, tn, p, *a))
    x, w, b = make(case, sum(case[:7]) + 1)
    run_and_check(bits(x), w, b, case, "relu", config)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, -1, -1] = float("inf")
    run_and_check(bits(x), w, None, case, None, config)
    assert geos and all(g[_conv.G_PACKB] == 1 for g in geos)


@needs_bf16_dot
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[8]], ids=_ids)
def test_bf16_conv_reads_any_strides(case, poisoned):
    """Channels sliced and reversed, rows transposed: read where they lie."""
    x, w, b = make(case, 7)
    xb = bits(x)
    run_and_check(np.ascontiguousarray(xb[:, ::-1])[:, ::-1], w, b, case)
    wide = np.zeros(xb.shape[:1] + (2 * xb.shape[1],) + xb.shape[2:], np.uint16)
    wide[:, ::2] = xb
    run_and_check(wide[:, ::2], w, b, case)
    tr = np.ascontiguousarray(xb.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    run_and_check(tr, w, b, case)


@needs_bf16_dot
def test_bf16_conv_nan_inf(poisoned):
    """NaN and Inf propagate as in the float64 reference (Inf against a zero of the padding is
    NaN there too: the reference pads explicitly)."""
    case = (2, 7, 9, 8, 5, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    x, w, b = make(case, 5)
    x[0, 2, 4, 4] = float("nan")
    x[1, 3, 0, 0] = float("inf")
    x[1, 6, 8, 7] = -float("inf")
    run_and_check(bits(x), w, b, case)
    w2 = w.clone()
    w2[1, 4, 0, 0] = float("inf")
    x2, _, _ = make(case, 6)
    run_and_check(bits(x2), w2, b, case)


@needs_bf16_dot
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 3), c=st.integers(1, 40), hw=st.tuples(st.integers(1, 19),
       st.integers(1, 19)), k=st.integers(1, 30), rs=st.sampled_from([1, 2, 3, 5]),
       stride=st.integers(1, 3), pad=st.integers(0, 2), kc=st.integers(1, 24),
       seed=st.integers(0, 2**16))
def test_bf16_conv_hypothesis(n, c, hw, k, rs, stride, pad, kc, seed):
    h, w_ = hw
    assume(h + 2 * pad >= rs and w_ + 2 * pad >= rs)  # an output pixel at least
    case = (n, c, h, w_, k, rs, rs, (stride, stride), (pad,) * 4, (1, 1), 1)
    x, w, b = make(case, seed)
    run_and_check(bits(x), w, b, case, None, Conv2dConfig(24, kc, 64, "auto"))


@needs_bf16_dot
def test_bf16_conv_empty_output():
    x = torch.randn(0, 4, 5, 5).bfloat16()
    w = torch.randn(3, 4, 3, 3).bfloat16()
    out = conv2d_forward(bits(x), bits(w), None, (1, 1), (1, 1, 1, 1), (1, 1), 1, None, "NCHW")
    assert out.shape == (0, 3, 5, 5) and out.dtype == np.uint16


@needs_bf16_dot
@pytest.mark.parametrize("stride", [(1, 1), (1, 2), (2, 1), (2, 2)], ids=lambda s: f"st{s[0]}{s[1]}")
@pytest.mark.parametrize("width", [1, 2, 5, 15, 16, 17, 31, 32, 33, 34, 64, 67])
def test_bf16_padded_copy_rows_through_masked_vectors(width, stride, poisoned, monkeypatch):
    """The padded copy's rows (``_gemm.pad_row_pairs`` at column stride 1,
    ``deinterleave2_pairs`` at 2) across every count of 16-word blocks and their remainders,
    with the padding on either side or both, a 1x1 padded, dilation 2 and an even kernel; an
    odd channel count leaves the last pair's upper half unread (``two`` false). NaN and Inf
    land where they lie."""
    from kernelkit.kernels.numba import _conv

    geos = []
    real_launch = nc._launch
    monkeypatch.setattr(nc, "_launch", lambda fn, tn, p, *a: geos.append(a[-1].copy())
                        or real_launch(fn, tn, p, *a))
    shapes = [((3, 3), (0, 2, 0, 3), (1, 1)), ((3, 3), (2, 0, 3, 2), (1, 1)),
              ((3, 3), (1, 1, 1, 1), (2, 2)), ((1, 1), (1, 1, 1, 1), (1, 1)),
              ((2, 4), (1, 0, 2, 1), (1, 1))]
    used = set()  # the strides the geometry gets: past the input's span, the span (one column)
    for i, ((r, s), pad, dil) in enumerate(shapes):
        h = 4 if r > 1 else 2
        if width + pad[2] + pad[3] < dil[1] * (s - 1) + 1:
            continue  # no output column
        used.add(nc.useful_stride(stride, (h, width), (r, s), pad, dil))
        case = (2, 5, h, width, 6, r, s, stride, pad, dil, 1)
        x, w, b = make(case, 100 * width + 10 * i + stride[0] + 2 * stride[1])
        x[0, 4, h - 1, width - 1] = float("nan")  # the odd last channel, the row's last lane
        x[1, 0, 0, 0] = float("inf")
        run_and_check(bits(x), w, b, case)
    assert geos and all(g[_conv.G_PAIRS] > 0 for g in geos)
    assert {(g[_conv.G_SH], g[_conv.G_SW]) for g in geos} == used and stride in used


# Batch 1 on small planes with an even channel count per group: the weight is read where it
# lies, its uint32 words pairs of K neighbours (two taps of a channel, or a channel's last tap
# and the next one's first), against the planes of the input's tap pairs (``_conv._tap_pairs``).
TAP_PAIR_CASES = [
    (1, 24, 3, 3, 41, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # more rows than pixels
    (1, 16, 7, 7, 13, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # a partial last row sliver
    (1, 10, 9, 9, 7, 3, 3, (2, 2), (1, 1, 1, 1), (1, 1), 1),  # stride 2: the phases' planes
    (1, 8, 11, 9, 12, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 1),  # dilation 2
    (1, 12, 8, 8, 9, 3, 3, (2, 1), (1, 0, 2, 1), (1, 1), 3),  # groups of 4 channels
    (1, 6, 9, 10, 5, 3, 2, (1, 1), (1, 1, 0, 1), (1, 1), 1),  # six taps: pairs inside a channel
    (1, 4, 13, 11, 7, 5, 5, (1, 1), (2, 2, 2, 2), (1, 1), 1),  # 25 taps: pairs across channels
    (1, 2, 5, 6, 3, 1, 3, (1, 1), (0, 0, 1, 1), (1, 1), 1),  # one row of taps, two channels
    (1, 40, 7, 7, 30, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # several channel blocks
    (2, 14, 5, 5, 9, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # two images' planes
]


def _geometry(case, config=None):
    n, c, h, w, k, r, s, st_, pad, dil, g = case
    return nc._pairs_geometry((n, c, h, w), (k, c // g, r, s), st_, pad, dil, g, 0, 0,
                              config or nc._default(np.float32), nc.kernel_threads(),
                              nc._knobs())


def test_tap_pairs_route_exactly_where_the_weight_rows_are_whole_words(monkeypatch):
    """The tap pairs run (the weight in place, nothing packed) on the in-place layers with an
    even channel count per group and more than one tap; a 1x1 layer reads its rows in place
    against the channel pairs' copy itself; an odd count, or the knob off, packs the weight."""
    from kernelkit.kernels.numba import _conv

    for case in TAP_PAIR_CASES:
        for config in (None, TINY):
            pg = _geometry(case, config)
            assert pg.wsize == 0 and pg.geo[_conv.G_AINPL] != 0, case
            assert pg.geo[_conv.G_QPITCH] > 0 and pg.geo[_conv.G_PACKB] == 0, case
    one = _geometry((1, 12, 5, 5, 7, 1, 1, (1, 1), (1, 1, 1, 1), (1, 1), 1))
    assert one.wsize == 0 and one.geo[_conv.G_AINPL] != 0 and one.geo[_conv.G_QPITCH] == 0
    odd = _geometry((1, 15, 7, 7, 13, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1))
    assert odd.wsize > 0 and odd.geo[_conv.G_AINPL] == 0 and odd.geo[_conv.G_QPITCH] == 0
    # planes past TAP_PAIRS_MAX_BYTES: packed
    pg = _geometry(TAP_PAIR_CASES[1])
    qbytes = 4 * pg.xp_size - 4 * pg.geo[_conv.G_QOFF]
    monkeypatch.setattr(nc, "TAP_PAIRS_MAX_BYTES", qbytes)
    assert _geometry(TAP_PAIR_CASES[1]).wsize == 0
    monkeypatch.setattr(nc, "TAP_PAIRS_MAX_BYTES", qbytes - 1)
    assert _geometry(TAP_PAIR_CASES[1]).wsize > 0
    monkeypatch.setattr(nc, "TAP_PAIRS", False)
    off = _geometry(TAP_PAIR_CASES[1])
    assert off.wsize > 0 and off.geo[_conv.G_AINPL] == 0 and off.geo[_conv.G_QPITCH] == 0


@needs_bf16_dot
@pytest.mark.parametrize("rows", ["in_place", "copied"])
@pytest.mark.parametrize("config", [None, TINY], ids=["default", "tiny"])
@pytest.mark.parametrize("case", TAP_PAIR_CASES, ids=_ids)
def test_bf16_conv_tap_pairs_match_float64(case, config, rows, poisoned, monkeypatch):
    """Every tap pairing (inside a channel, across two, both halves of a channel pair's
    plane), with NaN and Inf in the input and the weight, against the float64 reference; the
    weight's row slivers read where they lie or through their copy (AINPL_COPY: rows taken as
    sharing L1 sets). The scratch that holds the copies starts as NaN pairs, so a word of a
    plane under an output column that no one wrote shows (the zeros past the grid's last
    output only meet columns that are dropped)."""
    from kernelkit.kernels.numba import _conv

    monkeypatch.setattr(nc, "_scratch", lambda size, dtype: np.full(
        int(size), POISON_PAIR if np.dtype(dtype) == np.uint32 else 0xFF, dtype))
    if rows == "copied":
        monkeypatch.setattr(nc, "SHIFT_ALIAS_BYTES", 4)
    assert _geometry(case, config).geo[_conv.G_AINPL] == (
        _conv.AINPL_COPY if rows == "copied" else _conv.AINPL_ROWS)
    x, w, b = make(case, 3 * sum(case[:7]))
    run_and_check(bits(x), w, b, case, "relu", config)
    x[0, -1, 0, 0] = float("nan")
    x[0, 0, -1, -1] = float("inf")
    w2 = w.clone()
    w2[-1, 1, -1, 0] = -float("inf")
    run_and_check(bits(x), w2, None, case, None, config)


@needs_bf16_dot
def test_bf16_conv_tap_pairs_read_a_weight_two_bytes_off_a_word(poisoned, monkeypatch):
    """A weight whose data starts 2 bytes past a 4-byte boundary (a view one element into a
    buffer) reaches the kernel, which reads it as uint32 words (loads the IR declares 4-byte
    aligned), through an aligned copy; and right."""
    launched = []
    real_launch = nc._launch
    monkeypatch.setattr(nc, "_launch", lambda fn, tn, p, x, wsrc, *a: launched.append(
        wsrc.ctypes.data) or real_launch(fn, tn, p, x, wsrc, *a))
    case = TAP_PAIR_CASES[1]
    x, w, b = make(case, 11)
    wb = bits(w)
    buf = np.zeros(wb.size + 2, np.uint16)
    off = 1 if buf.ctypes.data % 4 == 0 else 2
    shifted = buf[off:off + wb.size].reshape(wb.shape)
    shifted[...] = wb
    assert shifted.ctypes.data % 4 == 2
    out = conv2d_forward(bits(x), shifted, bits(b), (1, 1), (1, 1, 1, 1), (1, 1), 1, None,
                         "NCHW")
    assert_conv2d_close(as_bf16(out), x, w, b, stride=(1, 1), padding=(1, 1, 1, 1),
                        dilation=(1, 1), groups=1, activation=None, acc="float32")
    assert launched and all(address % 4 == 0 for address in launched)


def test_exact_columns_read_only_a_1x1_weight_in_place(monkeypatch):
    """Over exact columns (a batch of small planes) a bfloat16 weight is read where it lies only
    for 1x1 layers with an even channel count (rows of channel-pair words; B as when packed);
    3x3 layers pack it (the tap pairs' B measured slower there than the packing it saves)."""
    from kernelkit.kernels.numba import _conv

    for case, inplace in [((8, 512, 7, 7, 2048, 1, 1, (1, 1), (0,) * 4, (1, 1), 1), True),
                          ((8, 1024, 14, 14, 2048, 1, 1, (2, 2), (0,) * 4, (1, 1), 1), True),
                          ((8, 2048, 7, 7, 512, 1, 1, (1, 1), (0,) * 4, (1, 1), 1), False),
                          ((8, 512, 7, 7, 512, 3, 3, (1, 1), (1,) * 4, (1, 1), 1), False),
                          ((8, 37, 7, 7, 64, 1, 1, (1, 1), (0,) * 4, (1, 1), 1), False)]:
        pg = _geometry(case)
        assert pg.geo[_conv.G_PACKB] == 1, case
        assert (pg.geo[_conv.G_AINPL] != 0) == inplace and (pg.wsize == 0) == inplace, case
        assert pg.geo[_conv.G_QPITCH] == 0
    monkeypatch.setattr(nc, "EXACT_INPLACE", False)
    assert _geometry((8, 512, 7, 7, 2048, 1, 1, (1, 1), (0,) * 4, (1, 1), 1)).wsize > 0


@needs_bf16_dot
@pytest.mark.parametrize("case", [
    CASES[1], CASES[2], CASES[5], CASES[7], CASES[10],  # grids with and without junk columns
    (8, 16, 7, 7, 20, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),  # exact columns across images
    TAP_PAIR_CASES[1], TAP_PAIR_CASES[6],  # the weight read in place
], ids=_ids)
@pytest.mark.parametrize("exact", [False, True], ids=["grid", "exact"])
def test_bf16_conv_rounds_its_sums_inside_the_launch(case, exact, poisoned, monkeypatch):
    """The bfloat16 conv's output is rounded block by block inside its launch, bit for bit as
    the float32 output rounded after it (``_half.narrow``, the switch's other side), which is
    no longer called: no float32 output, no pass over it. ``exact``: B packed over exact
    columns wherever a batch has more than one image."""
    if exact:
        monkeypatch.setattr(nc, "SHIFT_EXACT_WASTE", 0.0)
    x, w, b = make(case, sum(case[:7]) + 2)
    _, _, _, _, _, _, _, st_, pad, dil, g = case
    args = (bits(x), bits(w), bits(b), st_, pad, dil, g, "relu", "NCHW", TINY)
    monkeypatch.setattr(nc, "PAIRS_ROUND_IN_LAUNCH", False)
    after = conv2d_forward(*args)
    monkeypatch.setattr(nc, "PAIRS_ROUND_IN_LAUNCH", True)

    def narrow(*a, **k):
        raise AssertionError("the output was rounded after the launch")

    monkeypatch.setattr(nc._half, "narrow", narrow)
    inside = conv2d_forward(*args)
    assert inside.dtype == np.uint16 and inside.shape == after.shape
    np.testing.assert_array_equal(inside, after)
