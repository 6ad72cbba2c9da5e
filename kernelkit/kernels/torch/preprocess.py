"""The vendor preprocessing: torch ops per image (crop, flip, rot90, rotate, interpolate,
normalise), the chain people write today. Same contract as the hand-written kernels."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernelkit.kernels.config import VendorConfig
from kernelkit.kernels.config import vendor_space as space  # noqa: F401 - the module surface
from kernelkit.kernels.taps import NEAREST_ROUND

CONFIG = VendorConfig

_OUT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
        "uint8": torch.uint8}


def _rotate(img: torch.Tensor, angle: float, fill: float, out_hw: tuple[int, int],
            nearest: bool = False) -> torch.Tensor:
    """Rotate a (1, C, H, W) float image counter-clockwise about its centre and resize it to
    `out_hw` in one bilinear (or `nearest`) sampling, `fill` outside (torchvision's
    rotate(expand=False) maths, half-pixel centres). One sampling, not a rotation and then a
    resize: the kernels compose the two into one map (no antialias, as documented), and the
    chain rotating at the crop's size and then antialiasing differed from them by up to 130
    levels on a noisy image. Nearest samples in float64, as the kernels compute the map: a
    float32 grid rounds positions within 1e-5 px of a pixel edge to the other pixel."""
    _, _, h, w = img.shape
    a = math.radians(angle)
    cos, sin = math.cos(a), math.sin(a)
    dtype = torch.float64 if nearest else img.dtype
    # output (x, y) in normalised [-1, 1] coords -> input coords; y axis points down.
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]],
                         dtype=dtype, device=img.device)
    grid = F.affine_grid(theta[None], [1, img.shape[1], *out_hw], align_corners=False)
    if nearest:
        # the pixel whose centre is nearest, by the kernels' rule (taps.NEAREST_ROUND: a tie
        # right and down; grid_sample's nearest rounds ties to even), from pixel-centre coords
        col = torch.floor((grid[0, ..., 0] + 1) * (w / 2) - 0.5 + NEAREST_ROUND).long()
        row = torch.floor((grid[0, ..., 1] + 1) * (h / 2) - 0.5 + NEAREST_ROUND).long()
        inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        picked = img[0][:, row.clamp(0, h - 1), col.clamp(0, w - 1)]
        fill_value = torch.tensor(fill, dtype=img.dtype, device=img.device)  # (not the default's)
        return torch.where(inside, picked, fill_value)[None]
    ones = torch.ones_like(img[:, :1])
    out = F.grid_sample(torch.cat([img, ones], 1), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    mask = out[:, -1:]
    return out[:, :-1] + (1.0 - mask) * fill


def _resize(img: torch.Tensor, size: tuple[int, int], interpolation: str, antialias: bool
            ) -> torch.Tensor:
    """F.interpolate of a (1, C, H, W) float image to `size`. torch's antialiased resize to
    one column (out_w == 1, out_h != 1; torch 2.13) weighs every output row with the first
    row's window, so that case is resized transposed, to one row, which torch gets right."""
    if interpolation == "nearest":
        return F.interpolate(img, size=size, mode="nearest-exact")
    kw = {"mode": interpolation, "align_corners": False, "antialias": antialias}
    if antialias and size[1] == 1 and size[0] != 1:
        return F.interpolate(img.transpose(-2, -1), size=size[::-1], **kw).transpose(-2, -1)
    return F.interpolate(img, size=size, **kw)


@torch.no_grad()
def preprocess_forward(images, boxes, flips, rot90, angles, fill, size, mean, scale,
                       channel_perm, interpolation, antialias, out_dtype, layout,
                       config: VendorConfig | None = None) -> torch.Tensor:
    """images: (N, H, W, C) tensor or list of (H, W, C) tensors, uint8 or float32; the rest is a
    ``kernels.taps.PreprocessSpec``'s fields. Returns (N, C, h, w) or (N, h, w, C), which never
    requires grad: preprocess has no gradient on any backend (an input that requires grad
    otherwise gave a result with a grad_fn here and none from the other kernels)."""
    n = len(images)
    dev = images[0].device if n else torch.device("cpu")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=dev)[:, None, None]
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=dev)[:, None, None]
    perm = torch.as_tensor(channel_perm, dtype=torch.long, device=dev)
    outs = []
    for i in range(n):
        top, left, hh, ww = (int(v) for v in boxes[i])
        img = images[i][top:top + hh, left:left + ww].permute(2, 0, 1)  # (C, h, w)
        if flips[i][0]:
            img = img.flip(-1)
        if flips[i][1]:
            img = img.flip(-2)
        if rot90[i]:
            img = torch.rot90(img, int(rot90[i]), dims=(-2, -1))
        img = img[None].float()
        if angles[i]:
            img = _rotate(img, float(angles[i]), float(fill[i]), tuple(size),
                          interpolation == "nearest")
        elif tuple(img.shape[-2:]) != tuple(size):
            img = _resize(img, tuple(size), interpolation, antialias)
        outs.append((img[0][perm] - mean_t) * scale_t)
    out = torch.stack(outs) if outs else torch.empty((0, len(mean), *size), device=dev)
    if out_dtype == "uint8":
        out = out.round().clamp(0, 255)
    out = out.to(_OUT[out_dtype])
    return out.permute(0, 2, 3, 1).contiguous() if layout == "NHWC" else out.contiguous()
