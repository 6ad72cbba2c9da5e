"""The Triton matmul kernel: correctness (interpreter on CPU, or a real GPU) and compile checks.

Without a GPU the kernel runs under ``TRITON_INTERPRET=1`` (set by conftest.py) on CPU tensors:
one program costs 15-45 ms there, so shapes are small and blocks large. bfloat16 goes through the
launcher's float32 cast for the interpreter's ``tl.dot``. The compile tests build every shipped
config for sm_80 and sm_90 in child processes without the interpreter (tests/triton_compile.py).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("triton")

from reference import MATMUL_ALIGNED, MATMUL_ODD, assert_matmul_close  # noqa: E402
from triton_runtime import DEVICE, needs_runtime  # noqa: E402

import kernelkit.kernels.triton.matmul as tm  # noqa: E402
from kernelkit.kernels import ACTIVATIONS  # noqa: E402
from kernelkit.kernels.triton.matmul import (  # noqa: E402
    SHIPPED_CONFIGS,
    MatmulConfig,
    matmul_forward,
    shipped_configs,
)

pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered in exp:RuntimeWarning")  # numpy's exp in the interpreter


# Small blocks, GROUP_M=2: several tiles in M and N, and groups that do not divide the tile rows.
SMALL = MatmulConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=2, num_warps=4, num_stages=2)
# Larger blocks for the cases where the tile walk is not the point (fewer interpreted programs).
WIDE = MatmulConfig(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=2)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACC = {torch.float32: "float32", torch.float16: "float32", torch.bfloat16: "float32"}


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float32).to(dtype).to(DEVICE)


def _ab(batch, m, k, n, dtype, seed=0):
    return _rand(batch, m, k, dtype=dtype, seed=seed), _rand(batch, k, n, dtype=dtype, seed=seed + 1)


# ---------------------------------------------------------------------------------------------
# Correctness


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("mkn", [s for s in MATMUL_ODD + MATMUL_ALIGNED if 0 not in s], ids=str)
def test_shapes(mkn, dtype):
    m, k, n = mkn
    a, b = _ab(2, m, k, n, dtype)
    c = matmul_forward(a, b, config=SMALL)
    assert c.shape == (2, m, n) and c.dtype == dtype and c.is_contiguous()
    assert_matmul_close(c, a, b, acc=ACC[dtype])


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes_with_edges_in_every_dim(dtype):
    # 97 x 61 x 89: no dimension is a multiple of any block; K needs two steps with a ragged tail.
    a, b = _ab(1, 97, 61, 89, dtype)
    bias = _rand(89, dtype=dtype, seed=7)
    c = matmul_forward(a, b, bias, "gelu", config=SMALL)
    assert c.dtype == dtype
    assert_matmul_close(c, a, b, bias, "gelu", acc=ACC[dtype])


@needs_runtime
@pytest.mark.parametrize("group_m", [1, 3, 8])
def test_grouped_order_covers_every_tile(group_m):
    # 5 x 3 tiles: groups of 3 leave a partial group of 2 rows; GROUP_M=8 exceeds the tile rows.
    cfg = MatmulConfig(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, GROUP_M=group_m, num_warps=4, num_stages=2)
    a, b = _ab(1, 150, 40, 70, torch.float32)
    assert_matmul_close(matmul_forward(a, b, config=cfg), a, b)


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
@pytest.mark.parametrize("with_bias", [False, True], ids=["nobias", "bias"])
def test_epilogue(activation, with_bias, dtype):
    a, b = _ab(2, 45, 37, 70, dtype, seed=3)
    bias = _rand(70, dtype=dtype, seed=9) * 2 if with_bias else None
    c = matmul_forward(a, b, bias, activation, config=WIDE)
    assert_matmul_close(c, a, b, bias, activation, acc=ACC[dtype])


@pytest.mark.parametrize("sizes, wide", [
    ((2**31 - 1, 8, 8), True), ((8, 2**31 - 64, 8), True), ((8, 8, 2**31 - 1), True),
    ((2**31 - 1024, 8, 8), False), ((4096, 4096, 4096), False)])
def test_sizes_within_a_tile_of_2_31_index_in_64_bits(sizes, wide):
    # M in (2**31 - BLOCK_M, 2**31): cdiv's M + BLOCK_M - 1 wrapped in int32, the tile counts went
    # negative and the last program stored its tile before C (found by review; no GPU here)
    assert tm._needs_index_i64(*sizes, WIDE, 0) is wide


@needs_runtime
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_64_bit_indexing_gives_the_same_results(activation, monkeypatch):
    # the INDEX_I64 path (sizes widened before the tile counts), forced on a small odd problem
    monkeypatch.setattr(tm, "INT32_MAX", 64)
    a, b = _ab(2, 97, 61, 89, torch.float32)
    bias = _rand(89, seed=7)
    assert tm._needs_index_i64(97, 89, 61, SMALL, 0)
    c = matmul_forward(a, b, bias, activation, config=SMALL)
    assert_matmul_close(c, a, b, bias, activation)


LAYOUTS = {
    # name: function (batch, m, k, n, dtype) -> (a, b, bias)
    "a_transposed": lambda B, m, k, n, dt: (
        _rand(B, k, m, dtype=dt).transpose(1, 2), _rand(B, k, n, dtype=dt, seed=1), None),
    "b_transposed": lambda B, m, k, n, dt: (
        _rand(B, m, k, dtype=dt), _rand(B, n, k, dtype=dt, seed=1).transpose(1, 2), None),
    "both_transposed": lambda B, m, k, n, dt: (
        _rand(B, k, m, dtype=dt).transpose(1, 2), _rand(B, n, k, dtype=dt, seed=1).transpose(1, 2),
        None),
    "strided_slices": lambda B, m, k, n, dt: (
        _rand(B, 2 * m, 3 * k, dtype=dt)[:, ::2, 1::3], _rand(B, k, 2 * n + 1, dtype=dt, seed=1)[:, :, 1::2],
        _rand(2 * n, dtype=dt, seed=2)[::2]),
    "batch_major_last": lambda B, m, k, n, dt: (
        _rand(m, k, B, dtype=dt).permute(2, 0, 1), _rand(k, B, n, dtype=dt, seed=1).permute(1, 0, 2),
        None),
    "a_broadcast_batch": lambda B, m, k, n, dt: (
        _rand(1, m, k, dtype=dt).expand(B, m, k), _rand(B, k, n, dtype=dt, seed=1), None),
    "b_broadcast_batch": lambda B, m, k, n, dt: (
        _rand(B, m, k, dtype=dt), _rand(1, k, n, dtype=dt, seed=1).expand(B, k, n), None),
    "broadcast_inner": lambda B, m, k, n, dt: (
        _rand(B, m, 1, dtype=dt).expand(B, m, k), _rand(B, 1, n, dtype=dt, seed=1).expand(B, k, n),
        _rand(1, dtype=dt, seed=2).expand(n)),
}


@needs_runtime
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layouts(layout, dtype):
    a, b, bias = LAYOUTS[layout](3, 33, 40, 35, dtype)
    c = matmul_forward(a, b, bias, config=WIDE)
    assert c.is_contiguous() and c.shape == (3, 33, 35)
    assert_matmul_close(c, a, b, bias, acc=ACC[dtype])


@needs_runtime
def test_many_batches_fold_into_the_grid():
    a, b = _ab(40, 5, 9, 7, torch.float32)
    assert_matmul_close(matmul_forward(a, b, config=SMALL), a, b)


@needs_runtime
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy, on purpose
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_nan_and_inf_propagate(activation, dtype):
    a, b = _ab(1, 40, 36, 40, dtype, seed=5)
    bias = _rand(40, dtype=dtype, seed=6)
    a[0, 3, 7] = float("nan")  # row 3 of C is all NaN
    b[0, 5, 11] = float("inf")  # column 11: +-Inf, or NaN where row 3 meets it
    b[0, 6, 11] = float("inf")
    a[0, 9, 5:7] = torch.tensor([1.0, -1.0], dtype=dtype)  # row 9, column 11: Inf - Inf = NaN
    b[0, 2, 30] = float("-inf")
    bias[20] = float("inf")
    bias[21] = float("nan")
    c = matmul_forward(a, b, bias, activation, config=SMALL)
    assert_matmul_close(c, a, b, bias, activation, acc=ACC[dtype])
    assert torch.isnan(c[0, 3]).all() and torch.isnan(c[0, :, 21]).all()


@needs_runtime
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_are_accurate_in_fp32(activation):
    # K = 1 and B = ones: C[m, n] = act(a[m] + bias[n]), an elementwise check of the epilogue
    # (the exact-gelu path uses the kernel's own erf) over the range where each one bends.
    x = torch.linspace(-8, 8, 509, dtype=torch.float32, device=DEVICE)
    a = x.reshape(1, -1, 1)
    b = torch.ones(1, 1, 3, device=DEVICE)
    bias = torch.tensor([0.0, 1e-3, -0.5], device=DEVICE)
    c = matmul_forward(a, b, bias, activation, config=WIDE)
    assert_matmul_close(c, a, b, bias, activation)


@needs_runtime
@pytest.mark.parametrize("activation", [None, "relu", "gelu", "silu"])
def test_k_zero_gives_activation_of_bias(activation):
    a = torch.empty(2, 5, 0, device=DEVICE)
    b = torch.empty(2, 0, 3, device=DEVICE)
    bias = _rand(3, seed=4)
    c = matmul_forward(a, b, bias, activation, config=SMALL)
    assert_matmul_close(c, a, b, bias, activation)
    c = matmul_forward(a, b, None, activation, config=SMALL)
    assert c.shape == (2, 5, 3) and (c == 0).all()


@needs_runtime
@pytest.mark.parametrize("shape", [(0, 4, 5, 3), (2, 0, 5, 3), (2, 4, 5, 0), (0, 0, 0, 0)], ids=str)
def test_empty_dims_return_without_launching(shape, monkeypatch):
    class NoLaunch:
        def __getitem__(self, grid):
            raise AssertionError("the kernel must not launch for an empty result")

    monkeypatch.setattr(tm, "matmul_kernel", NoLaunch())
    B, m, k, n = shape
    a = torch.empty(B, m, k, device=DEVICE)
    b = torch.empty(B, k, n, device=DEVICE)
    c = matmul_forward(a, b, torch.zeros(n, device=DEVICE), "relu")
    assert c.shape == (B, m, n) and c.dtype == a.dtype


@needs_runtime
def test_tf32_is_opt_in():
    # Rows of (1 + 2**-12): exact in fp32 but not in tf32 (10-bit mantissa), so on a GPU an IEEE
    # result differs from a TF32 one. The interpreter computes both in IEEE fp32.
    a = torch.full((1, 16, 64), 1 + 2**-12, device=DEVICE)
    b = torch.ones(1, 64, 16, device=DEVICE)
    ieee = matmul_forward(a, b, config=SMALL)
    assert torch.equal(ieee, torch.full_like(ieee, 64 * (1 + 2**-12)))
    a, b = _ab(1, 70, 200, 50, torch.float32)
    assert_matmul_close(matmul_forward(a, b, config=SMALL), a, b, acc="float32")
    assert_matmul_close(matmul_forward(a, b, config=SMALL, allow_tf32=True), a, b, acc="tf32")


@needs_runtime
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_shipped_config(dtype):
    # Ragged in every dimension for every block size, with the full epilogue.
    a, b = _ab(1, 70, 72, 66, dtype, seed=11)
    bias = _rand(66, dtype=dtype, seed=12)
    for cfg in shipped_configs(dtype):
        c = matmul_forward(a, b, bias, "silu", config=cfg)
        assert_matmul_close(c, a, b, bias, "silu", acc=ACC[dtype])


@needs_runtime
def test_default_config_is_used():
    a, b = _ab(1, 20, 30, 10, torch.float16)
    assert_matmul_close(matmul_forward(a, b), a, b)


@needs_runtime
@pytest.mark.parametrize(
    "call, exc",
    [
        (lambda a, b: matmul_forward(a.numpy() if a.device.type == "cpu" else a.cpu(), b), TypeError),
        (lambda a, b: matmul_forward(a[0], b[0]), ValueError),
        (lambda a, b: matmul_forward(a, b.double()), TypeError),
        (lambda a, b: matmul_forward(a.double(), b.double()), TypeError),
        (lambda a, b: matmul_forward(a, b[:, :-1]), ValueError),
        (lambda a, b: matmul_forward(a, b[:1]), ValueError),
        (lambda a, b: matmul_forward(a, b, bias=torch.zeros(4, device=a.device)), ValueError),
        (lambda a, b: matmul_forward(a, b, bias=torch.zeros(3, device=a.device).half()), TypeError),
        (lambda a, b: matmul_forward(a, b, activation="tanh"), ValueError),
        (lambda a, b: matmul_forward(a, b, config={"BLOCK_M": 32}), TypeError),
        (lambda a, b: matmul_forward(a, b, allow_tf32="no"), TypeError),  # (was TF32 on)
    ],
)
def test_bad_arguments(call, exc):
    a, b = _ab(2, 4, 5, 3, torch.float32)
    with pytest.raises(exc, match="matmul"):
        call(a, b)


# ---------------------------------------------------------------------------------------------
# Configs as data


def test_config_round_trip():
    for cfg in SHIPPED_CONFIGS:
        d = json.loads(json.dumps(cfg.to_dict()))
        assert MatmulConfig.from_dict(d) == cfg
        assert hash(MatmulConfig.from_dict(d)) == hash(cfg)
    with pytest.raises(ValueError):
        MatmulConfig.from_dict({"BLOCK_M": 64})
    with pytest.raises(ValueError):
        MatmulConfig.from_dict({**SHIPPED_CONFIGS[0].to_dict(), "extra": 1})
    with pytest.raises(ValueError):
        MatmulConfig(BLOCK_M=48, BLOCK_N=64, BLOCK_K=32, GROUP_M=8, num_warps=4, num_stages=3)
    with pytest.raises(ValueError):
        MatmulConfig(BLOCK_M=64, BLOCK_N=64, BLOCK_K=8, GROUP_M=8, num_warps=4, num_stages=3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_space(dtype):
    default = MatmulConfig.default(dtype)
    assert default in shipped_configs(dtype)
    assert set(shipped_configs(dtype)) <= set(SHIPPED_CONFIGS)
    big = MatmulConfig.space(dtype, 4096, 4096, 4096)
    assert big[0] == default and set(big) == set(shipped_configs(dtype))
    assert len(big) == len(set(big))
    small = MatmulConfig.space(dtype, 1, 40, 30)
    assert small[0] == default and 1 < len(small) < len(big)
    for cfg in small[1:]:
        assert min(c.BLOCK_M for c in shipped_configs(dtype)) == cfg.BLOCK_M
        assert cfg.BLOCK_N <= 64 and max(32, min(c.BLOCK_K for c in big)) >= cfg.BLOCK_K
    limited = MatmulConfig.space(dtype, 4096, 4096, 4096, max_shared=101376)
    assert all(c.shared_bytes(dtype) <= 101376 for c in limited[1:])
    assert default.shared_bytes(dtype) <= 101376  # the default fits every GPU since sm_80


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        MatmulConfig.default(torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        MatmulConfig.space(torch.int8, 8, 8, 8)


# ---------------------------------------------------------------------------------------------
# Compile checks: every shipped config, for sm_80 and sm_90, without a GPU
#
# One session-scoped batch of compiles in child processes (tests/triton_compile.py), with the
# specialisation the runtime makes for contiguous row-major operands, and the heaviest epilogue
# (bias + exact gelu). float32 configs are built for IEEE and TF32 both.

TARGETS = (80, 90)
TL_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_RUNTIME_ARGS = ("M", "N", "K", "stride_ab", "stride_am", "stride_bb", "stride_bk", "stride_cb",
                 "stride_cm")


def _job(dtype, cc, cfg, *, activation="gelu", has_bias=True, precision="ieee", index_i64=False,
         sass=False, label="", asm=(), ones=()):
    """`ones`: runtime arguments equal to 1, which triton passes as constexprs."""
    from triton_compile import CompileJob

    ptr = "*" + TL_TYPES[dtype]
    signature = {"a_ptr": ptr, "b_ptr": ptr, "bias_ptr": ptr, "c_ptr": ptr}
    signature.update({name: "i32" for name in _RUNTIME_ARGS if name not in ones})
    constexprs = {
        "stride_ak": 1, "stride_bn": 1, "stride_biasn": 1, "stride_cn": 1,  # ints equal to 1
        "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N, "BLOCK_K": cfg.BLOCK_K, "GROUP_M": cfg.GROUP_M,
        "HAS_BIAS": has_bias, "ACTIVATION": activation, "INPUT_PRECISION": precision,
        "DOT_IN_FP32": False, "INDEX_I64": index_i64, **dict.fromkeys(ones, 1),
    }
    return CompileJob("kernelkit.kernels.triton.matmul", "matmul_kernel", signature, constexprs,
                      cc=cc, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                      divisible_by_16=("a_ptr", "b_ptr", "bias_ptr", "c_ptr",
                                       *(a for a in _RUNTIME_ARGS if a not in ones)),
                      sass=sass, label=label, asm=asm)


def _label(kind, cc, cfg):
    return f"{kind}/sm_{cc}/{cfg.BLOCK_M}x{cfg.BLOCK_N}x{cfg.BLOCK_K} g{cfg.GROUP_M} w{cfg.num_warps} s{cfg.num_stages}"


@pytest.fixture(scope="session")
def compiled():
    """{label: CompileResult} for every shipped config and a few epilogue variants."""
    import triton
    from triton_compile import compile_many

    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    if not all(os.path.exists(os.path.join(tools, t)) for t in ("ptxas", "cuobjdump")):
        pytest.skip(f"this triton wheel has no NVIDIA ptxas/cuobjdump in {tools}")
    jobs = []
    for dtype in DTYPES:
        half = dtype != torch.float32
        for cc in TARGETS:
            for cfg in shipped_configs(dtype):
                default = cfg == MatmulConfig.default(dtype)
                jobs.append(_job(dtype, cc, cfg, sass=cc == 90 and (half or default),
                                 label=_label(TL_TYPES[dtype], cc, cfg)))
                if not half:
                    jobs.append(_job(dtype, cc, cfg, precision="tf32", sass=default,
                                     label=_label("tf32", cc, cfg)))
    default16 = MatmulConfig.default(torch.float16)
    for act in ["", "relu", "gelu_tanh", "silu"]:
        jobs.append(_job(torch.float16, 90, default16, activation=act, has_bias=False,
                         label=f"act:{act}"))
    jobs.append(_job(torch.float16, 90, default16, index_i64=True, label="index_i64"))
    return {job.label: res for job, res in zip(jobs, compile_many(jobs), strict=True)}


def _results(compiled, dtype, cc, kind=None):
    return [(cfg, compiled[_label(kind or TL_TYPES[dtype], cc, cfg)]) for cfg in shipped_configs(dtype)]


@pytest.mark.slow
@pytest.mark.parametrize("cc", TARGETS, ids=lambda cc: f"sm_{cc}")
@pytest.mark.parametrize("kind", ["fp16", "bf16", "fp32", "tf32"])
def test_shipped_configs_compile_fit_and_do_not_spill(compiled, kind, cc):
    from triton_compile import SHARED_MEMORY_LIMIT

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(kind, torch.float32)
    for cfg, res in _results(compiled, dtype, cc, kind):
        assert res.ok, f"{cfg} failed to compile for sm_{cc}:\n{res.error}"
        md = res.metadata
        assert md["num_warps"] == cfg.num_warps and md["num_stages"] == cfg.num_stages
        assert md["shared"] <= SHARED_MEMORY_LIMIT[cc], (cfg, md["shared"])
        # The estimate that MatmulConfig.space prunes with must not undercount.
        assert md["shared"] <= cfg.shared_bytes(dtype), (cfg, md["shared"])
        assert md["stack"] == 0 and md["local"] == 0, f"{cfg} spills on sm_{cc}: {md}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_hopper_uses_wgmma(compiled, dtype):
    for cfg, res in _results(compiled, dtype, 90):
        assert res.ok, res.error
        if cfg.num_warps >= 4 and cfg.BLOCK_M >= 64:  # wgmma needs a warpgroup per 64 rows
            assert "HGMMA" in res.asm["sass"], f"{cfg}: no HGMMA in the sm_90 SASS"
    default = compiled[_label(TL_TYPES[dtype], 90, MatmulConfig.default(dtype))]
    assert "HGMMA" in default.asm["sass"]


@pytest.mark.slow
def test_fp32_uses_tensor_cores_only_with_tf32(compiled):
    default = MatmulConfig.default(torch.float32)
    ieee = compiled[_label("fp32", 90, default)].asm["sass"]
    assert "HGMMA" not in ieee and "HMMA" not in ieee
    assert "HGMMA" in compiled[_label("tf32", 90, default)].asm["sass"]


@pytest.mark.slow
def test_epilogue_variants_compile(compiled):
    for label in ["act:", "act:relu", "act:gelu_tanh", "act:silu"]:
        res = compiled[label]
        assert res.ok, f"{label}:\n{res.error}"
        assert res.metadata["stack"] == 0, f"{label} spills: {res.metadata}"
    # 64-bit offsets (a matrix over 2**31 elements) are a rare fallback: a small spill is fine.
    assert compiled["index_i64"].ok, compiled["index_i64"].error


@pytest.mark.slow
def test_64_bit_indexing_forms_the_tile_counts_and_rows_in_64_bits():
    """With INDEX_I64 the sizes are widened before cdiv and before pid_m * BLOCK_M (see
    test_sizes_within_a_tile_of_2_31_index_in_64_bits); without it all stays int32. Read from
    the kernel's TTIR for sm_90 (no GPU needed)."""
    import re

    from triton_compile import compile_many

    default16 = MatmulConfig.default(torch.float16)
    jobs = [_job(torch.float16, 90, default16, index_i64=i64, asm=("ttir",), label=str(i64))
            for i64 in (True, False)]
    for job, res in zip(jobs, compile_many(jobs), strict=True):
        assert res.ok, f"{job.label}:\n{res.error}"
        for name in ("num_pid_m", "num_pid_n", "offs_am", "offs_bn", "step_b"):
            types = re.findall(rf"%{name}\w* = arith\.(?:muli|addi|divsi) [^:]*: (\S+)",
                               res.asm["ttir"])
            assert types, (job.label, name)  # (the check reads the value it means to)
            wide = [t.endswith(("i64", "i64>")) for t in types]
            assert all(wide) if job.label == "True" else not any(wide), (job.label, name, types)


@pytest.mark.slow
def test_64_bit_indexing_compiles_with_a_size_of_one():
    """triton passes an argument equal to 1 as a constexpr, which has no .to: the INDEX_I64
    path's M.to(tl.int64) raised for a GEMV against a matrix past 2**31 elements (M = 1: a
    decode step's LM head) or an outer product (K = 1) whose result is (found by review)."""
    from triton_compile import compile_many

    default16 = MatmulConfig.default(torch.float16)
    jobs = [_job(torch.float16, 90, default16, index_i64=True, ones=(size,), label=size)
            for size in ("M", "N", "K")]
    for job, res in zip(jobs, compile_many(jobs), strict=True):
        assert res.ok, f"{job.label} = 1:\n{res.error}"


@needs_runtime
def test_lazily_negated_operands_are_read_with_their_values():
    """torch negates ``x.conj().imag`` and ``torch._neg_view`` lazily (a flag; the memory holds
    the un-negated values) and the kernel reads the memory: before, the product of such a view
    came out with the wrong sign (max error 17 on a 9 x 11 @ 11 x 13)."""
    a, b = _ab(1, 9, 11, 13, torch.float32)
    bias = _rand(13, seed=5)
    na, nb, nbias = torch._neg_view(-a), torch._neg_view(-b), torch._neg_view(-bias)
    assert na.is_neg() and nb.is_neg() and nbias.is_neg()
    c = matmul_forward(na, nb, nbias, config=SMALL)
    assert_matmul_close(c, a, b, bias, acc="float32")


def test_launchers_make_their_datas_gpu_current(monkeypatch):
    """Triton launches on the current device, not the tensor's: data on cuda:1 while device 0
    was current ran its kernel on device 0. Each launcher now runs with its first tensor's GPU
    current, and leaves the device alone where it already is (checked with a tensor that says
    it lives on cuda:1, as no GPU is here)."""
    import contextlib

    from kernelkit.kernels.triton import _common, conv2d, preprocess

    class OnGpu1(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", 1)

    entered, current = [], [0]

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    seen = _common.on_its_device(lambda first, *rest, **kw: (first, rest, kw))
    x = torch.Tensor._make_subclass(OnGpu1, torch.zeros(2))
    assert seen(x, 5) == (x, (5,), {}) and entered == [torch.device("cuda", 1)]
    assert seen([x]) == ([x], (), {}) and len(entered) == 2  # (preprocess: a list of images)
    assert seen(first=x, y=2) == (x, (), {"y": 2}) and len(entered) == 3  # (by keyword)
    current[0] = 1
    seen(x)
    seen(torch.zeros(2))  # (a CPU tensor: the interpreter)
    seen([])
    images = (i for i in [x])  # (anything else goes through untouched: a generator keeps
    assert next(seen(images)[0]) is x  # its first item, None reaches the launcher's check)
    assert seen(None) == (None, (), {})
    assert len(entered) == 3
    with pytest.raises(TypeError, match="x must be"):
        conv2d.conv2d_forward(None, torch.zeros(1, 1, 1, 1))
    launchers = (tm.matmul_forward, conv2d.conv2d_forward, conv2d.conv2d_backward_input,
                 conv2d.conv2d_backward_weight, preprocess.preprocess_forward)
    assert all(f.__code__ is seen.__code__ for f in launchers)  # (each one is wrapped)
