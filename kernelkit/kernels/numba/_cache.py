"""Numba's on-disk cache for kernelkit's kernels, keyed by everything the machine code depends on.

Numba's ``cache=True`` stamps a cached function with its own source file's mtime and size only.
A jitted function that calls (and inlines) a helper from another file, or freezes a module
constant from another file, keeps its old machine code after that other file changes: local test
runs can pass on old code, and so can an installation after an upgrade of kernelkit.

So every ``cache=True`` function defined under ``kernelkit/kernels/numba/`` goes through
:class:`KeyedCacheLocator` instead of numba's own locators. It keeps the cache in

    <kernelkit cache dir>/numba/<key>/    (or $KERNELKIT_NUMBA_CACHE_DIR/<key>/)

where the kernelkit cache dir is ``KERNELKIT_CACHE_DIR`` or the platform's user cache dir (as for
the autotune cache), and ``<key>`` is a hash of the sources of every kernelkit module the Numba
kernels compile from (all of ``kernels/numba/*.py`` and the backend-neutral ``kernels/*.py``) and
of the kernelkit, Numba, llvmlite and LLVM versions. The same key is each function's source stamp,
so an index written under another key is never trusted. The package directory is never written
(it may be read-only); if the cache dir cannot be created, a per-user temporary dir is used (and
only if that fails too do numba's own locators apply).

Each key's folder is marked at every process start; when a process makes a new key's folder (the
first run after an upgrade), the key folders beside it that no process has used for 30 days are
removed, so that old versions' kernels do not pile up in the user's cache.

Functions outside ``kernelkit/kernels/`` are untouched: the locator declines them and numba's own
locators (``NUMBA_CACHE_DIR``, ``__pycache__``, ...) apply as usual.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
from pathlib import Path

# `import numba` first: this module is the first of numba's that the background compile thread
# imports (`compiling.on_disk`), and a submodule import there, while the main thread ran
# `import numba` (a program's own, right after its first kernelkit call), met numba's import half
# way: the two threads' module locks deadlocked, and Python handed the main thread a partial
# module ("cannot import name 'NullCache' from partially initialized module
# 'numba.core.caching'"). The package's own import waits for the other thread's to finish.
import numba
from numba.core import caching

_HERE = Path(__file__).resolve().parent          # kernelkit/kernels/numba
_KERNELS = _HERE.parent                          # kernelkit/kernels
_PACKAGE = _KERNELS.parent                       # kernelkit

_Base = getattr(caching, "UserProvidedCacheLocator", None) or caching._UserProvidedCacheLocator
_Impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl


def source_files() -> list[Path]:
    """The files whose contents the compiled kernels depend on: every module under
    ``kernels/numba/`` and the backend-neutral ``kernels/*.py`` they import (constants included)."""
    return sorted([*_HERE.glob("*.py"), *_KERNELS.glob("*.py")])


@functools.cache
def cache_key() -> str:
    """A hash of the kernel sources and of the kernelkit, Numba, llvmlite and LLVM versions."""
    import llvmlite
    from llvmlite import binding as ll

    from kernelkit.devices import package_version

    h = hashlib.sha256()
    versions = (package_version("kernelkit"), numba.__version__, llvmlite.__version__,
                ".".join(map(str, ll.llvm_version_info)))
    h.update(repr(versions).encode())
    for path in source_files():
        h.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def numba_root() -> Path:
    """``KERNELKIT_NUMBA_CACHE_DIR``, else ``<kernelkit cache dir>/numba`` (kernelkit.paths:
    KERNELKIT_CACHE_DIR, else the user cache dir). A separate knob because the compiled kernels
    and the autotune cache have different owners: an image can ship kernels compiled at build
    time beside a per-job autotune cache, and a test gives each case a fresh autotune cache
    without compiling every kernel again."""
    configured = os.environ.get("KERNELKIT_NUMBA_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    from kernelkit.paths import cache_root

    return cache_root() / "numba"


@functools.cache
def cache_dir() -> Path | None:
    """``<kernelkit cache dir>/numba/<key>``, created; a per-user temporary dir if that cannot be
    written; None if neither can (then numba's own locators apply). Decided once per process (at
    the first kernel's decoration).

    A read-only ``<key>`` dir that holds kernels (an image's, compiled at build time into a
    directory the job cannot write) seeds the temporary one: its files are copied there once,
    and loaded from there. Numba loads and saves through one writable dir per function; before,
    such a dir was passed over and every kernel compiled again (12.7 s for a first matmul)."""
    from kernelkit.paths import user_temp_dir

    key = cache_key()
    configured = numba_root() / key
    if _usable(configured):
        return configured
    scratch = user_temp_dir("numba") / key
    made = not scratch.is_dir()
    if configured.is_dir():
        _seed(scratch, configured)
    return scratch if _usable(scratch, made) else None


# A key's folder unused this long is another kernelkit, Numba or source version's: pruned when a
# new key's folder is made (an upgrade's first run), so upgrades do not pile up compiled kernels
# (tens of MB each) in the user's cache. Long enough for a second installation of another
# version that is still in use, whose processes mark its folder at every start.
STALE_AFTER_S = 30 * 24 * 3600
_USED = ".last-used"


def _usable(path: Path, new: bool | None = None) -> bool:
    """`path` is writable (made if need be); its use is marked, and where this process made it
    (`new`; by default: it was not there), the stale key folders beside it are pruned."""
    new = not path.is_dir() if new is None else new
    if not _writable(path):
        return False
    with contextlib.suppress(OSError):
        (path / _USED).touch()
    if new:
        from filelock import FileLock, Timeout

        try:  # (one process prunes at a time; a folder marked meanwhile is kept: see prune_stale)
            with FileLock(str(path.parent / ".prune.lock"), timeout=0):
                prune_stale(path.parent, keep=path.name)
        except (OSError, Timeout):
            pass
    return True


def prune_stale(root: Path, keep: str, now: float | None = None) -> list[str]:
    """Remove the key folders under `root` (20 hex digits, as :func:`cache_key`) other than
    `keep` that no process has used for :data:`STALE_AFTER_S` (their ``.last-used`` mark, else
    the folder's own time). Returns the names removed; any failure leaves the folder."""
    import time

    now = time.time() if now is None else now
    removed = []
    try:
        folders = [p for p in root.iterdir() if p.name != keep and _is_key(p.name) and p.is_dir()]
    except OSError:
        return removed
    for folder in folders:
        try:
            mark = folder / _USED
            used = (mark if mark.exists() else folder).stat().st_mtime
        except OSError:
            continue
        if now - used > STALE_AFTER_S:
            # renamed first, then removed: a process that marks it (starts with it) between the
            # look and the rename finds its folder gone and makes a new one, never a half-removed
            # one; the mark is looked at once more right before
            with contextlib.suppress(OSError):
                if now - (folder / _USED).stat().st_mtime <= STALE_AFTER_S:
                    continue
            doomed = folder.with_name(f".{folder.name}.pruned-{os.getpid()}")
            try:
                folder.rename(doomed)
            except OSError:
                continue
            shutil.rmtree(doomed, ignore_errors=True)
            if not doomed.exists():
                removed.append(folder.name)
    return removed


def _is_key(name: str) -> bool:
    return len(name) == 20 and all(c in "0123456789abcdef" for c in name)


def _writable(path: Path) -> bool:
    """`path` exists as a directory (made if need be) that this process can write files in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:
        return False
    return True


def _seed(scratch: Path, source: Path) -> None:
    """Copy into `scratch` the compiled-kernel files of `source` it lacks (contents only, not the
    read-only modes), each through a temporary name, under a file lock beside it: of processes
    starting at once (DDP ranks, spawned workers) one copies and the others then find the files.
    Any failure leaves what is there (missing kernels then compile into `scratch`)."""
    from filelock import FileLock, Timeout

    try:
        scratch.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # (per user: pickles)
        with FileLock(f"{scratch}.seed.lock", timeout=600):
            # the marks of warmed kernels last: a copy cut short (a full disk) leaves no mark
            # without its kernels
            for src in sorted(source.rglob("*"), key=lambda p: p.parent.name == _WARMED):
                if not src.is_file() or src.name.startswith(".probe-") or src.name == _USED \
                        or src.suffix == ".lock":  # (compile locks: `compile_lock_dir`)
                    continue
                dst = scratch / src.relative_to(source)
                if dst.exists():
                    continue
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
    except (OSError, Timeout):
        pass


# Per (kernel module, dtype, CPU): a mark in the key's folder that some process compiled that
# module's kernels for that dtype into it (`kernelkit.compiling` sets it after each warm). A first
# call on numpy data whose only ready candidate is torch's loads such kernels instead of importing
# torch. The CPU is in the mark as numba keys its index by it: an image built on another CPU, or
# a cache folder shared by different nodes, holds kernels this CPU would compile again (15 s in
# the caller's thread, where the vendor would have run the call).
_WARMED = "warmed"
# Kernel modules whose `warm` compiles one signature for every input dtype (preprocess: its
# warmup runs for float32, its calls are mostly uint8)
ANY_DTYPE = frozenset({"kernelkit.kernels.numba.preprocess"})


@functools.cache
def _cpu_tag() -> str:
    """What numba's index keys a compiled kernel by besides its signature (``magic_tuple``: the
    target, the CPU's name and features, with numba's CPU overrides), hashed."""
    from llvmlite import binding as ll
    from numba.core import config

    name = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else \
        ll.get_host_cpu_features().flatten()
    return hashlib.sha1(f"{ll.get_process_triple()}|{name}|{features}".encode()).hexdigest()[:12]


def _mark(module: str, dtype: str) -> str:
    return f"{module}-{'any' if module in ANY_DTYPE else dtype}-{_cpu_tag()}"


def mark_warmed(module: str, dtype: str) -> None:
    """Note that `module`'s kernels for `dtype` are in this process's cache dir (any failure: no
    mark, so the next process only loses the shortcut)."""
    root = cache_dir()
    if root is None:
        return
    with contextlib.suppress(OSError):
        (root / _WARMED).mkdir(exist_ok=True)
        (root / _WARMED / _mark(module, dtype)).touch()


def warmed(module: str, dtype: str) -> bool:
    """Whether :func:`mark_warmed` marked (`module`, `dtype`) on this CPU under this process's
    cache dir (a read-only image's marks come along with its kernels: `_seed` copies them, last)."""
    root = cache_dir()
    return root is not None and (root / _WARMED / _mark(module, dtype)).is_file()


def _is_kernel_source(py_file: str) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(_KERNELS)
    except (OSError, ValueError):
        return False


class KeyedCacheLocator(_Base):
    """Numba cache locator for kernelkit's kernels: the keyed dir, and the key as source stamp."""

    def __init__(self, py_func, py_file):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._cache_path = os.path.join(str(cache_dir()), self.get_suitable_cache_subpath(py_file))

    def get_source_stamp(self):
        return cache_key()

    @classmethod
    def get_suitable_cache_subpath(cls, py_file):
        """The kernel source's folder relative to the package, not its absolute path (numba's):
        an install moved after `kernelkit warmup` (an image build that copies the package, a
        checkout and a wheel sharing one cache) looked for its kernels in a folder named after
        the old path, and a first call compiled for 13.6 s. (The keyed folder above it already
        names the sources' contents.)"""
        folder = Path(py_file).resolve().parent
        try:
            rel = folder.relative_to(_PACKAGE).as_posix()
        except ValueError:  # (not ours: numba's own naming)
            return super().get_suitable_cache_subpath(py_file)
        return f"{folder.name}_{hashlib.sha1(rel.encode()).hexdigest()[:16]}"

    @classmethod
    def from_function(cls, py_func, py_file):
        if not _is_kernel_source(py_file):
            return None
        if cache_dir() is None:
            return None
        self = cls(py_func, py_file)  # (numba's from_function would ask for NUMBA_CACHE_DIR)
        try:
            self.ensure_cache_path()
        except OSError:
            return None
        return self


def install() -> None:
    """Put :class:`KeyedCacheLocator` first in numba's locator list (idempotent). Called by every
    kernel module before it decorates anything."""
    if KeyedCacheLocator not in _Impl._locator_classes:
        _Impl._locator_classes = [KeyedCacheLocator, *_Impl._locator_classes]


install()
