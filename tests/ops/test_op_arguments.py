"""The ops' arguments as a user may pass them: views torch negates lazily, arguments that the
checks reject after a valid call memoised its plan, and what preprocess's arguments take.

Found by using the ops as a user would (a session's hunt, 2026-12-05); each test failed before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernelkit


def _t(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _neg(t: torch.Tensor) -> torch.Tensor:
    """`t`'s values as a lazily negated view (what ``x.conj().imag`` gives): its memory holds -t."""
    v = torch._neg_view(-t)
    assert v.is_neg() and torch.equal(v, t)
    return v


OPS = {
    "matmul": (lambda a, b: kernelkit.matmul(a, b), lambda a, b: a @ b,
               lambda: (_t(9, 11, seed=1), _t(11, 13, seed=2))),
    "conv2d": (lambda x, w: kernelkit.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
               lambda: (_t(2, 3, 8, 9, seed=1), _t(4, 3, 3, 3, seed=2))),
}


@pytest.mark.parametrize("name,backend", [
    (name, backend) for name in OPS for backend in ("numba", "numpy", "torch", None)
    if (name, backend) != ("conv2d", "numpy")])  # (numpy has no conv2d)
def test_a_lazily_negated_view_is_computed_with_its_values(name, backend):
    """Before, the Numba and numpy backends raised torch's "Can't call numpy() on Tensor that has
    negative bit set", also unforced, when a plain tensor of the same geometry had memoised a
    Numba plan (the memo's key does not carry the flag)."""
    op, ref, make = OPS[name]
    a, b = make()
    with kernelkit.use(backend=backend, tune="off"):
        op(a, b)  # a plain call of the same geometry first: the negated one meets its plan
        got = op(_neg(a), _neg(b))
    torch.testing.assert_close(got, ref(a, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_lazily_negated_image_batch_is_preprocessed_with_its_values(backend):
    imgs = torch.rand(2, 10, 12, 3, generator=torch.Generator().manual_seed(3)) * 255
    kw = dict(size=5, mean=(1.0, 2.0, 3.0), std=(2.0, 3.0, 4.0))
    with kernelkit.use(backend=backend):
        want = kernelkit.preprocess(imgs, **kw)
        got = kernelkit.preprocess(_neg(imgs), **kw)
    torch.testing.assert_close(got, want)


X, W = np.random.default_rng(0).random((1, 3, 9, 9), np.float32), \
    np.random.default_rng(1).random((4, 3, 3, 3), np.float32)
A = np.random.default_rng(2).random((5, 5), np.float32)
IMG = np.random.default_rng(3).integers(0, 256, (1, 10, 10, 3), dtype=np.uint8)
PP = dict(size=8, mean=0.0, std=1.0, antialias=False)

# (what a valid call passes, the same with an argument the checks reject: Python finds the two
# equal (2.0 == 2, True == 1, 0 == False), so the plan memo's key took them for one)
REJECTED_AFTER_VALID = {
    "conv2d stride 2.0": (lambda: kernelkit.conv2d(X, W, stride=2),
                          lambda: kernelkit.conv2d(X, W, stride=2.0)),
    "conv2d stride (2.0, 2)": (lambda: kernelkit.conv2d(X, W, stride=(2, 2)),
                               lambda: kernelkit.conv2d(X, W, stride=(2.0, 2))),
    "conv2d groups True": (lambda: kernelkit.conv2d(X, W, groups=1),
                           lambda: kernelkit.conv2d(X, W, groups=True)),
    "conv2d allow_tf32 1": (lambda: kernelkit.conv2d(X, W, allow_tf32=True),
                            lambda: kernelkit.conv2d(X, W, allow_tf32=1)),
    "matmul numpy allow_tf32 1": (lambda: kernelkit.matmul(A, A, allow_tf32=True),
                                  lambda: kernelkit.matmul(A, A, allow_tf32=1)),
    "matmul torch allow_tf32 0": (
        lambda: kernelkit.matmul(torch.from_numpy(A), torch.from_numpy(A), allow_tf32=False),
        lambda: kernelkit.matmul(torch.from_numpy(A), torch.from_numpy(A), allow_tf32=0)),
    "preprocess size 8.0": (lambda: kernelkit.preprocess(IMG, **PP),
                            lambda: kernelkit.preprocess(IMG, **{**PP, "size": 8.0})),
    "preprocess antialias 0": (lambda: kernelkit.preprocess(IMG, **PP),
                               lambda: kernelkit.preprocess(IMG, **{**PP, "antialias": 0})),
}


@pytest.mark.parametrize("case", list(REJECTED_AFTER_VALID))
def test_an_argument_the_checks_reject_is_rejected_after_a_valid_call_too(case):
    valid, invalid = REJECTED_AFTER_VALID[case]
    with pytest.raises((TypeError, ValueError)) as first:
        invalid()
    valid()
    valid()
    with pytest.raises((TypeError, ValueError)) as again:  # before: the valid call's plan ran
        invalid()
    assert str(again.value) == str(first.value)


def test_allow_tf32_must_be_a_bool():
    with pytest.raises(TypeError, match=r"matmul: 'allow_tf32' must be a bool, got 'no'"):
        kernelkit.matmul(A, A, allow_tf32="no")  # ("no" is a true string: TF32 on, before)
    with pytest.raises(TypeError, match=r"conv2d: 'allow_tf32' must be a bool, got 'no'"):
        kernelkit.conv2d(X, W, allow_tf32="no")
    assert kernelkit.matmul(A, A, allow_tf32=np.bool_(False)).shape == (5, 5)


def test_numpy_integers_key_their_own_plan_and_give_the_same_result():
    from kernelkit.ops import conv2d as C

    want = kernelkit.conv2d(X, W, stride=2, groups=1)
    plans = len(C._FORWARD)
    got = kernelkit.conv2d(X, W, stride=np.int64(2), groups=np.int32(1))
    assert len(C._FORWARD) == plans + 1  # not the int's plan
    np.testing.assert_allclose(got, want, rtol=1e-5)  # (each plan tuned on its own)


@pytest.mark.parametrize("kw,match", [
    (dict(channel_order=(2.9, 1.2, 0.7)), "permutation of channel indices"),  # was (2, 1, 0)
    (dict(channel_order=[2.0, 1.0, 0.0]), "permutation of channel indices"),
    (dict(rotate=True), "rotate"),  # was a 1-degree rotation
    (dict(rotate=[0, False]), "rotate of image 1"),
    (dict(rotate=10, fill=True), "fill"),
    (dict(rotate=10, fill=[True, 0.0]), "fill"),
    (dict(channel_order=np.array(2)), "permutation of channel indices"),
    (dict(channel_order=torch.tensor([2.0, 1.0, 0.0])), "permutation of channel indices"),
], ids=str)
def test_preprocess_rejects_what_is_no_channel_index_or_number(kw, match):
    imgs = np.concatenate([IMG, IMG])
    with pytest.raises(TypeError, match=match):
        kernelkit.preprocess(imgs, **{**PP, **kw})


def test_preprocess_takes_a_zero_dim_array_of_degrees():
    """A 0-d array is one number (was "must be one value for all images or one per image")."""
    got = kernelkit.preprocess(IMG, **PP, rotate=np.array(90.0))
    np.testing.assert_array_equal(got, kernelkit.preprocess(IMG, **PP, rotate=90))
    for order in (np.array([2, 1, 0]), torch.tensor([2, 1, 0])):
        np.testing.assert_array_equal(kernelkit.preprocess(IMG, **PP, channel_order=order),
                                      kernelkit.preprocess(IMG, **PP, channel_order="rgb2bgr"))


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_preprocess_of_images_that_require_grad_never_requires_grad(backend):
    """Whether autograd saw the result depended on the backend the tuner chose: torch's gave a
    result with a grad_fn, Numba's none. preprocess has no gradient on any backend."""
    imgs = torch.rand(2, 30, 40, 3).requires_grad_()
    with kernelkit.use(backend=backend):
        out = kernelkit.preprocess(imgs, size=8, mean=0.5, std=0.2)
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("backend", [None, "numba", "torch"])
@pytest.mark.parametrize("kind", ["masked", "matrix"])
def test_numpy_subclasses_whose_meaning_a_kernel_drops_are_rejected(kind, backend):
    """A masked array's mask (Numba ignored it; torch's candidate raised numpy's broadcast
    error) and np.matrix (kept by one backend's `@`, not by another's result): a TypeError
    naming the op and the argument, on every backend. A memmap, another subclass, still runs."""
    a = np.ma.array(A, mask=A > 0.5) if kind == "masked" else np.matrix(A)
    img = np.ma.array(IMG) if kind == "masked" else None
    with kernelkit.use(backend=backend):
        with pytest.raises(TypeError, match=r"matmul: argument 'a' must be a numpy array \(not"):
            kernelkit.matmul(a, A)
        with pytest.raises(TypeError, match=r"matmul: argument 'b' must be a numpy array \(not"):
            kernelkit.matmul(A, a)
        if img is not None:
            with pytest.raises(TypeError, match=r"conv2d: 'x' must be a numpy array \(not"):
                kernelkit.conv2d(np.ma.array(X), W)
            with pytest.raises(TypeError, match=r"preprocess: 'images' must be"):
                kernelkit.preprocess(img, **PP)


class _Doubled(np.ndarray):
    """A subclass with ufunc rules of its own (as an astropy Quantity has units): every result
    doubled."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(v) for v in inputs]
        return (np.asarray(getattr(ufunc, method)(*plain, **kwargs)) * 2).view(_Doubled)


class _Tag(np.ndarray):
    """A subclass without rules of its own (a user's array type)."""


@pytest.mark.parametrize("backend", [None, "numpy", "numba", "torch"])
def test_numpy_subclasses_give_one_result_whichever_backend_runs(backend):
    """A subclass with array rules of its own: numpy's `@` followed them (results doubled), the
    Numba and torch candidates did not, so the values depended on the backend that won: a
    TypeError on every backend now, as for masked arrays. A subclass without rules of its own:
    numpy's `@` returned the subclass, the others a plain array: a plain array from all."""
    with kernelkit.use(backend=backend):
        for op, call in (("matmul: argument 'a'", lambda v: kernelkit.matmul(v, A)),
                         ("conv2d: 'x'", lambda v: kernelkit.conv2d(v, W))):
            x = A if op.startswith("matmul") else X
            with pytest.raises(TypeError, match=op + r" must be a numpy array \(not a masked "
                               r"array, np.matrix or a subclass with array rules of its own\)"):
                call(x.view(_Doubled))
        got = kernelkit.matmul(A.view(_Tag), A.view(_Tag))
        assert type(got) is np.ndarray
        np.testing.assert_allclose(got, A.astype(np.float64) @ A, rtol=1e-5, atol=1e-5)


def test_a_memmap_is_a_numpy_array(tmp_path):
    m = np.memmap(tmp_path / "a.bin", dtype=np.float32, mode="w+", shape=A.shape)
    m[:] = A
    np.testing.assert_allclose(kernelkit.matmul(m, A), A.astype(np.float64) @ A, rtol=1e-5)


def test_an_integer_matmul_names_both_arguments():
    with pytest.raises(TypeError, match=r"matmul: the dtype of 'a' and 'b' must be one of"):
        kernelkit.matmul(A.astype(np.int32), A.astype(np.int32))


@pytest.mark.parametrize("op", ["matmul", "conv2d", "preprocess"])
def test_a_non_native_byte_order_is_named_in_the_error(op):
    """'>f4' is float32 to a reader (and numpy computes with it): the error said only "must be
    one of (..., 'float32', ...), got >f4". It now says the byte order is the problem and how
    to convert; a dtype refused whatever its byte order ('>u2' images) gets no such advice."""
    call = {"matmul": lambda dt: kernelkit.matmul(A.astype(dt), A.astype(dt)),
            "conv2d": lambda dt: kernelkit.conv2d(np.ones((1, 2, 5, 5), dt), np.ones((3, 2, 3, 3),
                                                                                     dt)),
            "preprocess": lambda dt: kernelkit.preprocess(np.ones((1, 6, 6, 3), dt), size=4,
                                                          mean=0.0, std=1.0)}[op]
    wanted = "float32"
    big = np.dtype(wanted).newbyteorder(">").str
    with pytest.raises(TypeError, match=rf"got {big} \({wanted} in non-native byte order: "
                                        rf"convert it first, .astype\('{wanted}'\)\)$"):
        call(big)
    with pytest.raises(TypeError, match=r"got [<>=]?[a-z0-9]+$"):
        call(">u2" if op == "preprocess" else ">i4")


@pytest.mark.parametrize("shape", [(16, 16), (3, 16, 16), (4, 3, 16, 16, 1), 5, None,
                                   (4, 3, 16.0, 16), (4, -3, 16, 16)])
@pytest.mark.parametrize("backend", [None, "torch"])
def test_a_backward_ops_shape_argument_is_checked_and_named(shape, backend):
    """conv2d_backward_input's `input_shape` of 3 or 5 dims raised "not enough values to unpack
    (expected 4, got 2)", an int "'int' object is not iterable": nothing named the op or the
    argument (weight_shape's non-sequences the same)."""
    import torch

    g, w = torch.randn(4, 8, 16, 16), torch.randn(8, 3, 3, 3)
    with kernelkit.use(backend=backend):
        with pytest.raises(ValueError, match=r"conv2d_backward_input: 'input_shape' must be the "
                                             r"forward input's shape, .* got "):
            kernelkit.conv2d_backward_input(g, w, shape, padding=1)
        if not (isinstance(shape, tuple) and len(shape) == 4):
            with pytest.raises(ValueError, match=r"conv2d_backward_weight: 'weight_shape' must "
                                                 r"be \(K, C // groups, R, S\), 4 non-negative"):
                kernelkit.conv2d_backward_weight(torch.randn(4, 3, 16, 16), g, shape, padding=1)
        assert kernelkit.conv2d_backward_input(g, w, torch.Size((4, 3, 16, 16)),
                                               padding=1).shape == (4, 3, 16, 16)


def test_a_backward_ops_shape_given_as_a_numpy_array_runs_its_memoised_plan(monkeypatch):
    """`_tuple_key` (this session) keyed an ndarray shape as itself, unhashable: every call
    prepared its plan again (90 us a call against 15, a review)."""
    import torch

    from kernelkit.ops import conv2d as conv_module

    prepared = []
    real = conv_module.prepare_backward_input
    monkeypatch.setattr(conv_module, "prepare_backward_input",
                        lambda *a, **kw: prepared.append(1) or real(*a, **kw))
    g, w = torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3)
    for _ in range(3):
        kernelkit.conv2d_backward_input(g, w, np.array([1, 2, 4, 4]), padding=1)
    assert len(prepared) == 1
