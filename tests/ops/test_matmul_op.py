"""kernelkit.matmul through the ops layer: every CPU backend, every layout, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import MATMUL_ALIGNED, MATMUL_ODD, assert_matmul_close

import kernelkit
from kernelkit.kernels import ACTIVATIONS

CPU_BACKENDS = ["numba", "numpy", "torch"]


def rand(rng, shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mkn", MATMUL_ALIGNED + MATMUL_ODD, ids=str)
def test_shapes(backend, dtype, mkn, rng):
    m, k, n = mkn
    a, b = rand(rng, (m, k), dtype), rand(rng, (k, n), dtype)
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
    assert isinstance(c, np.ndarray) and c.dtype == dtype
    assert_matmul_close(c, a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_bias_and_activation(backend, activation, rng):
    a, b, bias = rand(rng, (37, 29)), rand(rng, (29, 43)), rand(rng, (43,))
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b, bias=bias, activation=activation)
    assert_matmul_close(c, a, b, bias, activation)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_transposed_noncontiguous_negative_strides(backend, rng):
    a_t = rand(rng, (23, 31)).T  # (31, 23), column-major
    b_nc = rand(rng, (46, 17))[::2]  # (23, 17), row stride 2
    a_neg = rand(rng, (31, 23))[::-1, ::-1]  # negative strides both ways
    with kernelkit.use(backend=backend):
        for a, b in ((a_t, b_nc), (a_neg, b_nc), (a_t, b_nc.T.copy().T), (a_neg, b_nc[::-1])):
            assert_matmul_close(kernelkit.matmul(a, b), a, b)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_2d_calls_of_the_datas_own_vendor_run_its_2d_entry_on_any_layout(lib, rng):
    """A 2-D product on the data's own vendor binds the kernel module's `matmul_forward_2d` (no
    (1, M, K) views): checked on the layouts BLAS cannot take as they are, a stride-0 row dim
    included, with the fused epilogue."""
    from kernelkit import core
    from kernelkit.ops import matmul as op

    wrap = (lambda x: x) if lib == "numpy" else torch.from_numpy
    b, bias = rand(rng, (23, 17)), rand(rng, (17,))
    layouts = {"contiguous": rand(rng, (31, 23)), "transposed": rand(rng, (23, 31)).T,
               "stepped": rand(rng, (31, 46))[:, ::2], "negative": rand(rng, (31, 23))[::-1],
               "stride-0 rows": np.broadcast_to(rand(rng, (23,)), (31, 23))}
    cand = core.get("matmul", f"{lib}-cpu")
    for name, a in layouts.items():
        ta, tb, tbias = (wrap(np.ascontiguousarray(x)) if lib == "torch" and name != "transposed"
                         else wrap(x) for x in (a, b, bias))
        assert cand.launcher_2d(op.prepare(ta, tb).problem, {}) is not None
        with kernelkit.use(backend=lib):
            c = kernelkit.matmul(ta, tb, bias=tbias, activation="gelu")
        assert_matmul_close(np.asarray(c), a, b, bias, "gelu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_broadcast(backend, rng):
    a = rand(rng, (2, 1, 5, 7))
    b = rand(rng, (3, 7, 4))
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
        assert c.shape == (2, 3, 5, 4)
        assert_matmul_close(c, a, b)
        c2 = kernelkit.matmul(rand(rng, (4, 6, 7)), b[0])  # 3-D @ 2-D
        assert c2.shape == (4, 6, 4)
        # a batch dim whose strides do not merge with the next one (transposed batch dims)
        a3 = rand(rng, (3, 2, 5, 7)).transpose(1, 0, 2, 3)
        assert_matmul_close(kernelkit.matmul(a3, b), a3, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_cpu_in_torch_out(backend):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 9, 11, generator=g)
    b = torch.randn(11, 6, generator=g).t().contiguous().t()  # transposed view
    bias = torch.randn(6, generator=g)
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b, bias=bias, activation="gelu")
    assert isinstance(c, torch.Tensor) and c.device.type == "cpu" and c.dtype == torch.float32
    assert_matmul_close(c, a, b, bias, "gelu")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_inf_propagate(backend, rng):
    a, b = rand(rng, (8, 5)), rand(rng, (5, 6))
    a[1, 2] = np.nan
    a[3, 0] = np.inf
    b[:, 4] = 0.0  # inf * 0 -> nan in that column of row 3
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.array_equal(np.isnan(c), np.isnan(ref))
    assert np.array_equal(np.isinf(c), np.isinf(ref))
    assert np.isnan(c[1]).all() and np.isnan(c[3, 4])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shapes", [((0, 3), (3, 4)), ((3, 0), (0, 4)), ((2, 3), (3, 0)),
                                    ((0, 2, 3), (3, 4))], ids=str)
def test_empty_dims(backend, shapes, rng):
    a, b = rand(rng, shapes[0]), rand(rng, shapes[1])
    bias = rand(rng, (shapes[1][-1],))
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
        cb = kernelkit.matmul(a, b, bias=bias, activation="relu")
    ref = a @ b
    assert c.shape == ref.shape and np.array_equal(c, ref)  # K == 0 gives exact zeros
    assert np.array_equal(cb, np.maximum(ref + bias, 0))


@pytest.mark.parametrize("backend, dtype", [  # (numpy runs float32 and float64 only)
    (backend, dtype) for backend in CPU_BACKENDS
    for dtype in ([torch.float32] if backend == "numpy" else
                  [torch.float32, torch.bfloat16, torch.float16])], ids=str)
@pytest.mark.parametrize("shapes", [((0, 3), (3, 4)), ((2, 3), (3, 0)), ((3, 0, 2), (2, 4)),
                                    ((0, 2, 3), (0, 3, 4))], ids=str)
def test_empty_torch_results_have_torchs_strides(backend, dtype, shapes):
    """An empty result of a torch call has the strides torch's own has: the Numba kernel's
    numpy result (a zero-size dim gives numpy zero strides throughout) came back with strides
    (0, 0), which torch never gives (a user hunt: a patched Linear on a (0, 32) batch)."""
    a, b = torch.randn(*shapes[0]).to(dtype), torch.randn(*shapes[1]).to(dtype)
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
    ref = torch.matmul(a, b)
    assert c.shape == ref.shape and c.stride() == ref.stride() and c.dtype == ref.dtype


@st.composite
def operand(draw, rows: int, cols: int, batch: tuple[int, ...], dtype: str, rng):
    """A (batch..., rows, cols) operand with the values of a fresh random array, laid out as
    drawn: contiguous, transposed, strided (every other column of a larger buffer) or reversed
    (negative strides on both matrix axes)."""
    kind = draw(st.sampled_from(["contiguous", "transposed", "strided", "reversed"]))
    x = rand(rng, (*batch, rows, cols), dtype)
    if kind == "transposed":
        return np.swapaxes(np.ascontiguousarray(np.swapaxes(x, -1, -2)), -1, -2)
    if kind == "strided":
        big = np.zeros((*batch, rows, 2 * cols), dtype)
        big[..., ::2] = x
        return big[..., ::2]
    if kind == "reversed":
        return np.ascontiguousarray(x[..., ::-1, ::-1])[..., ::-1, ::-1]
    return x


@st.composite
def matmul_case(draw):
    """Sizes from 0 (empty M, K or N), batch dims that broadcast (a 1 against a 3, or one operand
    without them), bias, every activation, and NaN/Inf in an input."""
    m, k, n = (draw(st.integers(0, 40)) for _ in range(3))
    batch = draw(st.sampled_from([(), (2,), (3, 1)]))
    a_batch = batch
    b_batch = draw(st.sampled_from([(), batch, tuple(1 for _ in batch)]))
    dtype = draw(st.sampled_from(["f4", "f8"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    a = draw(operand(m, k, a_batch, dtype, rng))
    b = draw(operand(k, n, b_batch, dtype, rng))
    bias = rand(rng, (n,), dtype) if draw(st.booleans()) else None
    poison = draw(st.sampled_from([None, None, np.nan, np.inf, -np.inf]))
    if poison is not None and a.size:
        a = a.copy()
        a.flat[rng.integers(a.size)] = poison
    activation = draw(st.sampled_from([None, *ACTIVATIONS]))
    return a, b, bias, activation


@given(case=matmul_case(), backend=st.sampled_from(CPU_BACKENDS))
@settings(max_examples=80, deadline=None)
def test_hypothesis_shapes_strides_batches(case, backend):
    a, b, bias, activation = case
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b, bias=bias, activation=activation)
    assert isinstance(c, np.ndarray) and c.dtype == a.dtype
    assert_matmul_close(c, a, b, bias, activation)


VECTOR_SHAPES = [((5,), (5, 3)), ((4, 5), (5,)), ((5,), (5,)), ((2, 4, 5), (5,)),
                 ((5,), (2, 5, 3)), ((1,), (1, 1)), ((7,), (3, 7, 2))]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shapes", VECTOR_SHAPES, ids=str)
def test_a_vector_operand_as_np_and_torch_matmul(backend, shapes, rng):
    # a (K,) operand raised "must have at least 2 dims"; np.matmul and torch.matmul take it
    a, b = rand(rng, shapes[0]), rand(rng, shapes[1])[..., ::-1]  # (b: negative strides too)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    with kernelkit.use(backend=backend):
        got = kernelkit.matmul(a, b)
        got_t = kernelkit.matmul(torch.from_numpy(a), torch.from_numpy(b.copy()))
    assert type(got) is type(np.matmul(a, b)) and np.shape(got) == want.shape
    assert isinstance(got_t, torch.Tensor) and tuple(got_t.shape) == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-5, atol=1e-5)
    # the bias is added to the result's last dim, as a @ b + bias broadcasts it: (N,) for a
    # vector a, (M,) for a vector b (the product then b @ a^T), (1,) for two vectors
    bias = rand(rng, want.shape[-1:] or (1,))
    with kernelkit.use(backend=backend):
        y = kernelkit.matmul(a, b, bias=bias, activation="relu")
        a_t, b_t, bias_t = map(torch.from_numpy, (a, b.copy(), bias))
        y_t = kernelkit.matmul(a_t, b_t, bias=bias_t, activation="relu")
    np.testing.assert_allclose(y, np.maximum(want + bias, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_t.numpy(), np.maximum(want + bias, 0), rtol=1e-5, atol=1e-5)


def test_a_vector_operand_with_a_bias_under_torchs_transforms_as_in_eager():
    # a review caught the first form: under vmap (and dispatch modes, meta, FakeTensor) a vector
    # b's (M,) bias broadcast against the (M, 1) column product, and every row got bias[0]
    g = torch.Generator().manual_seed(6)
    w, bias, xs = (torch.randn(4, 5, generator=g), torch.randn(4, generator=g),
                   torch.randn(3, 5, generator=g))
    want = xs @ w.t() + bias
    got = torch.func.vmap(lambda x: kernelkit.matmul(w, x, bias=bias))(xs)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.stack([kernelkit.matmul(w, x, bias=bias) for x in xs]), want)
    with pytest.raises(ValueError, match=r"\(given 'a' \(4,\), 'b' \(3, 5\); a vector 'a' is "
                                         r"the row \(1, K\)"):
        kernelkit.matmul(np.ones(4, np.float32), np.ones((3, 5), np.float32))


def test_a_vector_operand_takes_gradients_and_explain_as_torch():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    kernelkit.matmul(a, b).sum().backward()
    grads = [x.grad.clone() for x in (a, b)]
    a.grad = b.grad = None
    torch.matmul(a, b).sum().backward()
    for got, x in zip(grads, (a, b)):
        torch.testing.assert_close(got, x.grad)
    with kernelkit.use(tune="model"):
        ex = kernelkit.explain("matmul", a.detach(), b.detach())
    assert ex.problem.shapes == ((3, 1, 6), (3, 6, 2))
    with kernelkit.use(tune="model"):  # (a vector b with a bias: explained as the op runs it)
        ex = kernelkit.explain("matmul", np.ones((4, 5), np.float32), np.ones(5, np.float32),
                               bias=np.ones(4, np.float32))
    assert ex.problem.shapes == ((1, 1, 5), (1, 5, 4))


def test_autograd_matches_torch():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    kernelkit.matmul(a, b, bias=bias, activation="silu").sum().backward()
    grads = [x.grad.clone() for x in (a, b, bias)]
    for x in (a, b, bias):
        x.grad = None
    torch.nn.functional.silu(a @ b + bias).sum().backward()
    for got, x in zip(grads, (a, b, bias)):
        torch.testing.assert_close(got, x.grad)


# -- half precision on the CPU --------------------------------------------------------------------
HALF = [torch.float16, torch.bfloat16]
HALF_BACKENDS = ["numba", "torch"]  # (numpy has no BLAS for float16, and no bfloat16)


@pytest.mark.parametrize("backend", HALF_BACKENDS)
@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("mkn", [(1, 1, 1), (7, 1, 5), (13, 17, 19), (97, 61, 89), (1, 300, 67),
                                 (130, 257, 65)], ids=str)
def test_half_precision_torch_tensors(backend, dtype, mkn):
    """float16 and bfloat16 CPU tensors in, the same dtype out, accumulated in float32 (the
    normwise bound of a float32 reduction plus one half-precision rounding)."""
    m, k, n = mkn
    g = torch.Generator().manual_seed(m * 1000 + k)
    a, b = torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype)
    bias = torch.randn(n, generator=g).to(dtype)
    with kernelkit.use(backend=backend):
        c = kernelkit.matmul(a, b)
        cb = kernelkit.matmul(a, b, bias=bias, activation="gelu")
    assert isinstance(c, torch.Tensor) and c.dtype == dtype and cb.dtype == dtype
    assert_matmul_close(c, a, b, acc="float32")
    assert_matmul_close(cb, a, b, bias, "gelu", acc="float32")


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_half_precision_strides_batches_nan_and_empty(dtype):
    g = torch.Generator().manual_seed(7)
    a = torch.randn(3, 29, 23, generator=g).to(dtype).transpose(1, 2)  # (3, 23, 29), transposed
    b = torch.randn(58, 11, generator=g).to(dtype)[::2]  # (29, 11), row stride 2
    with kernelkit.use(backend="numba"):
        assert_matmul_close(kernelkit.matmul(a, b), a, b, acc="float32")
        x = torch.randn(6, 5, generator=g).to(dtype)
        x[1, 2], x[3, 0] = float("nan"), float("inf")
        y = torch.randn(5, 4, generator=g).to(dtype)
        y[:, 3] = 0
        c = kernelkit.matmul(x, y)
        ref = x.double() @ y.double()
        assert torch.equal(c.isnan(), ref.isnan()) and torch.equal(c.isinf(), ref.isinf())
        e = kernelkit.matmul(torch.randn(3, 0).to(dtype), torch.randn(0, 4).to(dtype))
        assert e.dtype == dtype and torch.equal(e, torch.zeros(3, 4, dtype=dtype))


def test_half_precision_numpy_float16(rng):
    a, b = rand(rng, (31, 37), np.float16), rand(rng, (37, 41), np.float16)
    with kernelkit.use(backend="numba"):
        c = kernelkit.matmul(a, b)
    assert isinstance(c, np.ndarray) and c.dtype == np.float16
    assert_matmul_close(c, a, b, acc="float32")


def test_half_precision_prior_knows_torch_is_scalar_without_the_instructions(monkeypatch,
                                                                            tmp_path):
    """Before anything is measured, the cost model must not send half precision to torch on a
    CPU without AVX-512 BF16 / FP16 (torch runs scalar loops there: 30x slower than float32)."""
    from kernelkit import devices
    from kernelkit.autotune import tuner

    seen = []
    real = tuner.choose
    monkeypatch.setattr(tuner, "choose", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    for i, (flags, want) in enumerate(((frozenset({"avx2", "fma"}), "numba-cpu"),
                                       (frozenset({"avx512f", "avx512_bf16"}), "torch-cpu"))):
        monkeypatch.setattr(devices, "cpu_flags", lambda flags=flags: flags)
        a = torch.randn(128 + i, 128).to(torch.bfloat16)  # a new size each time: a new decision
        with kernelkit.use(tune="model", cache_dir=tmp_path):
            kernelkit.matmul(a, a.T)
        assert seen[-1].candidate == want and seen[-1].source == "model", (flags, seen[-1])


def test_default_policy_tunes_and_reuses(rng, tmp_path):
    a, b = rand(rng, (64, 64)), rand(rng, (64, 64))
    with kernelkit.use(cache_dir=tmp_path, tune="measure"):
        c1 = kernelkit.matmul(a, b)
        c2 = kernelkit.matmul(a, b)
    assert_matmul_close(c1, a, b)
    assert np.array_equal(c1, c2)
    assert (tmp_path / "autotune.jsonl").exists()


# -- bad input -----------------------------------------------------------------------------------
BAD = [
    (lambda: (np.ones((), np.float32), np.ones((3, 2), np.float32)), ValueError,
     r"'a' must be a vector \(K,\) or have at least 2 dims \(\.\.\., M, K\), got shape \(\)"),
    (lambda: (np.ones(3, np.float32), np.ones((4, 2), np.float32)), ValueError, "K=3"),
    (lambda: (np.ones((2, 3), np.float32), np.ones((4, 2), np.float32)), ValueError, "K=3"),
    (lambda: (np.ones((2, 3), np.float32), torch.ones(3, 2)), TypeError, "same array library"),
    (lambda: (torch.ones(2, 3), torch.ones(3, 2, device="meta")), ValueError, "same device"),
    (lambda: (np.ones((2, 3), np.int32), np.ones((3, 2), np.int32)), TypeError,
     "dtype of 'a' and 'b' must be"),
    (lambda: (np.ones((2, 3), np.float32), np.ones((3, 2), np.float64)), TypeError, "same dtype"),
    (lambda: (np.ones((2, 2, 3), np.float32), np.ones((3, 3, 2), np.float32)), ValueError,
     "do not broadcast"),
    (lambda: ([[1.0, 2.0]], np.ones((2, 2), np.float32)), TypeError, "argument 'a'"),
    (lambda: (np.ones((2, 3), np.float32), "b"), TypeError, "argument 'b'"),
]


@pytest.mark.parametrize("make,exc,match", BAD)
def test_bad_input(make, exc, match):
    a, b = make()
    with pytest.raises(exc, match=match) as info:
        kernelkit.matmul(a, b)
    assert str(info.value).startswith("matmul:")


def test_bad_bias_and_activation():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"'bias' must have shape \(N,\) = \(4,\)"):
        kernelkit.matmul(a, b, bias=np.ones(3, np.float32))
    with pytest.raises(TypeError, match="'bias' must have the dtype"):
        kernelkit.matmul(a, b, bias=np.ones(4, np.float64))
    with pytest.raises(ValueError, match="'activation' must be None or one of"):
        kernelkit.matmul(a, b, activation="tanh")
    for x, y in ((a, b), (torch.from_numpy(a), torch.from_numpy(b))):
        # an unhashable one: before, the plan memo's lookup raised "unhashable type: 'list'"
        with pytest.raises(TypeError, match="'activation' must be None or one of"):
            kernelkit.matmul(x, y, activation=["relu"])


def test_forced_choice_that_cannot_run_raises():
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="forced device=cuda"), kernelkit.use(device="cuda"):
        kernelkit.matmul(a, b)
    with pytest.raises(ValueError, match="forced backend=numpy"), kernelkit.use(backend="numpy"):
        # numpy has no BLAS for half precision: the backend does not take it
        kernelkit.matmul(torch.ones(2, 3, dtype=torch.float16), torch.ones(3, 4, dtype=torch.float16))
    # use()'s own argument is named (it said KERNELKIT_BACKEND), and a non-string one raised
    # AttributeError: 'int' object has no attribute 'lower'
    with pytest.raises(ValueError, match=r"kernelkit.use\(backend=...\) must be one of"):
        kernelkit.use(backend="cublas").__enter__()
    for bad in (dict(tune=1), dict(backend=3), dict(cache_dir=123), dict(cache_dir="")):
        with pytest.raises(TypeError, match=rf"kernelkit.use\({next(iter(bad))}=...\) must be"):
            kernelkit.use(**bad).__enter__()


def test_explain_without_the_op_name_says_what_it_takes():
    """explain(a, b), as one would call matmul, used to put the whole of `a` into a ValueError
    ("unknown op 'array([[...'"); the op's name or function is its first argument."""
    a, b = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match=r"explain: 'op' must be an op's name or function, one of "
                                        r"\[.*'matmul'.*\], got ndarray$"):
        kernelkit.explain(a, b)
    with pytest.raises(ValueError, match="explain: unknown op 'matmull'"):
        kernelkit.explain("matmull", a, b)
    assert kernelkit.explain(kernelkit.matmul, a, b).problem.op == "matmul"
    with pytest.raises(TypeError, match=r"explain: matmul takes .*\(a, b, \*, bias=None.*"
                                        r"missing a required argument: 'b'"):
        kernelkit.explain("matmul", a)  # (was: "prepare() missing 1 required positional ...")


def test_yes_no_and_number_variables_say_when_a_value_is_not_understood(monkeypatch):
    # KERNELKIT_FROZEN_WEIGHTS=true was silently off (only "1" counted), and a non-numeric or
    # negative KERNELKIT_BUSY_SHARE, KERNELKIT_OPENMP_TEAM=abc were taken without a word
    from kernelkit import frozen
    from kernelkit.autotune import timing
    from kernelkit.kernels.numba import _native

    for value, on in (("true", True), ("ON", True), ("1", True), ("no", False), ("0", False)):
        monkeypatch.setenv("KERNELKIT_FROZEN_WEIGHTS", value)
        assert frozen.weights_frozen() is on
    monkeypatch.setenv("KERNELKIT_FROZEN_WEIGHTS", "perhaps")
    with pytest.warns(UserWarning, match="KERNELKIT_FROZEN_WEIGHTS='perhaps' is not 1 or 0"):
        assert frozen.weights_frozen() is False
    monkeypatch.setenv("KERNELKIT_NATIVE_SHARES", "abc")
    with pytest.warns(UserWarning, match="KERNELKIT_NATIVE_SHARES='abc'.*using True"):
        assert _native.enabled() is True
    for value in ("abc", "-1"):
        monkeypatch.setenv("KERNELKIT_BUSY_SHARE", value)
        with pytest.warns(UserWarning, match=f"KERNELKIT_BUSY_SHARE='{value}' is not a number"):
            assert timing.busy_share() == timing.BUSY_SHARE
    monkeypatch.setenv("KERNELKIT_BUSY_SHARE", "0.5")
    assert timing.busy_share() == 0.5


def test_env_knobs(monkeypatch, rng):
    a, b = rand(rng, (9, 9)), rand(rng, (9, 9))
    monkeypatch.setenv("KERNELKIT_BACKEND", "torch")
    monkeypatch.setenv("KERNELKIT_TUNE", "off")
    ex = kernelkit.explain("matmul", a, b)
    assert ex.skipped["numba-cpu"] == "KERNELKIT_BACKEND=torch"
    monkeypatch.setenv("KERNELKIT_TUNE", "sometimes")
    with pytest.raises(ValueError, match="KERNELKIT_TUNE"):
        kernelkit.matmul(a, b)


def test_plan_memo_follows_the_knobs(monkeypatch, rng):
    """Leaving one use() block and entering another must never reuse the first block's plan."""
    import kernelkit.kernels.numba.matmul as numba_mm

    calls = []
    original = numba_mm.matmul_forward
    monkeypatch.setattr(numba_mm, "matmul_forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    a, b = rand(rng, (6, 5)), rand(rng, (5, 4))
    for _ in range(10):
        with kernelkit.use(backend="numba"):
            kernelkit.matmul(a, b)
        with kernelkit.use(backend="torch"):
            kernelkit.matmul(a, b)
            with kernelkit.use(tune="off"):  # nested: the inner block keeps the outer's backend
                kernelkit.matmul(a, b)
    assert len(calls) == 10


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, None])
def test_negative_stride_on_a_size_one_dim(backend, rng):
    """Every array numpy accepts works: a reversed size-1 dim has a negative stride that means
    nothing (numpy calls the array contiguous); torch rejects it unless it is zeroed."""
    a = rng.standard_normal((1, 4))[::-1, :]
    b = rng.standard_normal((4, 3))
    rev = rng.standard_normal((5, 4))[::-1, ::-1]  # truly reversed dims too
    assert a.strides[0] < 0
    with kernelkit.use(backend=backend):
        np.testing.assert_allclose(kernelkit.matmul(a, b), a @ b, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(kernelkit.matmul(rev, b), rev @ b, rtol=1e-12, atol=1e-12)


def test_cpu_matmul_candidates_per_data_library():
    """numpy's BLAS is a candidate for numpy arrays only (after it, torch's next OpenMP region
    waits for a core behind OpenBLAS's spinning workers: Backend.own_data_only), unless forced;
    torch's CPU matmul for both where numpy's BLAS runs the dtype (MKL beats OpenBLAS on Xeons;
    on numpy data its plan steps aside to numpy's BLAS while OpenBLAS spins: the test below).
    Numba takes both; torch runs numpy data's conv2d."""
    from kernelkit import core
    from kernelkit.autotune import tuner
    from kernelkit.settings import Settings

    def usable(op, dims, dtype, lib, forced=None):
        spec = core.op_spec(op)
        args, kwargs = spec.make_inputs(dims, dtype, lib)
        problem = spec.prepare(*args, **kwargs).problem
        ok, skipped = tuner.split_candidates(problem, core.candidates(op), Settings(backend=forced))
        return {c.name for c in ok}, skipped

    names, _ = usable("matmul", (16, 16, 16), "float32", "numpy")
    assert names == {"numpy-cpu", "numba-cpu", "torch-cpu"}
    names, skipped = usable("matmul", (16, 16, 16), "float16", "numpy")  # no numpy BLAS to step
    assert names == {"numba-cpu"} and "stall" in skipped["torch-cpu"]  # aside to
    names, skipped = usable("matmul", (16, 16, 16), "float32", "torch")
    assert names == {"torch-cpu", "numba-cpu"} and "stall" in skipped["numpy-cpu"]
    assert usable("matmul", (16, 16, 16), "float32", "torch", "numpy")[0] == {"numpy-cpu"}
    assert usable("matmul", (16, 16, 16), "float32", "numpy", "torch")[0] == {"torch-cpu"}
    assert "torch-cpu" in usable("conv2d", (1, 4, 8, 4, 3, 1, 1, 1), "float32", "numpy")[0]


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 64, 33)], ids=str)
def test_torch_plan_on_numpy_data_runs_numpy_blas_while_openblas_spins(shape, rng, monkeypatch):
    """torch chosen for numpy data: its plan runs torch's BLAS, except within threads.BLAS_SPIN_S
    of kernelkit's last numpy BLAS call, where it runs numpy's (torch's OpenMP region would wait
    behind OpenBLAS's spinning workers: 7 ms for a 0.03 ms product); a forced backend never
    steps aside. Each call's result is the product."""
    from kernelkit import core, threads
    from kernelkit.ops import dispatch
    from kernelkit.ops import matmul as op

    m, k, n = shape
    a, b = rand(rng, (m, k)), rand(rng, (k, n))[:, ::-1]
    call = op.prepare(a, b)
    torch_cand = core.get("matmul", "torch-cpu")
    ran_torch = []
    real_bind = call.bind

    def bind(cand, config):
        plan = real_bind(cand, config)
        if cand.name != "torch-cpu":
            return plan
        return lambda *args: ran_torch.append(1) or plan(*args)

    monkeypatch.setattr(call, "bind", bind)
    plan, forced = dispatch._bound(call, torch_cand, {}, False), dispatch._bound(call, torch_cand,
                                                                              {}, True)
    monkeypatch.setattr(threads, "_blas_until", [0.0])  # nothing spinning
    for p, by_torch in ((plan, True), (forced, True)):
        ran_torch.clear()
        mark = threads.blas_mark()
        assert_matmul_close(p(a, b, None), a, b)
        assert bool(ran_torch) is by_torch and threads.blas_mark() == mark
    threads.blas_called()  # kernelkit's numpy BLAS just ran
    ran_torch.clear()
    assert_matmul_close(plan(a, b, None), a, b)
    assert not ran_torch and threads.blas_spinning()  # numpy's BLAS ran, and noted it
    assert_matmul_close(forced(a, b, None), a, b)
    assert ran_torch


def test_torch_choice_for_numpy_data_never_imports_torch(tmp_path):
    """A choice of torch for numpy data (cached by a process that had torch) runs numpy's BLAS
    in a process that has not imported torch, and does not import it."""
    code = """if True:
        import sys
        import numpy as np
        from kernelkit import core
        from kernelkit.ops import dispatch
        from kernelkit.ops import matmul as op
        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        b = np.ones((4, 5), np.float32)
        call = op.prepare(a, b)
        plan = dispatch._bound(call, core.get("matmul", "torch-cpu"), {}, False)
        np.testing.assert_allclose(plan(a, b, None), a @ b)
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_torch_choice_for_numpy_data_steps_aside_in_a_forked_worker():
    """GNU OpenMP's team does not survive a fork: torch's own product hangs in a worker forked
    after the parent ran one. A torch plan for numpy data made in the parent runs numpy's BLAS in
    such a worker, and the tuner there leaves torch out (a multi-threaded torch only: torch's
    DataLoader workers run one thread)."""
    code = """if True:
        import multiprocessing as mp
        import numpy as np
        import torch
        from kernelkit import core, settings
        from kernelkit.autotune import tuner
        from kernelkit.ops import dispatch
        from kernelkit.ops import matmul as op
        torch.set_num_threads(2)
        a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
        torch.mm(torch.from_numpy(a), torch.from_numpy(a))  # the parent's team has run
        call = op.prepare(a, a)
        plan = dispatch._bound(call, core.get("matmul", "torch-cpu"), {}, False)
        np.testing.assert_allclose(plan(a, a, None), a @ a, rtol=1e-4, atol=1e-3)

        def work(threads):
            torch.set_num_threads(threads)
            ok, skipped = tuner.split_candidates(call.problem, core.candidates("matmul"),
                                                 settings.Settings())
            return float(np.abs(plan(a, a, None) - a @ a).max()), sorted(c.name for c in ok)

        with mp.get_context("fork").Pool(1) as pool:
            err, names = pool.apply_async(work, (2,)).get(timeout=60)
            assert err < 1e-2 and "torch-cpu" not in names, (err, names)
            err, names = pool.apply_async(work, (1,)).get(timeout=60)
            assert err < 1e-2 and "torch-cpu" in names, (err, names)
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_numpy_calls_get_a_plan_per_dtype_shape_and_strides(rng):
    """Two numpy arrays take a cheaper signature than other arrays (ops/matmul.py): it must
    still tell every dtype, shape and layout apart, and stay apart from other libraries' keys."""
    from kernelkit.ops import matmul as op

    a, b = rand(rng, (5, 7)), rand(rng, (7, 5))
    calls = [(a, b), (np.asfortranarray(a), b), (a, b[:, ::-1]), (a.astype(np.float64),
             b.astype(np.float64)), (a[:, :5], b[:5]), (torch.from_numpy(a), torch.from_numpy(b))]
    with kernelkit.use(backend="numba"):  # one forced candidate: a plain plan per signature
        op._PLANS.clear()
        for x, y in calls:
            out = kernelkit.matmul(x, y)
            assert out.dtype == x.dtype and type(out) is type(x)
            assert_matmul_close(np.asarray(out), np.asarray(x), np.asarray(y))
        assert len(op._PLANS) == len(calls)
        for x, y in calls:  # and every call finds its own plan again
            assert_matmul_close(np.asarray(kernelkit.matmul(x, y)), np.asarray(x), np.asarray(y))
        assert len(op._PLANS) == len(calls)


NO_TORCH_SCRIPT = r"""
import sys
sys.modules["torch"] = None  # an environment without torch (installed with --no-deps)
import numpy as np, kernelkit
rng = np.random.default_rng(0)
a, b = rng.random((64, 48), np.float32), rng.random((48, 40), np.float32)
bias = rng.random(40, np.float32)
with kernelkit.use(tune="measure", cache_dir=sys.argv[1]):
    for act in (None, "relu", "gelu", "gelu_tanh", "silu"):
        c = kernelkit.matmul(a, b, bias=bias, activation=act)
print("ok")
"""


def test_matmul_tunes_and_runs_where_torch_is_not_installed(tmp_path):
    """The float64 reference of the tuner's verification and the numpy backend's epilogue
    imported torch: a matmul of numpy data ran until the tuner first measured (call 3782 of a
    loop, under `auto`), then raised "every candidate failed (... No module named 'torch')"."""
    r = subprocess.run([sys.executable, "-c", NO_TORCH_SCRIPT, str(tmp_path)], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "KERNELKIT_COMPILE": "foreground"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_the_numpy_gelu_and_silu_hold_their_relative_accuracy_in_the_tails():
    # the numpy backend's epilogue (no torch installed): 0.5 x (1 + erf) cancelled for x < 0
    # (2.6x the value at -8 in float32) and SiLU was -0.0 below -88.72 (exp(-x) overflowed)
    from kernelkit.kernels import numpy_activation

    x = np.concatenate([np.linspace(-9, -0.01, 2011, dtype=np.float32),
                        np.array([-91.5, -90.0, -89.0], np.float32)])
    x64 = torch.from_numpy(x).double()
    want = {"gelu": (0.5 * x64 * torch.special.erfc(-x64 / np.sqrt(2))).numpy(),
            "silu": (x64 * torch.sigmoid(x64)).numpy()}
    for act, ref in want.items():
        got = numpy_activation(x, act).astype(np.float64)
        keep = np.abs(ref) >= np.finfo(np.float32).tiny
        err = np.abs(got - ref)[keep] / np.abs(ref)[keep]
        assert err.max() <= 1e-6, (act, float(err.max()), float(x[keep][np.argmax(err)]))


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh", "silu"])
def test_the_numpy_activations_equal_torchs(activation):
    from kernelkit.kernels import numpy_activation, torch_activations

    x = np.random.default_rng(1).standard_normal(1000) * 4
    x[:3] = (0.0, -0.0, 50.0)
    want = torch_activations()[activation](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(numpy_activation(x, activation), want, rtol=1e-12, atol=1e-15)


NUMPY_ONLY_SCRIPT = r"""
import sys, numpy as np, kernelkit
a = np.ones((64, 64), np.float32)
x, w = np.ones((2, 3, 16, 16), np.float32), np.ones((4, 3, 3, 3), np.float32)
img = np.ones((2, 40, 50, 3), np.uint8)
for _ in range(2):
    kernelkit.matmul(a, a)
    kernelkit.conv2d(x, w, padding=1)
    kernelkit.preprocess(img, size=20, mean=0.0, std=1.0)
from kernelkit import devices
print("torch" in sys.modules, devices.gpu_driver_present())
"""


def test_a_numpy_programs_calls_import_torch_only_where_a_gpu_driver_is(tmp_path):
    """Asking torch's candidates whether they support a call imported their kernel modules, and
    so torch (0.9 s of a numpy program's first call), as did the CUDA probe, on a machine with
    no GPU driver; a thread that called meanwhile met a half-imported torch."""
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path)}
    for _ in range(2):  # a cold cache, then a warm one
        r = subprocess.run([sys.executable, "-c", NUMPY_ONLY_SCRIPT], capture_output=True,
                           text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-2000:]
        imported, driver = r.stdout.split()
        assert imported == driver, r.stdout


def test_a_module_another_thread_is_importing_is_not_taken_for_imported(monkeypatch):
    import importlib.machinery
    import types

    from kernelkit import devices

    half = types.ModuleType("kk_half_made")
    half.__spec__ = importlib.machinery.ModuleSpec("kk_half_made", None)
    half.__spec__._initializing = True  # (importlib's mark while the module body runs)
    monkeypatch.setitem(sys.modules, "kk_half_made", half)
    assert devices.imported("kk_half_made") is None
    half.__spec__._initializing = False
    assert devices.imported("kk_half_made") is half
    assert devices.imported("kk_not_imported") is None
    assert devices.imported_torch() is torch


def test_torchs_kernel_modules_need_not_be_imported_to_be_asked():
    """torch's backends say what their modules would answer (no ``supports``; the vendor's one
    config), so asking imports nothing."""
    import importlib

    from kernelkit import core
    from kernelkit.kernels.config import vendor_space

    asked = [(b, f"{b.package}.{spec.kernel}") for b in core.backends() if not b.own_supports
             for spec in core.op_specs()]
    assert "kernelkit.kernels.torch.matmul" in {name for _, name in asked}
    for backend, name in asked:
        if importlib.util.find_spec(name) is not None:
            module = importlib.import_module(name)
            assert not hasattr(module, "supports"), name
            assert backend.space is module.space is vendor_space, name


class _Deadline(Exception):
    """A request's deadline, raised by the caller's own SIGALRM handler."""


def test_an_exception_from_the_callers_signal_handler_during_tuning_is_the_callers(tmp_path):
    """It was caught as the running config's failure: the call ran on past its deadline (8 of 8
    calls returned) and the cache stored "TimeoutError: deadline" as that config's result."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run on the main thread")
    rng = np.random.default_rng(3)
    a, b = rng.random((200, 300), np.float32), rng.random((300, 250), np.float32)

    def deadline(signum, frame):
        raise _Deadline

    with kernelkit.use(tune="measure", cache_dir=tmp_path / "warm"):
        kernelkit.matmul(a, b)  # every candidate's modules imported (see the next test)
    previous = signal.signal(signal.SIGALRM, deadline)
    try:
        with kernelkit.use(tune="measure", cache_dir=tmp_path), pytest.raises(_Deadline):
            signal.setitimer(signal.ITIMER_REAL, 0.03)
            kernelkit.matmul(a, b)  # measuring every candidate and config: well past 30 ms
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    stored = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert "_Deadline" not in stored
    with kernelkit.use(tune="measure", cache_dir=tmp_path):  # and the next call tunes in full
        np.testing.assert_allclose(kernelkit.matmul(a, b), a @ b, rtol=1e-4, atol=1e-4)


def test_what_counts_as_raised_by_a_signal_handler():
    import signal

    from kernelkit.signals import raised_by_signal_handler

    def raise_here():
        raise ValueError("not from a handler")

    def handler(signum, frame):
        raise_here()  # (the handler's frame is in the traceback, not innermost)

    for call in (raise_here, lambda: handler(signal.SIGUSR1, None)):
        with pytest.raises(ValueError) as info:
            call()
        previous = signal.signal(signal.SIGUSR1, handler)
        try:
            assert raised_by_signal_handler(info.value) == (call is not raise_here)
        finally:
            signal.signal(signal.SIGUSR1, previous)
        assert not raised_by_signal_handler(info.value)  # (no longer a handler)
    assert not raised_by_signal_handler(ValueError("never raised"))


def test_threads_meeting_a_new_size_at_once_tune_it_once(tmp_path, monkeypatch):
    """Four serving threads that met a new size each measured it (about 1 s apiece, the
    timings taken while the others loaded the cores) and each stored an entry."""
    import threading

    from kernelkit.autotune import tuner

    measured, running, most = [], [0], [0]
    real = tuner._measure_all

    def counted(*args, **kwargs):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            measured.append(args[0].shapes)
            return real(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(tuner, "_measure_all", counted)
    rng = np.random.default_rng(5)
    a = rng.standard_normal((96, 80), dtype=np.float32)
    b = rng.standard_normal((80, 72), dtype=np.float32)
    barrier, outs = threading.Barrier(4), []

    def serve():
        barrier.wait()
        with kernelkit.use(tune="measure", cache_dir=tmp_path):
            outs.append(kernelkit.matmul(a, b))

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(outs) == 4
    for out in outs:
        assert_matmul_close(out, a, b)
    assert len(measured) == 1 and most[0] == 1


def test_a_thread_that_waited_for_anothers_model_choice_does_not_measure_at_once(
        tmp_path, monkeypatch):
    """Under `auto` a new size runs the model's choice until measuring pays for itself. A thread
    that waited for another's decision counted its call after that one had set the recheck
    budget, so it measured at once (about 1 s on a request thread)."""
    import threading
    import time

    from kernelkit.autotune import tuner

    measured = []
    real_measure, real_decide = tuner._measure_all, tuner.decide
    monkeypatch.setattr(tuner, "_measure_all",
                        lambda *a, **k: measured.append(1) or real_measure(*a, **k))
    monkeypatch.setattr(tuner, "decide",
                        lambda *a, **k: time.sleep(0.3) or real_decide(*a, **k))
    a = np.random.default_rng(6).standard_normal((88, 72), dtype=np.float32)
    barrier, sources = threading.Barrier(2), []

    def serve():
        barrier.wait()
        with kernelkit.use(tune="auto", cache_dir=tmp_path):
            sources.append(kernelkit.matmul(a, a.T))

    threads = [threading.Thread(target=serve) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(sources) == 2 and not measured


FORK_SCRIPT = r"""
import multiprocessing as mp, threading, time
from kernelkit.autotune import tuner

def child(q):
    got = [tuner._MEASURING.acquire(timeout=5), tuner._DECIDING_LOCK.acquire(timeout=5)]
    q.put(got)

held = threading.Event()
def hold():
    with tuner._MEASURING, tuner._DECIDING_LOCK:
        held.set()
        time.sleep(3)
threading.Thread(target=hold, daemon=True).start()
held.wait()
ctx = mp.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
print(q.get(timeout=30))
p.join(30)
"""


def test_a_forked_child_does_not_inherit_the_tuners_locks_held():
    """A thread tuning when the main thread forked DataLoader workers left the tuner's locks
    held in the children, whose first decision then waited forever."""
    r = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[True, True]", (r.stdout, r.stderr[-2000:])


def test_damaged_entries_in_an_import_or_the_file_cost_only_themselves(tmp_path):
    """An imported entry without a config in its choice made calls of its size raise KeyError,
    and one whose trials were not a list every call of its family (through the cost model);
    `cache import` took them all."""
    import copy
    import json
    import warnings

    from kernelkit.autotune.cache import FILENAME, CacheWarning, cache_for, read_export

    rng = np.random.default_rng(8)
    a, b = rng.random((96, 80), np.float32), rng.random((80, 72), np.float32)
    with kernelkit.use(tune="measure", cache_dir=tmp_path / "a"):
        kernelkit.matmul(a, b)
    doc = cache_for(tmp_path / "a").export()
    (good,) = doc["entries"]
    damaged = {"no config": lambda e: e["choice"].pop("config"),
               "trials a string": lambda e: e.update(trials="oops"),
               "a trial without config": lambda e: e["trials"][0].pop("config"),
               "a timing not a number": lambda e: e["trials"][0].update(median="fast"),
               # (these two raised "math domain error" / OverflowError in every call of the
               # family, through the cost model, under pinned, model and auto)
               "an infinite median": lambda e: e["trials"][0].update(median=float("inf")),
               "an infinite flops": lambda e: e["problem"].update(flops=float("inf"))}
    for i, damage in enumerate(damaged.values()):
        row = copy.deepcopy(good)
        row["key"] = good["key"] + f"|damaged{i}"
        damage(row["entry"])
        doc["entries"].append(row)
    (tmp_path / "export.json").write_text(json.dumps(doc))
    with pytest.warns(CacheWarning, match="left out 6 damaged entries"):
        records, fps = read_export(tmp_path / "export.json")
    assert list(records) == [(good["fp"], good["key"])]
    # the same damage written straight into a cache file: each line is left out on reading
    target = tmp_path / "b"
    target.mkdir()
    no_config = copy.deepcopy(good)  # and a damaged later line for the size called
    no_config["entry"]["choice"].pop("config")
    lines = [json.dumps({"fp": r["fp"], "key": r["key"], "entry": r["entry"]})
             for r in [*doc["entries"], no_config]]
    fp_line = json.dumps({"fp": good["fp"], "fingerprint": doc["header"]["fingerprints"][good["fp"]]})
    (target / FILENAME).write_text("\n".join([fp_line, *lines]) + "\n")
    c = rng.random((200, 200), np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        for tune in ("pinned", "auto", "model"):
            with kernelkit.use(tune=tune, cache_dir=target):
                assert_matmul_close(kernelkit.matmul(a, b), a, b)
                assert_matmul_close(kernelkit.matmul(c, c), c, c)  # the family's cost model


def test_the_tune_mode_of_a_call_is_obeyed_for_a_size_decided_under_another(tmp_path,
                                                                            monkeypatch):
    """The decision memo left the mode out: after a choice under "model", `use(tune="measure")`
    measured nothing and wrote no cache."""
    from kernelkit.autotune import tuner
    from kernelkit.autotune.cache import FILENAME

    measured = []
    real = tuner._measure_all
    monkeypatch.setattr(tuner, "_measure_all", lambda *a, **k: measured.append(1) or real(*a, **k))
    a = np.random.default_rng(9).random((76, 68), np.float32)
    for tune in ("model", "off", "pinned"):
        with kernelkit.use(tune=tune, cache_dir=tmp_path):
            kernelkit.matmul(a, a.T)
    assert not measured and not (tmp_path / FILENAME).exists()
    with kernelkit.use(tune="measure", cache_dir=tmp_path):
        kernelkit.matmul(a, a.T)
    assert measured == [1] and (tmp_path / FILENAME).exists()


def test_explain_under_pinned_model_or_off_neither_measures_nor_writes(tmp_path, monkeypatch):
    """explain always measured and stored: a pinned cache ("never measure, never write") grew,
    and what it showed as measured was not what the call ran (under `model` too: "the cost
    model only")."""
    from kernelkit.autotune import tuner
    from kernelkit.autotune.cache import FILENAME

    measured = []
    real = tuner._measure_all
    monkeypatch.setattr(tuner, "_measure_all", lambda *a, **k: measured.append(1) or real(*a, **k))
    a = np.random.default_rng(10).random((52, 44), np.float32)
    for tune, source in (("pinned", "model"), ("model", "model"), ("off", "default")):
        with kernelkit.use(tune=tune, cache_dir=tmp_path):
            ex = kernelkit.explain("matmul", a, a.T)
        assert ex.choice.source == source, (tune, ex.choice)
    assert not measured and not (tmp_path / FILENAME).exists()


def test_explain_says_when_its_measurement_ran_on_a_busy_machine(tmp_path, monkeypatch):
    """A measurement taken while other processes loaded the machine is stored as provisional;
    explain printed it as "(measured)", as a quiet machine's, and a cache hit of it as
    "(cache)"."""
    from kernelkit.autotune import timing

    def choice(text) -> str:  # (a note may follow it: "numba-cpu led by 1.7 us, within ...")
        return next(line for line in str(text).splitlines() if line.startswith("choice:"))

    monkeypatch.setattr(timing, "machine_busy", lambda before, after: True)
    a = np.random.default_rng(11).random((36, 28), np.float32)
    with kernelkit.use(cache_dir=tmp_path):
        fresh = choice(kernelkit.explain("matmul", a, a.T))
        with kernelkit.use(tune="pinned"):
            hit = choice(kernelkit.explain("matmul", a, a.T))
    assert fresh.endswith("(measured, provisional: timed while other processes loaded the "
                          "machine)"), fresh
    assert hit.endswith("(cache, provisional: timed while other processes loaded the machine)")
    monkeypatch.setattr(timing, "machine_busy", lambda before, after: False)
    with kernelkit.use(cache_dir=tmp_path):  # measured again on a quiet machine: said so
        assert choice(kernelkit.explain("matmul", a, a.T)).endswith("(measured)")
