"""The persistent autotune cache: one JSON file per cache directory.

The header holds the schema version and the machine fingerprint. A file whose header does not match
this machine is ignored with one warning (never applied silently), a corrupt file is a warning and
a fresh start. Writers take an inter-process lock, merge with what is on disk and replace the file
atomically, so concurrent tuners lose nothing and a killed writer leaves no half-written file.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from filelock import FileLock

from .. import devices

SCHEMA = 1
FILENAME = "autotune.json"


class CacheWarning(UserWarning):
    """The cache on disk could not be used (corrupt, foreign machine, unreadable)."""


@functools.cache
def fingerprint() -> dict[str, Any]:
    """What a measurement depends on: the CPU, the GPU, the driver, and every library's version."""
    cpu = devices.cpu_info()
    gpu = devices.gpu_info()
    return {
        "cpu": cpu["model"],
        "cores": cpu["cores"],
        "gpu": gpu["name"] if gpu else None,
        "capability": gpu["capability"] if gpu else None,
        "cuda": gpu["cuda"] if gpu else None,
        "versions": devices.versions(),
    }


def header() -> dict[str, Any]:
    return {"schema": SCHEMA, "fingerprint": fingerprint()}


class Cache:
    """Entries keyed by `autotune.key.make_key`; each entry is a JSON object (see tuner.py)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self._entries: dict[str, dict] | None = None
        self._mutex = threading.Lock()

    # -- reading -------------------------------------------------------------------------------
    def _read_disk(self, *, warn: bool) -> dict[str, dict]:
        """The entries on disk that belong to this machine; {} (with a warning) for anything else."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            if warn:
                warnings.warn(f"kernelkit: cannot read autotune cache {self.path}: {exc}; "
                              "starting fresh", CacheWarning, stacklevel=4)
            return {}
        try:
            data = json.loads(text)
            head, entries = data["header"], data["entries"]
            if not isinstance(entries, dict):
                raise TypeError("entries is not an object")
        except (ValueError, KeyError, TypeError) as exc:
            if warn:
                warnings.warn(f"kernelkit: autotune cache {self.path} is corrupt ({exc}); "
                              "ignoring it and starting fresh", CacheWarning, stacklevel=4)
            return {}
        if head != header():
            if warn:
                why = "schema" if head.get("schema") != SCHEMA else "machine fingerprint"
                warnings.warn(f"kernelkit: autotune cache {self.path} was made with another {why} "
                              f"({head.get('fingerprint', {}).get('cpu')!r}, "
                              f"gpu {head.get('fingerprint', {}).get('gpu')!r}); ignoring it",
                              CacheWarning, stacklevel=4)
            return {}
        return entries

    def entries(self) -> dict[str, dict]:
        if self._entries is None:
            with self._mutex:
                if self._entries is None:
                    self._entries = self._read_disk(warn=True)
        return self._entries

    def get(self, key: str) -> dict | None:
        return self.entries().get(key)

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, entry: dict) -> None:
        self.update({key: entry})

    def update(self, new: dict[str, dict]) -> None:
        """Merge `new` into memory and into the file, under the lock, replacing it atomically."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self._mutex, FileLock(str(self.path) + ".lock", timeout=60):
            merged = self._read_disk(warn=False)  # what other processes wrote meanwhile, too
            merged.update(new)
            self._write(merged)
            self._entries = merged

    def clear(self) -> None:
        with self._mutex, FileLock(str(self.path) + ".lock", timeout=60):
            self.path.unlink(missing_ok=True)
            self._entries = {}

    def _write(self, entries: dict[str, dict]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".autotune-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"header": header(), "entries": entries}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


_caches: dict[str, Cache] = {}


def cache_for(directory: str | os.PathLike) -> Cache:
    """One Cache object per directory in this process."""
    key = str(directory)
    c = _caches.get(key)
    if c is None:
        c = _caches[key] = Cache(directory)
    return c
