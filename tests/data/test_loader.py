"""kernelkit.data: decode sized to the crop, the Loader's batches against a per-image float64
reference, reproducibility, timings, the torch DataLoader adapter (fork and spawn workers that
never tune), and bad arguments."""

from __future__ import annotations

import importlib
import io
import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from resample_ref import crop_resize

import kernelkit
from kernelkit import data
from kernelkit.autotune.cache import Cache
from kernelkit.ops.preprocess_args import dtype_name

MEAN01, STD01 = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZE = (40, 48)


def _png(rng, h, w) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _gray_jpeg(rng, h, w) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """13 labelled items: JPEG bytes and paths of several sizes (some large enough for a DCT-scaled
    decode), a PNG, a grayscale JPEG and a decoded array."""
    rng = np.random.default_rng(0)
    jpegs = data.make_jpegs(8, sizes=[(120, 160), (300, 200), (96, 96), (410, 333)], seed=1)
    paths = data.make_jpegs(2, sizes=[(200, 260)], seed=2,
                            directory=tmp_path_factory.mktemp("jpg"))
    srcs = [*jpegs, *paths, _png(rng, 50, 70), _gray_jpeg(rng, 64, 90),
            rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)]
    return [(s, 10 + i) for i, s in enumerate(srcs)]


def _reference(item, index, *, seed, epoch, augment):
    """One image through an independent float64 chain: the draw from kernelkit.augment, the DCT
    scale and whole-pixel box worked out here, then crop + flip + antialiased resize + [0, 1]
    normalisation (tests/resample_ref.py)."""
    source, _ = item
    if isinstance(source, np.ndarray):
        full, jpeg = source, False
    else:
        raw = source if isinstance(source, bytes) else Path(source).read_bytes()
        full = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        jpeg = raw[:2] == b"\xff\xd8"
    H, W = full.shape[:2]
    aug = kernelkit.augment([index], [(H, W)], seed=seed, epoch=epoch, **augment)
    top, left, bh, bw = aug.crop[0]
    s = 1
    if jpeg:
        s = max([1] + [k for k in (2, 4, 8) if bh / k >= SIZE[0] and bw / k >= SIZE[1]])
    img = full
    if s > 1:
        img = data.decode(data.read_source(raw), s)  # the decoder itself is the library's
        assert img.shape[:2] == (math.ceil(H / s), math.ceil(W / s))
        t, l = round(top / s), round(left / s)
        top, left = t, l
        bh, bw = round((aug.crop[0][0] + bh) / s) - t, round((aug.crop[0][1] + bw) / s) - l
    elif jpeg:
        img = data.decode(data.read_source(raw), 1)
    out = crop_resize(img.astype(np.float64), (top, left, bh, bw), SIZE)
    if aug.flip[0][0]:
        out = out[:, ::-1]
    out = (out / 255 - np.array(MEAN01)) / np.array(STD01)
    return out.transpose(2, 0, 1)


AUG = {"scale": (0.25, 1.0), "hflip": 0.5}


def test_batches_match_the_per_image_reference_within_one_level(items):
    loader = data.Loader(items, batch_size=5, size=SIZE, mean=MEAN01, std=STD01,
                         stats_unit="unit", augment=AUG, seed=3)
    loader.set_epoch(2)
    got, labels = [], []
    for batch, lab in loader:
        assert batch.dtype == np.float32 and batch.shape[1:] == (3, *SIZE)
        got.append(batch)
        labels.append(lab)
    assert [len(b) for b in got] == [5, 5, 3]  # the ragged last batch is kept
    got = np.concatenate(got)
    assert np.concatenate(labels).tolist() == [it[1] for it in items]
    level = 1 / (255 * np.array(STD01))[:, None, None]  # one uint8 level at the output scale
    for i, item in enumerate(items):
        ref = _reference(item, i, seed=3, epoch=2, augment={**AUG})
        err = np.abs(got[i] - ref) / level
        assert err.max() <= 1.0, (i, err.max())
    # some images really took the reduced decode (else the test proves less than it claims)
    scales = [data.load_sample(it, i, size=SIZE, augment={**data.sample.AUGMENT_DEFAULTS, **AUG},
                               seed=3, epoch=2).scale for i, it in enumerate(items)]
    assert max(scales) >= 2 and min(scales) == 1


def test_dct_scale_is_the_smallest_decode_that_covers_the_crop():
    assert data.dct_scale((0, 0, 480, 640), (224, 224)) == 2
    assert data.dct_scale((0, 0, 447, 640), (224, 224)) == 1
    assert data.dct_scale((5, 5, 1800, 1800), (224, 224)) == 8
    assert data.dct_scale((0, 0, 100, 100), (224, 224)) == 1  # an upscaled crop: full size


def test_jpeg_decoder_agrees_with_pil(items, monkeypatch):
    raw = items[3][0]
    assert data.read_source(raw).height == 410
    ours = data.decode(data.read_source(raw), 1)
    pil = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    assert ours.shape == pil.shape
    assert np.abs(ours.astype(int) - pil).mean() < 1.0
    half = data.decode(data.read_source(raw), 2)
    im = Image.open(io.BytesIO(raw))
    im.draft("RGB", (333 // 2, 410 // 2))
    assert np.abs(half.astype(int) - np.asarray(im.convert("RGB"))).mean() < 1.0
    # the PIL fallback (no simplejpeg) decodes at the same scale
    monkeypatch.setattr(importlib.import_module("kernelkit.data.decode"), "_simplejpeg", None)
    enc = data.read_source(raw)
    fallback = data.decode(enc, 2)
    assert fallback.shape == half.shape and np.abs(fallback.astype(int) - half).mean() < 1.0


def test_16_bit_grayscale_png_keeps_its_levels():
    # PIL's convert("RGB") of a 16-bit image clips: the ramp decoded to only 0 and 255
    ramp = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    got = data.decode(data.read_source(buf.getvalue()))
    assert got.shape == (16, 16, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[:, :, 0], (ramp >> 8).astype(np.uint8))


def test_a_file_that_does_not_decode_is_named(items, tmp_path):
    # PIL said "cannot identify image file <_io.BytesIO object at 0x...>" and libjpeg-turbo
    # "Premature end of JPEG file": neither the file nor the sample
    (tmp_path / "notes.jpg").write_bytes(b"not an image\n" * 10)
    good = items[8][0]  # a JPEG path
    (tmp_path / "half.jpg").write_bytes(Path(good).read_bytes()[:2000])
    for name, index in (("notes.jpg", 0), ("half.jpg", 1)):
        dataset = [(str(tmp_path / "notes.jpg"), 0)] if index == 0 else [items[0], (
            str(tmp_path / "half.jpg"), 1)]
        loader = data.Loader(dataset, batch_size=2, size=SIZE, mean=0, std=1, decode_threads=1)
        with pytest.raises(ValueError, match=f"cannot decode sample {index} .*{name}"):
            list(loader)
    with pytest.raises(ValueError, match="sample 3 \\(bytes of 120 bytes\\)"):
        data.load_sample(b"\x89PNG" + bytes(116), 3, size=SIZE, augment=None, seed=0, epoch=0)


def test_batches_do_not_depend_on_batch_size_threads_or_order(items):
    def run(**kw):
        loader = data.Loader(items, size=SIZE, mean=0, std=1, augment=True, seed=5,
                             out_dtype="uint8", **kw)
        loader.set_epoch(1)
        return [(b, lab) for b, lab in loader]

    def same(x, y):  # the same draws; the tuner may pick another kernel per batch shape, and
        # kernels agree within one level
        return np.abs(x.astype(int) - y).max() <= 1

    a = run(batch_size=4, decode_threads=1)
    b = run(batch_size=13, decode_threads=3, prefetch=1, preprocess_threads=1)
    assert same(np.concatenate([x for x, _ in a]), b[0][0])
    shuffled = run(batch_size=6, shuffle=True)
    order = np.concatenate([lab for _, lab in shuffled]) - 10
    assert sorted(order.tolist()) == list(range(len(items))) and order.tolist() != sorted(order)
    assert same(np.concatenate([x for x, _ in shuffled]), b[0][0][order])


def test_epochs_move_on_and_set_epoch_resumes(items):
    loader = data.Loader(items[:4], batch_size=4, size=SIZE, mean=0, std=1, augment=True)
    e0 = next(iter(loader))[0]
    e1 = next(iter(loader))[0]
    loader.set_epoch(0)
    again = next(iter(loader))[0]
    assert not np.array_equal(e0, e1) and np.array_equal(e0, again)


def test_timings_and_the_wait_fraction(items):
    loader = data.Loader(items, batch_size=4, size=SIZE, mean=0, std=1, augment=True)
    for _ in loader:
        time.sleep(0.25)  # a model step of known duration, far longer than preparing a batch
    s = loader.timings.summary()
    assert s["images"] == len(items) and s["batches"] == 4
    assert s["decode_cpu_s"] > 0 and s["preprocess_s"] > 0 and s["copy_s"] < 0.01
    assert s["consume_s"] >= 0.7  # the three gaps between four batches
    assert 0 <= loader.timings.wait_fraction < 0.5
    busy = data.Loader(items, batch_size=4, size=SIZE, mean=0, std=1, augment=True)
    for _ in busy:
        pass  # a consumer that does nothing waits nearly all the time
    assert busy.timings.wait_fraction > 0.8


def test_device_cpu_gives_tensors_and_labels(items):
    batch, labels = next(iter(data.Loader(items[:3], batch_size=3, size=SIZE, mean=0, std=1,
                                          device="cpu")))
    assert isinstance(batch, torch.Tensor) and batch.shape == (3, 3, *SIZE)
    assert labels.tolist() == [10, 11, 12]
    unlabelled = data.Loader([it[0] for it in items[:2]], batch_size=2, size=SIZE, mean=0, std=1)
    assert next(iter(unlabelled))[1] == [None, None]


def test_breaking_out_stops_the_threads(items):
    before = threading.active_count()
    loader = data.Loader(items * 4, batch_size=2, size=SIZE, mean=0, std=1, prefetch=1)
    it = iter(loader)
    next(it)
    it.close()
    it.thread.join(timeout=10)
    assert not it.thread.is_alive()
    time.sleep(0.2)
    assert threading.active_count() <= before + 1


def test_a_broken_image_raises_in_the_consumer(items):
    bad = [items[0], (b"\xff\xd8not a jpeg", 0)]
    with pytest.raises(ValueError):
        for _ in data.Loader(bad, batch_size=2, size=SIZE, mean=0, std=1):
            pass


@pytest.mark.parametrize("kwargs, exc, msg", [
    (dict(batch_size=0), ValueError, "Loader: 'batch_size' must be a positive int, got 0"),
    (dict(size=(0, 4)), ValueError, "Loader: 'size' must be a positive int"),
    (dict(augment={"sclae": (0.1, 1)}), ValueError, "Loader: 'augment' has unknown keys"),
    (dict(augment="yes"), TypeError, "Loader: 'augment' must be None, True or a dict"),
    (dict(prefetch=0), ValueError, "Loader: 'prefetch' must be an int >= 1"),
    (dict(device="tpu"), ValueError, "Loader: 'device' must be None, 'cpu' or a CUDA device"),
    pytest.param(dict(device="cuda"), ValueError, "Loader: 'device' is 'cuda' but torch sees no",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_bad_arguments(items, kwargs, exc, msg):
    kw = dict(batch_size=2, size=SIZE, mean=0, std=1)
    kw.update(kwargs)
    with pytest.raises(exc, match=msg):
        data.Loader(items, **kw)


@pytest.mark.parametrize("make, msg", [
    (lambda: data.Samples([], size=0), r"Samples: 'size' must be a positive int .* got 0$"),
    (lambda: data.Samples([], size=(16,)), r"Samples: 'size' .* got \(16,\)"),
    (lambda: data.Samples([], size=8, augment=5), "Samples: 'augment' must be None"),
    (lambda: data.Collate(size="a", mean=0, std=1), "Collate: 'size' .* got 'a'"),
])
def test_samples_and_collate_check_their_arguments(make, msg):
    # Samples(size=0) was accepted, size=(16,) raised IndexError, Collate(size="a") "invalid
    # literal for int()", and Samples' errors said "Loader:"
    with pytest.raises((ValueError, TypeError), match=msg):
        make()


@pytest.mark.parametrize("kw,msg", [
    (dict(seed=-1), r"Loader: 'seed' must be an int in \[0, 2\*\*128\), got -1"),
    (dict(seed="a"), r"Loader: 'seed' must be an int"),
    (dict(seed=1.5), r"Loader: 'seed' must be an int"),
    (dict(decode_threads=-1), r"Loader: 'decode_threads' must be None or an int >= 0, got -1"),
    (dict(decode_threads="2"), r"Loader: 'decode_threads' must be None or an int >= 0"),
    (dict(preprocess_threads=-2), r"Loader: 'preprocess_threads' must be None or an int >= 0")])
def test_the_loader_checks_seed_and_thread_counts_when_made(kw, msg):
    # these were taken and failed at the first batch with numpy's or the executor's words
    # ("expected non-negative integer"), an "Exception ignored in _Epoch.__del__" traceback
    # and the epoch counted; seed=1.5 was truncated where nothing augments
    imgs = [np.zeros((8, 8, 3), np.uint8)] * 4
    with pytest.raises(ValueError, match=msg):
        data.Loader(imgs, batch_size=2, size=4, mean=0, std=1, shuffle=True, **kw)
    loader = data.Loader(imgs, batch_size=2, size=4, mean=0, std=1)
    with pytest.raises(ValueError, match="Loader: 'epoch' must be an int"):
        loader.set_epoch(-1)
    with pytest.raises(ValueError, match="Samples: 'seed' must be an int"):
        data.Samples(imgs, size=4, seed=-1)
    # what worked before still does: any integer (numpy's, a torch scalar), 0 threads for the
    # default
    loader = data.Loader(imgs, batch_size=2, size=4, mean=0, std=1, seed=np.uint64(2**64 - 1),
                         decode_threads=np.int64(2), preprocess_threads=0)
    loader.set_epoch(torch.tensor(3))
    assert loader.epoch == 3 and loader.decode_threads == 2 and loader.preprocess_threads is None
    assert data.Loader(imgs, batch_size=2, size=4, mean=0, std=1,
                       decode_threads=0).decode_threads == (os.cpu_count() or 1)
    assert data.Samples(imgs, size=4, epoch=torch.tensor(2)).epoch == 2


def test_an_epoch_that_fails_to_start_is_not_counted_and_leaves_no_traceback(monkeypatch,
                                                                              capfd):
    from kernelkit.data import loader as loader_mod

    loader = data.Loader([np.zeros((8, 8, 3), np.uint8)] * 4, batch_size=2, size=4, mean=0,
                         std=1)

    def fail(*args, **kwargs):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(loader_mod, "_Production", fail)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        iter(loader)
    import gc

    gc.collect()
    assert loader.epoch == 0
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_missing_or_unreadable_file_names_its_dataset_index(items, tmp_path):
    # FileNotFoundError named the path alone, not which item of the dataset it was (a user tour)
    ds = [items[0], (str(tmp_path / "gone.jpg"), 1), (str(tmp_path), 2)]
    for index, kind in ((1, FileNotFoundError), (2, IsADirectoryError)):
        loader = data.Loader([ds[0], ds[index]], batch_size=2, size=SIZE, mean=0, std=1,
                             decode_threads=1)
        with pytest.raises(kind, match=f"data: sample 1: .*{ds[index][0].split('/')[-1]}") as e:
            list(loader)
        assert e.value.filename == ds[index][0]


def test_an_empty_or_foreign_image_names_its_dataset_index():
    # "preprocess: image 1 is empty (0x5)" (its place in the batch), "augment: every image
    # size must be at least 1x1" (no sample at all), "got JpegImageFile" (no sample at all)
    ds = [(np.zeros((20, 20, 3), np.uint8), i) for i in range(6)]
    ds[5] = (np.zeros((0, 5, 3), np.uint8), 5)
    for augment in (None, True):
        loader = data.Loader(ds, batch_size=2, size=16, mean=0, std=1, augment=augment)
        with pytest.raises(ValueError, match=r"^data: sample 5 is an empty image \(0x5\)$"):
            list(loader)
    ds[5] = (Image.new("RGB", (4, 4)), 5)
    with pytest.raises(TypeError, match=r"^data: sample 5: an image must be encoded bytes"):
        list(data.Loader(ds, batch_size=2, size=16, mean=0, std=1))


def test_labels_are_stacked_as_torchs_default_collate_stacks_them():
    # 0-d label tensors (or arrays), one-hot vectors: they came back as a Python list, where
    # torch's default_collate stacks them; a label past 64 bits made an object array that
    # torch.from_numpy refused ("can't convert np.ndarray of type numpy.object_")
    img = np.zeros((20, 20, 3), np.uint8)
    kw = dict(batch_size=3, size=8, mean=0, std=1, device="cpu")
    cases = [
        ([torch.tensor(i) for i in (4, 5, 6)], torch.tensor([4, 5, 6])),
        ([np.int64(i) for i in (4, 5, 6)], torch.tensor([4, 5, 6])),
        ([np.array(i, np.int32) for i in (4, 5, 6)], torch.tensor([4, 5, 6], dtype=torch.int32)),
        ([torch.eye(3)[i] for i in range(3)], torch.eye(3)),
        ([np.eye(3, dtype=np.float32)[i] for i in range(3)], torch.eye(3)),
    ]
    for labels, want in cases:
        _, got = next(iter(data.Loader([(img, lab) for lab in labels], **kw)))
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), (labels, got)
        samples = [data.load_sample((img, lab), i, size=SIZE, augment=None, seed=0, epoch=0)
                   for i, lab in enumerate(labels)]
        _, got = data.Collate(size=8, mean=0, std=1)(samples)
        assert torch.equal(got, want)
        _, got = data.Collate(size=8, mean=0, std=1, tensors=False)(samples)
        assert isinstance(got, np.ndarray) and np.array_equal(got, want.numpy())
    # kept as lists: strings, booleans, shapes that differ, mixed kinds, past 64 bits
    for labels in (["a", "b", "c"], [True, False, True], [torch.zeros(2), torch.zeros(3), 1],
                   [torch.tensor(1), 2, 3], [2**64, 1, 2]):
        _, got = next(iter(data.Loader([(img, lab) for lab in labels], **kw)))
        assert isinstance(got, list) and len(got) == 3


def test_bad_dataset_and_image_types():
    with pytest.raises(TypeError, match="Loader: 'dataset' must be a sequence"):
        data.Loader(iter([]), batch_size=1, size=8, mean=0, std=1)
    with pytest.raises(TypeError, match="data: an image must be encoded bytes, a path or a uint8"):
        data.read_source(3.5)
    with pytest.raises(ValueError, match="data: a decoded image must be a uint8"):
        data.read_source(np.zeros((4, 4, 3), np.float32))
    # through a loader the array was "ndarray of 20 bytes" (its first dim) it "cannot decode"
    loader = data.Loader([np.zeros((20, 30, 3), np.uint8), np.zeros((20, 30, 3), np.float32)],
                         batch_size=2, size=8, mean=0.0, std=1.0)
    with pytest.raises(ValueError, match=r"^data: sample 1: a decoded image must be a uint8 .*"
                                         r"got float32 \(20, 30, 3\)$"):
        next(iter(loader))


# -- inside a torch DataLoader -------------------------------------------------------------------
class _TuneProbe(data.Collate):
    """A Collate that also reports the worker's tuning mode and process id."""

    def __call__(self, samples):
        batch, labels = super().__call__(samples)
        return batch, labels, os.environ.get("KERNELKIT_TUNE"), os.getpid()


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_match_the_loader_and_never_tune(items, context, tmp_path,
                                                            monkeypatch):
    # workers inherit (fork) or are handed (spawn) this environment: a fresh cache and the
    # most eager tuning mode, so a worker that tuned would write entries
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("KERNELKIT_TUNE", "measure")
    ds = data.Samples(items, size=SIZE, augment=True, seed=4, epoch=1)
    collate = _TuneProbe(size=SIZE, mean=MEAN01, std=STD01, stats_unit="unit")
    dl = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, collate_fn=collate,
                                     multiprocessing_context=context, timeout=300)
    out = list(dl)
    assert {o[2] for o in out} == {"pinned"} and os.getpid() not in {o[3] for o in out}
    assert Cache(tmp_path / "cache").entries() == {}  # nothing measured or written there
    loader = data.Loader(items, batch_size=5, size=SIZE, mean=MEAN01, std=STD01,
                         stats_unit="unit", augment=True, seed=4)
    loader.set_epoch(1)
    ref = [b for b, _ in loader]
    for (batch, _, _, _), r in zip(out, ref):
        np.testing.assert_allclose(batch.numpy(), r, atol=1e-5)
    assert torch.cat([o[1] for o in out]).tolist() == [it[1] for it in items]
    # the control: the same collate in this process does tune, and writes
    collate([ds[i] for i in range(5)])
    assert Cache(tmp_path / "cache").entries() != {}


@pytest.mark.slow
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_dataloader_workers_see_each_set_epoch(items, context, tmp_path, monkeypatch):
    """With ``persistent_workers=True`` the workers keep the dataset they were started with:
    `Samples.set_epoch` changed only the main process's copy, and every epoch repeated epoch 0's
    crops and flips. Each epoch's batches now equal the Loader's of that epoch."""
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path / "cache"))
    ds = data.Samples(items, size=SIZE, augment=True, seed=4)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=5, num_workers=2, persistent_workers=True, timeout=300,
        collate_fn=data.Collate(size=SIZE, mean=MEAN01, std=STD01, stats_unit="unit"),
        multiprocessing_context=context)
    loader = data.Loader(items, batch_size=5, size=SIZE, mean=MEAN01, std=STD01,
                         stats_unit="unit", augment=True, seed=4)
    for epoch in (0, 1, 3):
        ds.set_epoch(epoch)
        loader.set_epoch(epoch)
        ours = torch.cat([b for b, _ in dl]).numpy()
        ref = np.concatenate([b for b, _ in loader])
        np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=f"epoch {epoch}")


def test_a_copy_or_pickle_of_samples_keeps_an_epoch_of_its_own(items):
    """The epoch lives in shared memory for the DataLoader's workers; a copy or a pickle (not a
    worker's start) gets a cell of its own, so setting one epoch leaves the other."""
    import copy
    import pickle

    ds = data.Samples(items, size=SIZE, augment=True, seed=4, epoch=2)
    for twin in (copy.deepcopy(ds), pickle.loads(pickle.dumps(ds))):
        assert twin.epoch == 2
        twin.set_epoch(5)
        assert (twin.epoch, ds.epoch) == (5, 2)
        ds.epoch = 7  # (the attribute sets it as set_epoch does, checked)
        assert (twin.epoch, ds.epoch) == (5, 7)
        ds.set_epoch(2)
    with pytest.raises(ValueError, match="Samples: 'epoch' must be an int"):
        ds.epoch = -1


def test_an_epoch_left_by_a_break_stops_its_threads(items):
    """`for batch in loader: break` left the epoch's producer and decode threads (and the batches
    they had made) for the life of the process: the producer thread held the epoch, which was
    never collected, so its close never ran."""
    import gc

    loader = data.Loader(items * 4, batch_size=2, size=SIZE, mean=0, std=1, decode_threads=2,
                         prefetch=1)
    for _ in range(3):
        for _batch in loader:
            break
    gc.collect()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            t.name.startswith(("kk-loader", "kk-decode")) for t in threading.enumerate()):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("kk-loader", "kk-decode"))]


_LEAVE_AN_EPOCH = """
import sys, kernelkit
from kernelkit.data import make_jpegs
data = [(j, 0) for j in make_jpegs(32, [(480, 640)], seed=0)]
loader = kernelkit.data.Loader(data, batch_size=16, size=224, mean=(0.5,) * 3, std=(0.25,) * 3,
                               stats_unit="unit", augment=True, device="cpu")
for x, y in loader:
    pass
for x, y in loader:
    if sys.argv[1] == "raise":
        raise RuntimeError("the training step failed")
    break
"""


def test_a_script_that_leaves_an_epoch_and_ends_exits_with_its_own_status(tmp_path):
    """A script that left an epoch (`break`, an exception) and then ended aborted 7 runs in 8
    with "terminate called without an active exception" (exit 134): the collected epoch had
    left the list `_stop_at_exit` waits on while its producer was still in a kernel."""
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text(_LEAVE_AN_EPOCH)
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(Path(kernelkit.__file__).resolve().parent.parent)}
    env.pop("KERNELKIT_COMPILE")  # (a user's default, background compiles: with the tests'
    # foreground compiles the script did not abort)
    for how, status in (("raise", 1), ("break", 0)) * 2:
        run = subprocess.run([sys.executable, str(script), how], capture_output=True, text=True,
                             timeout=300, env=env)
        assert run.returncode == status, (how, run.returncode, run.stderr[-2000:])
        assert "terminate called" not in run.stderr


def test_a_jpeg_with_extraneous_bytes_decodes_as_pil_decodes_it(items):
    """libjpeg's "Corrupt JPEG data: 3 extraneous bytes before marker 0xd9" is a warning (PIL
    decodes such files, which real datasets have); simplejpeg's strict mode raised it, and one
    such file stopped the epoch."""
    good = data.make_jpegs(1, sizes=[(48, 64)], seed=3)[0]
    bad = good[:-2] + b"\0" * 5 + b"\xff\xd9"
    want = np.asarray(Image.open(io.BytesIO(bad)).convert("RGB"))
    np.testing.assert_array_equal(data.decode(data.read_source(bad)), want)
    batch, _ = next(iter(data.Loader([(bad, 0)], batch_size=1, size=SIZE, mean=0, std=1)))
    assert np.isfinite(batch).all()


@pytest.mark.parametrize("marker", [b"\xff\xdb", b"\xff\xc4", b"\xff\xc0", b"\xff\xda"])
def test_a_jpeg_with_extraneous_bytes_before_a_header_marker_decodes_as_pil(marker):
    """Extraneous bytes before the tables, frame or scan header (not only before the end): the
    header read raised libjpeg's warning as an error, before decode's fallback to PIL."""
    good = data.make_jpegs(1, sizes=[(48, 64)], seed=3)[0]
    i = good.find(marker)
    bad = good[:i] + b"\0\0\0" + good[i:]
    want = np.asarray(Image.open(io.BytesIO(bad)).convert("RGB"))
    enc = data.read_source(bad)
    assert (enc.height, enc.width) == (48, 64)
    np.testing.assert_array_equal(data.decode(enc), want)
    batch, _ = next(iter(data.Loader([(bad, 0)], batch_size=1, size=SIZE, mean=0, std=1)))
    assert np.isfinite(batch).all()


def test_bfloat16_batches_from_the_loader_and_collate():
    """out_dtype="bfloat16" raised "needs torch images (numpy has no bfloat16)" at the first
    batch, though the Loader's and Collate's batches were torch tensors."""
    jpegs = [(j, i) for i, j in enumerate(data.make_jpegs(4, sizes=[(60, 80)], seed=4))]
    kw = dict(size=SIZE, mean=MEAN01, std=STD01, stats_unit="unit")
    want, _ = next(iter(data.Loader(jpegs, batch_size=4, device="cpu", **kw)))
    got, labels = next(iter(data.Loader(jpegs, batch_size=4, device="cpu", out_dtype="bfloat16",
                                        **kw)))
    assert got.dtype == torch.bfloat16 and labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(got.float(), want, atol=0.02, rtol=0.01)
    samples = [data.load_sample(j, i, size=SIZE, augment=None, seed=0, epoch=0) for j, i in jpegs]
    batch, _ = data.Collate(out_dtype="bfloat16", **kw)(samples)
    assert batch.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="Loader: out_dtype 'bfloat16' needs torch batches"):
        data.Loader(jpegs, batch_size=4, out_dtype="bfloat16", **kw)
    with pytest.raises(TypeError, match="Collate: out_dtype 'bfloat16' needs tensors=True"):
        data.Collate(out_dtype="bfloat16", tensors=False, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, np.float16, np.uint8])
def test_the_loader_and_collate_take_torch_and_numpy_dtypes_as_preprocess_does(dtype):
    """out_dtype=torch.bfloat16 raised "preprocess: out_dtype bfloat16 needs torch images" (the
    string "bfloat16" alone was recognised); preprocess takes torch and numpy dtypes."""
    jpegs = [(j, i) for i, j in enumerate(data.make_jpegs(2, sizes=[(60, 80)], seed=4))]
    kw = dict(size=SIZE, mean=MEAN01, std=STD01, stats_unit="unit")
    name = dtype_name("test", "out_dtype", dtype)
    want, _ = next(iter(data.Loader(jpegs, batch_size=2, device="cpu", out_dtype=name, **kw)))
    got, _ = next(iter(data.Loader(jpegs, batch_size=2, device="cpu", out_dtype=dtype, **kw)))
    assert got.dtype == want.dtype and torch.equal(got, want)
    samples = [data.load_sample(j, i, size=SIZE, augment=None, seed=0, epoch=0) for j, i in jpegs]
    batch, _ = data.Collate(out_dtype=dtype, **kw)(samples)
    assert batch.dtype == want.dtype and torch.equal(batch, want)
    with pytest.raises(TypeError, match="Loader: 'out_dtype' must be one of"):
        data.Loader(jpegs, batch_size=2, out_dtype=torch.int32, **kw)


def test_a_small_output_records_the_scale_the_jpeg_was_decoded_at():
    """97 px decoded at 1/8 is 13 px; round(97 / 13) = 7 was recorded as the scale, and the crop
    box was mapped 7-9 full-size pixels off."""
    j = data.make_jpegs(1, sizes=[(97, 97)], seed=1)[0]
    s = data.load_sample(j, 0, size=(5, 5), augment=dict(scale=(0.08, 1), ratio=(0.75, 4 / 3),
                                                          hflip=0.5), seed=5, epoch=0)
    assert s.image.shape[:2] == (13, 13) and s.scale == 8


def test_data_bench_skips_hidden_files_and_folders(tmp_path):
    from kernelkit.data import report

    for i, j in enumerate(data.make_jpegs(2, sizes=[(40, 48)], seed=5)):
        (tmp_path / f"{i}.jpg").write_bytes(j)
    (tmp_path / "._0.jpg").write_bytes(b"\0\5\x16\7AppleDouble")  # macOS's metadata file
    (tmp_path / "dir.jpg").mkdir()
    rows = report.run(folder=str(tmp_path), batch_size=2, size=16, epochs=1)
    assert rows[0]["images"] == 2



def test_samples_pickled_before_the_shared_epoch_and_subclasses_setting_it_early_still_work():
    """A review of the shared epoch: a Samples pickled by the older code (a plain `epoch`
    attribute) raised KeyError at load, and a subclass that sets `self.epoch` before calling
    Samples.__init__ raised AttributeError."""
    old = data.Samples.__new__(data.Samples)
    old.__setstate__({"dataset": [], "size": (4, 4), "augment": None, "seed": 0, "epoch": 3})
    assert old.epoch == 3
    old.set_epoch(4)
    assert old.epoch == 4

    class Early(data.Samples):
        def __init__(self, *args, **kw):
            self.epoch = 9
            assert self.epoch == 9
            super().__init__(*args, **kw)

    assert Early([], size=4, epoch=2).epoch == 2


def test_samples_without_shared_memory_keep_a_local_epoch_and_warn_once():
    """Shared memory needs /dev/shm or a writable temporary dir, which some sandboxes lack: the
    epoch then lives in the process (persistent workers keep theirs), with one warning."""
    import subprocess
    import sys

    code = ("import multiprocessing.heap as heap, pickle, warnings\n"
            "heap.Arena._dir_candidates = ['/nonexistent-kk']\n"
            "from kernelkit import data\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            "    a = data.Samples([], size=4, epoch=2)\n"
            "    b = data.Samples([], size=4)\n"
            "    a.set_epoch(5)\n"
            "    c = pickle.loads(pickle.dumps(a))\n"
            "print(a.epoch, b.epoch, c.epoch, len(seen), seen[0].category.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["5", "0", "5", "1", "RuntimeWarning"]


def test_a_collate_called_in_another_process_that_is_no_dataloader_worker_leaves_tuning_on(
        items, monkeypatch):
    """Collate took "another pid than the one that built me" for "a DataLoader worker": an
    unpickled Collate (a saved pipeline loaded in a restarted notebook) set KERNELKIT_TUNE=pinned
    and one Numba thread for the rest of that program's main process."""
    from kernelkit import threads

    monkeypatch.delenv("KERNELKIT_TUNE", raising=False)
    ds = data.Samples(items[:2], size=SIZE)
    collate = data.Collate(size=SIZE, mean=MEAN01, std=STD01, stats_unit="unit")
    collate._entered = -1  # (built in another process)
    collate([ds[0], ds[1]])
    assert "KERNELKIT_TUNE" not in os.environ
    assert threads._LIMIT.n == 0
