"""The Numba conv's packed weights kept across calls inside `kernelkit.frozen_weights()`
(kernels/numba/_packs.py): kept only there and only for torch tensors the ops layer passed, used
only while the tensor is unchanged, bounded in bytes; every result checked against a float64
reference of the weights as they are at that call."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import kernelkit  # noqa: E402
from kernelkit.kernels.numba import _packs  # noqa: E402
from kernelkit.kernels.numba import conv2d as nconv  # noqa: E402

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def fresh(tmp_path):
    """Kept packs start empty; the convs run the default config (a cache of their own, not
    tuned): what an earlier test measured into the session's cache could pick the implicit GEMM,
    which keeps nothing (the clean-clone CI failed three of these tests once that way)."""
    _packs.clear()
    with kernelkit.frozen_weights(), kernelkit.use(cache_dir=tmp_path, tune="off"):
        yield
    _packs.clear()


def _tensors(n=1, c=24, hw=28, k=40, r=3):
    # 28 px: 26 slivers of the shifted GEMM's grid, 13 a thread, so its weight is packed (and
    # kept); on smaller planes at batch 1 it is read where it lies (SHIFT_INPLACE_SLIVERS)
    x = torch.from_numpy(RNG.standard_normal((n, c, hw, hw), dtype=np.float32))
    w = torch.from_numpy(RNG.standard_normal((k, c, r, r), dtype=np.float32))
    return x, w


def _conv(x, w, **kw):
    with kernelkit.use(backend="numba"):
        return kernelkit.conv2d(x, w, padding=1, **kw)


def _check(y, x, w):
    ref = F.conv2d(x.double(), w.double(), padding=1)
    scale = F.conv2d(x.double().abs(), w.double().abs(), padding=1)
    assert torch.all((y.double() - ref).abs() <= 1e-5 * scale + 1e-6), "wrong result"


def test_kept_across_calls_and_used_while_unchanged(monkeypatch):
    x, w = _tensors()
    looked = []
    real = _packs.lookup
    monkeypatch.setattr(_packs, "lookup", lambda *a: looked.append(r := real(*a)) or r)
    for _ in range(3):
        _check(_conv(x, w), x, w)
    assert len(_packs._ENTRIES) == 1
    assert looked[0] is None and all(p is not None for p in looked[1:])  # packed once


def test_nothing_is_kept_outside_frozen_weights(monkeypatch):
    """Not opted in: a change through .data (which torch's version counter does not count, as
    gradcheck and older optimizers make) is seen, because nothing was kept."""
    x, w = _tensors()
    p = torch.nn.Parameter(w.clone())
    with kernelkit.frozen_weights(False):
        _check(_conv(x, p.detach()), x, p.detach())
        assert not _packs._ENTRIES
        p.data.mul_(-1.0)
        _check(_conv(x, p.detach()), x, p.detach())
    monkeypatch.setenv("KERNELKIT_FROZEN_WEIGHTS", "1")  # the process-wide switch
    with kernelkit.frozen_weights(False):
        pass
    from kernelkit import frozen

    assert frozen.weights_frozen()


def test_a_change_behind_the_version_counter_needs_forgetting():
    """Inside the block a .data change is not seen (the documented caveat) until the packs are
    forgotten."""
    x, w = _tensors()
    p = torch.nn.Parameter(w.clone())
    before = _conv(x, p.detach())
    p.data.mul_(-1.0)
    assert torch.equal(_conv(x, p.detach()), before)  # stale, as documented
    kernelkit.forget_packed_weights()
    _check(_conv(x, p.detach()), x, p.detach())


@pytest.mark.parametrize("change", ["mul_", "copy_", "zero_", "optimizer", "fused_adam",
                                    "fused_sgd", "data"])
def test_an_in_place_change_is_seen(change):
    x, w = _tensors()
    p = torch.nn.Parameter(w.clone())
    _check(_conv(x, p.detach()), x, p.detach())
    with torch.no_grad():
        if change == "mul_":
            p.mul_(-0.5)
        elif change == "copy_":
            p.copy_(torch.from_numpy(RNG.standard_normal(tuple(p.shape), dtype=np.float32)))
        elif change == "zero_":
            p[3].zero_()
        elif change == "data":  # a new tensor behind the parameter: another address
            p.data = torch.from_numpy(RNG.standard_normal(tuple(p.shape), dtype=np.float32))
    if change == "optimizer":
        p.grad = torch.ones_like(p)
        torch.optim.SGD([p], lr=0.1).step()
    elif change.startswith("fused"):  # (they do not bump the version: were kept, stale)
        p.grad = torch.from_numpy(RNG.standard_normal(tuple(p.shape), dtype=np.float32))
        kind = torch.optim.Adam if change == "fused_adam" else torch.optim.SGD
        kind([p], lr=0.1, fused=True).step()
    _check(_conv(x, p.detach()), x, p.detach())


def test_inference_tensors_are_packed_every_call_and_changes_seen():
    # a weight made under torch.inference_mode has no version counter: reading it raised
    # "Inference tensors do not track version counter" on every packed conv in the block
    x, w = _tensors()
    with torch.inference_mode():
        wi = w.clone()
        _check(_conv(x, wi), x, wi)
        wi.mul_(-0.5)  # allowed on an inference tensor in inference mode, and not counted
        _check(_conv(x, wi), x, wi)
    assert not _packs._ENTRIES


def test_numpy_data_and_numpy_views_of_tensors_are_never_kept():
    x, w = _tensors()
    wn = w.numpy()  # a user's numpy view of a tensor: it can change behind the tensor's back
    y = _conv(x.numpy(), wn)
    wn[0] += 1.0  # torch's version counter does not see this
    y2 = _conv(x.numpy(), wn)
    assert not _packs._ENTRIES
    ref = F.conv2d(x.double(), torch.from_numpy(wn).double(), padding=1)
    assert torch.allclose(torch.from_numpy(y2).double(), ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(torch.from_numpy(y).double(), ref, rtol=1e-4, atol=1e-4)


def test_a_freed_weight_never_lends_its_pack_to_a_new_one():
    """The entry holds the tensor, so a new weight of the same shape cannot take its address."""
    x, w = _tensors()
    _check(_conv(x, w), x, w)
    del w
    for _ in range(5):
        _, w2 = _tensors()
        _check(_conv(x, w2), x, w2)


def test_bounded_in_bytes_least_recently_used_out(monkeypatch):
    x, _ = _tensors()
    ws = [_tensors()[1] for _ in range(4)]
    _conv(x, ws[0])
    one = _packs._BYTES[0]
    assert one > 0
    monkeypatch.setattr(_packs, "PACK_CACHE_BYTES", 2 * one)
    for w in ws[1:]:
        _check(_conv(x, w), x, w)
        assert _packs._BYTES[0] <= 2 * one
    assert len(_packs._ENTRIES) == 2
    kept = {e[0].data_ptr() for e in _packs._ENTRIES.values()}
    assert kept == {ws[2].data_ptr(), ws[3].data_ptr()}


def test_off_switch_and_one_call_of_each_way_agree(monkeypatch):
    monkeypatch.setattr(nconv, "ROWS_MAX_PLANE", 0)  # (the shifted GEMM both ways)
    x, w = _tensors(n=2, c=32, hw=14, k=48)
    kept = [_conv(x, w) for _ in range(2)]
    monkeypatch.setattr(nconv, "KEEP_PACKS", False)
    fresh = _conv(x, w)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[1], fresh)


def test_the_pixel_rows_conv_kept_and_packed_per_call_agree():
    """Its kept weight (all slivers packed at once) and its shares' per-call slivers are the
    same layout: the same sums, bit for bit."""
    import dataclasses

    x, w = _tensors(n=2, c=32, hw=7, k=48)
    kept = [_conv(x, w) for _ in range(2)]
    assert len(_packs._ENTRIES) == 1
    rows = dataclasses.replace(nconv.Conv2dConfig.default(np.float32), kernel="rows")
    fresh = nconv.conv2d_forward(x.numpy(), w.numpy(), None, (1, 1), (1, 1, 1, 1), (1, 1), 1,
                                 None, "NCHW", rows)
    assert nconv._rows_by_default(9, 7, 7, (1, 1), True)  # (auto ran it, kept)
    assert torch.equal(kept[0], kept[1]) and torch.equal(kept[1], torch.from_numpy(fresh))


def test_threads_sharing_one_kept_weight():
    x, w = _tensors(n=1, c=32, hw=12, k=64)
    _conv(x, w)
    errors = []

    def work():
        try:
            for _ in range(10):
                _check(_conv(x, w), x, w)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors


def test_bfloat16_pairs_kept_and_changes_seen():
    from kernelkit.kernels.numba import _gemm

    if not _gemm.HAS_BF16_DOT:
        pytest.skip("the bfloat16 pairs kernel needs AVX-512 BF16")
    x, w = _tensors(c=32, k=32)
    xb, wb = x.bfloat16(), w.bfloat16()
    a = _conv(xb, wb)
    b = _conv(xb, wb)
    assert len(_packs._ENTRIES) == 1 and torch.equal(a, b)
    ref = F.conv2d(xb.double(), wb.double(), padding=1)
    assert torch.allclose(a.double(), ref, rtol=2e-2, atol=2e-1)
    with torch.no_grad():
        wb.neg_()
    c = _conv(xb, wb)
    assert torch.equal(c, -a)


def test_kept_weight_beside_the_exact_columns_packed_b(monkeypatch):
    """A batch of small planes runs the shifted GEMM over exact columns, whose whole packed B
    then has a scratch of its own beside the kept weight: right on the packing call and on the
    kept ones, a fresh input each time."""
    from kernelkit.kernels.numba import _conv as kconv

    monkeypatch.setattr(nconv, "SHIFT_WIDE", True)  # "auto": the shifted GEMM on any CPU
    monkeypatch.setattr(nconv, "SHIFT_EXACT_WASTE", 0.0)
    monkeypatch.setattr(nconv, "EXACT_INPLACE", False)  # (else nothing of the weight is packed)
    monkeypatch.setattr(nconv, "ROWS_MAX_PLANE", 0)  # (else "auto" runs the pixel-rows conv)
    geos = []
    real = nconv._launch
    monkeypatch.setattr(nconv, "_launch", lambda fn, tn, p, *a: geos.append(a[-1].copy())
                        or real(fn, tn, p, *a))
    _, w = _tensors(n=5, hw=7)
    for _ in range(3):
        x = torch.from_numpy(RNG.standard_normal((5, 24, 7, 7), dtype=np.float32))
        _check(_conv(x, w), x, w)
    assert len(_packs._ENTRIES) == 1
    assert [(g[kconv.G_PACKB], g[kconv.G_WPACKED]) for g in geos] == [(1, 0), (1, 1), (1, 1)]


def test_the_copies_an_autocast_region_casts_are_not_kept():
    """With grad each call casts the weight anew: every copy was packed, kept and held (80
    entries after 40 calls of a 2-conv model, up to the cache's cap plus the copies themselves).
    (Without grad, inside `frozen_weights()`, the layer keeps one cast, whose pack is kept:
    tests/nn/test_autocast.py.)"""
    conv = kernelkit.nn.patch(torch.nn.Conv2d(24, 40, 3, padding=1)).model
    x = torch.randn(1, 24, 28, 28)
    with torch.autocast("cpu", torch.bfloat16), kernelkit.use(backend="numba"):
        for _ in range(4):
            y = conv(x)
    assert y.dtype == torch.bfloat16
    assert not _packs._ENTRIES


@pytest.mark.parametrize("how", ["prune", "weight_norm"])
def test_a_weight_made_anew_each_call_is_not_kept(how):
    """A pruned or parametrized layer's weight is a new tensor each call: each call's was packed
    and kept with it, never used again (300 calls of a pruned 2-conv model: 111 packs, the 256
    MB cap, 1.07 GB peak against 485 MB; a user hunt). The layer's own parameters are kept."""
    from torch.nn.utils import parametrizations, prune

    conv = kernelkit.nn.patch(torch.nn.Conv2d(24, 40, 3, padding=1)).model
    plain = kernelkit.nn.patch(torch.nn.Conv2d(24, 40, 3, padding=1)).model
    if how == "prune":
        prune.l1_unstructured(conv, "weight", amount=0.3)
    else:
        parametrizations.weight_norm(conv)
    x = torch.randn(1, 24, 28, 28)
    with torch.no_grad(), kernelkit.use(backend="numba"):
        for _ in range(4):
            y = conv(x)
        torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, padding=1),
                                   rtol=1e-4, atol=1e-4)
        assert not _packs._ENTRIES
        plain(x)
        assert len(_packs._ENTRIES) == 1


def test_a_weight_that_is_the_same_tensor_each_call_is_kept_outside_parameters():
    """Only a weight a parametrization or a forward pre-hook makes is left out: one registered
    as a buffer, or set as a plain attribute, is the same tensor every call (a review: the
    first version of that rule left these out too)."""
    conv = kernelkit.nn.patch(torch.nn.Conv2d(24, 40, 3, padding=1)).model
    w = conv.weight.detach().clone()
    del conv.weight
    conv.register_buffer("weight", w)
    x = torch.randn(1, 24, 28, 28)
    with torch.no_grad(), kernelkit.use(backend="numba"):
        for _ in range(3):
            conv(x)
    assert len(_packs._ENTRIES) == 1


def test_a_bfloat16_models_own_weights_are_kept_under_autocast():
    """Only the copies autocast casts are left out: a bfloat16 model's input cast from float32
    kept its own weights from being kept too."""
    from kernelkit.kernels.numba import _gemm

    if not _gemm.HAS_BF16_DOT:  # (elsewhere a bfloat16 conv runs on a float32 copy: no pack)
        pytest.skip("the bfloat16 pairs kernel needs AVX-512 BF16")
    conv = kernelkit.nn.patch(torch.nn.Conv2d(24, 40, 3, padding=1)).model.to(torch.bfloat16)
    x = torch.randn(1, 24, 28, 28)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16), kernelkit.use(backend="numba"):
        for _ in range(3):
            conv(x)
    assert len(_packs._ENTRIES) == 1


def test_a_kept_pack_whose_weight_moved_is_not_used_for_what_took_its_place():
    """``share_memory_()`` (``model.share_memory()``, a spawned worker's argument) moves a
    weight's storage in place and lets go of the old block; the kept pack stays under the old
    address. A weight that then lives at that address, at the same version, convolved with the
    first weight's pack (a user hunt: a second patched conv built after ``share_memory()``, under
    the serving allocator setting). Here the old block is a numpy buffer both weights view, so
    the second weight lands there for certain; its version is the first one's (0)."""
    x, w = _tensors()
    buf = w.numpy().copy()
    first = torch.from_numpy(buf)
    _check(_conv(x, first), x, first)
    _check(_conv(x, first), x, first)  # (the kept pack used)
    assert len(_packs._ENTRIES) == 1
    first.share_memory_()  # its storage moves to shared memory; `buf` keeps the old block
    assert first.data_ptr() != buf.ctypes.data
    buf[...] = RNG.standard_normal(buf.shape, dtype=np.float32)  # another weight, in place
    second = torch.from_numpy(buf)
    assert second._version == first._version
    _check(_conv(x, second), x, second)


def test_the_pixel_rows_conv_keeps_its_packed_weight_and_sees_changes(monkeypatch):
    """On a batch of small planes "auto" runs the pixel-rows conv where the weight can be kept
    (here): packed once as output-channel slivers, used while the tensor is unchanged, packed
    again after an in-place change."""
    ran = []
    real = nconv._conv_rows
    monkeypatch.setattr(nconv, "_conv_rows", lambda *a: ran.append(1) or real(*a))
    x, w = _tensors(n=3, c=21, hw=7, k=37)
    p = torch.nn.Parameter(w.clone())
    for _ in range(2):
        _check(_conv(x, p.detach()), x, p.detach())
    assert len(ran) == 2 and len(_packs._ENTRIES) == 1
    with torch.no_grad():
        p.mul_(-0.5)
    _check(_conv(x, p.detach()), x, p.detach())
    assert len(ran) == 3
