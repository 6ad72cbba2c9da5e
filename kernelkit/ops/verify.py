"""How the tuner checks a candidate's output before it may win: against float64, normwise.

|C - C_ref| <= c sqrt(k) u_acc (|A||B| + |bias|) + output rounding, elementwise, where k is the
reduction length and the scale (|A||B|-like) is the op's own condition. The constants are
generous: this catches broken kernels, not last-bit differences.
"""

from __future__ import annotations

import math

import numpy as np

from .. import arrays

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "tf32": 2.0**-11,
                 "float16": 2.0**-11, "bfloat16": 2.0**-8}


def f64(x) -> np.ndarray:
    """Any array (numpy, torch on any device, cupy) as a float64 numpy array on the host."""
    if arrays.array_lib(x) == "torch":
        import torch

        return x.detach().to("cpu", dtype=torch.float64).numpy()
    return np.asarray(arrays.as_numpy(x), dtype=np.float64)


# The magnitude from which a value rounds to infinity in each output dtype (its largest finite
# value plus half an ulp there): a float64 reference past it is an infinity of that dtype.
LARGEST = {"float16": 65504.0, "bfloat16": (2 - 2.0**-7) * 2.0**127,
           "float32": (2 - 2.0**-23) * 2.0**127, "float64": math.inf}
OVERFLOW = {"float16": LARGEST["float16"] + 2.0**4, "bfloat16": LARGEST["bfloat16"] + 2.0**119,
            "float32": LARGEST["float32"] + 2.0**103, "float64": math.inf}


def in_range(ref: np.ndarray, got: np.ndarray, slack: np.ndarray, out_dt: str) -> np.ndarray:
    """The float64 reference `ref` as the output dtype holds it: past OVERFLOW[out_dt], the
    signed infinity the output rounds to (a float16 product whose true value is 128000 is inf in
    float16, torch's too). Within `slack` of that edge either side is right: an infinity of the
    reference's sign, or the largest finite value. Before, a legitimate overflow failed every
    candidate, torch's included ("every candidate failed ... normwise error inf")."""
    edge = OVERFLOW[out_dt]
    if not math.isfinite(edge):
        return ref
    ref = np.asarray(ref, dtype=np.float64)  # (a float32 reference: the edge is past its range)
    fin = np.isfinite(ref)
    mag = np.abs(ref)
    near = fin & (np.abs(mag - edge) <= slack)
    over = fin & (mag >= edge) & ~near
    if not (over.any() or near.any()):
        return ref
    same_inf = np.isinf(got) & (np.sign(got) == np.sign(ref))
    largest = LARGEST[out_dt]
    ref = np.where(over, np.copysign(np.inf, ref), ref)
    return np.where(near & same_inf, got, np.where(near, np.clip(ref, -largest, largest), ref))


def normwise_error(out, ref: np.ndarray, scale: np.ndarray, k: int, allow_tf32: bool) -> str | None:
    """None when `out` matches the float64 `ref` within the reduction bound, else why not."""
    got = f64(out)
    if got.shape != ref.shape:
        return f"shape {got.shape} != {ref.shape}"
    out_dt = arrays.dtype_name(out)
    acc = "tf32" if allow_tf32 and out_dt == "float32" else (
        "float64" if out_dt == "float64" else "float32")
    bound = 16 * math.sqrt(max(k, 1)) * UNIT_ROUNDOFF[acc] + 4 * UNIT_ROUNDOFF[out_dt]
    ref = in_range(ref, got, bound * np.maximum(scale, 1.0), out_dt)
    if not np.array_equal(np.isnan(got), np.isnan(ref)):
        return "NaN pattern differs from the float64 reference"
    fin = np.isfinite(ref)
    if not np.array_equal(got[~fin], ref[~fin], equal_nan=True):
        return "Inf differs from the float64 reference"
    err = float(np.max(np.abs(got[fin] - ref[fin]) / np.maximum(scale[fin], 1.0), initial=0.0))
    return None if err <= bound else f"normwise error {err:.2e} > {bound:.2e}"
