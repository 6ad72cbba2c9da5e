"""Quick side-by-side probe of the Numba fused preprocess against OpenCV and torch, one run.

    python bench/probes/numba_preprocess_probe.py [--n 32] [--hw 480 640] [--size 224 224]
        [--threads 2] [--reps 3] [--blocks 5] [--rows R --tile-w T]

The task: a batch of N uint8 HxWx3 images -> size, normalised (ImageNet mean / std), float32 NCHW.

* ``opencv``: per image ``cv2.resize(INTER_LINEAR)``, then numpy ``(x - mean) * (1/std)`` and the
  HWC -> CHW transpose into the batch (cv2.setNumThreads(threads)).
* ``torch``: ``F.interpolate`` (bilinear, align_corners=False) on a channels_last uint8 batch
  tensor, then ``((x.float() - mean) * (1/std)).contiguous()`` (torch.set_num_threads(threads)).
* ``numba``: ``preprocess_forward`` (numba.set_num_threads(threads)), which does it all in one pass.

Each row is timed in blocks of back-to-back calls, blocks alternating between rows with a pause in
between, so that a noisy neighbour hurts every row alike. Reports the median images/s and the ratio
to each baseline.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from kernelkit.kernels.numba.preprocess import PreprocessConfig, preprocess_forward

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--hw", type=int, nargs=2, default=[480, 640])
    p.add_argument("--size", type=int, nargs=2, default=[224, 224])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="calls per block")
    p.add_argument("--blocks", type=int, default=5, help="blocks per row")
    p.add_argument("--pause", type=float, default=0.2)
    p.add_argument("--rows", type=int)
    p.add_argument("--tile-w", type=int)
    args = p.parse_args()
    d = PreprocessConfig.default()
    cfg = PreprocessConfig(args.rows or d.rows, d.tile_w if args.tile_w is None else args.tile_w)
    n, (h, w), (oh, ow) = args.n, args.hw, args.size
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    scale = (1 / STD).astype(np.float32)
    tin = torch.from_numpy(imgs).permute(0, 3, 1, 2)          # channels_last uint8 (N, 3, H, W)
    tmean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    tscale = torch.from_numpy(scale).view(1, 3, 1, 1)
    geo = dict(boxes=np.tile(np.array([0, 0, h, w], np.float64), (n, 1)),
               flips=np.zeros((n, 2), bool), rot90=np.zeros(n, np.int64), angles=np.zeros(n),
               fill=np.zeros(n, np.float32))

    def opencv():
        out = np.empty((n, 3, oh, ow), np.float32)
        for i in range(n):
            r = cv2.resize(imgs[i], (ow, oh), interpolation=cv2.INTER_LINEAR)
            out[i] = ((r.astype(np.float32) - MEAN) * scale).transpose(2, 0, 1)
        return out

    def torch_fn(aa):
        def f():
            r = F.interpolate(tin, size=(oh, ow), mode="bilinear", align_corners=False,
                              antialias=aa)
            return ((r.float() - tmean) * tscale).contiguous()
        return f

    def numba_fn(aa):
        return lambda: preprocess_forward(imgs, size=(oh, ow), mean=MEAN, scale=scale,
                                          channel_perm=np.arange(3), interpolation="bilinear",
                                          antialias=aa, out_dtype="float32", layout="NCHW",
                                          config=cfg, **geo)

    rows = {"opencv (aa=False)": opencv, "torch (aa=False)": torch_fn(False),
            "numba (aa=False)": numba_fn(False), "torch (aa=True)": torch_fn(True),
            "numba (aa=True)": numba_fn(True)}
    # agreement first (float outputs; 1 uint8 level = 1/std ~ 0.017 after normalising)
    ref = rows["numba (aa=False)"]()
    for name in ("opencv (aa=False)", "torch (aa=False)"):
        diff = np.abs(np.asarray(rows[name]()) - ref).max() * STD.max()
        print(f"max |numba - {name}| = {diff:.2f} uint8 levels")
    diff = np.abs(np.asarray(rows["torch (aa=True)"]()) - rows["numba (aa=True)"]()).max()
    print(f"max |numba - torch| (aa=True) = {diff * STD.max():.2f} uint8 levels")
    times = {k: [] for k in rows}
    with threadpool_limits(args.threads):
        for _ in range(args.blocks):
            for name, fn in rows.items():
                time.sleep(args.pause)
                for _ in range(args.reps):
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
    ips = {k: n / statistics.median(v) for k, v in times.items()}
    print(f"\n{n} x {h}x{w}x3 uint8 -> {oh}x{ow} float32 NCHW normalised, {args.threads} threads,"
          f" config {cfg.to_dict()}")
    for k, v in ips.items():
        print(f"  {k:20s} {v:9.0f} images/s")
    print(f"numba / opencv (aa=False): {ips['numba (aa=False)'] / ips['opencv (aa=False)']:.2f}x")
    print(f"numba / torch  (aa=False): {ips['numba (aa=False)'] / ips['torch (aa=False)']:.2f}x")
    print(f"numba / torch  (aa=True):  {ips['numba (aa=True)'] / ips['torch (aa=True)']:.2f}x")


if __name__ == "__main__":
    main()
