"""Per-stage timings of the pipeline and the consumer's wait fraction.

Stages, each in wall-clock seconds summed over batches:

* decode: from a batch's first decode job starting to its last one ending (the pool's time for
  the batch; jobs of the next batch may overlap it), and ``decode_cpu``: the sum of the jobs'
  own times (core-seconds: reading the file and header, drawing the augmentation, decoding).
* preprocess: the one fused `kernelkit.preprocess` call per batch.
* copy: the host-to-device handoff (0 on the CPU path).
* wait: the consumer blocked in ``next()`` waiting for a batch that was not ready yet.
* consume: the consumer's own time between batches (the model's step).

``wait_fraction = wait / (wait + consume)``: 0 means the model never waited for data.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class StageTimes:
    """Accumulated stage times; thread-safe `add`. Read with `summary()`."""

    decode: float = 0.0
    decode_cpu: float = 0.0
    preprocess: float = 0.0
    copy: float = 0.0
    wait: float = 0.0
    consume: float = 0.0
    batches: int = 0
    images: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **seconds: float) -> None:
        with self._lock:
            for k, v in seconds.items():
                setattr(self, k, getattr(self, k) + v)

    @property
    def wait_fraction(self) -> float:
        """The fraction of the consumer's time spent waiting for data (0 when nothing ran)."""
        total = self.wait + self.consume
        return self.wait / total if total > 0 else 0.0

    def summary(self) -> dict[str, float]:
        """Totals in seconds, per-image milliseconds of each stage, and the wait fraction.

        Returns:
            ``{"batches", "images", "<stage>_s", "<stage>_ms_per_image", "wait_fraction"}``.
        """
        out: dict[str, float] = {"batches": self.batches, "images": self.images}
        for k in ("decode", "decode_cpu", "preprocess", "copy", "wait", "consume"):
            v = getattr(self, k)
            out[f"{k}_s"] = v
            out[f"{k}_ms_per_image"] = 1e3 * v / self.images if self.images else 0.0
        out["wait_fraction"] = self.wait_fraction
        return out

    def reset(self) -> None:
        with self._lock:
            for k in ("decode", "decode_cpu", "preprocess", "copy", "wait", "consume"):
                setattr(self, k, 0.0)
            self.batches = self.images = 0
