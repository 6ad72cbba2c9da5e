"""Registers and spills of every shipped Triton config under Triton 3.6, the GPU machines' version.

CI runs the latest Triton, whose compile tests (tests/kernels/test_triton_*.py) check that no
shipped config spills there. The GPU machines run Triton 3.6, whose register allocation differs:
there ``conv2d_fwd_direct_kernel`` spilled in 4 of its 6 configs and the fp16 matmul default sat
at 254 registers. This test compiles every shipped config for sm_90 with a Triton 3.6 interpreter
and fails on any spill (stack or local memory) and on a default config at the 255-register cap.

It needs a Python with ``triton==3.6.*`` (and torch, numpy) that kernelkit imports under, named by
``KERNELKIT_TRITON36_PYTHON``; it skips with that reason elsewhere (CI has Triton 3.9 only). Set
``KERNELKIT_TRITON36_TABLE=path.json`` to also write the measured table. One-off setup::

    python -m venv /tmp/venv-t36
    /tmp/venv-t36/bin/pip install triton==3.6.0 numpy torch==2.13.0
    KERNELKIT_TRITON36_PYTHON=/tmp/venv-t36/bin/python python -m pytest tests/test_triton36_registers.py
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_compile import CompileJob, CompileResult  # noqa: E402

from kernelkit.kernels import taps  # noqa: E402
from kernelkit.kernels.triton import conv2d as tc  # noqa: E402
from kernelkit.kernels.triton import matmul as tm  # noqa: E402
from kernelkit.kernels.triton import preprocess as tp  # noqa: E402

PYTHON = os.environ.get("KERNELKIT_TRITON36_PYTHON", "")
TL = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
CC = 90  # the GPU machines' H200
REG_CAP = 255  # a thread's registers on sm_90; a default config sitting there is a slow default


def _matmul_job(dtype, cfg, label):
    ptr = "*" + TL[dtype]
    runtime = ("M", "N", "K", "stride_ab", "stride_am", "stride_bb", "stride_bk", "stride_cb",
               "stride_cm")
    sig = {"a_ptr": ptr, "b_ptr": ptr, "bias_ptr": ptr, "c_ptr": ptr, **{n: "i32" for n in runtime}}
    const = {"stride_ak": 1, "stride_bn": 1, "stride_biasn": 1, "stride_cn": 1,
             "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N, "BLOCK_K": cfg.BLOCK_K,
             "GROUP_M": cfg.GROUP_M, "HAS_BIAS": True, "ACTIVATION": "gelu",
             "INPUT_PRECISION": "ieee", "DOT_IN_FP32": False, "INDEX_I64": False}
    return CompileJob("kernelkit.kernels.triton.matmul", "matmul_kernel", sig, const, cc=CC,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      divisible_by_16=("a_ptr", "b_ptr", "bias_ptr", "c_ptr", *runtime),
                      label=label)


_CONV_UNIT = ("stride_xc", "stride_wc", "stride_bk", "stride_yk", "stride_dyk", "stride_dxc",
              "stride_dws", "STRIDE_H", "STRIDE_W", "DIL_H", "DIL_W")
_CONV_NOT_ALIGNED = ("PAD_T", "PAD_L", "H", "W", "Ho", "Wo", "P_PER_SPLIT")


def _conv_job(fn_name, dtype, cfg, label):
    """NHWC, 16-aligned channels, channels_last weight, 3x3, stride 1, bias + exact gelu (the
    specialisation of tests/kernels/test_triton_conv2d.py)."""
    names = list(getattr(tc, fn_name).arg_names)
    const = {"R": 3, "S": 3, "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N}
    for name, value in (("BLOCK_K", cfg.BLOCK_K), ("GROUP_M", cfg.GROUP_M), ("FLAT_K", False),
                        ("HAS_BIAS", True), ("ACTIVATION", "gelu"), ("INPUT_PRECISION", "ieee"),
                        ("DOT_IN_FP32", False), ("INDEX_I64", False)):
        if name in names:
            const[name] = value
    const.update({n: 1 for n in _CONV_UNIT if n in names})
    ptr = "*" + TL[dtype]
    sig, aligned = {}, []
    for name in names:
        if name in const:
            continue
        if name.endswith("_ptr"):
            sig[name] = "*fp32" if name == "dw_ptr" and dtype != torch.float32 else ptr
            aligned.append(name)
        else:
            sig[name] = "i32"
            if name not in _CONV_NOT_ALIGNED:
                aligned.append(name)
    return CompileJob("kernelkit.kernels.triton.conv2d", fn_name, sig, const, cc=CC,
                      num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      divisible_by_16=tuple(aligned), label=label)


def _preprocess_job(cfg, label):
    sig = {"src_ptr": "*u8", "meta_ptr": "*i64", "yst_ptr": "*i32", "yw_ptr": "*fp32",
           "xst_ptr": "*i32", "xw_ptr": "*fp32", "aff_ptr": "*fp64", "fill_ptr": "*fp32",
           "perm_ptr": "*i32", "mean_ptr": "*fp32", "scale_ptr": "*fp32", "out_ptr": "*fp32"}
    sig.update({n: "i32" for n in ("out_h", "out_w", "tiles_y", "tiles_x", "KY", "KX", "on", "oc",
                                   "oy", "ox")})
    const = {"C": 3, "CP": 4, "NMETA": taps.NMETA, "BLOCK_Y": cfg.block_y, "BLOCK_X": cfg.block_x,
             "HAS_AFFINE": True, "NEAREST": False, "OUT_U8": False, "INDEX_I64": False}
    return CompileJob("kernelkit.kernels.triton.preprocess", "preprocess_kernel", sig, const,
                      cc=CC, num_warps=cfg.num_warps, num_stages=1, label=label)


GEMM = ("conv2d_fwd_kernel", "conv2d_bwd_input_kernel", "conv2d_bwd_weight_kernel")
DIRECT = ("conv2d_fwd_direct_kernel", "conv2d_bwd_input_direct_kernel",
          "conv2d_bwd_weight_direct_kernel")


def shipped_jobs() -> list[tuple[CompileJob, bool]]:
    """(job, is a default config) for every shipped config of every Triton kernel, on the dtypes
    it is shipped for."""
    jobs = []
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        d = tm.MatmulConfig.default(dtype)
        for cfg in tm.shipped_configs(dtype):
            jobs.append((_matmul_job(dtype, cfg, f"matmul {TL[dtype]} {_cfg(cfg)}"), cfg == d))
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for kind, kernels in (("gemm", GEMM), ("direct", DIRECT)):
            if kind == "direct" and dtype == torch.bfloat16:
                continue  # direct kernels accumulate elementwise in fp32: fp16 stands for bf16
            d = tc.Conv2dConfig.default(dtype, kind)
            for cfg in tc.shipped_configs(dtype, kind):
                if dtype == torch.bfloat16 and cfg != d:
                    continue  # bf16 shares fp16's table; its default stands for it
                for fn in kernels:
                    jobs.append((_conv_job(fn, dtype, cfg, f"{fn} {TL[dtype]} {_cfg(cfg)}"),
                                 cfg == d))
    d = tp.PreprocessConfig.default()
    for cfg in tp.SHIPPED_CONFIGS:
        jobs.append((_preprocess_job(cfg, f"preprocess_kernel u8->fp32 {cfg.block_y}x"
                                          f"{cfg.block_x} w{cfg.num_warps}"), cfg == d))
    return jobs


def _cfg(cfg) -> str:
    return (f"{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} g{cfg.GROUP_M} w{cfg.num_warps} "
            f"s{cfg.num_stages}")


def compile_with(python: str, jobs: list[CompileJob], workers: int = 2) -> list[CompileResult]:
    """tests/triton_compile.py's child, run by another interpreter (Triton 3.6)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    chunks = [jobs[i::workers] for i in range(workers)]
    procs = [subprocess.Popen([python, str(ROOT / "tests" / "triton_compile.py")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
             for chunk in chunks if chunk]
    outs = []
    for proc, chunk in zip(procs, chunks):
        stdout, stderr = proc.communicate(json.dumps([dataclasses.asdict(j) for j in chunk]),
                                          timeout=1800)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout))
    results: list[CompileResult | None] = [None] * len(jobs)
    for w, (chunk, out) in enumerate(zip(chunks, outs)):
        for j, (job, raw) in enumerate(zip(chunk, out, strict=True)):
            asm = {k: base64.b64decode(v) if k == "cubin" else v for k, v in raw["asm"].items()}
            results[w + j * workers] = CompileResult(job, raw["ok"], raw["error"], asm,
                                                     raw["metadata"])
    return results  # type: ignore[return-value]


@pytest.fixture(scope="module")
def triton36():
    if not PYTHON:
        pytest.skip("set KERNELKIT_TRITON36_PYTHON to a Python with triton 3.6 (the GPU "
                    "machines' version) to check registers and spills there")
    version = subprocess.run([PYTHON, "-c", "import triton; print(triton.__version__)"],
                             capture_output=True, text=True, timeout=120)
    assert version.returncode == 0, version.stderr[-2000:]
    if not version.stdout.strip().startswith("3.6"):
        pytest.skip(f"{PYTHON} has triton {version.stdout.strip()}, not 3.6")
    return PYTHON


@pytest.mark.slow
def test_no_shipped_config_spills_under_triton36(triton36):
    pairs = shipped_jobs()
    results = compile_with(triton36, [job for job, _ in pairs])
    table = [{"label": job.label, "default": default, "ok": res.ok,
              "regs": res.metadata.get("regs"), "stack": res.metadata.get("stack"),
              "local": res.metadata.get("local"), "shared": res.metadata.get("shared"),
              "compile_s": round(res.metadata.get("compile_s", 0.0), 2),
              "error": res.error[-300:]}
             for (job, default), res in zip(pairs, results, strict=True)]
    if os.environ.get("KERNELKIT_TRITON36_TABLE"):
        Path(os.environ["KERNELKIT_TRITON36_TABLE"]).write_text(json.dumps(table, indent=1))
    bad = [row for row in table if not row["ok"] or row["stack"] or row["local"]
           or (row["default"] and row["regs"] >= REG_CAP)]
    assert not bad, "under Triton 3.6:\n" + "\n".join(
        f"{r['label']}: ok={r['ok']} regs={r['regs']} stack={r['stack']} local={r['local']} "
        f"{r['error']}" for r in bad)
