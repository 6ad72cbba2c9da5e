"""Numba CPU matmul: ``act(a @ b + bias)`` for float32 / float64 batches of any strides.

Structure (GotoBLAS / BLIS): for each column panel ``jc`` (nc columns) and depth block ``pc``
(kc), B is packed into NR-column slivers, then mc x kc blocks of A into MR-row slivers, and the
register-tile micro-kernel (``_gemm.ukernel``, LLVM vector FMAs on zmm registers) runs over them
(``_gemm.macro_kernel``). Bias and activation are applied to each tile right after its last K
block, while it is still in cache.

Paths: tiny problems (M*N*K < SMALL_WORK, or K == 0) use an unpacked loop; medium ones
(total < SERIAL_WORK) the packed GEMM on the calling thread; larger ones one parallel region of
``numba.get_num_threads()`` threads that need no barrier: each thread takes whole batches (when
the batch count is a multiple of the thread count) or a contiguous share of M (or N) of every
product, and packs its own panels.

The launcher does no dispatch, conversion or tuning: the ops layer has validated the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import prange, types

from kernelkit import devices
from kernelkit.kernels.config import KernelConfig
from kernelkit.kernels.numba import _gemm, _half
from kernelkit.kernels.numba._gemm import (
    _JIT,
    _U,
    ACT_CODES,
    TILE,
    entry_point,
    epilogue,
    flat_view,
    macro_kernel,
    pack_a,
    pack_b,
    span,
    tile,
    tile_shape,
)
from kernelkit.kernels.numba._gemm import (
    cdiv as _cdiv,
)

__all__ = ["CONFIG", "MatmulConfig", "space", "matmul_forward", "TILE", "SMALL_WORK", "SERIAL_WORK"]

# Below this many multiply-adds (M*N*K per batch) the unpacked loop beats packing.
SMALL_WORK = 16 * 1024
# Below this many multiply-adds in total, one thread does everything (no parallel region).
SERIAL_WORK = 1 << 21

def _cache_sizes() -> dict[int, int]:
    """Data/unified cache bytes per level (per core for L1/L2), from devices.cpu_info(), with
    fallbacks for what it could not read."""
    found = devices.cpu_info()["caches"]
    return {1: found.get("L1d", found.get("L1", 32 * 1024)), 2: found.get("L2", 1024 * 1024),
            3: found.get("L3", 32 * 1024 * 1024)}


def _round_down(x: int, m: int) -> int:
    return max(m, (x // m) * m)


@dataclass(frozen=True)
class GemmBlocking(KernelConfig):
    """Cache blocking of a packed GEMM (mc, kc, nc); the register tile is fixed per dtype."""

    mc: int
    kc: int
    nc: int

    def __post_init__(self):
        for name in ("mc", "kc", "nc"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be a positive int, "
                                 f"got {v!r}")
            object.__setattr__(self, name, int(v))  # plain ints: hashable and JSON-ready


@dataclass(frozen=True)
class MatmulConfig(GemmBlocking):
    """Cache blocking of the packed GEMM. The register tile (MR x NR) is fixed per dtype (``TILE``).

    mc: rows of A per packed block (L2-resident), a multiple of MR.
    kc: depth of a block (one B sliver, kc x NR, stays in L1 while A slivers stream past).
    nc: columns of the packed B panel (L3-resident), a multiple of NR.
    """

    @classmethod
    def default(cls, dtype) -> MatmulConfig:
        item = np.dtype(dtype).itemsize
        mr, nr = tile_shape(dtype)
        sizes = _cache_sizes()
        l1, l2, l3 = sizes[1], sizes[2], sizes[3]
        # kc: a B sliver (kc x NR) of about three times L1. Zen 4 / Skylake-class cores stream it
        # from L2 at full speed (the broadcast A sliver stays in L1), and a deep kc cuts the C
        # tile's loads and stores; the A block (mc x kc) takes half of L2; each thread's B panel
        # (kc x nc) a quarter of L3. Measured on a 2-core Zen 4 (EPYC, AVX-512): kc 768 ~ 1024
        # > 512 > 256 by a few % each; mc hardly matters.
        kc = max(128, min(1024, _round_down(3 * l1 // (nr * item), 64)))
        mc = max(mr, min(1024, _round_down(l2 // (2 * kc * item), mr)))
        nc = max(nr, min(8192, _round_down(l3 // (4 * kc * item), nr)))
        return cls(int(mc), int(kc), int(nc))

    @classmethod
    def space(cls, dtype, m: int, n: int, k: int) -> list[MatmulConfig]:
        """Default first, then up to 5 variants that change the blocking for this problem."""
        d = cls.default(dtype)
        mr, nr = tile_shape(dtype)
        half_mc, dbl_mc = _round_down(d.mc // 2, mr), _round_down(d.mc * 2, mr)
        cands = [
            d,
            cls(d.mc, max(64, d.kc // 2), d.nc),
            cls(d.mc, d.kc * 4 // 3, d.nc),
            cls(half_mc, d.kc, d.nc),
            cls(dbl_mc, max(64, d.kc // 2), d.nc),
            cls(d.mc, d.kc, _round_down(d.nc // 4, nr)),
        ]
        out, seen = [], set()
        for c in cands:
            # Two configs are the same for this problem if they clamp to the same blocks.
            eff = (min(c.mc, max(m, 1)), min(c.kc, max(k, 1)), min(c.nc, max(n, 1)))
            if eff in seen:
                continue
            seen.add(eff)
            out.append(c)
        return out[:6]


CONFIG = MatmulConfig


def space(problem) -> list[MatmulConfig]:
    """The configs worth timing for a matmul ``Problem`` (shapes (B, M, K), (B, K, N))."""
    (_, m, k), (_, _, n) = problem.shapes
    return MatmulConfig.space(_half.compute_dtype(problem.dtype), m, n, k)


# ------------------------------------------------------------------------------------ jitted code

@numba.njit(inline="always", **_JIT)
def _operand(a3):
    """(flat view, its offset, element strides of batch, row, column) of a 3-D operand."""
    isz = a3.itemsize
    lo, length = span(a3.shape, a3.strides, isz)
    return (flat_view(a3, lo, length), lo, a3.strides[0] // isz, a3.strides[1] // isz,
            a3.strides[2] // isz)


@numba.njit(**_JIT)
def _matmul_small(a3, b3, bias, has_bias, act, out3):
    """Unpacked path for tiny problems (and K == 0): one thread, no scratch buffers."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    for bi in range(nbat):
        for i in range(m):
            co = (bi * m + i) * n
            ao = bi * sa0 + i * sam - alo
            for j in range(n):
                c[_U(co + j)] = bias[j] if has_bias else 0.0
            for p in range(k):
                aip = af[_U(ao + p * sak)]
                bo = bi * sb0 + p * sbk - blo
                if sbn == 1:
                    for j in range(n):
                        c[_U(co + j)] += aip * bf[_U(bo + j)]
                else:
                    for j in range(n):
                        c[_U(co + j)] += aip * bf[_U(bo + j * sbn)]
            epilogue(c, co, n, 1, n, bias, False, 0, act)


@numba.njit(**_JIT)
def _gemm_one(af, aoff, sam, sak, bf, boff, sbk, sbn, m, n, k, bias, has_bias, j0, act,
              c, coff, ldc, mc, kc, nc, apack, bpack, ct):
    """One (m, k) @ (k, n) product into flat C at coff (row stride ldc), on the calling thread.

    A element (i, p) is ``af[aoff + i*sam + p*sak]``, B element (p, j) is ``bf[boff + p*sbk +
    j*sbn]`` (flat views, element strides); ``bias[j0 + j]`` is column j's bias. Blocks must fit
    the buffers: apack >= mc*kc, bpack >= nc*kc (mc, nc multiples of MR, NR), ct >= MR*NR.
    """
    _, nr = tile(c)
    for jc in range(0, n, nc):
        nb = min(nc, n - jc)
        for pc in range(0, k, kc):
            kb = min(kc, k - pc)
            pack_b(bf, boff + pc * sbk + jc * sbn, sbk, sbn, kb, nb, bpack, 0, 0, _cdiv(nb, nr))
            for ic in range(0, m, mc):
                mb = min(mc, m - ic)
                pack_a(af, aoff + ic * sam + pc * sak, sam, sak, mb, kb, apack, 0)
                macro_kernel(mb, nb, kb, apack, 0, bpack, 0, c, coff + ic * ldc + jc, ldc,
                             pc == 0, pc + kb >= k, ct, 0, bias, has_bias, j0 + jc, act)


@numba.njit(**_JIT)
def _blocks(m, n, k, mc, kc, nc, mr, nr):
    """Blocks clamped to the problem, evened out (no small last block), rounded to the tile."""
    kc = max(1, min(kc, k))
    kc = _cdiv(k, _cdiv(k, kc))
    mc = max(mr, mc // mr * mr)
    mc = _cdiv(_cdiv(m, _cdiv(m, mc)), mr) * mr
    nc = max(nr, nc // nr * nr)
    nc = _cdiv(_cdiv(n, _cdiv(n, nc)), nr) * nr
    return mc, kc, nc


@numba.njit(**_JIT)
def _gemm_part(t, nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc):
    """Thread t's share of the whole batched product: no synchronisation with other threads.

    If the batch count is a multiple of nthr, thread t takes batches t, t + nthr, ...; otherwise
    every product is split nthr ways (along M, or along N when M has too few MR-row slivers) and
    thread t takes part t of each. Each thread packs its own panels (B is packed once per thread
    instead of once in all: a small price for needing no barrier between packing and compute).
    """
    nbat, m, k = a3.shape
    n = b3.shape[2]
    mr, nr = tile(out3)
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    if nbat % nthr == 0:
        b_first, b_step, r0, r1, c0, c1 = t, nthr, 0, m, 0, n
    else:
        b_first, b_step = 0, 1
        msl = _cdiv(m, mr)
        nsl = _cdiv(n, nr)
        if msl >= nthr or msl >= nsl:
            r0 = min(m, (t * msl // nthr) * mr)
            r1 = min(m, ((t + 1) * msl // nthr) * mr)
            c0, c1 = 0, n
        else:
            r0, r1 = 0, m
            c0 = min(n, (t * nsl // nthr) * nr)
            c1 = min(n, ((t + 1) * nsl // nthr) * nr)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    mc, kc, nc = _blocks(r1 - r0, c1 - c0, k, mc, kc, nc, mr, nr)
    apack = np.empty(mc * kc, out3.dtype)
    bpack = np.empty(nc * kc, out3.dtype)
    ct = np.empty(mr * nr, out3.dtype)
    for bi in range(b_first, nbat, b_step):
        _gemm_one(af, -alo + bi * sa0 + r0 * sam, sam, sak, bf, -blo + bi * sb0 + c0 * sbn,
                  sbk, sbn, r1 - r0, c1 - c0, k, bias, has_bias, c0, act,
                  c, bi * m * n + r0 * n + c0, n, mc, kc, nc, apack, bpack, ct)


@numba.njit(parallel=True, **_JIT)
def _gemm_parallel(a3, b3, bias, has_bias, act, out3, mc, kc, nc, nthr):
    """The packed GEMM on nthr threads (numba.get_num_threads()), one parallel region per call."""
    for t in prange(nthr):
        # int64 t: the same specialisation of _gemm_part as the serial entry point (one compile)
        _gemm_part(np.int64(t), nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc)


# ----------------------------------------------------------------------------------------- launch

def _sig(fn_args: str, dtype):
    """Numba signature with 'A'-layout (any strides), read-only inputs: one compile per dtype."""
    nb = numba.from_dtype(np.dtype(dtype))
    ro = lambda nd: types.Array(nb, nd, "A", readonly=True)
    out = types.Array(nb, 3, "C")
    common = (ro(3), ro(3), ro(1), types.boolean, types.intp, out)
    if fn_args == "small":
        return types.void(*common)
    blocks = (types.intp, types.intp, types.intp)
    if fn_args == "serial":
        return types.void(types.intp, types.intp, *common, *blocks)
    return types.void(*common, *blocks, types.intp)


class _Compiled:
    """The compiled entry points of one dtype (compiled or loaded from cache on first use)."""

    __slots__ = ("small", "serial", "parallel", "empty")

    def __init__(self, dtype):
        self.small = self._get(_matmul_small, "small", dtype)
        self.serial = self._get(_gemm_part, "serial", dtype)  # called with t=0, nthr=1
        self.parallel = self._get(_gemm_parallel, "parallel", dtype)
        self.empty = np.zeros(0, dtype)

    @staticmethod
    def _get(disp, kind, dtype):
        return entry_point(disp, _sig(kind, dtype))


_COMPILED: dict = {}


def _compiled(dtype) -> _Compiled:
    fns = _COMPILED.get(dtype)
    if fns is None:
        fns = _COMPILED[np.dtype(dtype)] = _Compiled(dtype)
    return fns


def warm(dtype: str) -> str:
    """Compile (or load from the on-disk cache) every kernel `matmul_forward` runs for `dtype`;
    "compiled" or "loaded"."""
    before = _gemm.COMPILED[0]
    _compiled(_half.compute_dtype(dtype))
    return _gemm.warm_result(before)


def matmul_forward(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None = None,
                   activation: str | None = None, config: MatmulConfig | None = None,
                   allow_tf32: bool = False) -> np.ndarray:
    """act(a @ b + bias) for a (B, M, K) and b (B, K, N) of one float dtype; new (B, M, N) array.

    Any strides are accepted (transposed, negative, stride 0 in the batch). ``bias`` is (N,) or
    None; ``activation`` is None, "relu", "gelu", "gelu_tanh" or "silu". ``allow_tf32`` is a
    permission the CPU has no use for: float32 is computed in float32. float16 and bfloat16 (as
    its uint16 bit patterns) are computed in float32 and rounded once (``_half``).
    """
    dtype = a.dtype
    if dtype.char in _half.HALF_CHARS:
        out = matmul_forward(_half.widen(a), _half.widen(b), _half.widen(bias), activation,
                             config, allow_tf32)
        return _half.narrow(out, dtype.char)
    # (dtype.name costs microseconds; .char does not)
    assert a.ndim == 3 and b.ndim == 3 and b.dtype == dtype and dtype.char in "fd"
    nbat, m, k = a.shape
    n = b.shape[2]
    assert b.shape[0] == nbat and b.shape[1] == k
    act = ACT_CODES[activation]
    out = np.empty((nbat, m, n), dtype)
    if out.size == 0:
        return out
    fns = _COMPILED.get(dtype) or _compiled(dtype)
    if bias is None:
        has_bias, bias = False, fns.empty
    else:
        assert bias.shape == (n,) and bias.dtype == dtype
        has_bias = True
    if not (a.flags.aligned and b.flags.aligned and bias.flags.aligned):
        a, b, bias = np.ascontiguousarray(a), np.ascontiguousarray(b), np.ascontiguousarray(bias)
    work = m * n * k
    if work < SMALL_WORK or k == 0:
        fns.small(a, b, bias, has_bias, act, out)
        return out
    cfg = config or _default(dtype)
    nthr = numba.get_num_threads()
    if work * nbat < SERIAL_WORK or nthr == 1:
        fns.serial(0, 1, a, b, bias, has_bias, act, out, cfg.mc, cfg.kc, cfg.nc)
    else:
        fns.parallel(a, b, bias, has_bias, act, out, cfg.mc, cfg.kc, cfg.nc, nthr)
    return out


_DEFAULTS: dict = {}


def _default(dtype) -> MatmulConfig:
    cfg = _DEFAULTS.get(dtype)
    if cfg is None:
        cfg = _DEFAULTS[dtype] = MatmulConfig.default(dtype)
    return cfg
