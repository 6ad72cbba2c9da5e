"""GPU check of the fused preprocess (called by bench/gpu_check.py): correctness of the Triton and
CuPy kernels against the Numba kernel, then images/s against torch (F.interpolate + normalise).

Correctness (within 1 uint8 level on uint8 output, float outputs to their rounding): random uint8
images; 2-tap and antialias bilinear, nearest, bicubic; crops (fractional), flips, rot90,
rotation with fill, a ragged list of strided views, float32 input, every output dtype, NCHW/NHWC.
Speed: 32 x 480x640x3 uint8 -> 224x224, normalised, float32 NCHW, with and without antialias.
dry_run: Triton in the interpreter on tiny images, CuPy skipped, one timing of each.
"""

from __future__ import annotations

import numpy as np
from reference import preprocess_args  # tests/ is on sys.path (gpu_check.py)


def _as_float(out, od):
    """numpy float64 of a kernel output (torch / cupy / numba bits)."""
    if hasattr(out, "get"):
        out = out.get()
    elif hasattr(out, "cpu"):
        out = out.cpu().float().numpy() if od in ("float16", "bfloat16") else out.cpu().numpy()
    elif od == "bfloat16":
        out = (out.astype(np.uint32) << 16).view(np.float32)
    elif od == "float16" and out.dtype == np.uint16:
        out = out.view(np.float16)
    return np.asarray(out, np.float64)


_TOL = {"uint8": 1.0, "float32": 2e-3, "float16": 2e-3, "bfloat16": 1.6e-2}


def _cases(rng, small: bool):
    """(name, numpy images (batch or list), args tuple, interp, aa, out dtypes, layout)."""
    h, w = (37, 53) if small else (240, 320)
    size = (17, 29) if small else (112, 96)
    imgs = rng.integers(0, 256, (3, h, w, 3), dtype=np.uint8)
    plain = preprocess_args(3, 3, [(0, 0, h, w)] * 3, size)
    geo = preprocess_args(3, 3, [(0, 0, h, w), (h * 0.2 + 0.5, w * 0.1, h * 0.7, w * 0.8), (1, 2, h - 3, w - 2)],
                size, flips=[(False, False), (True, False), (True, True)], rot90=[0, 1, 3],
                mean=[123.7, 116.3, 103.5], scale=[1 / 58.4, 1 / 57.1, 1 / 57.4], perm=[2, 1, 0])
    rot = preprocess_args(3, 3, [(0, 0, h, w)] * 3, size, angles=[30.0, 0.0, -100.0], fill=[0, 0, 128.0],
                rot90=[0, 0, 1])
    big = rng.integers(0, 256, (h + 20, w + 30, 3), dtype=np.uint8)
    views = [big[3:h, 5:w], big[::2, ::-3], big.transpose(1, 0, 2)[:w // 2]]
    rag = preprocess_args(3, 3, [(0, 0, *v.shape[:2]) for v in views], size, rot90=[0, 2, 1],
                angles=[0, 0, 12.0])
    f32 = (rng.standard_normal((2, h, w, 4)) * 60 + 120).astype(np.float32)
    yield "plain", imgs, plain, ("bilinear", True), ("float32", "uint8", "float16", "bfloat16"), "NCHW"
    yield "plain 2-tap", imgs, plain, ("bilinear", False), ("uint8",), "NHWC"
    yield "nearest", imgs, plain, ("nearest", False), ("uint8",), "NCHW"
    yield "bicubic aa", imgs, plain, ("bicubic", True), ("uint8",), "NCHW"
    for aa in (True, False):
        yield f"crop/flip/rot90/norm aa={aa}", imgs, geo, ("bilinear", aa), ("float32",), "NHWC"
    yield "rotation", imgs, rot, ("bilinear", True), ("uint8", "float32"), "NCHW"
    yield "rotation nearest", imgs, rot, ("nearest", False), ("uint8",), "NHWC"
    yield "ragged views", views, rag, ("bilinear", True), ("uint8",), "NCHW"
    yield "float32 C=4", f32, preprocess_args(2, 4, [(0, 0, h, w)] * 2, size), ("bilinear", False), \
        ("float32",), "NCHW"
    s = min(h, w)
    sq = np.ascontiguousarray(imgs[:, :s, :s])
    ex = preprocess_args(3, 3, [(0, 0, s, s)] * 3, (s, s), flips=[(True, False), (False, True), (True, True)],
               rot90=[1, 2, 3])
    yield "geometry exact (identity size)", sq, ex, ("bilinear", True), ("uint8",), "NHWC"


def run(results: dict, dev: str, dry_run: bool, timer, budget_left) -> None:
    import torch

    from kernelkit import devices
    from kernelkit.kernels.numba import preprocess as nb
    from kernelkit.kernels.triton import preprocess as tp

    checks = results.setdefault("checks", [])
    rows = results.setdefault("bench_preprocess", [])
    cupy_ok = False
    if not dry_run:
        try:
            cupy_ok = devices.cupy_available()
        except Exception:  # noqa: BLE001
            cupy_ok = False
    if cupy_ok:
        import cupy

        from kernelkit.kernels.cupy import preprocess as cpp

    def record(name, fn):
        try:
            err = fn()
            checks.append({"check": name, "ok": err is None, "error": err})
        except Exception as exc:  # noqa: BLE001 - a failed check is a result
            checks.append({"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:400]})

    def compare(got, ref, od):
        g, r = _as_float(got, od), _as_float(ref, od)
        if g.shape != r.shape:
            return f"shape {g.shape} != {r.shape}"
        # uint8 / float32: absolute; float16 / bfloat16: relative (one rounding of the output)
        lim = _TOL[od] * (np.maximum(np.abs(r), 1.0) if od in ("float16", "bfloat16") else 1.0)
        d = np.abs(g - r) / lim if r.size else np.zeros(1)
        return None if float(d.max()) <= 1.0 else f"max diff {float(d.max()):.3g} x tolerance"

    rng = np.random.default_rng(0)
    for name, imgs, a, (interp, aa), ods, layout in _cases(rng, dry_run):
        if budget_left() < 30:
            checks.append({"check": "preprocess checks", "ok": False, "error": "out of budget"})
            break
        is_list = isinstance(imgs, list)
        # a list: the same strided views on the device (no copy in the kernel)
        t_imgs = _views_like(imgs, dev) if is_list else torch.from_numpy(imgs).to(dev)
        for od in ods:
            ref = nb.preprocess_forward(imgs, *a, interp, aa, od, layout)
            record(f"preprocess triton {name} {od} {layout}",
                   lambda: compare(tp.preprocess_forward(t_imgs, *a, interp, aa, od, layout), ref, od))
            if cupy_ok and od != "bfloat16":
                c_imgs = [cupy.asarray(v) for v in imgs] if is_list else cupy.asarray(imgs)
                record(f"preprocess cupy {name} {od} {layout}",
                       lambda: compare(cpp.preprocess_forward(c_imgs, *a, interp, aa, od, layout),
                                       ref, od))

    # -- speed: 32 x 480x640x3 uint8 -> 224, normalised, float32 NCHW ---------------------------
    n, h, w = (2, 48, 64) if dry_run else (32, 480, 640)
    size = (22, 22) if dry_run else (224, 224)
    imgs = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, device=dev)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    scale = 1 / np.array([58.395, 57.12, 57.375], np.float32)
    a = preprocess_args(n, 3, [(0, 0, h, w)] * n, size, mean=mean, scale=scale)
    mean_t = torch.as_tensor(mean, device=dev)[:, None, None]
    scale_t = torch.as_tensor(scale, device=dev)[:, None, None]
    c_imgs = cupy.asarray(imgs.cpu().numpy()) if cupy_ok else None
    for aa in (False, True):
        if budget_left() < 15:
            break
        row = {"shape": [n, h, w, 3], "out": list(size), "antialias": aa}

        def torch_ref():
            x = imgs.permute(0, 3, 1, 2).float()
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                                align_corners=False, antialias=aa)
            return (x - mean_t) * scale_t

        def safe(key, fn):
            try:
                s = timer(fn)
                row[f"{key}_s"] = s
                row[f"{key}_img_per_s"] = n / s
            except Exception as exc:  # noqa: BLE001
                row[f"{key}_error"] = f"{type(exc).__name__}: {exc}"[:200]

        safe("torch", torch_ref)
        safe("triton", lambda: tp.preprocess_forward(imgs, *a, "bilinear", aa, "float32", "NCHW"))
        if cupy_ok:
            safe("cupy", lambda: cpp.preprocess_forward(c_imgs, *a, "bilinear", aa, "float32",
                                                        "NCHW"))
        # agreement with torch on this shape (same maths: torch is the vendor baseline)
        record(f"preprocess triton vs torch 480x640->224 aa={aa}", lambda: compare(
            tp.preprocess_forward(imgs, *a, "bilinear", aa, "float32", "NCHW"),
            torch_ref().cpu().numpy(), "float32") if not dry_run else None)
        for key in ("triton", "cupy"):
            if row.get(f"{key}_s") and row.get("torch_s"):
                row[f"{key}_vs_torch"] = row["torch_s"] / row[f"{key}_s"]
        rows.append(row)


def _views_like(views, dev):
    """Torch views on ``dev`` with the offsets and strides of numpy views of one base array."""
    import torch

    base = views[0].base
    while base is not None and base.base is not None:
        base = base.base
    if base is None:
        return [torch.from_numpy(np.ascontiguousarray(v)).to(dev) for v in views]
    tb = torch.from_numpy(np.ascontiguousarray(base)).reshape(-1).to(dev)
    item = base.itemsize
    addr0 = base.__array_interface__["data"][0]
    out = []
    for v in views:
        off = (v.__array_interface__["data"][0] - addr0) // item
        if all(st >= 0 for st in v.strides):
            out.append(torch.as_strided(tb, v.shape, [st // item for st in v.strides], off))
        else:  # torch has no negative strides
            out.append(torch.from_numpy(np.ascontiguousarray(v)).to(dev))
    return out
