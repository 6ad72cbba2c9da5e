"""Every preprocess kernel against an independent float64 crop + resize (tests/resample_ref.py).

The kernel tests compare Triton and CuPy with the Numba kernel, and all of them read the tap
tables of kernelkit.kernels.taps; a bug in the tables (say a crop that starts at floor(lo + 0.5)
instead of floor(lo)) passed them all. The reference here is built from the definitions, pixel by
pixel, with fractional crop edges, down- and upscaling and every 2-D filter.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import preprocess_args
from resample_ref import crop_resize

RNG = np.random.default_rng(15)
IMG = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
CASES = [  # (box (top, left, height, width), (out_h, out_w))
    ((2.7, 3.2, 25.3, 40.9), (9, 11)),      # fractional crop, downscale x2.8 / x3.7
    ((0.4, 10.6, 30.2, 20.5), (31, 23)),    # fractional crop, about 1:1
    ((5.5, 1.25, 10.5, 12.75), (24, 30)),   # fractional crop, upscale
    ((0.0, 0.0, 37.0, 53.0), (16, 20)),     # whole image
]
FILTERS = [("bilinear", True), ("bilinear", False), ("nearest", False)]
# float32 accumulation of at most a few dozen taps of values <= 255 (and float32 weights)
ATOL = 2e-3


def _numba(img, box, size, interp, aa):
    pytest.importorskip("numba")
    from kernelkit.kernels.numba import preprocess as npp

    return npp.preprocess_forward(img[None], *preprocess_args(1, 3, [box], size), interp, aa,
                                  "float32", "NHWC")[0]


def _triton(img, box, size, interp, aa):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    from triton_runtime import DEVICE

    from kernelkit.kernels.triton import preprocess as tp

    out = tp.preprocess_forward(torch.from_numpy(img[None]).to(DEVICE),
                                *preprocess_args(1, 3, [box], size), interp, aa, "float32",
                                "NHWC", None)
    return out[0].cpu().numpy()


def _cupy(img, box, size, interp, aa):
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except Exception:  # noqa: BLE001 - no driver: no device
        pytest.skip("no CUDA device")
    from kernelkit.kernels.cupy import preprocess as cpp

    out = cpp.preprocess_forward(cp.asarray(img[None]), *preprocess_args(1, 3, [box], size),
                                 interp, aa, "float32", "NHWC", None)
    return cp.asnumpy(out)[0]


@pytest.mark.parametrize("interp,aa", FILTERS)
@pytest.mark.parametrize("box,size", CASES)
@pytest.mark.parametrize("backend", [_numba, _triton, _cupy], ids=["numba", "triton", "cupy"])
def test_crop_resize_matches_independent_reference(backend, box, size, interp, aa):
    got = backend(IMG, box, size, interp, aa)
    ref = crop_resize(IMG, box, size, interp, aa)
    assert got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    assert err.max() <= ATOL, f"max error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"


def test_reference_itself():
    """The reference is exact where the answer is known: identity, integer crops, constant."""
    assert np.array_equal(crop_resize(IMG, (0, 0, 37, 53), (37, 53)), IMG.astype(np.float64))
    assert np.array_equal(crop_resize(IMG, (3, 5, 10, 12), (10, 12), "bilinear", False),
                          IMG[3:13, 5:17].astype(np.float64))
    const = np.full((9, 9, 1), 7, np.uint8)
    np.testing.assert_allclose(crop_resize(const, (0.3, 1.7, 6.2, 5.1), (4, 3)), 7.0, rtol=1e-12)
    # 2x downscale with antialias is a radius-2 triangle (PIL), not a 2-pixel mean
    x = np.arange(8, dtype=np.float64).reshape(1, 8, 1)
    w = np.array([0.25, 0.75, 0.75, 0.25]) / 2.0  # pixels 1..4 about centre 3.0, radius 2
    assert crop_resize(x, (0, 0, 1, 8), (1, 4))[0, 1, 0] == pytest.approx(float(w @ np.arange(1, 5)))
