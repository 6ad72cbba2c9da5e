"""The conv2d part of the GPU check: correctness of every GPU conv kernel, then speed vs cuDNN.

Called by bench/gpu_check.py as ``run(results, dev, dry_run, timer, budget_left)``:

* correctness entries ``{"check", "ok", "error"}`` go to ``results["checks"]``: Triton (and CuPy
  when it works) forward (bias + activation), backward input and backward weight, in fp16 / bf16 /
  fp32 (CuPy: fp16 / fp32), NCHW and NHWC, on a few ResNet-50 layers, MobileNet depthwise layers
  and odd shapes, against the float64 references (forward: tests/reference.py; backward: torch
  autograd in float64, normwise with the same bound);
* benchmark rows go to ``results["bench_conv2d"]``: forward, fp16, NHWC, against torch F.conv2d
  (cuDNN, channels_last) on the ResNet-50 layers at batch 8 and 32 and the MobileNetV2 depthwise
  layers; Triton's time is the best of the first configs of ``Conv2dConfig.space``.

``dev`` is "cuda" or "cpu" (dry run: Triton in the interpreter, tiny shapes, no CuPy);
``timer(fn)`` returns seconds; ``budget_left()`` says how long the benchmarks may still run.
"""

from __future__ import annotations

import math

from kernelkit.kernels import ACTIVATIONS

ACTS = (None, *ACTIVATIONS)


def _grads_f64(x, w, go, stride, padding, dilation, groups, layout):
    """float64 autograd (grad_in, grad_weight) and the same for |x|, |w|, |go|, on the CPU."""
    import torch
    import torch.nn.functional as F

    def nchw(t):
        t = t.detach().cpu().double()
        return t.permute(0, 3, 1, 2) if layout == "NHWC" else t

    top, bottom, left, right = padding
    out = []
    for f in (lambda t: t, torch.abs):
        xd = f(nchw(x)).requires_grad_()
        wd = f(w.detach().cpu().double()).requires_grad_()
        y = F.conv2d(F.pad(xd, (left, right, top, bottom)), wd, None, stride, 0, dilation, groups)
        y.backward(f(nchw(go)))
        dx = xd.grad.permute(0, 2, 3, 1) if layout == "NHWC" else xd.grad
        out.append((dx, wd.grad))
    return out


def run(results: dict, dev: str, dry_run: bool, timer, budget_left) -> None:
    import torch
    from reference import CONV_MOBILENET_DW, CONV_RESNET50, assert_conv2d_close, matmul_bound

    from kernelkit.kernels.torch import conv2d as vendor
    from kernelkit.kernels.triton import conv2d as tri

    left = budget_left
    results.setdefault("checks", [])
    results.setdefault("bench_conv2d", [])
    cpk = None
    if not dry_run:
        try:
            from kernelkit import devices
            from kernelkit.kernels.cupy import conv2d as cpk_mod

            if devices.cupy_available():
                cpk = cpk_mod
        except Exception as exc:  # noqa: BLE001 - no cupy: the Triton checks still run
            results["checks"].append({"check": "conv2d cupy import", "ok": False,
                                      "error": f"{type(exc).__name__}: {exc}"[:400]})

    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen).to(dtype).to(dev)

    def record(name, fn):
        entry = {"check": name, "ok": False, "error": ""}
        try:
            fn()
            if dev == "cuda":
                torch.cuda.synchronize()
            entry["ok"] = True
        except Exception as exc:  # noqa: BLE001 - a failing check is reported, the run goes on
            entry["error"] = f"{type(exc).__name__}: {exc}"[:400]
        results["checks"].append(entry)

    # -- kernels under test: name -> (forward, backward input, backward weight, dtypes) -----------
    def as_cupy(t):
        import cupy

        return None if t is None else cupy.from_dlpack(t.contiguous() if t.stride() == () else t)

    def from_cupy(a):
        return torch.from_dlpack(a)

    kernels = {
        "triton": (
            lambda x, w, b, conv, act, layout: tri.conv2d_forward(
                x, w, b, activation=act, layout=layout, **conv),
            lambda go, w, hw, conv, layout: tri.conv2d_backward_input(go, w, hw, layout=layout,
                                                                      **conv),
            lambda x, go, rs, conv, layout: tri.conv2d_backward_weight(x, go, rs, layout=layout,
                                                                       **conv),
            [torch.float32, torch.float16] if dry_run else
            [torch.float16, torch.bfloat16, torch.float32],
        ),
    }
    if cpk is not None:
        kernels["cupy"] = (
            lambda x, w, b, conv, act, layout: from_cupy(cpk.conv2d_forward(
                as_cupy(x), as_cupy(w), as_cupy(b), activation=act, layout=layout, **conv)),
            lambda go, w, hw, conv, layout: from_cupy(cpk.conv2d_backward_input(
                as_cupy(go), as_cupy(w), hw, layout=layout, **conv)),
            lambda x, go, rs, conv, layout: from_cupy(cpk.conv2d_backward_weight(
                as_cupy(x), as_cupy(go), rs, layout=layout, **conv)),
            [torch.float16, torch.float32],
        )

    # -- shapes: (name, (n, c, h, w, k, r, s), conv) ----------------------------------------------
    def conv_of(stride=1, pad=0, dil=1, groups=1, padding=None):
        return {"stride": (stride, stride) if isinstance(stride, int) else stride,
                "padding": padding or (pad,) * 4,
                "dilation": (dil, dil) if isinstance(dil, int) else dil, "groups": groups}

    if dry_run:
        cases = [
            ("3x3", (1, 16, 6, 6, 16, 3, 3), conv_of(pad=1)),
            ("depthwise s2", (1, 16, 7, 7, 16, 3, 3), conv_of(stride=2, pad=1, groups=16)),
            ("odd", (1, 3, 7, 6, 16, 3, 2), conv_of(stride=(2, 1), padding=(1, 0, 2, 1),
                                                    dil=(1, 2))),
        ]
    else:
        cases = []
        for i in (0, 2, 6, 13, 14, 22):
            c, k, hw, ks, st, pad = CONV_RESNET50[i]
            cases.append((f"resnet50[{i}] {c}->{k} {hw}px {ks}x{ks}/{st}",
                          (1 if i == 0 else 2, c, hw, hw, k, ks, ks), conv_of(st, pad)))
        for i in (1, 6):
            c, hw, st = CONV_MOBILENET_DW[i]
            cases.append((f"mobilenet_dw[{i}] {c} {hw}px /{st}", (2, c, hw, hw, c, 3, 3),
                          conv_of(st, 1, groups=c)))
        cases += [
            ("odd stride/dilation/asym pad", (3, 37, 13, 11, 45, 3, 3),
             conv_of(stride=(2, 1), padding=(1, 2, 0, 1), dil=(1, 2))),
            ("groups 4", (2, 32, 9, 9, 64, 3, 3), conv_of(pad=1, groups=4)),
            ("resnext groups 32", (2, 128, 14, 14, 128, 3, 3), conv_of(pad=1, groups=32)),
            ("stem-like 5x5", (2, 3, 33, 31, 32, 5, 5), conv_of(stride=2, pad=2)),
        ]

    for kname, (fwd, bwd_in, bwd_w, dtypes) in kernels.items():
        for dt in dtypes:
            dn = str(dt).removeprefix("torch.")
            # the interpreter is slow: a dry run pairs fp32 with NCHW and fp16 with NHWC
            layouts = [("NCHW", "NHWC")[dtypes.index(dt) % 2]] if dry_run else ["NCHW", "NHWC"]
            for layout in layouts:
                for ci, (cname, (n, c, h, w, k, r, s), conv) in enumerate(cases):
                    x = randn(n, c, h, w, dtype=dt)
                    if layout == "NHWC":
                        x = x.permute(0, 2, 3, 1).contiguous()
                    wt = randn(k, c // conv["groups"], r, s, dtype=dt)
                    b = randn(k, dtype=dt)
                    act = ACTS[ci % len(ACTS)]
                    tag = f"conv2d {kname} {dn} {layout} {cname}"
                    holder = {}

                    def check_fwd(x=x, wt=wt, b=b, conv=conv, act=act, layout=layout):
                        y = fwd(x, wt, b, conv, act, layout)
                        holder["y"] = y
                        assert_conv2d_close(y.cpu(), x.cpu(), wt.cpu(), b.cpu(), activation=act,
                                            layout=layout, **conv)

                    record(f"{tag} forward+bias+{act}", check_fwd)
                    y = holder.get("y")
                    if y is None:
                        continue
                    go = randn(*y.shape, dtype=dt)
                    grads = _grads_f64(x, wt, go, layout=layout, **conv)

                    def check_bwd(which, x=x, wt=wt, go=go, conv=conv, layout=layout, h=h, w=w,
                                  k=k, r=r, s=s, grads=grads, y=y):
                        (dx_ref, dw_ref), (dx_sc, dw_sc) = grads
                        if which == "input":
                            got, ref, sc = bwd_in(go, wt, (h, w), conv, layout), dx_ref, dx_sc
                            red = k // conv["groups"] * r * s
                        else:
                            got, ref, sc = bwd_w(x, go, (r, s), conv, layout), dw_ref, dw_sc
                            red = y.numel() // k
                        got64 = got.detach().cpu().double()
                        assert got64.shape == ref.shape, f"shape {tuple(got64.shape)} != {tuple(ref.shape)}"
                        err = float(((got64 - ref).abs() / sc.clamp_min(1.0)).max())
                        bound = 1.2 * matmul_bound(red, "float32", dn)
                        assert err <= bound, f"normwise error {err:.3e} > bound {bound:.3e}"

                    record(f"{tag} backward input", lambda: check_bwd("input"))
                    record(f"{tag} backward weight", lambda: check_bwd("weight"))

    n_ok = sum(c["ok"] for c in results["checks"] if c["check"].startswith("conv2d"))
    n_all = sum(1 for c in results["checks"] if c["check"].startswith("conv2d"))
    print(f"conv2d correctness: {n_ok}/{n_all} checks passed")

    # -- speed: forward, fp16, NHWC, vs cuDNN ------------------------------------------------------
    if dry_run:
        bench_cases = [("resnet50", 0, 1, (16, 16, 8, 3, 1, 1), 1)]
        dt = torch.float32
    else:
        dt = torch.float16
        bench_cases = [("resnet50", i, b, layer, 1) for b in (8, 32)
                       for i, layer in enumerate(CONV_RESNET50)]
        bench_cases += [("mobilenet_dw", i, b, (c, c, hw, 3, st, 1), c) for b in (8, 32)
                        for i, (c, hw, st) in enumerate(CONV_MOBILENET_DW)]
    for set_name, idx, batch, (c, k, hw, ks, st, pad), groups in bench_cases:
        if left() < 5:
            print(f"conv2d benchmark budget spent; stopping before {set_name}[{idx}] batch {batch}")
            break
        conv = {"stride": (st, st), "padding": (pad,) * 4, "dilation": (1, 1), "groups": groups}
        x = randn(batch, hw, hw, c, dtype=dt)
        wt = randn(k, c // groups, ks, ks, dtype=dt)
        wt_cl = wt.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # (K, R, S, C) in memory
        b = randn(k, dtype=dt)
        ho = (hw + 2 * pad - ks) // st + 1
        flops = 2.0 * batch * ho * ho * k * (c // groups) * ks * ks
        row = {"set": set_name, "layer": idx, "batch": batch, "dtype": str(dt)[6:],
               "layout": "NHWC", "c": c, "k": k, "hw": hw, "kernel": ks, "stride": st,
               "groups": groups}
        try:
            row["cudnn_s"] = timer(lambda: vendor.conv2d_forward(x, wt, b, conv["stride"],
                                                                 conv["padding"], (1, 1), groups,
                                                                 "relu", "NHWC"))
        except Exception as exc:  # noqa: BLE001
            row["cudnn_error"] = f"{exc}"[:200]
        best = (math.inf, None)
        space = tri.Conv2dConfig.space(dt, batch, c, hw, hw, k, ks, ks, st, groups)
        for cfg in space[: (1 if dry_run else 3)]:
            if left() < 5:
                break
            try:
                t = timer(lambda cfg=cfg: tri.conv2d_forward(x, wt_cl, b, activation="relu",
                                                             layout="NHWC", config=cfg, **conv))
                best = min(best, (t, cfg.to_dict()), key=lambda z: z[0])
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory on this card
                row.setdefault("triton_errors", []).append(f"{cfg.to_dict()}: {exc}"[:200])
        row["triton_s"], row["triton_config"] = best
        if cpk is not None and left() > 5:
            try:
                cx, cw, cb = as_cupy(x), as_cupy(wt_cl), as_cupy(b)
                row["cupy_s"] = timer(lambda: cpk.conv2d_forward(cx, cw, cb, activation="relu",
                                                                 layout="NHWC", **conv))
            except Exception as exc:  # noqa: BLE001
                row["cupy_error"] = f"{exc}"[:200]
        for key in ("cudnn", "triton", "cupy"):
            t = row.get(f"{key}_s")
            if t and math.isfinite(t):
                row[f"{key}_tflops"] = flops / t / 1e12
        if row.get("cudnn_s") and math.isfinite(row.get("triton_s", math.inf)):
            row["triton_vs_cudnn"] = row["cudnn_s"] / row["triton_s"]
        results["bench_conv2d"].append(row)
