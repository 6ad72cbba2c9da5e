"""Numba CPU matmul: ``act(a @ b + bias)`` for float32 / float64 batches of any strides.

Structure (GotoBLAS / BLIS): for each column panel ``jc`` (nc columns) and depth block ``pc``
(kc), B is packed into NR-column slivers, then mc x kc blocks of A into MR-row slivers, and the
register-tile micro-kernel (``_gemm.ukernel``, LLVM vector FMAs on zmm registers) runs over them
(``_gemm.macro_kernel``). Bias and activation are applied to each tile right after its last K
block, while it is still in cache.

Paths: tiny problems (M*N*K < SMALL_WORK, or K == 0) use an unpacked loop; medium ones
(total < SERIAL_WORK) the packed GEMM on the calling thread; larger ones run as
``threads.kernel_threads()`` shares, one on the calling thread and the others on the Python
thread pool (``_pool``), that need no barrier: each thread takes whole batches (when
the batch count is a multiple of the thread count) or a contiguous share of M (or N) of every
product, and packs its own panels.

Small and skinny products have three unpacked kernels, chosen as configs (``MatmulConfig.kernel``)
so the tuner picks them per size like any blocking:

* ``rows``: C rows += A[i, p] * B row p, four rows of B at a time over a chunk of ``nc`` columns
  whose C rows stay in L1 or L2: B is streamed once, in order (GEMV / small M, row-major B).
* ``dots``: each C element a dot product along K, 2 x 4 at a time, vectorised along K (both
  operands contiguous in K: ``x @ W.T`` with a row-major W, N == 1, small M and N with long K).
* ``tile``: the register-tile micro-kernel reading A and B in place (strided), no packing but of
  edge slivers: small matrices (64^3, 97x61x89) whose packing would cost as much as the product.

The launcher does no dispatch, conversion or tuning: the ops layer has validated the arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from numba import types

from kernelkit import devices
from kernelkit.arrays import strided_like_torch
from kernelkit.kernels.config import KernelConfig
from kernelkit.kernels.numba import _amx, _bf16dot, _gemm, _half, _workspace
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
    ukernel_strided,
)
from kernelkit.kernels.numba._gemm import (
    cdiv as _cdiv,
)
from kernelkit.kernels.numba._pool import run as _run
from kernelkit.threads import kernel_threads

__all__ = ["CONFIG", "MatmulConfig", "space", "matmul_forward", "TILE", "SMALL_WORK", "SERIAL_WORK"]

# Below this many multiply-adds (M*N*K per batch) the unpacked loop beats packing.
SMALL_WORK = 16 * 1024
# Below this many multiply-adds in total, one thread does everything (bfloat16 counts half: it
# runs twice as fast). Measured on a 2-core Zen 5 (docs/performance.md), one thread against two
# (the pool's launch is about 50 us): float32 192^3 193 / 147 GFLOP/s, 256^3 203 / 227; bfloat16
# 256^3 345 / 305, 384^3 400 / 537.
SERIAL_WORK = 1 << 24

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


# The kernels a config can name: the packed GEMM, the unpacked small/skinny kernels, and the
# bfloat16 GEMMs on AMX tiles (offered where the CPU has them: ``_amx``): "amx" packs both
# operands, "amx_w" reads B's columns in place as tiles (B a weight stored along K: a Linear's
# W^T) and packs only A.
KERNELS = ("packed", "rows", "dots", "tile", "amx", "amx_w")
# Largest M (rows) / M*N (dots) / M*N*K (tile) the unpacked kernels are offered for.
ROWS_MAX_M = 16
DOTS_MAX_MN = 64 * 64
TILE_MAX_WORK = 256**3


@dataclass(frozen=True)
class MatmulConfig(GemmBlocking):
    """Cache blocking of the packed GEMM. The register tile (MR x NR) is fixed per dtype (``TILE``).

    mc: rows of A per packed block (L2-resident), a multiple of MR.
    kc: depth of a block (one B sliver, kc x NR, stays in L1 while A slivers stream past).
    nc: columns of the packed B panel (L3-resident), a multiple of NR.
    kernel: "packed" (the blocked GEMM above), or one of the unpacked kernels "rows", "dots",
        "tile" (see the module docstring), which ignore the blocking, but for ``rows``, whose
        column chunk is ``nc``.
    """

    kernel: str = "packed"

    def __post_init__(self):
        super().__post_init__()
        if self.kernel not in KERNELS:
            raise ValueError(f"{type(self).__name__}.kernel must be one of {KERNELS}, got "
                             f"{self.kernel!r}")
        if self.kernel == "amx" and any(v % _amx.MB for v in (self.mc, self.kc, self.nc)):
            raise ValueError(f"{type(self).__name__}: the amx kernel's mc, kc and nc must be "
                             f"multiples of {_amx.MB}, got {self.mc}, {self.kc}, {self.nc}")

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
    def space(cls, dtype, m: int, n: int, k: int, layout: str = "NN") -> list[MatmulConfig]:
        """Default first, then the unpacked kernels that suit this size and layout (``layout``:
        the Problem's tags of A and B), then up to 5 variants that change the blocking."""
        d = cls.default(dtype)
        mr, nr = tile_shape(dtype)
        item = np.dtype(dtype).itemsize
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
        unpacked = []
        for kern in _unpacked_kernels(m, n, k, layout):
            if kern == "rows":  # its chunk of C rows held in L1, or in L2
                whole = max(64, -(-n // 64) * 64)  # no chunk wider than the row
                chunks = {min(rows_chunk(m, item, level), whole) for level in (1, 2)}
                unpacked += [cls(d.mc, d.kc, c, kern) for c in sorted(chunks)]
            else:
                unpacked.append(cls(d.mc, d.kc, d.nc, kern))
        return out[:1] + unpacked + out[1:6]


def rows_chunk(m: int, itemsize: int, level: int) -> int:
    """Columns per chunk of the ``rows`` kernel: its m rows of C fill half of cache ``level``
    (a multiple of 64 columns), so they stay there while the rows of B stream past."""
    return max(64, (_cache_sizes()[level] // 2) // (max(m, 1) * itemsize) // 64 * 64)


def _unpacked_kernels(m: int, n: int, k: int, layout: str) -> list[str]:
    """The unpacked kernels worth timing for an (m, k) @ (k, n) product: each is correct for any
    shape and strides, but fast only where it was written for."""
    la, lb = (layout + "NN")[:2]
    out = []
    if m <= ROWS_MAX_M and lb == "N":  # B's rows contiguous: stream them once
        out.append("rows")
    if (m * n <= DOTS_MAX_MN or min(m, n) == 1) and (lb != "N" or (n == 1 and la == "N")):
        out.append("dots")  # few outputs, and K contiguous in B (or N == 1): dots along K
    if m * n * k <= TILE_MAX_WORK and min(m, n) > 1:  # B packed per sliver unless rows contiguous
        out.append("tile")
    return out


CONFIG = MatmulConfig


def amx_configs(k: int) -> list[MatmulConfig]:
    """The amx kernel's configs for K = ``k``: 1024 rows of A packed at once, K blocks of 256
    and 512, and C strips as wide as keeps the B columns they pass (all of K by nc) in a
    quarter of L2 (the 32-row strips of A pass them all: a wider block fell out of L2, and on a
    VM whose two vCPUs share a core the other thread's half goes too)."""
    kpad = -(-max(k, 1) // _amx.KSTEP) * _amx.KSTEP
    nc = _round_down(min(512, _cache_sizes()[2] // 4 // (2 * kpad)), _amx.NB)
    return [MatmulConfig(1024, 256, nc, "amx"),
            MatmulConfig(1024, 512, _round_down(nc // 2, _amx.NB), "amx")]  # (nc 96: 32, not 48)


AMX_W = MatmulConfig(32, 32, 32, "amx_w")  # (its blocking is fixed: ``_matmul_amx_w``)


def space(problem) -> list[MatmulConfig]:
    """The configs worth timing for a matmul ``Problem`` (shapes (B, M, K), (B, K, N)): for
    bfloat16 and float16 (as two bfloat16 halves, K three times over) on a CPU with AMX, the
    amx kernel's first; for bfloat16 with B stored along K (layout "?T": a Linear's W^T), the
    amx_w kernel's too, first where A has fewer rows than B has columns."""
    (_, m, k), (_, _, n) = problem.shapes
    out = MatmulConfig.space(_half.compute_dtype(problem.dtype), m, n, k, problem.layout)
    if problem.dtype in ("bfloat16", "float16") and m * n * k >= SMALL_WORK and _amx.available():
        out = amx_configs(3 * k if problem.dtype == "float16" else k) + out
        if problem.dtype == "bfloat16" and problem.layout[1:2] == "T":
            out.insert(0 if m < n else 2, AMX_W)
    return out


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
def _gemm_part(t, nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc, ws, ws_share):
    """Thread t's share of the whole batched product: no synchronisation with other threads.

    If the batch count is a multiple of nthr, thread t takes batches t, t + nthr, ...; otherwise
    every product is split nthr ways (along M, or along N when M has too few MR-row slivers) and
    thread t takes part t of each. Each thread packs its own panels (B is packed once per thread
    instead of once in all: a small price for needing no barrier between packing and compute)
    into ``ws[t * ws_share:]`` (``pack_share``; scratch reused across calls, see _workspace).
    """
    nbat, m, k = a3.shape
    n = b3.shape[2]
    mr, nr = tile(out3)
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, mr, nr)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    mc, kc, nc = _blocks(r1 - r0, c1 - c0, k, mc, kc, nc, mr, nr)
    apack, bpack = _pack_buffers(ws, t * ws_share, ws_share, mc * kc, nc * kc)
    ct = np.empty(mr * nr, out3.dtype)
    for bi in range(b_first, nbat, b_step):
        _gemm_one(af, -alo + bi * sa0 + r0 * sam, sam, sak, bf, -blo + bi * sb0 + c0 * sbn,
                  sbk, sbn, r1 - r0, c1 - c0, k, bias, has_bias, c0, act,
                  c, bi * m * n + r0 * n + c0, n, mc, kc, nc, apack, bpack, ct)


@numba.njit(**_JIT)
def _bf16_part(t, nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc, ws, ws_share):
    """``_gemm_part`` for bfloat16 A and B (uint16 bits) into float32 ``out3`` through VDPBF16PS:
    the same blocking, thread shares and scratch (uint32 here), with slivers of K pairs
    (``_bf16dot``); ``kc`` counts K values (an even number in every block but the last)."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    mr, nr = tile(out3)
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, mr, nr)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    mb_all, nb_all = r1 - r0, c1 - c0
    mc, kc, nc = _blocks(mb_all, nb_all, k, mc, kc, nc, mr, nr)
    kc += kc & 1
    kp = (kc + 1) // 2
    apack, bpack = _pack_buffers(ws, t * ws_share, ws_share, mc * kp, nc * kp)
    ct = np.empty(mr * nr, np.float32)
    for bi in range(b_first, nbat, b_step):
        aoff = -alo + bi * sa0 + r0 * sam
        boff = -blo + bi * sb0 + c0 * sbn
        coff = bi * m * n + r0 * n + c0
        for jc in range(0, nb_all, nc):
            nb = min(nc, nb_all - jc)
            for pc in range(0, k, kc):
                kb = min(kc, k - pc)
                _bf16dot.pack_b_pairs(bf, boff + pc * sbk + jc * sbn, sbk, sbn, kb, nb, bpack,
                                      0, 0, _cdiv(nb, nr))
                for ic in range(0, mb_all, mc):
                    mb = min(mc, mb_all - ic)
                    _bf16dot.pack_a_pairs(af, aoff + ic * sam + pc * sak, sam, sak, mb, kb,
                                          apack, 0)
                    macro_kernel(mb, nb, (kb + 1) // 2, apack, 0, bpack, 0, c,
                                 coff + ic * n + jc, n, pc == 0, pc + kb >= k, ct, 0, bias,
                                 has_bias, c0 + jc, act)


def pack_share(m: int, n: int, k: int, mc: int, kc: int, nc: int, dtype) -> int:
    """Scratch elements of one packed-GEMM share (``_gemm_part``, ``_bf16_part``): the largest A
    block and B panel `_blocks` can give a share of an (m, k) @ (k, n) product with the blocking
    (mc, kc, nc) the share function gets, the panel and the share each from a 16-element
    boundary (a cache line or more: the scratch starts on one). ``dtype`` is the slivers':
    uint32 for the bfloat16 kernel, whose packed K steps are pairs (its block made even)."""
    mr, nr = tile_shape(dtype)
    up = lambda x, unit: -(-x // unit) * unit
    kb = max(1, min(kc, k))
    if np.dtype(dtype) == np.uint32:
        kb = (kb + 2) // 2
    mb = min(max(mr, mc // mr * mr), up(max(m, 1), mr))
    nb = min(max(nr, nc // nr * nr), up(max(n, 1), nr))
    return up(up(mb * kb, 16) + nb * kb, 16)


def _pack_scratch(nthr: int, m: int, n: int, k: int, mc: int, kc: int, nc: int,
                  dtype) -> tuple[np.ndarray, int]:
    """The scratch of `nthr` packed-GEMM shares (this thread's workspace: fresh pages per call
    page-fault or not depending on glibc's history; bench/probes/gemm_gap_probe.py) and the
    elements per share."""
    share = pack_share(m, n, k, mc, kc, nc, dtype)
    return _workspace.scratch(nthr * share, dtype), share


@numba.njit(**_JIT)
def _pack_buffers(ws, o, share, asize, bsize):
    """A share's packed A block and B panel: views of the scratch ``ws[o:o + share]``, the panel
    from a 16-element boundary; fresh arrays if they do not fit (never, with ``pack_share``'s
    size: a guard, not a path)."""
    bo = o + _cdiv(asize, 16) * 16
    if bo - o + bsize > share or o + share > ws.size:
        return np.empty(asize, ws.dtype), np.empty(bsize, ws.dtype)
    return ws[o:o + asize], ws[bo:bo + bsize]


AMX_PANEL = 2048  # columns of B packed at once by an AMX share (K x 2048 bfloat16)


def _amx_share_bytes(m: int, n: int, k: int, mc: int, nc: int) -> int:
    """Scratch bytes of one AMX share (``_amx_part``): packed A chunk, B panel and C strip, each
    from a 64-byte boundary."""
    up = lambda x, unit: -(-x // unit) * unit
    kpad = up(k, _amx.KSTEP)
    rows = min(mc, up(m, _amx.MB))
    cols = min(AMX_PANEL, up(n, _amx.NB))
    return up(rows * kpad * 2, 64) + up(cols * kpad * 2, 64) + up(_amx.MB * nc * 4, 64)


@numba.njit(**_JIT)
def _amx_part(t, nthr, a3, b3, bias, has_bias, act, out3, mc, kc, nc, ws, ws_share, panel, f16,
              bad):
    """``_gemm_part`` for bfloat16 A and B (uint16 bits) into bfloat16 ``out3`` on AMX tiles
    (``_amx``): thread t packs its share's B in panels of ``panel`` columns (AMX_PANEL) and its
    rows of A in chunks of ``mc``; ``kc`` K values per accumulation block, ``nc`` columns per
    C strip (all multiples of 32). Its scratch is ``ws[t*ws_share:]`` (64-byte aligned, reused
    across calls: fresh pages fault on first touch). Where ``f16``, A, B and ``out3`` are
    float16 bits, each operand packed as its two bfloat16 halves (``_amx.split_f16``: K' = 3K);
    ``bad[t]`` counts the Inf/NaN read, after which the share stops (the caller falls back)."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, _amx.MB, _amx.NB)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    mb_all, nb_all = r1 - r0, c1 - c0
    kpad = _cdiv(3 * _amx.f16_segment(k) if f16 else k, _amx.KSTEP) * _amx.KSTEP
    rows_max = min(mc, _cdiv(mb_all, _amx.MB) * _amx.MB)
    cols_max = min(panel, _cdiv(nb_all, _amx.NB) * _amx.NB)
    o = t * ws_share
    ap = ws[o:o + rows_max * kpad * 2].view(np.uint16)
    o += _amx.round64(rows_max * kpad * 2)
    bp = ws[o:o + cols_max * kpad * 2].view(np.uint32)
    o += _amx.round64(cols_max * kpad * 2)
    cbuf = ws[o:o + _amx.MB * nc * 4].view(np.float32)
    cfg = _amx.tile_config()
    for bi in range(b_first, nbat, b_step):
        aoff = -alo + bi * sa0 + r0 * sam
        boff = -blo + bi * sb0 + c0 * sbn
        coff = bi * m * n + r0 * n + c0
        for jc in range(0, nb_all, panel):
            nbp = min(panel, nb_all - jc)
            ncols = _cdiv(nbp, _amx.NB) * _amx.NB
            if f16:
                bad[t] += _amx.pack_b_f16(bf, boff + jc * sbn, sbk, sbn, k, nbp, bp, ncols // 16)
            else:
                _amx.pack_b(bf, boff + jc * sbn, sbk, sbn, k, nbp, bp, ncols // 16)
            for ic in range(0, mb_all, mc):
                mb = min(mc, mb_all - ic)
                rows = _cdiv(mb, _amx.MB) * _amx.MB
                if f16:
                    bad[t] += _amx.pack_a_f16(af, aoff + ic * sam, sam, sak, mb, k, ap, rows)
                else:
                    _amx.pack_a(af, aoff + ic * sam, sam, sak, mb, k, ap, rows)
                if bad[t]:
                    return
                _amx.block_product(cfg, ap, rows, bp, kpad // 2, ncols, kc, nc, cbuf, c,
                                   coff + ic * n + jc, n, mb, nbp, bias, has_bias, c0 + jc, act,
                                   f16)


# -------------------------------------------------------------------- unpacked small/skinny kernels
# Each ``_<kernel>_part(t, nthr, a3, b3, bias, has_bias, act, out3, chunk)`` computes thread t's
# share of the whole batched product (t = 0, nthr = 1 on the calling thread), reading A and B in
# place through their strides: correct for every stride pattern, fast for the one it was written
# for. ``chunk`` is the ``rows`` kernel's column chunk (the others ignore it).

_JIT_REASSOC = dict(_JIT, fastmath={"contract", "reassoc"})  # vectorised sums along K


@numba.njit(**_JIT)
def _share(t, nthr, nbat, m, n, mu, nu):
    """Thread t's share: (first batch, batch step, r0, r1, c0, c1). Whole batches when the batch
    count is a multiple of nthr; else rows (in units of mu) or columns (units of nu) of every
    product, whichever has more units."""
    if nbat % nthr == 0:
        return t, nthr, 0, m, 0, n
    msl = _cdiv(m, mu)
    nsl = _cdiv(n, nu)
    if msl >= nthr or msl >= nsl:
        return 0, 1, min(m, (t * msl // nthr) * mu), min(m, ((t + 1) * msl // nthr) * mu), 0, n
    return 0, 1, 0, m, min(n, (t * nsl // nthr) * nu), min(n, ((t + 1) * nsl // nthr) * nu)


@numba.njit(**_JIT)
def _rows_part(t, nthr, a3, b3, bias, has_bias, act, out3, chunk):
    """C[i, j] = sum_p A[i, p] B[p, j]: four rows of B at a time added into the C rows of a
    column chunk (the chunk's C rows stay in cache), so B is read once, row after row: GEMV and
    small M run at memory bandwidth. Vectorised along j where B's rows are contiguous."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    # columns (in units of 64) per thread; all rows to one thread if there is only one unit
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, m + 1, min(chunk, 64))
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    k4 = k - k % 4
    for bi in range(b_first, nbat, b_step):
        for jc in range(c0, c1, chunk):
            nb = min(chunk, c1 - jc)
            for i in range(r0, r1):
                co = (bi * m + i) * n + jc
                for j in range(nb):
                    c[_U(co + j)] = 0.0
            for p in range(0, k4, 4):
                b0 = bi * sb0 + p * sbk + jc * sbn - blo
                b1, b2, b3_ = b0 + sbk, b0 + 2 * sbk, b0 + 3 * sbk
                for i in range(r0, r1):
                    ao = bi * sa0 + i * sam + p * sak - alo
                    x0, x1 = af[_U(ao)], af[_U(ao + sak)]
                    x2, x3 = af[_U(ao + 2 * sak)], af[_U(ao + 3 * sak)]
                    co = (bi * m + i) * n + jc
                    if sbn == 1:
                        for j in range(nb):
                            c[_U(co + j)] += (x0 * bf[_U(b0 + j)] + x1 * bf[_U(b1 + j)]) + \
                                (x2 * bf[_U(b2 + j)] + x3 * bf[_U(b3_ + j)])
                    else:
                        for j in range(nb):
                            o = j * sbn
                            c[_U(co + j)] += (x0 * bf[_U(b0 + o)] + x1 * bf[_U(b1 + o)]) + \
                                (x2 * bf[_U(b2 + o)] + x3 * bf[_U(b3_ + o)])
            for p in range(k4, k):
                b0 = bi * sb0 + p * sbk + jc * sbn - blo
                for i in range(r0, r1):
                    x0 = af[_U(bi * sa0 + i * sam + p * sak - alo)]
                    co = (bi * m + i) * n + jc
                    for j in range(nb):
                        c[_U(co + j)] += x0 * bf[_U(b0 + j * sbn)]
            epilogue(c, (bi * m + r0) * n + jc, n, r1 - r0, nb, bias, has_bias, jc, act)


@numba.njit(**_JIT_REASSOC)
def _dots_part(t, nthr, a3, b3, bias, has_bias, act, out3, chunk):
    """C[i, j] = dot(A[i, :], B[:, j]), a 2 x 4 block of dot products at a time, vectorised
    along K where both operands are contiguous in K (``x @ W.T``, N == 1). Edge blocks repeat
    their last row / column (the same value is computed and stored twice)."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, 2, 4)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    zero = c.dtype.type(0)
    for bi in range(b_first, nbat, b_step):
        for i in range(r0, r1, 2):
            ia0 = bi * sa0 + i * sam - alo
            ia1 = bi * sa0 + min(i + 1, r1 - 1) * sam - alo
            for j in range(c0, c1, 4):
                jb1, jb2, jb3 = min(j + 1, c1 - 1), min(j + 2, c1 - 1), min(j + 3, c1 - 1)
                ib0 = bi * sb0 + j * sbn - blo
                ib1, ib2, ib3 = (bi * sb0 + jb1 * sbn - blo, bi * sb0 + jb2 * sbn - blo,
                                 bi * sb0 + jb3 * sbn - blo)
                s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
                for p in range(k):
                    x0, x1 = af[_U(ia0 + p * sak)], af[_U(ia1 + p * sak)]
                    y0, y1 = bf[_U(ib0 + p * sbk)], bf[_U(ib1 + p * sbk)]
                    y2, y3 = bf[_U(ib2 + p * sbk)], bf[_U(ib3 + p * sbk)]
                    s00 += x0 * y0
                    s01 += x0 * y1
                    s02 += x0 * y2
                    s03 += x0 * y3
                    s10 += x1 * y0
                    s11 += x1 * y1
                    s12 += x1 * y2
                    s13 += x1 * y3
                o0 = (bi * m + i) * n
                o1 = (bi * m + min(i + 1, r1 - 1)) * n
                # (row 1 first: on an edge it repeats row 0, which then wins with equal values)
                c[_U(o1 + j)] = s10
                c[_U(o1 + jb1)] = s11
                c[_U(o1 + jb2)] = s12
                c[_U(o1 + jb3)] = s13
                c[_U(o0 + j)] = s00
                c[_U(o0 + jb1)] = s01
                c[_U(o0 + jb2)] = s02
                c[_U(o0 + jb3)] = s03
        epilogue(c, (bi * m + r0) * n + c0, n, r1 - r0, c1 - c0, bias, has_bias, c0, act)


@numba.njit(**_JIT)
def _tile_part(t, nthr, a3, b3, bias, has_bias, act, out3, chunk):
    """The register-tile micro-kernel on A and B in place (``ukernel_strided``): no packing but
    of edge slivers (rows past the last full MR, columns past the last full NR) and of B when its
    rows are not contiguous. Column slivers outside, row tiles inside: the B sliver stays in L1
    while A's rows pass."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    mr, nr = tile(out3)
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    c = out3.reshape(-1)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, mr, nr)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    apack = np.empty(mr * k, out3.dtype)
    bpack = np.empty(nr * k, out3.dtype)
    ct = np.empty(mr * nr, out3.dtype)
    for bi in range(b_first, nbat, b_step):
        for jr in range(c0, c1, nr):
            cols = min(nr, c1 - jr)
            bo = bi * sb0 + jr * sbn - blo
            b_inplace = cols == nr and sbn == 1
            if not b_inplace:
                pack_b(bf, bo, sbk, sbn, k, cols, bpack, 0, 0, 1)
            for i0 in range(r0, r1, mr):
                rows = min(mr, r1 - i0)
                ao = bi * sa0 + i0 * sam - alo
                co = (bi * m + i0) * n + jr
                full = rows == mr and cols == nr
                if rows < mr:
                    pack_a(af, ao, sam, sak, rows, k, apack, 0)
                # four call sites: in-place (read-only views) and packed (scratch) operands
                # have different array types
                if rows == mr:
                    if b_inplace:
                        ukernel_strided(k, af, ao, sam, sak, bf, bo, sbk, c, co, n, 0)
                    elif full:
                        ukernel_strided(k, af, ao, sam, sak, bpack, 0, nr, c, co, n, 0)
                    else:
                        ukernel_strided(k, af, ao, sam, sak, bpack, 0, nr, ct, 0, nr, 0)
                elif b_inplace:
                    ukernel_strided(k, apack, 0, 1, mr, bf, bo, sbk, ct, 0, nr, 0)
                else:
                    ukernel_strided(k, apack, 0, 1, mr, bpack, 0, nr, ct, 0, nr, 0)
                if not full:
                    for i in range(rows):
                        for j in range(cols):
                            c[_U(co + i * n + j)] = ct[_U(i * nr + j)]
                epilogue(c, co, n, rows, cols, bias, has_bias, jr, act)


@numba.njit(**_JIT)
def _tile_half_part(t, nthr, a3, b3, bias, has_bias, act, out3, chunk, aw4, bw4, o3, bf16):
    """``_tile_part`` on float16 or bfloat16 operands (their uint16 bits; ``bf16`` says which):
    thread t widens the rows of A and the columns of B its share reads into float32 copies of
    its own (aw4[t], bw4[t]), runs the tile kernel on them into out3 (float32) and rounds its
    share of out3 into o3. Widening both operands on the caller's thread first, as the other
    kernels' half-precision path does, leaves the second core idle through it and the widened
    data in the first core's cache: on a 2-core Zen 4 a 256^3 float16 product ran at 0.74-0.78x
    the float32 rate that way and 0.82-0.97x this way (docs/performance.md)."""
    nbat, m, k = a3.shape
    n = b3.shape[2]
    mr, nr = tile(out3)
    b_first, b_step, r0, r1, c0, c1 = _share(t, nthr, nbat, m, n, mr, nr)
    if r1 <= r0 or c1 <= c0 or b_first >= nbat:
        return
    aw3 = aw4[t]
    bw3 = bw4[t]
    af, alo, sa0, sam, sak = _operand(a3)
    bf, blo, sb0, sbk, sbn = _operand(b3)
    awf = aw3.reshape(-1)
    bwf = bw3.reshape(-1)
    # (flat indices, and a unit-stride loop where the source allows: they vectorise)
    for bi in range(b_first, nbat, b_step):
        for i in range(r0, r1):
            src = bi * sa0 + i * sam - alo
            dst = (bi * m + i) * k
            if sak == 1:
                for p in range(k):
                    awf[_U(dst + p)] = _half.widen1(af[_U(src + p)], bf16)
            else:
                for p in range(k):
                    awf[_U(dst + p)] = _half.widen1(af[_U(src + p * sak)], bf16)
        for p in range(k):
            src = bi * sb0 + p * sbk - blo
            dst = (bi * k + p) * n
            if sbn == 1:
                for j in range(c0, c1):
                    bwf[_U(dst + j)] = _half.widen1(bf[_U(src + j)], bf16)
            else:
                for j in range(c0, c1):
                    bwf[_U(dst + j)] = _half.widen1(bf[_U(src + j * sbn)], bf16)
    _tile_part(t, nthr, aw3, bw3, bias, has_bias, act, out3, chunk)
    c = out3.reshape(-1)
    of = o3.reshape(-1)
    for bi in range(b_first, nbat, b_step):
        for i in range(r0, r1):
            row = (bi * m + i) * n
            for j in range(c0, c1):
                of[_U(row + j)] = _half.narrow1(c[_U(row + j)], bf16)


_UNPACKED = {"rows": _rows_part, "dots": _dots_part, "tile": _tile_part}


# ----------------------------------------------------------------------------------------- launch

def _sig(fn_args: str, dtype, out_dtype=None):
    """Numba signature with 'A'-layout (any strides), read-only inputs: one compile per dtype
    (``out_dtype``: of the output and bias, where it differs from the inputs')."""
    nb = numba.from_dtype(np.dtype(dtype))
    nbo = numba.from_dtype(np.dtype(out_dtype or dtype))
    ro = lambda nd, t=nb: types.Array(t, nd, "A", readonly=True)
    out = types.Array(nbo, 3, "C")
    common = (ro(3), ro(3), ro(1, nbo), types.boolean, types.intp, out)
    if fn_args == "small":
        return types.void(*common)
    blocks = (types.intp, types.intp, types.intp)
    if fn_args == "serial":
        return types.void(types.intp, types.intp, *common, *blocks)
    if fn_args == "packed":  # serial + the scratch of all shares and its elements per share
        ws = types.Array(types.uint32 if out_dtype else nb, 1, "C")
        return types.void(types.intp, types.intp, *common, *blocks, ws, types.intp)
    assert fn_args == "part"  # an unpacked kernel's share: (t, nthr, ..., chunk)
    return types.void(types.intp, types.intp, *common, types.intp)


class _Compiled:
    """The compiled entry points of one dtype (compiled or loaded from cache on first use)."""

    __slots__ = ("small", "serial", "unpacked", "empty")

    def __init__(self, dtype):
        self.small = self._get(_matmul_small, "small", dtype)
        self.serial = self._get(_gemm_part, "packed", dtype)  # thread t's share of nthr
        # kernel name -> its share (t, nthr, ...)
        self.unpacked = {name: self._get(part, "part", dtype)
                         for name, part in _UNPACKED.items()}
        self.empty = np.zeros(0, dtype)

    @staticmethod
    def _get(disp, kind, dtype):
        return entry_point(disp, _sig(kind, dtype))


_COMPILED: dict = {}
_BF16: dict = {}  # the bfloat16 GEMMs' share entry points by kernel, once compiled


def _bf16_compiled(kernel: str = "packed"):
    fn = _BF16.get(kernel)
    if fn is None:
        sig = _sig("serial", np.uint16, np.float32)
        if kernel == "amx":  # a bfloat16 (or float16) output, rounded in its epilogue, and
            # (scratch of all shares, bytes per share, panel columns, float16?, Inf/NaN counts)
            args = list(sig.args)
            args[7] = types.Array(types.uint16, 3, "C")
            sig = types.void(*args, types.Array(types.uint8, 1, "C"), types.intp, types.intp,
                             types.boolean, types.Array(types.int64, 1, "C"))
        else:
            sig = _sig("packed", np.uint16, np.float32)
        fn = _BF16[kernel] = entry_point(_amx_part if kernel == "amx" else _bf16_part, sig)
    return fn


def bf16_dot(dtype_char: str, m: int, n: int, k: int, config: MatmulConfig | None) -> bool:
    """Whether a product runs as a bfloat16 GEMM (AMX tiles or AVX-512 BF16: the CPU has it,
    the operands are bfloat16 bits, that kernel or the packed one is asked for and the product
    is not tiny)."""
    if dtype_char != "H" or k == 0 or m * n * k < SMALL_WORK:
        return False
    if config is not None and config.kernel == "amx":
        return _amx.available() or _gemm.HAS_BF16_DOT
    return _gemm.HAS_BF16_DOT and (config is None or config.kernel == "packed")


def f16_amx(dtype_char: str, m: int, n: int, k: int, config: MatmulConfig | None) -> bool:
    """Whether a float16 product runs on AMX tiles as bfloat16 halves (``_amx.split_f16``): an
    amx config asked for, the CPU has AMX, and the product is not tiny."""
    return (dtype_char == "e" and config is not None and config.kernel == "amx" and k > 0
            and m * n * k >= SMALL_WORK and _amx.available())


def _matmul_amx(a, b, bias, act, config, f16):
    """act(a @ b + bias) on AMX tiles for bfloat16 (or, where ``f16``, float16) bits as uint16:
    (B, M, N) bits of the same type, rounded in the kernel's epilogue; None where a float16
    operand holds Inf or NaN, which the split into bfloat16 halves cannot carry."""
    nbat, m, k = a.shape
    n = b.shape[2]
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else np.zeros(0, np.float32)
    if not (a.flags.aligned and b.flags.aligned):
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    kk = 3 * _amx.f16_segment.py_func(k) if f16 else k  # K' of the bfloat16 halves
    out = _workspace.empty_bits16((nbat, m, n))
    nthr = _threads(m * n * kk * nbat // 8)
    share = _amx_share_bytes(m, n, kk, config.mc, config.nc)
    ws = _workspace.scratch(nthr * share, np.uint8)
    bad = np.zeros(nthr, np.int64)
    _run(_bf16_compiled("amx"), nthr, a, b, bias, has_bias, act, out, config.mc, config.kc,
         config.nc, ws, share, AMX_PANEL, f16, bad)
    return None if bad.any() else out


_AMX_COLS: list = []  # the AMX column GEMM's entry points: (pack_a, columns, products)


def amx_cols_compiled() -> tuple:
    """The entry points of the AMX GEMM that reads its A tiles in place (``_amx.cols_conv_part``:
    the column conv's product, and ``_matmul_amx_w``'s), compiled (or loaded) for 'A'-layout
    inputs: (``pack_a``, ``cols_pack_part``, ``cols_conv_part``)."""
    if not _AMX_COLS:
        i = types.int64
        arr = lambda t, nd, layout="C", ro=False: types.Array(t, nd, layout, readonly=ro)
        u8, u16, u32, f32 = types.uint8, types.uint16, types.uint32, types.float32
        _AMX_COLS.extend([
            entry_point(_amx.pack_a, types.void(
                arr(u16, 1, "A", True), i, i, i, i, i, arr(u16, 1), i)),
            entry_point(_amx.cols_pack_part, types.void(
                i, i, arr(u16, 4, "A", True), arr(u32, 1), i, i, i, i, i, i, i, i, i, i, i, i,
                i, i, arr(i, 1))),
            entry_point(_amx.cols_conv_part, types.void(
                i, i, arr(u16, 1, "A", True), i, i, i, i, arr(u32, 1), i, i, types.boolean,
                arr(u8, 1), i, arr(u16, 4), arr(f32, 1, "A", True), types.boolean, i,
                arr(i, 1))),
        ])
    return tuple(_AMX_COLS)


def amx_cols_operand(w, rows: int, kall: int, kp: int, ncols: int, alloc) -> tuple:
    """The A side and blocking of the GEMM that reads its A tiles in place (``cols_conv_part``)
    for a C-contiguous (rows, kall) bfloat16 weight ``w`` (flat) by ``ncols`` columns of ``kp``
    K pairs: (ap, lda, a_strip, a_kstep, chunk, share, bsize). The weight is read in place where
    its rows are whole tiles (kall and rows multiples of 32), else packed (``pack_a``) into
    ``alloc(size, np.uint16)``; ``chunk`` columns per unit (kp pairs x chunk words of B within
    about 1 MiB of L2), ``share`` scratch bytes per thread, ``bsize`` bytes of B."""
    if kall % 32 == 0 and rows % 32 == 0:
        ap, lda, a_strip, a_kstep = w, 2 * kall, 32 * kall, 64
    else:
        padded = _cdiv(rows, 32) * 32
        ap = alloc(padded * 2 * kp, np.uint16)
        amx_cols_compiled()[0](w, 0, kall, 1, rows, kall, ap, padded)
        lda, a_strip, a_kstep = 64, kp * 64, 1024
    chunk = max(32, min(ncols, (1 << 20) // (4 * kp) // 32 * 32))
    share = -(-32 * chunk * 4 // 64) * 64
    bsize = -(-4 * kp * ncols // 64) * 64
    return ap, lda, a_strip, a_kstep, chunk, share, bsize


def amx_w(dtype_char: str, m: int, n: int, k: int, config: MatmulConfig | None) -> bool:
    """Whether a product runs as ``_matmul_amx_w``: bfloat16, an amx_w config asked for, the CPU
    has AMX, nothing empty."""
    return (dtype_char == "H" and config is not None and config.kernel == "amx_w"
            and m * n * k > 0 and _amx.available())


def _matmul_amx_w(a, b, bias, act):
    """act(a @ b + bias) for bfloat16 bits (uint16), (B, M, N) bfloat16 bits, computed as C^T =
    B^T A^T on AMX tiles: B's columns (a Linear's weight rows) are the tile product's A side,
    read in place where they are whole tiles (K and N multiples of 32; else packed), and A's
    rows become its B side, packed as rows of K pairs (one uint32 per pair of A's row, so a
    transposing copy). The product is the column conv's (``_amx.cols_conv_part``): 32 weight
    rows at a time pass every column of A from L2, each weight element read once per call,
    where the "amx" kernel packs all of B first (a 4096 x 4096 weight: 32 MiB read and written
    per call). Its output layout, (image, channel, pixel), with one pixel per image is C's rows:
    written (M, N) directly, rounded to bfloat16 in the epilogue."""
    nbat, m, k = a.shape
    n = b.shape[2]
    out = _workspace.empty_bits16((nbat, m, n))
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else np.zeros(0, np.float32)
    if b.shape[0] == 1 or b.strides[0] == 0:  # one weight: every batch's rows in one product
        _amx_w_product(a.reshape(nbat * m, k), b[0], bias, has_bias, act,
                       out.reshape(nbat * m, n))
    else:
        for i in range(nbat):
            _amx_w_product(a[i], b[i], bias, has_bias, act, out[i])
    return out


def _amx_w_product(x, b, bias, has_bias, act, out) -> None:
    """``out`` (M, N) = act(x @ b + bias) for one (M, K) x (K, N) pair (``_matmul_amx_w``)."""
    m, k = x.shape
    n = b.shape[1]
    product = amx_cols_compiled()[2]
    kp = _cdiv(k, _amx.KSTEP) * (_amx.KSTEP // 2)  # K pairs, whole tiles
    ncols = _cdiv(m, _amx.NB) * _amx.NB
    w = np.ascontiguousarray(b.T).reshape(-1)  # (N, K): the weight's rows (a Linear's: no copy)
    ap, lda, a_strip, a_kstep, chunk, share, bsize = amx_cols_operand(
        w, n, k, kp, ncols, _workspace.aligned_empty)
    # (the padded columns count: a single row still streams the whole weight, which two
    # threads read twice as fast as one; 1 x 4096 x 4096 took 3.6 ms on one, 1.8 on two)
    tn = _threads(ncols * n * k // 8)
    ws = _workspace.scratch(bsize + tn * share, np.uint8)
    bq = ws[:4 * kp * ncols].view(np.uint32).reshape(kp, ncols)
    # word (q, col) = (x[col, 2q], x[col, 2q + 1]): a row of x read as uint32 pairs
    xe = np.ascontiguousarray(x)
    if k % 2:
        xe = np.concatenate([xe, np.zeros((m, 1), np.uint16)], axis=1)
    bq[:xe.shape[1] // 2, :m] = xe.view(np.uint32).T
    bq[xe.shape[1] // 2:] = 0
    bq[:, m:] = 0
    claim = np.zeros(1, np.int64)
    _run(product, tn, ap, lda, a_strip, a_kstep, kp // 16, bq.reshape(-1), ncols, chunk, False,
         ws[bsize:], share, out.reshape(m, n, 1, 1), bias, has_bias, act, claim)


def _matmul_bf16(a, b, bias, act, config):
    """act(a @ b + bias) for bfloat16 bits (uint16) on AMX tiles (an amx config: bfloat16 bits
    (B, M, N), rounded in the kernel's epilogue) or through VDPBF16PS (float32 (B, M, N))."""
    nbat, m, k = a.shape
    n = b.shape[2]
    if config is not None and config.kernel == "amx":
        if _amx.available():
            return _matmul_amx(a, b, bias, act, config, False)
        config = None  # (a cache written on a machine with AMX, read on one without)
    has_bias = bias is not None
    bias = _half.widen(bias) if has_bias else np.zeros(0, np.float32)
    if not (a.flags.aligned and b.flags.aligned):
        a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    out = np.empty((nbat, m, n), np.float32)
    cfg = config or _default(np.float32)
    # the float32 blocking's footprints hold twice the K of bfloat16
    blocks = (cfg.mc, 2 * cfg.kc, cfg.nc)
    nthr = _threads(m * n * k * nbat // 2)
    ws, share = _pack_scratch(nthr, m, n, k, *blocks, np.uint32)
    _run(_bf16_compiled(), nthr, a, b, bias, has_bias, act, out, *blocks, ws, share)
    return out


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
    if dtype == "float16":
        _half.warm_f16()
    if dtype == "bfloat16":
        _half.warm_bf16()
        if _gemm.HAS_BF16_DOT:
            _bf16_compiled()
    if dtype in ("bfloat16", "float16"):
        _tile_half_compiled()
    if dtype in ("bfloat16", "float16") and _amx.available():
        _bf16_compiled("amx")  # (float16 runs it on bfloat16 halves)
    if dtype == "bfloat16" and _amx.available():
        amx_cols_compiled()  # (amx_w's product)
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
    # (inline, not the _half.in_float32 wrapper the conv entry points use: this is the hot path
    # of every float32 call, where one more Python call level costs a measurable share)
    if dtype.char in _half.HALF_CHARS:
        if a.ndim == 3 and b.ndim == 3 and 0 in (a.shape[0], a.shape[1], b.shape[2]) \
                and a.shape[0] == b.shape[0] and a.shape[2] == b.shape[1]:
            return strided_like_torch(  # (nothing to compute: torch's strides)
                np.empty((a.shape[0], a.shape[1], b.shape[2]), dtype))
        if a.ndim == 3 and amx_w(dtype.char, a.shape[1], b.shape[2], a.shape[2], config):
            return _matmul_amx_w(a, b, bias, ACT_CODES[activation])
        if a.ndim == 3 and f16_amx(dtype.char, a.shape[1], b.shape[2], a.shape[2], config):
            out = _matmul_amx(a.view(np.uint16), b.view(np.uint16), bias, ACT_CODES[activation],
                              config, True)
            if out is not None:
                return out.view(np.float16)
        if a.ndim == 3 and bf16_dot(dtype.char, a.shape[1], b.shape[2], a.shape[2], config):
            out = _matmul_bf16(a, b, bias, ACT_CODES[activation], config)
            return out if out.dtype.char == "H" else _half.narrow(out, "H")
        if config is not None and config.kernel == "tile" and a.ndim == 3 and a.shape[2] > 0 \
                and (dtype.char == "H" or _half.f16c()):
            return _matmul_tile_half(a, b, bias, ACT_CODES[activation], config.nc)
        if config is not None and config.kernel in ("amx", "amx_w"):  # float32's default
            config = None
        out = matmul_forward(_half.widen(a, 0), _half.widen(b, 1), _half.widen(bias, 2),
                             activation, config, allow_tf32)
        return _half.narrow(out, dtype.char)
    # (dtype.name costs microseconds; .char does not)
    # (checks, not asserts: `python -O` drops asserts, and the kernel would read out of bounds)
    if not (a.ndim == 3 and b.ndim == 3 and b.dtype == dtype and dtype.char in "fd"):
        raise ValueError(f"matmul (numba): a and b must be 3-D float32/float64 arrays of one "
                         f"dtype, got {a.shape} {a.dtype} and {b.shape} {b.dtype}")
    nbat, m, k = a.shape
    n = b.shape[2]
    if b.shape[0] != nbat or b.shape[1] != k:
        raise ValueError(f"matmul (numba): a {a.shape} and b {b.shape} do not multiply")
    act = ACT_CODES[activation]
    out = np.empty((nbat, m, n), dtype)
    if out.size == 0:
        return strided_like_torch(out)
    fns = _COMPILED.get(dtype) or _compiled(dtype)
    if bias is None:
        has_bias, bias = False, fns.empty
    else:
        if bias.shape != (n,) or bias.dtype != dtype:
            raise ValueError(f"matmul (numba): bias must be ({n},) {dtype}, got {bias.shape} "
                             f"{bias.dtype}")
        has_bias = True
    if not (a.flags.aligned and b.flags.aligned and bias.flags.aligned):
        a, b, bias = np.ascontiguousarray(a), np.ascontiguousarray(b), np.ascontiguousarray(bias)
    work = m * n * k
    kernel = config.kernel if config is not None else "packed"
    if kernel in ("amx", "amx_w"):  # bfloat16's kernels: float32 and float64 take the default
        config, kernel = None, "packed"
    if kernel != "packed" and k > 0:
        # (config.nc: the rows kernel's column chunk; the others ignore it)
        _run(fns.unpacked[kernel], _threads(work * nbat), a, b, bias, has_bias, act, out,
             config.nc)
        return out
    if work < SMALL_WORK or k == 0:
        fns.small(a, b, bias, has_bias, act, out)
        return out
    cfg = config or _default(dtype)
    nthr = _threads(work * nbat)
    ws, share = _pack_scratch(nthr, m, n, k, cfg.mc, cfg.kc, cfg.nc, dtype)
    _run(fns.serial, nthr, a, b, bias, has_bias, act, out, cfg.mc, cfg.kc, cfg.nc, ws, share)
    return out


def _matmul_tile_half(a: np.ndarray, b: np.ndarray, bias: np.ndarray | None, act: int,
                      chunk: int) -> np.ndarray:
    """The tile kernel on float16 / bfloat16 (uint16 bits) operands, each thread widening what
    its share reads (``_tile_half_part``); the result in the operands' dtype."""
    nbat, m, k = a.shape
    n = b.shape[2]
    char = a.dtype.char
    out = _workspace.empty_bits16((nbat, m, n))
    if out.size == 0:
        return out if char == "H" else out.view(np.float16)
    fns = _COMPILED.get(np.dtype(np.float32)) or _compiled(np.float32)
    # (an aligned copy of an unaligned operand: ascontiguousarray keeps a contiguous one as is)
    a, b = (x if x.flags.aligned else x.copy() for x in (a, b))
    nthr = _threads(m * n * k * nbat)
    # (float32 copies and the float32 product: operand slots, as `_half.widen`'s)
    aw = _workspace.operand(nthr * a.size, np.float32, 0).reshape((nthr, *a.shape))
    bw = _workspace.operand(nthr * b.size, np.float32, 1).reshape((nthr, *b.shape))
    out32 = _workspace.operand(out.size, np.float32, 2).reshape(out.shape)
    has_bias = bias is not None
    bias = _half.widen(bias, 3) if has_bias else fns.empty
    _run(_tile_half_compiled(), nthr, a.view(np.uint16), b.view(np.uint16), bias, has_bias, act,
         out32, chunk, aw, bw, out, char == "H")
    return out if char == "H" else out.view(np.float16)


_TILE_HALF: list = []


def _tile_half_compiled():
    if not _TILE_HALF:
        sig = _sig("part", np.uint16, np.float32)
        f32x4 = types.Array(types.float32, 4, "C")
        sig = types.void(*sig.args, f32x4, f32x4, types.Array(types.uint16, 3, "C"),
                         types.boolean)
        _TILE_HALF.append(entry_point(_tile_half_part, sig))
    return _TILE_HALF[0]


def _threads(work: int) -> int:
    """Threads for a product of ``work`` multiply-adds: one below SERIAL_WORK."""
    return 1 if work < SERIAL_WORK else kernel_threads()


_DEFAULTS: dict = {}


def _default(dtype) -> MatmulConfig:
    cfg = _DEFAULTS.get(dtype)
    if cfg is None:
        cfg = _DEFAULTS[dtype] = MatmulConfig.default(dtype)
    return cfg
