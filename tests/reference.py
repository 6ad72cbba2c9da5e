"""float64 references, the one tolerance table, and the named shape sets every test draws from."""

from __future__ import annotations

import math

import numpy as np

# The unit roundoff table and the float64 conversion are the package's own (kernelkit.ops.verify),
# so the tuner's verification and the tests read one table.
from kernelkit.arrays import dtype_name  # noqa: F401 - used by the test modules
from kernelkit.ops.verify import UNIT_ROUNDOFF, f64

# Elementwise tolerances (torch's defaults), for ops without a reduction.
ELEMENTWISE_RTOL: dict[str, float] = {
    "float64": 1e-7,
    "float32": 1.3e-6,
    "float16": 1e-3,
    "bfloat16": 1.6e-2,
}

# Shape sets for matmul, named by intent: (M, K, N).
MATMUL_ALIGNED = [(16, 16, 16), (64, 64, 64), (128, 64, 32), (64, 128, 256)]
MATMUL_ODD = [(1, 1, 1), (1, 7, 1), (7, 1, 5), (3, 5, 7), (13, 17, 19), (31, 37, 41), (97, 61, 89),
              (1, 64, 67), (67, 64, 1), (0, 5, 3), (4, 5, 0), (4, 0, 3)]


def to_f64(x) -> np.ndarray | None:
    """Any array (numpy, torch CPU/CUDA, cupy) as a float64 numpy array; None stays None."""
    return None if x is None else f64(x)


def activation_ref(x: np.ndarray, name: str | None) -> np.ndarray:
    if name is None:
        return x
    if name == "relu":
        return np.maximum(x, 0.0)
    # Forms without cancellation (1 + erf(z) = erfc(-z); 1 + tanh(u) = 2 / (1 + exp(-2u))), so
    # the float64 reference is accurate to a few float64 ulps relative to the output.
    with np.errstate(over="ignore", invalid="ignore"):
        if name == "gelu":
            erfc = np.vectorize(math.erfc, otypes=[np.float64])
            return 0.5 * x * erfc(-x / math.sqrt(2.0))
        if name == "gelu_tanh":
            return x / (1.0 + np.exp(-2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
        if name == "silu":
            return x / (1.0 + np.exp(-x))
    raise ValueError(name)


def activation_grid(dtype=np.float32, mantissas: int = 1024, lo: int = -10, hi: int = 5):
    """A dense sweep of the epilogue activations' inputs as a K = 1 matmul: ``a`` (M, 1) holds
    ``mantissas`` values evenly spaced in [1, 2), ``b`` (1, N) holds +-2^e for lo <= e < hi, so
    ``C = a @ b`` is exact and covers +-[2^lo, 2^hi) at ``mantissas`` points per octave, plus
    the columns 0 and -0 (a 2-D C, so a tiled kernel launches few programs)."""
    a = (1.0 + np.arange(mantissas) / mantissas).astype(dtype).reshape(-1, 1)
    e = np.arange(lo, hi, dtype=np.float64)
    b = np.concatenate([np.exp2(e), -np.exp2(e), [0.0, -0.0]]).astype(dtype).reshape(1, -1)
    return a, b


def activation_errors(x, y, name: str, floor: float = 1e-3) -> tuple[float, float]:
    """(largest of |y - y_ref| / max(|y_ref|, floor), largest error in ulps of x's precision
    where |y_ref| > floor) of ``y = act(x)`` against float64 on the same x: relative where
    |y| > floor, absolute (scaled by floor) below it."""
    x = to_f64(x)
    ref = activation_ref(x, name)
    got = to_f64(y).reshape(ref.shape)
    err = np.abs(got - ref)
    fin = np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{name}: NaN pattern differs"
    rel = float(np.max(err[fin] / np.maximum(np.abs(ref[fin]), floor), initial=0.0))
    big = fin & (np.abs(ref) > floor)
    dtype = np.float32 if np.asarray(y).dtype == np.float32 or "float32" in str(y.dtype) else np.float64
    ulp = np.spacing(np.abs(ref[big]).astype(dtype)).astype(np.float64)
    return rel, float(np.max(err[big] / ulp, initial=0.0))


def matmul_ref(a, b, bias=None, activation=None) -> np.ndarray:
    """float64 reference of act(a @ b + bias) with numpy broadcasting of batch dims."""
    c = np.matmul(to_f64(a), to_f64(b))
    if bias is not None:
        c = c + to_f64(bias)
    return activation_ref(c, activation)


def matmul_bound(k: int, acc: str, out: str) -> float:
    """Normwise bound for |C - C_ref| / (|A| |B| + |bias|): sqrt(K) * u_acc plus output rounding."""
    return 4.0 * math.sqrt(max(k, 1)) * UNIT_ROUNDOFF[acc] + 2.0 * UNIT_ROUNDOFF[out]


def assert_matmul_close(out, a, b, bias=None, activation=None, *, acc: str | None = None) -> None:
    """Check act(a @ b + bias) elementwise against float64, scaled by (|A| |B| + |bias|)."""
    out_dtype = dtype_name(out)
    acc = acc or ("float64" if out_dtype == "float64" else "float32")
    ref = matmul_ref(a, b, bias, activation)
    got = to_f64(out)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    scale = np.matmul(np.abs(to_f64(a)), np.abs(to_f64(b)))
    if bias is not None:
        scale = scale + np.abs(to_f64(bias))
    # Activations here are at most ~1.13-Lipschitz; the max(scale, 1) floor covers their own rounding.
    scale = np.maximum(scale, 1.0)
    finite = np.isfinite(ref)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN pattern differs from the reference"
    assert np.array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]), "Inf differs"
    k = to_f64(a).shape[-1]
    err = float(np.max(np.abs(got[finite] - ref[finite]) / scale[finite], initial=0.0))
    bound = 1.2 * matmul_bound(k, acc, out_dtype)
    assert err <= bound, f"normwise error {err:.3e} > bound {bound:.3e} (K={k}, acc={acc}, out={out_dtype})"


# -- conv2d --------------------------------------------------------------------------------------
# ResNet-50 (torchvision v1.5: stride on the 3x3) convolutions: (C_in, C_out, H=W, kernel, stride,
# padding), each distinct layer once.
CONV_RESNET50 = [
    (3, 64, 224, 7, 2, 3),
    (64, 64, 56, 1, 1, 0), (64, 64, 56, 3, 1, 1), (64, 256, 56, 1, 1, 0), (256, 64, 56, 1, 1, 0),
    (256, 128, 56, 1, 1, 0), (128, 128, 56, 3, 2, 1), (128, 512, 28, 1, 1, 0),
    (256, 512, 56, 1, 2, 0), (512, 128, 28, 1, 1, 0), (128, 128, 28, 3, 1, 1),
    (512, 256, 28, 1, 1, 0), (256, 256, 28, 3, 2, 1), (256, 1024, 14, 1, 1, 0),
    (512, 1024, 28, 1, 2, 0), (1024, 256, 14, 1, 1, 0), (256, 256, 14, 3, 1, 1),
    (1024, 512, 14, 1, 1, 0), (512, 512, 14, 3, 2, 1), (512, 2048, 7, 1, 1, 0),
    (1024, 2048, 14, 1, 2, 0), (2048, 512, 7, 1, 1, 0), (512, 512, 7, 3, 1, 1),
]
# MobileNetV2 depthwise 3x3 convolutions: (C, H=W, stride).
CONV_MOBILENET_DW = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1),
                     (192, 28, 2), (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]


def conv2d_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, activation=None,
               layout="NCHW") -> np.ndarray:
    """float64 torch F.conv2d on the CPU; x is NCHW, or NHWC when layout == "NHWC" (result too).
    `padding` may be an int, a pair, "same"/"valid", or (top, bottom, left, right)."""
    import torch
    import torch.nn.functional as F

    if _empty_conv(x, w, layout):  # torch refuses K = 0 and C = 0: the definition, directly
        shape = _conv_out_shape(x, w, stride, padding, dilation, layout)
        y = np.zeros(shape)
        if bias is not None and y.size:
            y = y + (to_f64(bias) if layout == "NHWC" else to_f64(bias)[:, None, None])
        return activation_ref(y, activation)
    xt = torch.from_numpy(np.ascontiguousarray(to_f64(x)))
    if layout == "NHWC":
        xt = xt.permute(0, 3, 1, 2)
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom, left, right = padding
        xt = F.pad(xt, (left, right, top, bottom))
        padding = 0
    y = F.conv2d(xt, torch.from_numpy(np.ascontiguousarray(to_f64(w))),
                 None if bias is None else torch.from_numpy(to_f64(bias)),
                 stride, padding, dilation, groups)
    y = torch.from_numpy(activation_ref(y.numpy(), activation))
    if layout == "NHWC":
        y = y.permute(0, 2, 3, 1)
    return y.contiguous().numpy()


def _empty_conv(x, w, layout) -> bool:
    n, c = x.shape[0], x.shape[3] if layout == "NHWC" else x.shape[1]
    return n == 0 or c == 0 or w.shape[0] == 0 or w.shape[1] == 0


def _conv_out_shape(x, w, stride, padding, dilation, layout) -> tuple[int, ...]:
    """The output shape by the definition (padding a 4-tuple or a pair or an int)."""
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    n, h, wd = (x.shape[0], x.shape[1], x.shape[2]) if layout == "NHWC" else \
        (x.shape[0], x.shape[2], x.shape[3])
    k, r, s = w.shape[0], w.shape[2], w.shape[3]
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom, left, right = padding
    else:
        (ph, pw) = pair(padding)
        top = bottom = ph
        left = right = pw
    (sh, sw), (dh, dw) = pair(stride), pair(dilation)
    ho = (h + top + bottom - dh * (r - 1) - 1) // sh + 1
    wo = (wd + left + right - dw * (s - 1) - 1) // sw + 1
    return (n, ho, wo, k) if layout == "NHWC" else (n, k, ho, wo)


def assert_conv2d_close(out, x, w, bias=None, *, acc: str | None = None, **conv) -> None:
    """Check a conv2d output elementwise against float64, scaled by conv(|x|, |w|) + |bias| (the
    convolution's own condition), with the sqrt(C/groups * R * S) * u bound of a reduction."""
    out_dtype = dtype_name(out)
    acc = acc or ("float64" if out_dtype == "float64" else "float32")
    activation = conv.pop("activation", None)
    ref = conv2d_ref(x, w, bias, activation=activation, **conv)
    got = to_f64(out)
    assert got.shape == ref.shape, f"shape {got.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    scale = conv2d_ref(np.abs(to_f64(x)), np.abs(to_f64(w)),
                       None if bias is None else np.abs(to_f64(bias)), **conv)
    scale = np.maximum(scale, 1.0)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN pattern differs from the reference"
    finite = np.isfinite(ref)
    assert np.array_equal(got[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]), "Inf differs"
    w_shape = to_f64(w).shape
    k = w_shape[1] * w_shape[2] * w_shape[3]
    err = float(np.max(np.abs(got[finite] - ref[finite]) / scale[finite], initial=0.0))
    bound = 1.2 * matmul_bound(k, acc, out_dtype)
    assert err <= bound, f"normwise error {err:.3e} > bound {bound:.3e} (K={k}, acc={acc}, out={out_dtype})"


def conv2d_grads_ref(x, w, gy, *, stride, padding, dilation, groups, layout="NCHW"):
    """float64 (dx, dw) of conv2d by torch autograd, and the same for |x|, |w|, |gy|: the scale
    of the normwise check (the backward ops are convolutions too). x and gy in `layout`; padding
    (top, bottom, left, right)."""
    import torch
    import torch.nn.functional as F

    if _empty_conv(x, w, layout):  # nothing to reduce over, or nothing to reduce into: zeros
        zeros = (np.zeros(x.shape), np.zeros(w.shape))
        return [zeros, zeros]
    top, bottom, left, right = padding
    nchw = lambda t: t.permute(0, 3, 1, 2) if layout == "NHWC" else t
    out = []
    for f in (lambda a: a, np.abs):
        xd = torch.from_numpy(np.ascontiguousarray(f(to_f64(x)))).requires_grad_()
        wd = torch.from_numpy(np.ascontiguousarray(f(to_f64(w)))).requires_grad_()
        y = F.conv2d(F.pad(nchw(xd), (left, right, top, bottom)), wd, None, stride, 0, dilation,
                     groups)
        y.backward(nchw(torch.from_numpy(np.ascontiguousarray(f(to_f64(gy))))))
        out.append((xd.grad.numpy(), wd.grad.numpy()))
    return out


def assert_grad_close(got, ref, scale, k: int, what: str = "") -> None:
    """A conv2d gradient against its float64 reference, normwise as the forward: the error over
    the |.|-scale is within the sqrt(K) bound of a K-term reduction (K: the gradient's own
    reduction length: (C_out / groups) * R * S for dx, N * H_out * W_out for dw)."""
    out_dtype = dtype_name(got)
    acc = "float64" if out_dtype == "float64" else "float32"
    got64 = to_f64(got)
    assert got64.shape == ref.shape, f"{what}: shape {got64.shape} != reference {ref.shape}"
    if ref.size == 0:
        return
    assert np.array_equal(np.isnan(got64), np.isnan(ref)), f"{what}: NaN pattern differs"
    finite = np.isfinite(ref)
    assert np.array_equal(got64[~finite & ~np.isnan(ref)], ref[~finite & ~np.isnan(ref)]), \
        f"{what}: Inf differs"
    err = float(np.max(np.abs(got64[finite] - ref[finite]) / np.maximum(scale[finite], 1.0),
                       initial=0.0))
    bound = 1.2 * matmul_bound(k, acc, out_dtype)
    assert err <= bound, f"{what}: normwise error {err:.3e} > bound {bound:.3e} (K={k}, {out_dtype})"


def preprocess_args(n, c, boxes, size, flips=None, rot90=None, angles=None, fill=None, mean=None,
                    scale=None, perm=None) -> tuple:
    """The geometry and normalisation arguments of a preprocess kernel's ``preprocess_forward``
    (after the images): per-image values broadcast to ``n`` images, identity defaults (no flip, no
    rotation, mean 0, scale 1, channels in order) for what is not given."""
    bc = lambda v, d, dt: np.ascontiguousarray(np.broadcast_to(
        np.asarray(d if v is None else v, dt), (n,) + np.shape(d)))
    return (np.asarray(boxes, np.float64).reshape(n, 4), bc(flips, (False, False), bool),
            bc(rot90, 0, np.int64), bc(angles, 0.0, np.float64), bc(fill, 0.0, np.float32), size,
            np.zeros(c, np.float32) if mean is None else np.asarray(mean, np.float32),
            np.ones(c, np.float32) if scale is None else np.asarray(scale, np.float32),
            np.arange(c) if perm is None else np.asarray(perm))
