"""Image preprocessing on the CPU: one fused pass vs the chains people use today.

The batch: 32 uint8 480x640x3 images -> 224x224, ImageNet-normalised, float32 NCHW, with and
without antialias; and a ragged batch of 32 images of mixed sizes. Rows: OpenCV as its users
batch images for a network (`cv2.dnn.blobFromImagesWithParams`: resize, per-channel mean and
scale, NCHW float32, in OpenCV's C++ with its own threads; for antialias, `cv2.resize` INTER_AREA
per image, then the same blob call), PIL per image (antialiased resize), torch's uint8
channels_last `interpolate` + normalise, numba-cpu (forced through the ops layer), kernelkit
(dispatched), and a memory copy on every thread moving as many bytes (read + written) as the op:
the roofline.
Images/s and effective GB/s (bytes read + bytes written) go in extra_info.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import THREADS, run_rounds
from PIL import Image

import kernelkit

N, SIZE = 32, (224, 224)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
ROWS = ["opencv", "pil", "torch-interpolate", "numba-cpu", "kernelkit", "memcpy"]


def _batch(ragged: bool):
    rng = np.random.default_rng(0)
    if not ragged:
        return rng.integers(0, 256, (N, 480, 640, 3), dtype=np.uint8)
    sizes = [(int(rng.integers(200, 700)), int(rng.integers(200, 700))) for _ in range(N)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _blob_params():
    p = cv2.dnn.Image2BlobParams()
    p.size = SIZE[::-1]
    p.mean = (*MEAN.tolist(), 0.0)
    p.scalefactor = (*(1 / STD).tolist(), 1.0)
    p.swapRB = False
    p.ddepth = cv2.CV_32F  # NCHW is the default layout
    return p


def _opencv(imgs, antialias):
    cv2.setNumThreads(THREADS)
    if antialias:  # the blob call resizes with INTER_LINEAR only
        imgs = [cv2.resize(img, SIZE[::-1], interpolation=cv2.INTER_AREA) for img in imgs]
    return cv2.dnn.blobFromImagesWithParams(imgs, _blob_params())


def _parallel_copy(dst, src, pool, threads):
    """np.copyto in `threads` equal slices at once (it releases the GIL): every core copying."""
    step = -(-src.size // threads)
    list(pool.map(lambda i: np.copyto(dst[i:i + step], src[i:i + step]),
                  range(0, src.size, step)))


def _pil(imgs):
    out = np.empty((len(imgs), 3, *SIZE), np.float32)
    for i, img in enumerate(imgs):
        r = np.asarray(Image.fromarray(img).resize(SIZE[::-1], Image.BILINEAR), np.float32)
        out[i] = ((r - MEAN) * (1 / STD)).transpose(2, 0, 1)
    return out


def _torch(imgs, antialias):
    mean, scale = torch.from_numpy(MEAN)[:, None, None], torch.from_numpy(1 / STD)[:, None, None]
    if isinstance(imgs, np.ndarray):
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2)  # uint8, channels_last memory
        r = F.interpolate(x, size=SIZE, mode="bilinear", antialias=antialias, align_corners=False)
        return (r.float() - mean) * scale
    outs = [F.interpolate(torch.from_numpy(im).permute(2, 0, 1)[None], size=SIZE,
                          mode="bilinear", antialias=antialias, align_corners=False)[0]
            for im in imgs]
    return (torch.stack(outs).float() - mean) * scale


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("antialias", [False, True], ids=["2tap", "antialias"])
@pytest.mark.parametrize("ragged", [False, True], ids=["32x480x640", "ragged32"])
def test_preprocess(benchmark, ragged, antialias, row):
    imgs = _batch(ragged)
    seq = imgs if ragged else list(imgs)
    kw = dict(size=SIZE, mean=MEAN, std=STD, antialias=antialias)
    if row == "opencv":
        fn = lambda: _opencv(seq, antialias)
    elif row == "pil":
        if not antialias:
            pytest.skip("PIL's BILINEAR resize is always antialiased")
        fn = lambda: _pil(seq)
    elif row == "torch-interpolate":
        fn = lambda: _torch(imgs, antialias)
    elif row == "numba-cpu":
        with kernelkit.use(backend="numba"):
            kernelkit.preprocess(imgs, **kw)
            fn = lambda: _forced(imgs, kw)
    elif row == "kernelkit":
        kernelkit.preprocess(imgs, **kw)  # tune this bucket first
        fn = lambda: kernelkit.preprocess(imgs, **kw)
    else:  # a copy that reads and writes (in + out) / 2 bytes each: the op's traffic
        half = (sum(im.size for im in seq) + N * 3 * SIZE[0] * SIZE[1] * 4) // 2
        src, dst = np.ones(half, np.uint8), np.empty(half, np.uint8)
        pool = ThreadPoolExecutor(THREADS)
        fn = lambda: _parallel_copy(dst, src, pool, THREADS)
    fn()
    t0 = time.perf_counter()
    fn()
    est = time.perf_counter() - t0
    in_bytes = sum(im.size for im in seq)
    moved = in_bytes + N * 3 * SIZE[0] * SIZE[1] * 4
    benchmark.group = f"preprocess {'ragged32' if ragged else '32x480x640'} " \
                      f"{'antialias' if antialias else '2-tap'}"
    benchmark.extra_info.update(row=row, bytes=moved)
    run_rounds(benchmark, fn, est, budget_s=2.0)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update(images_per_s=N / med, gb_per_s=moved / med / 1e9)


def _forced(imgs, kw):
    with kernelkit.use(backend="numba"):
        return kernelkit.preprocess(imgs, **kw)
