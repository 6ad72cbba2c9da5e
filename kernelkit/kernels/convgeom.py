"""Conv2d argument checks and geometry shared by the GPU launchers (Triton, CuPy).

Backend-neutral and plain Python: the launchers name themselves in ``op`` (e.g. ``"conv2d
(triton)"``, ``"cupy conv2d"``), which every error message starts with.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUTS = ("NCHW", "NHWC")
MAX_GRID_YZ = 65535  # CUDA's limit on grid.y and grid.z (groups go on grid axis 1)


def check_layout(op: str, layout) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"{op}: layout must be 'NCHW' or 'NHWC', got {layout!r}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def pair(op: str, name: str, v) -> tuple[int, int]:
    """An int or a pair of ints, as (first, second)."""
    if _is_int(v):
        return v, v
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ValueError(f"{op}: {name} must be an int or a pair, got {v!r}") from None
    if not (_is_int(a) and _is_int(b)):
        raise ValueError(f"{op}: {name} must hold ints, got {v!r}")
    return int(a), int(b)


def padding4(op: str, p) -> tuple[int, int, int, int]:
    """An int, a (vertical, horizontal) pair or (top, bottom, left, right), each >= 0."""
    if _is_int(p):
        p = (p,) * 4
    elif isinstance(p, (tuple, list)) and len(p) == 2:
        p = (p[0], p[0], p[1], p[1])
    if not isinstance(p, (tuple, list)) or len(p) != 4 or not all(_is_int(t) and t >= 0 for t in p):
        raise ValueError(f"{op}: padding must be (top, bottom, left, right) of ints >= 0, "
                         f"got {p!r}")
    return tuple(int(t) for t in p)


def nchw_shape(shape, layout: str) -> tuple[int, int, int, int]:
    """An activation's (n, c, h, w) sizes (or strides) from its ``layout`` order."""
    t = tuple(shape)
    return t if layout == "NCHW" else (t[0], t[3], t[1], t[2])


def act_shape(n: int, c: int, h: int, w: int, layout: str) -> tuple[int, int, int, int]:
    """The shape of an (n, c, h, w) activation in ``layout`` order."""
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def kernel_kind(c: int, k: int, r: int, s: int, groups: int) -> str:
    """"direct" when a GEMM's dot would be mostly padding (depthwise, few channels per group),
    else "gemm": the GPU backends' forward and backward-weight rule."""
    cg, kg = c // max(groups, 1), k // max(groups, 1)
    return "direct" if kg < 16 or cg * r * s < 16 else "gemm"


@dataclass(frozen=True)
class Geometry:
    """A checked convolution, in NCHW terms (padding top / left; bottom / right only shape it)."""

    op: str
    n: int
    c: int
    h: int
    w: int
    k: int
    ho: int
    wo: int
    r: int
    s: int
    groups: int
    sh: int
    sw: int
    top: int
    left: int
    dh: int
    dw: int

    @property
    def cg(self) -> int:
        return self.c // self.groups

    @property
    def kg(self) -> int:
        return self.k // self.groups

    @property
    def ints(self) -> tuple[int, ...]:
        """The 17-int argument block of the CuPy kernels."""
        return (self.n, self.c, self.h, self.w, self.k, self.ho, self.wo, self.r, self.s, self.cg,
                self.kg, self.sh, self.sw, self.top, self.left, self.dh, self.dw)

    def geometry_args(self) -> tuple[int, ...]:
        """STRIDE_H, STRIDE_W, PAD_T, PAD_L, DIL_H, DIL_W of the Triton kernels."""
        return (self.sh, self.sw, self.top, self.left, self.dh, self.dw)

    def check_grad_out(self, ho: int, wo: int) -> None:
        """grad_out's spatial size must be this convolution's output size."""
        if (self.ho, self.wo) != (ho, wo):
            raise ValueError(f"{self.op}: grad_out is {ho} x {wo} but the convolution of a "
                             f"{self.h} x {self.w} input gives {self.ho} x {self.wo}")


def geometry(op: str, n, c, h, w, k, r, s, stride, padding, dilation, groups) -> Geometry:
    """Check stride, padding, dilation, groups and the kernel size; the output size."""
    sh, sw = pair(op, "stride", stride)
    dh, dw = pair(op, "dilation", dilation)
    top, bottom, left, right = padding4(op, padding)
    if min(sh, sw, dh, dw) < 1:
        raise ValueError(f"{op}: stride and dilation must be >= 1, got {(sh, sw)} and {(dh, dw)}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"{op}: groups must be an int >= 1, got {groups!r}")
    if c % groups or k % groups:
        raise ValueError(f"{op}: groups={groups} must divide C={c} and K={k}")
    if groups > MAX_GRID_YZ:
        raise ValueError(f"{op}: groups={groups} exceeds the grid limit {MAX_GRID_YZ}")
    if r < 1 or s < 1:
        raise ValueError(f"{op}: kernel size must be >= 1, got {(r, s)}")
    ho = (h + top + bottom - dh * (r - 1) - 1) // sh + 1
    wo = (w + left + right - dw * (s - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: the output would be empty ({ho} x {wo}) for input {h} x {w}, "
                         f"kernel {r} x {s}, padding {padding}, dilation {dilation}, "
                         f"stride {stride}")
    return Geometry(op, n, c, h, w, k, ho, wo, r, s, groups, sh, sw, top, left, dh, dw)
