"""`Loader`: a dataset of encoded or decoded images -> model-ready batches, with decoding on a
thread pool, one fused preprocess per ragged batch, and the handoff to the device prefetched so
batch i + 1 is prepared while the consumer works on batch i."""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import threads
from ..augment import check_key
from ..ops.preprocess_args import dtype_name
from .handoff import Handoff
from .sample import (
    augment_options,
    collate_labels,
    load_sample,
    output_size,
    preprocess_batch,
    thread_count,
)
from .timing import StageTimes

_END = object()
_SHUFFLE_TAG = 0x5348554646  # "SHUFF"



class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


class Loader:
    """Iterate model-ready batches over a dataset of images.

    Args:
        dataset: a sequence (``len`` and ``[i]``) whose items are an image or an
            ``(image, label)`` pair; an image is JPEG/PNG/... bytes, a path, or a decoded uint8
            (H, W) / (H, W, 1) / (H, W, 3) RGB array.
        batch_size: images per batch.
        size: output (height, width), or one int for both.
        mean, std: per-channel normalisation statistics, in the unit `stats_unit` names.
        stats_unit: "input" (default: 0..255 for the decoded uint8 images, e.g.
            ``mean=(123.7, 116.3, 103.5)``) or "unit" ([0, 1], torchvision's, e.g.
            ``mean=(0.485, 0.456, 0.406)``); see `kernelkit.preprocess`.
        augment: None (the whole image, resized), True (RandomResizedCrop with torchvision's
            defaults and a horizontal flip, p = 0.5), or a dict of `kernelkit.augment` options
            (scale, ratio, hflip, vflip, degrees, quarter_turns). Draws are keyed by (seed,
            epoch, dataset index): the same for any batch size, order or thread count.
        seed: the augmentation and shuffling seed.
        shuffle: a new permutation of the dataset every epoch (keyed by seed and epoch).
        drop_last: drop the last, short batch.
        device: None (numpy batches), "cpu" (torch CPU tensors), or a CUDA device (torch
            tensors there, copied from pinned buffers on their own stream).
        out_dtype, layout, interpolation, antialias: as `kernelkit.preprocess`.
        decode_threads: threads decoding images (default: the CPU count).
        prefetch: batches prepared ahead of the consumer (and pinned buffers on CUDA).
        preprocess_threads: Numba threads for the fused preprocess (default: Numba's count); the
            decode pool runs beside it on the same cores.

    Shape:
        yields (batch (N, 3, h, w) or (N, h, w, 3), labels (N,)) per step; labels are an array
        (a CPU tensor when `device` is set) when every label is a number, else a list (None for
        unlabelled items).

    Attributes:
        timings: the `StageTimes` of the current (or last) epoch: decode, preprocess, copy,
            wait, consume, and ``timings.wait_fraction``.
        epoch: the epoch the next iteration uses; each iteration then moves it on by one
            (`set_epoch` sets it, e.g. when resuming).

    Example:
        >>> loader = kernelkit.data.Loader(jpeg_paths_and_labels, batch_size=32, size=224,
        ...     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), stats_unit="unit",
        ...     augment=True, device="cuda")  # doctest: +SKIP
        >>> for batch, labels in loader:  # doctest: +SKIP
        ...     loss = model(batch).loss(labels)
    """

    def __init__(self, dataset: Any, *, batch_size: int, size: Any, mean: Any, std: Any,
                 stats_unit: str = "input", augment: Any = None, seed: int = 0,
                 shuffle: bool = False, drop_last: bool = False, device: Any = None,
                 out_dtype: Any = "float32", layout: str = "NCHW",
                 interpolation: str = "bilinear", antialias: bool = True,
                 decode_threads: int | None = None, prefetch: int = 2,
                 preprocess_threads: int | None = None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"Loader: 'dataset' must be a sequence (len and [i]), got "
                            f"{type(dataset).__name__}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Loader: 'batch_size' must be a positive int, got {batch_size!r}")
        size = output_size("Loader", size)
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"Loader: 'prefetch' must be an int >= 1, got {prefetch!r}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.size = (int(size[0]), int(size[1]))
        self.augment = augment_options(augment)
        self.seed = check_key("Loader", "seed", seed, 2**128)  # (augment's key range)
        self.shuffle = shuffle
        self.drop_last = drop_last
        out_dtype = dtype_name("Loader", "out_dtype", out_dtype)  # (a torch or numpy dtype too)
        if out_dtype == "bfloat16" and device is None:
            raise TypeError("Loader: out_dtype 'bfloat16' needs torch batches (device='cpu' or a "
                            "CUDA device): numpy has no bfloat16")
        self.handoff = Handoff(device, depth=prefetch + 1)
        self.prep = dict(size=self.size, mean=mean, std=std, stats_unit=stats_unit,
                         out_dtype=out_dtype, layout=layout, interpolation=interpolation,
                         antialias=antialias)
        self.decode_threads = thread_count("Loader", "decode_threads", decode_threads) \
            or os.cpu_count() or 1
        self.preprocess_threads = thread_count("Loader", "preprocess_threads",
                                               preprocess_threads)
        self.prefetch = prefetch
        self.epoch = 0
        self.timings = StageTimes()

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration uses (augmentation and shuffle key)."""
        self.epoch = check_key("Loader", "epoch", epoch, 2**64)

    def order(self, epoch: int) -> np.ndarray:
        """The dataset indices of `epoch`, in the order they are batched."""
        n = len(self.dataset)
        if not self.shuffle:
            return np.arange(n)
        # a generator of its own (SeedSequence-hashed, tagged), not a Philox lane of the samples'
        # augmentation key: the order shares no draws with any sample's augmentation
        rng = np.random.default_rng([int(self.seed), int(epoch), _SHUFFLE_TAG])
        return rng.permutation(n)

    def __iter__(self):
        epoch = self.epoch
        self.timings = StageTimes()
        it = _Epoch(self, epoch)
        self.epoch += 1  # (once the epoch started: one that failed to start is not skipped)
        return it


class _Production:
    """An epoch's producer side: a thread (decode jobs on the pool, preprocess, handoff) feeding
    a bounded queue. Apart from `_Epoch`, which the consumer holds: the thread holds only this,
    so an epoch the consumer drops (a `break`, an exception in the training loop) is collected,
    and its `close` stops the thread. Before, the thread held the epoch itself, which was
    never collected: its threads and prefetched batches stayed for the life of the process."""

    def __init__(self, loader: Loader, epoch: int):
        self.loader = loader
        self.epoch = epoch
        self.times = loader.timings
        idx = loader.order(epoch)
        bs = loader.batch_size
        stop = len(idx) - len(idx) % bs if loader.drop_last else len(idx)
        self.batches = [idx[i:min(i + bs, stop)].tolist() for i in range(0, stop, bs)]
        self.queue: queue.Queue = queue.Queue(maxsize=loader.prefetch)
        self.stopping = threading.Event()
        self.pool = ThreadPoolExecutor(loader.decode_threads, thread_name_prefix="kk-decode")
        self.thread: threading.Thread | None = None  # (set by its `_Epoch`)

    def _load(self, i: int):
        lo = self.loader
        return load_sample(lo.dataset[i], i, size=lo.size, augment=lo.augment, seed=lo.seed,
                           epoch=self.epoch)

    def _put(self, item) -> bool:
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(self) -> None:
        lo = self.loader
        if lo.preprocess_threads:  # (per calling thread: only this producer's launches)
            threads.limit_kernel_threads(lo.preprocess_threads)
        try:
            pending: deque = deque()
            ahead = 0
            for k in range(len(self.batches)):
                # keep the decode jobs of `prefetch` batches queued on the pool
                while ahead < len(self.batches) and ahead <= k + lo.prefetch:
                    pending.append([self.pool.submit(self._load, i) for i in self.batches[ahead]])
                    ahead += 1
                samples = [f.result() for f in pending.popleft()]
                if self.stopping.is_set():
                    return
                t0 = time.perf_counter()
                batch = preprocess_batch(samples, **lo.prep)
                t1 = time.perf_counter()
                out, event = lo.handoff.send(batch)
                t2 = time.perf_counter()
                labels = collate_labels([s.label for s in samples], lo.handoff.torch is not None)
                self.times.add(decode=max(s.end for s in samples) - min(s.start for s in samples),
                               decode_cpu=sum(s.seconds for s in samples), preprocess=t1 - t0,
                               copy=t2 - t1, batches=1, images=len(samples))
                if not self._put((out, labels, event)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(_Failure(e))
        finally:
            if self.stopping.is_set():
                self.pool.shutdown(wait=False, cancel_futures=True)
            _RUNNING.discard(self)

    def stop(self) -> None:
        self.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


class _Epoch:
    """One pass, as the consumer sees it: the batches of its `_Production`'s queue."""

    def __init__(self, loader: Loader, epoch: int):
        self.loader = loader
        self.times = loader.timings
        self.production = _Production(loader, epoch)
        self.queue = self.production.queue
        self.last = None
        self.done = False
        self.thread = self.production.thread = threading.Thread(
            target=self.production.produce, name="kk-loader", daemon=True)
        _RUNNING.add(self.production)  # (before start: a short epoch may end before the add)
        try:
            self.thread.start()
        except BaseException:  # ("can't start new thread": a join at exit would raise)
            _RUNNING.discard(self.production)
            raise

    def __iter__(self):
        return self

    def __next__(self):
        now = time.perf_counter()
        if self.done:
            raise StopIteration
        if self.last is not None:
            self.times.add(consume=now - self.last)
        item = self.queue.get()
        got = time.perf_counter()
        self.times.add(wait=got - now)
        if item is _END or isinstance(item, _Failure):
            self.close()
            if isinstance(item, _Failure):
                raise item.exc
            raise StopIteration
        out, labels, event = item
        out = self.loader.handoff.receive(out, event)
        self.last = time.perf_counter()
        return out, labels

    def close(self) -> None:
        """Stop the producer and the decode pool (also on garbage collection: a `break`)."""
        self.done = True
        production = getattr(self, "production", None)  # (None: __init__ raised before it)
        if production is not None:
            production.stop()

    def __del__(self):
        self.close()


# Producers still running (each leaves when its thread ends), stopped at interpreter exit
# (`_stop_at_exit`). Not the epochs: an epoch left by a `break` or an exception is collected
# while its producer still finishes the batch it is on.
_RUNNING: set[_Production] = set()
EXIT_WAIT_S = 5.0


@atexit.register
def _stop_at_exit() -> None:
    """Stop every running producer and wait for it to leave its kernel. Why: a script that
    ended while a thread still iterated a Loader (a training stream in a daemon thread) aborted
    about one run in two with "terminate called without an active exception" (exit 134): the
    producer was inside a preprocess kernel on torch's OpenMP threads while the runtime's
    destructors ran. So did a script that left an epoch (`break`, an exception, `sys.exit`) just
    before it ended, 3-4 runs in 4: the epoch was collected, and with it this list's entry."""
    deadline = time.monotonic() + EXIT_WAIT_S
    running = list(_RUNNING)
    for p in running:
        p.stop()
    for p in running:
        p.thread.join(max(0.0, deadline - time.monotonic()))
