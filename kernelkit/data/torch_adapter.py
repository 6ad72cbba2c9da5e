"""The pipeline inside `torch.utils.data.DataLoader`: `Samples` (a map-style dataset that reads,
augments and decodes each item at the DCT scale its crop allows) and `Collate` (the
``collate_fn`` that runs the fused preprocess once per ragged batch).

Works with any ``num_workers``, fork or spawn (kernelkit picks a fork-safe Numba threading
layer: kernelkit.threads). A worker process never tunes: on its first batch it switches the
autotuner to "pinned" (read the cache the parent wrote, never measure or write; a miss takes the
cost model's choice) and runs Numba on one thread, as torch does for its own ops in workers.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from multiprocessing.context import get_spawning_popen
from typing import Any

import numpy as np

from .. import threads
from ..augment import check_key
from ..ops.preprocess_args import dtype_name
from .sample import (
    augment_options,
    collate_labels,
    load_sample,
    output_size,
    preprocess_batch,
)


class Samples:
    """A map-style dataset of decoded samples for a torch DataLoader with `Collate`.

    Args:
        dataset: as `kernelkit.data.Loader`'s.
        size: the output size the crops will be resized to (sizes the DCT-scaled decode).
        augment, seed: as `kernelkit.data.Loader`'s.
        epoch: the augmentation epoch; `set_epoch` before each epoch (the DataLoader's workers
            see the new value, ``persistent_workers`` too: it is shared with the processes
            started with this dataset, ``mp.spawn``'s too; a pickle or copy has its own).

    Example:
        >>> ds = Samples(files, size=224, augment=True)  # doctest: +SKIP
        >>> dl = DataLoader(ds, batch_size=32, num_workers=2, collate_fn=Collate(size=224,
        ...                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
        ...                 stats_unit="unit"))  # doctest: +SKIP
    """

    def __init__(self, dataset: Any, *, size: Any, augment: Any = None, seed: int = 0,
                 epoch: int = 0):
        self.dataset = dataset
        self.size = output_size("Samples", size)
        self.augment = augment_options(augment, "Samples")
        self.seed = check_key("Samples", "seed", seed, 2**128)
        # In shared memory: a DataLoader's persistent workers hold the copy of this dataset they
        # were started with, so a plain attribute set between epochs never reached them and every
        # epoch repeated epoch 0's crops and flips (torchvision's random transforms draw anew in
        # such a worker). A worker started by fork inherits the cell; by spawn or forkserver it is
        # handed the cell (`__getstate__`).
        self._epoch = _epoch_cell(check_key("Samples", "epoch", epoch, 2**64))

    @property
    def epoch(self) -> int:
        return self._epoch.value

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the items read from now on, in this process and in the DataLoader's
        workers (call it before the epoch's ``for batch in loader``)."""
        epoch = check_key("Samples", "epoch", epoch, 2**64)
        cell = self.__dict__.get("_epoch")
        if cell is None:  # (a subclass that sets the epoch before Samples.__init__ runs)
            self._epoch = _epoch_cell(epoch)
        else:
            cell.value = epoch

    def __getstate__(self) -> dict:
        # A pickle or a copy: an epoch of its own. A process's start (a DataLoader worker, and
        # any process handed this dataset as it starts: `mp.spawn`'s args, a pool's initargs):
        # the cell, shared with this process.
        state = self.__dict__.copy()
        if get_spawning_popen() is None and "_epoch" in state:
            state["_epoch"] = state["_epoch"].value
        return state

    def __setstate__(self, state: dict) -> None:
        if "_epoch" not in state:  # (pickled before the epoch was shared: a plain attribute)
            state["_epoch"] = state.pop("epoch", 0)
        if isinstance(state["_epoch"], int):
            state["_epoch"] = _epoch_cell(state["_epoch"])
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return load_sample(self.dataset[i], int(i), size=self.size, augment=self.augment,
                           seed=self.seed, epoch=self.epoch)


class _LocalEpoch:
    """`_epoch_cell` where shared memory cannot be had: this process's alone."""

    __slots__ = ("value",)

    def __init__(self, value: int):
        self.value = value

    def __reduce__(self):
        return (_LocalEpoch, (self.value,))


def _epoch_cell(epoch: int):
    """An unsigned 64-bit int in shared memory (no lock: one writer, and an aligned 8-byte store
    is never seen torn). Where shared memory cannot be had (no /dev/shm, which CPython's
    allocator requires on Linux: some sandboxes and serverless hosts), a plain one, with a
    warning: persistent workers then keep the epoch they started with."""
    try:
        return multiprocessing.RawValue("Q", epoch)
    except OSError as exc:
        if not _NO_SHARED_MEMORY:  # (once a process)
            _NO_SHARED_MEMORY.append(exc)
            from ..callsite import warn

            warn(f"Samples: no shared memory for the epoch ({exc}); DataLoader workers started "
                 f"with persistent_workers=True keep the epoch they started with",
                 RuntimeWarning)
        return _LocalEpoch(epoch)


_NO_SHARED_MEMORY: list = []


def _in_dataloader_worker() -> bool:
    """This process is a torch DataLoader's worker."""
    data = sys.modules.get("torch.utils.data")
    return data is not None and data.get_worker_info() is not None


def _enter_worker() -> None:
    """In a process other than the one that built the Collate (a DataLoader worker): never tune,
    and one Numba thread per worker (the workers are the parallelism)."""
    os.environ["KERNELKIT_TUNE"] = "pinned"
    threads.limit_kernel_threads(1)


class Collate:
    """``collate_fn``: a list of `Samples` items -> (batch, labels) in one fused preprocess.

    Args:
        size, mean, std, stats_unit, out_dtype, layout, interpolation, antialias: as
            `kernelkit.data.Loader`'s.
        tensors: return torch tensors (default) rather than numpy arrays.
    """

    def __init__(self, *, size: Any, mean: Any, std: Any, stats_unit: str = "input",
                 out_dtype: Any = "float32", layout: str = "NCHW",
                 interpolation: str = "bilinear", antialias: bool = True, tensors: bool = True):
        size = output_size("Collate", size)
        # a torch or numpy dtype as kernelkit.preprocess takes it ("bfloat16" tested below)
        out_dtype = dtype_name("Collate", "out_dtype", out_dtype)
        if out_dtype == "bfloat16" and not tensors:
            raise TypeError("Collate: out_dtype 'bfloat16' needs tensors=True: numpy has no "
                            "bfloat16")
        self.prep = dict(size=size, mean=mean, std=std, stats_unit=stats_unit,
                         out_dtype=out_dtype, layout=layout, interpolation=interpolation,
                         antialias=antialias)
        self.tensors = tensors
        self.pid = os.getpid()
        self._entered = self.pid

    def __call__(self, samples):
        if self._entered != os.getpid():
            if _in_dataloader_worker():  # (not just another process: an unpickled Collate in a
                _enter_worker()          # program's main process switched it to "pinned")
            self._entered = os.getpid()
        batch = preprocess_batch(samples, **self.prep)
        labels = collate_labels([s.label for s in samples], self.tensors)
        if self.tensors and isinstance(batch, np.ndarray):  # (bfloat16 comes as a tensor)
            import torch

            batch = torch.from_numpy(batch)
        return batch, labels
