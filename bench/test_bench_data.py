"""The data pipeline end to end: generated JPEGs -> RandomResizedCrop 224 + horizontal flip +
ImageNet normalisation -> float32 NCHW batches of 32, one epoch per round, on the same files.

Rows (one group, read as ratios from one run):

* kernelkit-loader: `kernelkit.data.Loader`, threads in this process (decode pool + producer).
* kernelkit-dataloader-2w: `kernelkit.data.Samples` + `Collate` in a torch DataLoader, 2 workers.
* torchvision-v2-2w: torchvision v2 transforms on PIL images in a torch DataLoader, 2 workers
  (torchvision's ImageNet recipe); and the same with ``persistent_workers=True``.
  torchvision is a benchmark peer only, never a kernelkit dependency: install it in a separate
  environment (bench/README.md); without it these rows skip and say so.
* albumentations-2w: albumentations' RandomResizedCrop + HorizontalFlip + Normalize on OpenCV
  decodes, 2 workers (skips when albumentations is missing).

extra_info: images/s, and for kernelkit-loader the per-stage split (decode, decode_cpu,
preprocess, copy, wait, in ms per image) and the consumer's wait fraction; the
``kernelkit-loader-model-<ms>`` rows add a consumer step of known duration per batch (a sleep:
it frees the cores, as a GPU model does) to show the overlap.

    flock /tmp/kk-bench.lock python -m pytest bench/test_bench_data.py --benchmark-only -s \
        --benchmark-json=results/bench-data.json
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

import kernelkit.data as kd

N_IMAGES = int(os.environ.get("KERNELKIT_BENCH_IMAGES", 192))
BATCH, SIZE, WORKERS = 32, 224, 2
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """ImageNet-like JPEGs (375x500 ... 480x640, quality 90), made here, written to disk."""
    return kd.make_jpegs(N_IMAGES, seed=0, directory=tmp_path_factory.mktemp("jpegs"))


def _epoch(batches) -> int:
    n = 0
    for batch, _ in batches:
        assert batch.shape[1:] == (3, SIZE, SIZE)
        n += len(batch)
    return n


def _record(benchmark, n_images: int, **extra):
    benchmark.extra_info["images"] = n_images
    benchmark.extra_info["images_per_s"] = n_images / benchmark.stats.stats.median
    benchmark.extra_info.update(extra)
    print(f"\n{benchmark.name}: {benchmark.extra_info['images_per_s']:.0f} images/s")


def _bench_epochs(benchmark, run_epoch, rounds: int = 5):
    run_epoch()  # warm-up: compiles, tunes, page cache
    return benchmark.pedantic(run_epoch, rounds=rounds, iterations=1)


@pytest.mark.benchmark(group="data-epoch")
def test_kernelkit_loader(benchmark, files):
    labelled = [(p, i % 1000) for i, p in enumerate(files)]
    loader = kd.Loader(labelled, batch_size=BATCH, size=SIZE, mean=MEAN, std=STD,
                       stats_unit="unit", augment=True, seed=0)
    splits = []

    def run():
        n = _epoch(loader)
        splits.append(loader.timings.summary())
        return n

    _bench_epochs(benchmark, run)
    mid = splits[len(splits) // 2]
    _record(benchmark, len(files), **{k: round(v, 4) for k, v in mid.items()
                                      if k.endswith("ms_per_image") or k == "wait_fraction"})


@pytest.mark.benchmark(group="data-epoch")
@pytest.mark.parametrize("model_ms", [20, 60])
def test_kernelkit_loader_with_a_model(benchmark, files, model_ms):
    """A consumer step of `model_ms` per batch: the wait fraction shows how much of the data
    work hides behind it."""
    loader = kd.Loader(files, batch_size=BATCH, size=SIZE, mean=MEAN, std=STD,
                       stats_unit="unit", augment=True, seed=0)
    fractions = []

    def run():
        n = 0
        for batch, _ in loader:
            n += len(batch)
            time.sleep(model_ms / 1e3)
        fractions.append(loader.timings.wait_fraction)
        return n

    benchmark.name = f"kernelkit-loader-model-{model_ms}ms"
    _bench_epochs(benchmark, run, rounds=3)
    _record(benchmark, len(files), model_ms_per_batch=model_ms,
            wait_fraction=round(float(np.median(fractions)), 3))


@pytest.mark.benchmark(group="data-epoch")
def test_kernelkit_in_a_dataloader(benchmark, files):
    ds = kd.Samples(files, size=SIZE, augment=True, seed=0)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, num_workers=WORKERS,
        collate_fn=kd.Collate(size=SIZE, mean=MEAN, std=STD, stats_unit="unit"))
    _bench_epochs(benchmark, lambda: _epoch(dl))
    _record(benchmark, len(files), workers=WORKERS)


def _torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms import v2
    except Exception as e:  # noqa: BLE001 - any import failure means the row cannot run
        pytest.skip(f"torchvision not importable ({type(e).__name__}: {e}); it is a bench peer "
                    "only, installed in a separate environment: see bench/README.md")
    return v2


class _PILFiles(torch.utils.data.Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), i


@pytest.mark.benchmark(group="data-epoch")
@pytest.mark.parametrize("persistent", [False, True], ids=["", "persistent"])
def test_torchvision_v2_in_a_dataloader(benchmark, files, persistent):
    v2 = _torchvision()
    tf = v2.Compose([v2.RandomResizedCrop(SIZE, antialias=True), v2.RandomHorizontalFlip(),
                     v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
                     v2.Normalize(MEAN, STD)])
    dl = torch.utils.data.DataLoader(_PILFiles(files, tf), batch_size=BATCH,
                                     num_workers=WORKERS, persistent_workers=persistent)
    _bench_epochs(benchmark, lambda: _epoch(dl))
    _record(benchmark, len(files), workers=WORKERS, persistent_workers=persistent)


class _CV2Files(torch.utils.data.Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        import cv2

        img = cv2.cvtColor(cv2.imread(str(self.files[i])), cv2.COLOR_BGR2RGB)
        out = self.transform(image=img)["image"]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), i


@pytest.mark.benchmark(group="data-epoch")
def test_albumentations_in_a_dataloader(benchmark, files):
    try:
        import albumentations as A
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"albumentations not importable ({type(e).__name__}: {e}); a bench peer "
                    "only, installed in a separate environment: see bench/README.md")
    tf = A.Compose([A.RandomResizedCrop(size=(SIZE, SIZE)), A.HorizontalFlip(),
                    A.Normalize(mean=MEAN, std=STD)])
    dl = torch.utils.data.DataLoader(_CV2Files(files, tf), batch_size=BATCH,
                                     num_workers=WORKERS)
    _bench_epochs(benchmark, lambda: _epoch(dl))
    _record(benchmark, len(files), workers=WORKERS)


def test_the_bench_images_are_imagenet_like(files):
    """Not timed: the generated files are the sizes and weight the rows claim."""
    from PIL import Image

    sizes = {Image.open(p).size for p in files[:6]}
    assert sizes == {(w, h) for h, w in kd.synthetic.IMAGENET_LIKE}
    kb = np.mean([os.path.getsize(p) for p in files]) / 1e3
    assert 30 < kb < 200, kb
