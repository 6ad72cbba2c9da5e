"""GPU check of the fused preprocess (bench/gpu_check.py): check builders for each phase.
Correctness of the Triton and CuPy kernels against the Numba kernel, then images/s against torch
(F.interpolate + normalise): kernel-only (tap tables built and uploaded once, as a pipeline
that reuses its geometry would) and end to end (the launcher: tables built on the host and
uploaded with every call, and the uint8 batch copied in from pinned host memory).

Correctness (within 1 uint8 level on uint8 output, float outputs to their rounding): random uint8
images; 2-tap and antialias bilinear, nearest, bicubic; crops (fractional), flips, rot90,
rotation with fill, a ragged list of strided views, float32 input, every output dtype, NCHW/NHWC.
Speed: 32 x 480x640x3 uint8 -> 224x224, normalised, float32 NCHW, with and without antialias.
dry_run: Triton in the interpreter on tiny images, CuPy skipped, one timing of each.
"""

from __future__ import annotations

import numpy as np
from gpu_check_runner import Check
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


def _compare(got, ref, od):
    g, r = _as_float(got, od), _as_float(ref, od)
    if g.shape != r.shape:
        return f"shape {g.shape} != {r.shape}"
    # uint8 / float32: absolute; float16 / bfloat16: relative (one rounding of the output)
    lim = _TOL[od] * (np.maximum(np.abs(r), 1.0) if od in ("float16", "bfloat16") else 1.0)
    d = np.abs(g - r) / lim if r.size else np.zeros(1)
    return None if float(d.max()) <= 1.0 else f"max diff {float(d.max()):.3g} x tolerance"


def _key(backend, imgs, a, interp, od, cfg="default"):
    if backend == "cupy":
        return (("cupy.preprocess", "module"),)
    angles = a[3]
    dtype = imgs[0].dtype if isinstance(imgs, list) else imgs.dtype
    return (("triton.preprocess", str(dtype), imgs[0].shape[-1] if isinstance(imgs, list)
             else imgs.shape[-1], od, interp == "nearest", bool(np.any(np.asarray(angles) != 0)),
             cfg),)


def _checks(env, cases, configs=None, backends=("triton", "cupy")):
    import torch

    from kernelkit.kernels.numba import preprocess as nb
    from kernelkit.kernels.triton import preprocess as tp

    out = []
    for name, imgs, a, (interp, aa), ods, layout in cases:
        is_list = isinstance(imgs, list)
        for od in ods:
            for backend in backends:
                if backend == "cupy" and (not env.cupy or od == "bfloat16"):
                    continue
                for cfg in configs or [None]:
                    def run(imgs=imgs, a=a, interp=interp, aa=aa, od=od, layout=layout,
                            backend=backend, cfg=cfg, is_list=is_list):
                        ref = nb.preprocess_forward(imgs, *a, interp, aa, od, layout)
                        if backend == "triton":
                            t_imgs = _views_like(imgs, env.dev) if is_list else \
                                torch.from_numpy(imgs).to(env.dev)
                            got = tp.preprocess_forward(t_imgs, *a, interp, aa, od, layout,
                                                        config=cfg)
                        else:
                            import cupy

                            from kernelkit.kernels.cupy import preprocess as cpp
                            c_imgs = [cupy.asarray(v) for v in imgs] if is_list else \
                                cupy.asarray(imgs)
                            got = cpp.preprocess_forward(c_imgs, *a, interp, aa, od, layout,
                                                         config=cfg)
                        return _compare(got, ref, od)
                    tag = "" if cfg is None else f" config {cfg.to_dict()}"
                    cname = "default" if cfg is None else str(cfg.to_dict())
                    out.append(Check(f"preprocess {backend} {name} {od} {layout}{tag}", run,
                                     keys=_key(backend, imgs, a, interp, od, cname),
                                     run_s=0.15, needs=backend))
    return out


def preflight(env) -> list[Check]:
    rng = np.random.default_rng(0)
    first = next(iter(_cases(rng, True)))
    return _checks(env, [(first[0] + " (preflight compile + launch)", first[1], first[2],
                          first[3], ("uint8",), first[5])], backends=("triton",))


def correctness(env) -> list[Check]:
    rng = np.random.default_rng(0)
    return _checks(env, list(_cases(rng, env.dry)))


def sweep(env) -> list[Check]:
    """Every shipped config of the Triton and CuPy kernels on the ragged list of views."""
    from kernelkit.kernels.triton import preprocess as tp

    rng = np.random.default_rng(1)
    ragged = [c for c in _cases(rng, env.dry) if c[0] == "ragged views"]
    out = _checks(env, ragged, configs=list(tp.SHIPPED_CONFIGS[1:]), backends=("triton",))
    if env.cupy and not env.dry:
        from kernelkit.kernels.cupy import preprocess as cpp

        out += _checks(env, ragged, configs=list(cpp.SHIPPED_CONFIGS[1:]), backends=("cupy",))
    return out


def bench(env) -> list[Check]:
    """32 x 480x640x3 uint8 -> 224x224, normalised, float32 NCHW, antialias off and on:
    kernel-only (tables prebuilt), end to end from pinned host memory, and torch."""
    import torch

    n, h, w = (2, 48, 64) if env.dry else (32, 480, 640)
    size = (22, 22) if env.dry else (224, 224)
    mean = np.array([123.675, 116.28, 103.53], np.float32)
    scale = 1 / np.array([58.395, 57.12, 57.375], np.float32)
    out = []
    for aa in (False, True):
        def run(aa=aa):
            from kernelkit.kernels import taps as _taps
            from kernelkit.kernels.triton import preprocess as tp

            host = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8)
            if not env.dry:
                host = host.pin_memory()
            imgs = host.to(env.dev)
            a = preprocess_args(n, 3, [(0, 0, h, w)] * n, size, mean=mean, scale=scale)
            mean_t = torch.as_tensor(mean, device=env.dev)[:, None, None]
            scale_t = torch.as_tensor(scale, device=env.dev)[:, None, None]
            row = {"shape": [n, h, w, 3], "out": list(size), "antialias": aa}

            def torch_ref():
                x = imgs.permute(0, 3, 1, 2).float()
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear",
                                                    align_corners=False, antialias=aa)
                return (x - mean_t) * scale_t

            def safe(key, fn):
                try:
                    s = env.timer(fn)
                    row[f"{key}_s"] = s
                    row[f"{key}_img_per_s"] = n / s
                except Exception as exc:  # noqa: BLE001
                    row[f"{key}_error"] = f"{type(exc).__name__}: {exc}"[:200]

            safe("torch", torch_ref)
            # Triton, kernel only: the launcher's own tables, built and uploaded once
            launch = _prebuilt_triton_launch(tp, _taps, imgs, a, size, aa)
            safe("triton_kernel", launch)
            safe("triton_call", lambda: tp.preprocess_forward(imgs, *a, "bilinear", aa,
                                                              "float32", "NCHW"))
            safe("triton_e2e_pinned", lambda: tp.preprocess_forward(
                host.to(env.dev, non_blocking=True), *a, "bilinear", aa, "float32", "NCHW"))
            if env.cupy:
                import cupy

                from kernelkit.kernels.cupy import preprocess as cpp
                c_imgs = cupy.from_dlpack(imgs)
                safe("cupy_call", lambda: cpp.preprocess_forward(c_imgs, *a, "bilinear", aa,
                                                                 "float32", "NCHW"))
            # the kernel-only output is the launcher's output
            err = _compare(launch(), tp.preprocess_forward(imgs, *a, "bilinear", aa, "float32",
                                                          "NCHW").cpu().numpy(), "float32")
            if not env.dry:
                err = err or _compare(tp.preprocess_forward(imgs, *a, "bilinear", aa,
                                                            "float32", "NCHW"),
                                      torch_ref().cpu().numpy(), "float32")
            if err:
                row["error"] = f"triton vs torch/launcher: {err}"
            for key in ("triton_kernel", "triton_call", "triton_e2e_pinned", "cupy_call"):
                if row.get(f"{key}_s") and row.get("torch_s"):
                    row[f"{key}_vs_torch"] = row["torch_s"] / row[f"{key}_s"]
            return row
        out.append(Check(f"bench preprocess {n}x{h}x{w} -> {size[0]} aa={aa}", run,
                         keys=(("triton.preprocess", "bench", aa),), run_s=1.5,
                         bench="bench_preprocess"))
    return out


def _prebuilt_triton_launch(tp, _taps, imgs, a, size, aa):
    """A launch of tp.preprocess_kernel with the tables built and uploaded once (what the
    launcher does per call, less its host work), for the kernel-only time."""
    import torch
    import triton

    base, dtype, device, cch, meta, shapes = tp._image_table(imgs)
    n = meta.shape[0]
    out_h, out_w = int(size[0]), int(size[1])
    shape, (on, oc, oy, ox) = _taps.out_layout("NCHW", cch, out_h, out_w)
    t = _taps.gpu_tables(meta, shapes, cch, *a, "bilinear", aa)
    d = {k: torch.from_numpy(v).to(device) for k, v in t.items() if isinstance(v, np.ndarray)}
    cfg = tp.PreprocessConfig.interpreter(out_h, out_w) if tp.triton_interpret() else \
        tp.PreprocessConfig.default()
    tiles_y, tiles_x = triton.cdiv(out_h, cfg.block_y), triton.cdiv(out_w, cfg.block_x)
    out = torch.empty((n, *shape), dtype=torch.float32, device=device)

    def launch():
        tp.preprocess_kernel[(n * tiles_y * tiles_x,)](
            base, d["meta"], d["yst"], d["yw"], d["xst"], d["xw"], d["aff"], d["fill"],
            d["perm"], d["mean"], d["scale"], out,
            out_h, out_w, tiles_y, tiles_x, t["ky_len"], t["kx_len"], on, oc, oy, ox,
            C=cch, CP=triton.next_power_of_2(cch), NMETA=_taps.NMETA,
            BLOCK_Y=cfg.block_y, BLOCK_X=cfg.block_x, HAS_AFFINE=t["has_affine"],
            NEAREST=bool(t["nearest"]), OUT_U8=False, INDEX_I64=False, num_warps=cfg.num_warps)
        return out
    return launch


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
