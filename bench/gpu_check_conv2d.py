"""The conv2d part of the GPU check (bench/gpu_check.py): check builders for each phase.

* ``preflight``: one compile + launch of each Triton conv family (implicit GEMM, direct);
* ``correctness``: Triton forward (bias + activation), backward input and backward weight with the
  default configs, fp16 / bf16 / fp32 (CuPy: fp16 / fp32), NHWC and NCHW, on a few small cases
  chosen so that few distinct compiles cover them, against float64 (forward: tests/reference.py;
  backward: torch autograd in float64, normwise with the same bound);
* ``sweep``: every shipped config of each family and dtype on one ragged case (forward; the GEMM
  backwards for fp16 last);
* ``bench``: forward fp16 NHWC on 8 ResNet-50 layers and 3 MobileNetV2 depthwise layers, batch 32,
  against cuDNN given the same layout (channels_last input and weight) and, where torch has one,
  a fused bias + ReLU (``torch.cudnn_convolution_relu``); the unfused F.conv2d + relu is a row too.
"""

from __future__ import annotations

import math

from gpu_check_runner import Check, spec

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


def _conv_of(stride=1, pad=0, dil=1, groups=1, padding=None):
    return {"stride": (stride, stride) if isinstance(stride, int) else stride,
            "padding": padding or (pad,) * 4,
            "dilation": (dil, dil) if isinstance(dil, int) else dil, "groups": groups}


def _kernels(env):
    """name -> (forward, backward input, backward weight) on torch tensors."""
    from kernelkit.kernels.triton import conv2d as tri

    out = {"triton": (
        lambda x, w, b, conv, act, layout, cfg=None: tri.conv2d_forward(
            x, w, b, activation=act, layout=layout, config=cfg, **conv),
        lambda go, w, hw, conv, layout, cfg=None: tri.conv2d_backward_input(
            go, w, hw, layout=layout, config=cfg, **conv),
        lambda x, go, rs, conv, layout, cfg=None: tri.conv2d_backward_weight(
            x, go, rs, layout=layout, config=cfg, **conv))}
    if env.cupy:
        def cp(t):
            import cupy

            return None if t is None else cupy.from_dlpack(t)

        def tt(a):
            import torch

            return torch.from_dlpack(a)

        def cpk():
            from kernelkit.kernels.cupy import conv2d as m

            return m
        out["cupy"] = (
            lambda x, w, b, conv, act, layout, cfg=None: tt(cpk().conv2d_forward(
                cp(x), cp(w), cp(b), activation=act, layout=layout, config=cfg, **conv)),
            lambda go, w, hw, conv, layout, cfg=None: tt(cpk().conv2d_backward_input(
                cp(go), cp(w), hw, layout=layout, **conv)),
            lambda x, go, rs, conv, layout, cfg=None: tt(cpk().conv2d_backward_weight(
                cp(x), cp(go), rs, layout=layout, **conv)))
    return out


def _case_checks(env, kname, dt, layout, cname, dims, conv, act, *, cfg=None, which=("fwd",
                 "input", "weight"), tag_extra=""):
    """Checks of one case: forward (+ bias + act), then the two backwards on the same data."""
    import torch
    from reference import assert_conv2d_close, matmul_bound

    fwd, bwd_in, bwd_w = _kernels(env)[kname]
    n, c, h, w, k, r, s = dims
    dn = str(dt).removeprefix("torch.")
    tag = f"conv2d {kname} {dn} {layout} {cname}{tag_extra}"
    state: dict = {}
    direct = conv["groups"] > 1 and c // conv["groups"] < 16
    fam = "triton.conv_direct" if direct else "triton.conv"
    geo = spec(c // conv["groups"], k // conv["groups"], h, w, *conv["stride"], *conv["dilation"])
    cfg_name = "default" if cfg is None else str(cfg.to_dict())

    def key(what):
        if kname == "cupy":
            return (("cupy.conv", str(dt), "fwd" if what == "fwd" else "simple",
                     cfg_name if what == "fwd" else ""),)
        return ((fam, what, str(dt), layout, cfg_name, r, s, geo,
                 act if what == "fwd" else None),)

    def data():
        if "x" not in state:
            x = env.randn(n, c, h, w, dtype=dt)
            if layout == "NHWC":
                x = x.permute(0, 2, 3, 1).contiguous()
            state.update(x=x, w=env.randn(k, c // conv["groups"], r, s, dtype=dt),
                         b=env.randn(k, dtype=dt))
        return state["x"], state["w"], state["b"]

    def check_fwd():
        x, wt, b = data()
        y = fwd(x, wt, b, conv, act, layout, cfg)
        env.sync()
        state["y"] = y
        assert_conv2d_close(y.cpu(), x.cpu(), wt.cpu(), b.cpu(), activation=act, layout=layout,
                            **conv)

    def check_bwd(what):
        x, wt, b = data()
        if "grads" not in state:
            ho = (h + conv["padding"][0] + conv["padding"][1]
                  - conv["dilation"][0] * (r - 1) - 1) // conv["stride"][0] + 1
            wo = (w + conv["padding"][2] + conv["padding"][3]
                  - conv["dilation"][1] * (s - 1) - 1) // conv["stride"][1] + 1
            go = env.randn(n, k, ho, wo, dtype=dt)
            if layout == "NHWC":
                go = go.permute(0, 2, 3, 1).contiguous()
            state["go"] = go
            state["grads"] = _grads_f64(x, wt, go, layout=layout, **conv)
        go = state["go"]
        (dx_ref, dw_ref), (dx_sc, dw_sc) = state["grads"]
        if what == "input":
            got, ref, sc = bwd_in(go, wt, (h, w), conv, layout, cfg), dx_ref, dx_sc
            red = k // conv["groups"] * r * s
        else:
            got, ref, sc = bwd_w(x, go, (r, s), conv, layout, cfg), dw_ref, dw_sc
            red = go.numel() // k
        env.sync()
        got64 = got.detach().cpu().double()
        assert got64.shape == ref.shape, f"shape {tuple(got64.shape)} != {tuple(ref.shape)}"
        err = float(((got64 - ref).abs() / sc.clamp_min(1.0)).max())
        bound = 1.2 * matmul_bound(red, "float32", dn)
        assert err <= bound, f"normwise error {err:.3e} > bound {bound:.3e}"

    out = []
    needs = "cupy" if kname == "cupy" else "triton"
    if "fwd" in which:
        out.append(Check(f"{tag} forward+bias+{act}", check_fwd, keys=key("fwd"), run_s=0.1,
                         needs=needs))
    if "input" in which:
        out.append(Check(f"{tag} backward input", lambda: check_bwd("input"), keys=key("input"),
                         run_s=0.2, needs=needs))
    if "weight" in which:
        out.append(Check(f"{tag} backward weight", lambda: check_bwd("weight"),
                         keys=key("weight"), run_s=0.1, needs=needs))
    del torch
    return out


def _cases(dry):
    if dry:
        return [("3x3", (1, 16, 6, 6, 16, 3, 3), _conv_of(pad=1)),
                ("depthwise s2", (1, 16, 7, 7, 16, 3, 3), _conv_of(stride=2, pad=1, groups=16)),
                ("odd", (1, 3, 7, 6, 16, 3, 2), _conv_of(stride=(2, 1), padding=(1, 0, 2, 1),
                                                         dil=(1, 2)))]
    return [
        ("3x3 64->64 14px", (2, 64, 14, 14, 64, 3, 3), _conv_of(pad=1)),
        ("depthwise 32 15px /2", (2, 32, 15, 15, 32, 3, 3), _conv_of(stride=2, pad=1, groups=32)),
        ("odd stride/dilation/asym pad", (3, 37, 13, 11, 45, 3, 3),
         _conv_of(stride=(2, 1), padding=(1, 2, 0, 1), dil=(1, 2))),
        ("stem-like 7x7/2 C=3", (2, 3, 33, 31, 32, 7, 7), _conv_of(stride=2, pad=3)),
        ("groups 4", (2, 32, 9, 9, 64, 3, 3), _conv_of(pad=1, groups=4)),
    ]


def preflight(env) -> list[Check]:
    import torch

    dt = torch.float32 if env.dry else torch.float16
    cases = _cases(env.dry)
    out = _case_checks(env, "triton", dt, "NHWC", cases[0][0], cases[0][1], cases[0][2], "relu",
                       which=("fwd",), tag_extra=" (preflight compile + launch)")
    out += _case_checks(env, "triton", dt, "NHWC", cases[1][0], cases[1][1], cases[1][2], "relu",
                        which=("fwd",), tag_extra=" (preflight compile + launch)")
    return out


def correctness(env) -> list[Check]:
    import torch

    cases = _cases(env.dry)
    out = []
    if env.dry:  # the interpreter is slow: fp32 NCHW and fp16 NHWC
        for dt, layout in ((torch.float32, "NCHW"), (torch.float16, "NHWC")):
            for i, (cname, dims, conv) in enumerate(cases):
                out += _case_checks(env, "triton", dt, layout, cname, dims, conv,
                                    ACTS[i % len(ACTS)])
        return out
    plan = {  # dtype -> [(case index, layout, which)]
        torch.float16: [(0, "NHWC", None), (0, "NCHW", None), (1, "NHWC", None),
                        (2, "NHWC", None), (3, "NHWC", ("fwd",)), (4, "NHWC", ("fwd",))],
        torch.float32: [(0, "NHWC", None), (0, "NCHW", None), (1, "NHWC", None),
                        (2, "NHWC", None), (3, "NHWC", ("fwd",))],
        torch.bfloat16: [(0, "NHWC", None), (1, "NHWC", ("fwd",))],
    }
    for dt, items in plan.items():
        for j, (i, layout, which) in enumerate(items):
            cname, dims, conv = cases[i]
            act = "relu" if j == 0 else ACTS[(i + j) % len(ACTS)]
            out += _case_checks(env, "triton", dt, layout, cname, dims, conv, act,
                                which=which or ("fwd", "input", "weight"))
    for dt in (torch.float16, torch.float32):  # CuPy: runtime shapes, two modules per dtype
        for i, (cname, dims, conv) in enumerate(cases):
            for layout in ("NHWC", "NCHW") if i == 0 else ("NHWC",):
                out += _case_checks(env, "cupy", dt, layout, cname, dims, conv,
                                    ACTS[(i + 1) % len(ACTS)])
    return out


def sweep(env) -> list[Check]:
    """Every shipped config of each family, on its own dtypes, on one ragged case."""
    import torch

    from kernelkit.kernels.triton import conv2d as tri

    if env.dry:
        case = ("ragged", (1, 19, 5, 6, 21, 3, 3), _conv_of(pad=1))
        dw = ("ragged depthwise", (1, 24, 5, 6, 24, 3, 3), _conv_of(pad=1, groups=24))
        dts = (torch.float32,)
    else:
        case = ("ragged 3x3 37->45 13x11", (2, 37, 13, 11, 45, 3, 3), _conv_of(pad=1))
        dw = ("ragged depthwise 40 13x11", (2, 40, 13, 11, 40, 3, 3), _conv_of(pad=1, groups=40))
        dts = (torch.float16, torch.float32)
    out, later = [], []
    for dt in dts:
        for kind, (cname, dims, conv) in (("gemm", case), ("direct", dw)):
            for cfg in tri.shipped_configs(dt, kind):
                tag = f" config {cfg.to_dict()}"
                which = ("fwd",)
                out += _case_checks(env, "triton", dt, "NHWC", cname, dims, conv, "gelu",
                                    cfg=cfg, which=which, tag_extra=tag)
                if not env.dry and dt == torch.float16 and kind == "gemm" and \
                        cfg != tri.Conv2dConfig.default(dt):
                    later += _case_checks(env, "triton", dt, "NHWC", cname, dims, conv, "gelu",
                                          cfg=cfg, which=("input", "weight"), tag_extra=tag)
    if env.cupy and not env.dry:
        from kernelkit.kernels.cupy import conv2d as cpk

        for dt in (torch.float32,):
            for cfg in cpk.SHIPPED_CONFIGS[1:]:
                out += _case_checks(env, "cupy", dt, "NHWC", *case, "gelu", cfg=cfg,
                                    which=("fwd",), tag_extra=f" config {cfg.to_dict()}")
    return out + later


def bench(env) -> list[Check]:
    import torch
    import torch.nn.functional as F
    from reference import CONV_MOBILENET_DW, CONV_RESNET50

    from kernelkit.kernels.triton import conv2d as tri

    if env.dry:
        layers = [("resnet50", 0, 1, (16, 16, 8, 3, 1, 1), 1)]
        dt = torch.float32
    else:
        dt = torch.float16
        layers = [("resnet50", i, 32, CONV_RESNET50[i], 1) for i in (0, 1, 2, 3, 6, 10, 16, 22)]
        layers += [("mobilenet_dw", i, 32, (c, c, hw, 3, st, 1), c)
                   for i, (c, hw, st) in ((0, CONV_MOBILENET_DW[0]), (3, CONV_MOBILENET_DW[3]),
                                          (7, CONV_MOBILENET_DW[7]))]
    fused = getattr(torch, "cudnn_convolution_relu", None)
    out = []
    for set_name, idx, batch, (c, k, hw, ks, st, pad), groups in layers:
        def run(set_name=set_name, idx=idx, batch=batch, c=c, k=k, hw=hw, ks=ks, st=st, pad=pad,
                groups=groups):
            conv = {"stride": (st, st), "padding": (pad,) * 4, "dilation": (1, 1),
                    "groups": groups}
            x = env.randn(batch, hw, hw, c, dtype=dt)  # NHWC in memory
            x_cl = x.permute(0, 3, 1, 2)  # the same memory as torch channels_last: no copy
            wt = env.randn(k, c // groups, ks, ks, dtype=dt)
            wt_cl = wt.contiguous(memory_format=torch.channels_last)  # (K, R, S, C) in memory
            b = env.randn(k, dtype=dt)
            ho = (hw + 2 * pad - ks) // st + 1
            flops = 2.0 * batch * ho * ho * k * (c // groups) * ks * ks
            row = {"set": set_name, "layer": idx, "batch": batch, "c": c, "k": k, "hw": hw,
                   "kernel": ks, "stride": st, "groups": groups, "dtype": str(dt)[6:],
                   "layout": "NHWC, weight channels_last"}
            args = ((st, st), (pad, pad), (1, 1), groups)
            row["cudnn_unfused_s"] = env.timer(
                lambda: F.relu_(F.conv2d(x_cl, wt_cl, b, *args)))
            if fused is not None and not env.dry:
                try:
                    y_f = fused(x_cl, wt_cl, b, *args)
                    y_u = F.relu(F.conv2d(x_cl, wt_cl, b, *args))
                    assert torch.allclose(y_f.float(), y_u.float(), rtol=2e-2, atol=2e-2)
                    row["cudnn_fused_s"] = env.timer(lambda: fused(x_cl, wt_cl, b, *args))
                except Exception as exc:  # noqa: BLE001 - the unfused row still stands
                    row["cudnn_fused_error"] = f"{type(exc).__name__}: {exc}"[:200]
            best = (math.inf, None)
            space = tri.Conv2dConfig.space(dt, batch, c, hw, hw, k, ks, ks, st, groups)
            for cfg in space[: (1 if env.dry else 2)]:
                try:
                    t = env.timer(lambda cfg=cfg: tri.conv2d_forward(
                        x, wt_cl, b, activation="relu", layout="NHWC", config=cfg, **conv))
                    best = min(best, (t, cfg.to_dict()), key=lambda z: z[0])
                except Exception as exc:  # noqa: BLE001
                    row.setdefault("triton_errors", []).append(f"{cfg.to_dict()}: {exc}"[:200])
            row["triton_s"], row["triton_config"] = best
            vendor = row.get("cudnn_fused_s") or row.get("cudnn_unfused_s")
            for key in ("cudnn_fused", "cudnn_unfused", "triton"):
                t = row.get(f"{key}_s")
                if t and math.isfinite(t):
                    row[f"{key}_tflops"] = flops / t / 1e12
            if vendor and math.isfinite(row["triton_s"]):
                row["triton_vs_cudnn"] = vendor / row["triton_s"]
            return row
        fam = "triton.conv_direct" if groups > 1 else "triton.conv"
        keys = tuple((fam, "bench", ks, st, f"space{i}", c // groups >= 16) for i in range(2))
        out.append(Check(f"bench conv2d {set_name}[{idx}] batch {batch}", run, keys=keys,
                         run_s=1.0, bench="bench_conv2d"))
    return out
