"""Conv2d geometry: the one output-size rule, the argument checks, and the records.

Backend-neutral and plain Python, shared by the ops layer (user-facing checks: `check_pair`,
`resolve_padding`, `check_geometry`), every backend's launcher and config space (`ConvGeometry`,
`problem_sizes`) and torch's fake kernels (`out_size`). Error messages start with ``op`` (e.g.
``"conv2d"``, ``"conv2d (triton)"``, ``"cupy conv2d"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def out_size(h: int, w: int, r: int, s: int, stride, padding, dilation) -> tuple[int, int]:
    """(Ho, Wo) of a convolution: padding (top, bottom, left, right), stride and dilation pairs."""
    top, bottom, left, right = padding
    ho = (h + top + bottom - dilation[0] * (r - 1) - 1) // stride[0] + 1
    wo = (w + left + right - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return ho, wo


@dataclass(frozen=True)
class ConvOptions:
    """The options of a conv2d problem that change the kernel (sizes live in Problem.shapes):
    stride and dilation pairs, padding (top, bottom, left, right), groups, and the forward's
    epilogue (bias, activation). ``tf32`` permits TF32 on float32 GPU kernels."""

    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    dilation: tuple[int, int]
    groups: int
    bias: bool = False
    activation: str | None = None
    tf32: bool = False

    @property
    def geometry_args(self) -> tuple:
        """stride, padding, dilation, groups: the geometry arguments of every kernel entry point."""
        return (self.stride, self.padding, self.dilation, self.groups)


def problem_sizes(problem: Any) -> tuple[int, int, int, int, int, int, int]:
    """(n, c, h, w, k, r, s) of the forward convolution behind any conv2d op's Problem, whose
    shapes are always (x in NCHW dims, weight, y in NCHW dims)."""
    (n, c, h, w), (k, _, r, s) = problem.shapes[0], problem.shapes[1]
    return n, c, h, w, k, r, s


# -- user-facing checks (the ops layer): TypeError for a wrong type, ValueError for a bad value --
def _is_int_like(v) -> bool:
    # (a numpy array has __index__ at every size; only a 0-d one is an int)
    return hasattr(v, "__index__") and not isinstance(v, bool) and getattr(v, "ndim", 0) == 0


def check_pair(op: str, name: str, v, *, minimum: int,
               forms: str = "an int or a pair of ints") -> tuple[int, int]:
    """An int or a pair of ints, each >= minimum (`forms`: what the argument may be, for the
    error)."""
    if _is_int_like(v):
        v = (int(v), int(v))
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(_is_int_like(i) for i in v)):
        raise TypeError(f"{op}: '{name}' must be {forms}, got {v!r}")
    if min(v) < minimum:
        what = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"{op}: '{name}' must be {what}, got {tuple(v)}")
    return int(v[0]), int(v[1])


PADDING_FORMS = "an int, a pair, a 4-tuple (top, bottom, left, right), 'same' or 'valid'"


def resolve_padding(op: str, padding, kernel_hw, dilation, stride) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from an int, a pair, a 4-tuple, "valid" or "same" (stride 1;
    asymmetric for even kernels, as torch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if tuple(stride) != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {stride}")
            out = []
            for k, d in zip(kernel_hw, dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        raise ValueError(f"{op}: 'padding' must be {PADDING_FORMS}, got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        if not all(_is_int_like(v) for v in padding):
            raise TypeError(f"{op}: 'padding' (top, bottom, left, right) must be ints, got {padding!r}")
        if min(padding) < 0:
            raise ValueError(f"{op}: 'padding' must be non-negative, got {tuple(padding)}")
        return tuple(int(v) for v in padding)
    ph, pw = check_pair(op, "padding", padding, minimum=0, forms=PADDING_FORMS)
    return (ph, ph, pw, pw)


def check_geometry(op: str, x_nchw, w_shape, stride, padding, dilation, groups
                   ) -> tuple[ConvOptions, tuple[int, int]]:
    """The user-facing checks shared by the three conv2d ops: the options (without epilogue) and
    the output size (Ho, Wo)."""
    if not _is_int_like(groups):
        raise TypeError(f"{op}: 'groups' must be a positive int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"{op}: 'groups' must be a positive int, got {groups!r}")
    n, c, h, w = x_nchw
    k, cg, r, s = w_shape
    if r < 1 or s < 1:  # (torch's own error is a RuntimeError; Numba returned a result)
        raise ValueError(f"{op}: the weight's kernel (R, S) must be at least 1x1, got weight "
                         f"shape {tuple(w_shape)} (K, C // groups, R, S)")
    if c % groups or k % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels C={c} and the "
                         f"output channels K={k}")
    if cg * groups != c:
        raise ValueError(f"{op}: weight has {cg} input channels per group, so with groups={groups} "
                         f"the input needs C={cg * groups} channels, got C={c}")
    stride = check_pair(op, "stride", stride, minimum=1)
    dilation = check_pair(op, "dilation", dilation, minimum=1)
    pad = resolve_padding(op, padding, (r, s), dilation, stride)
    hp, wp = h + pad[0] + pad[1], w + pad[2] + pad[3]
    eff_r, eff_s = dilation[0] * (r - 1) + 1, dilation[1] * (s - 1) + 1
    if eff_r > hp or eff_s > wp:
        raise ValueError(f"{op}: the (dilated) kernel {eff_r}x{eff_s} is larger than the padded "
                         f"input {hp}x{wp}")
    return ConvOptions(stride, pad, dilation, int(groups)), out_size(h, w, r, s, stride, pad,
                                                                      dilation)


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
class ConvGeometry:
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


def geometry(op: str, n, c, h, w, k, r, s, stride, padding, dilation, groups) -> ConvGeometry:
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
    if groups > MAX_GRID_YZ and "gemm" in (kernel_kind(c, k, r, s, groups),
                                           kernel_kind(k, c, r, s, groups)):
        # (only the GEMM kernels put groups on a grid axis; a depthwise conv of 65536 channels
        # runs on the direct kernels. The backward input's kind swaps C and K.)
        raise ValueError(f"{op}: groups={groups} exceeds the grid limit {MAX_GRID_YZ}")
    if r < 1 or s < 1:
        raise ValueError(f"{op}: kernel size must be >= 1, got {(r, s)}")
    if h < 0 or w < 0:  # (a backward's input_hw: padding can still make the output size right)
        raise ValueError(f"{op}: the input's height and width must be >= 0, got {(h, w)}")
    ho, wo = out_size(h, w, r, s, (sh, sw), (top, bottom, left, right), (dh, dw))
    if ho < 1 or wo < 1:
        raise ValueError(f"{op}: the output would be empty ({ho} x {wo}) for input {h} x {w}, "
                         f"kernel {r} x {s}, padding {padding}, dilation {dilation}, "
                         f"stride {stride}")
    return ConvGeometry(op, n, c, h, w, k, ho, wo, r, s, groups, sh, sw, top, left, dh, dw)
