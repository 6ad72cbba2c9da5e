"""`kernelkit data-bench`: the Loader over generated (or given) JPEGs, with a progress bar, the
images/s of each epoch, the per-stage split and the consumer's wait fraction."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .loader import Loader
from .synthetic import make_jpegs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def run(*, images: int = 192, folder: str | None = None, batch_size: int = 32, size: int = 224,
        epochs: int = 3, model_ms: float = 0.0, decode_threads: int | None = None,
        progress: Any = None) -> list[dict]:
    """Time `epochs` epochs of a Loader (RandomResizedCrop + flip + ImageNet normalisation).

    Args:
        images: how many JPEGs to generate (ignored with `folder`).
        folder: read *.jpg / *.jpeg / *.png from this folder instead.
        batch_size, size, decode_threads: the Loader's.
        epochs: epochs to time (the first includes compiling and tuning).
        model_ms: a consumer step of this many milliseconds per batch (a sleep).
        progress: a rich Progress to advance per batch, or None.

    Returns:
        One dict per epoch: epoch, images_per_s, and `StageTimes.summary()`.
    """
    if folder is not None:
        # (not hidden files: macOS's "._x.jpg" AppleDouble files are no images; files only)
        files: list[Any] = sorted(p for p in Path(folder).iterdir()
                                  if p.suffix.lower() in IMAGE_SUFFIXES
                                  and not p.name.startswith(".") and p.is_file())
        if not files:
            raise ValueError(f"data-bench: no image files ({' '.join(IMAGE_SUFFIXES)}) in "
                             f"{folder}")
    else:
        files = make_jpegs(images, seed=0)
    loader = Loader(files, batch_size=batch_size, size=size, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225), stats_unit="unit", augment=True,
                    decode_threads=decode_threads)
    task = progress.add_task("epochs", total=epochs * len(loader)) if progress else None
    rows = []
    for epoch in range(epochs):
        start = time.perf_counter()
        n = 0
        for batch, _ in loader:
            n += len(batch)
            if model_ms:
                time.sleep(model_ms / 1e3)
            if progress:
                progress.advance(task)
        rows.append({"epoch": epoch, "images_per_s": n / (time.perf_counter() - start),
                     **loader.timings.summary()})
    return rows
