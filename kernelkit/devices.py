"""Cheap probes: which backends and devices exist here.

This is the one place that asks "is X available?". Every probe is lazy and cached, so importing
kernelkit imports nothing heavy; a probe that fails means "not available", never an exception.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import os
import platform
import sys
from pathlib import Path

PACKAGES = ("kernelkit", "numpy", "torch", "triton", "numba", "cupy")


@functools.cache
def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def imported(name: str):
    """The module `name` if it is imported in full (by anyone), else None; never imports it. A
    module another thread is still importing sits in ``sys.modules`` half made, its attributes
    still to come: 2-3 of 4 threads whose numpy calls met another's first tuning (which imports
    torch) raised "partially initialized module 'torch' has no attribute 'Tensor'"."""
    module = sys.modules.get(name)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return None
    return module


_TORCH: list = [None]


def imported_torch():
    """``imported("torch")``, kept once torch is whole (the ops ask on every call)."""
    torch = _TORCH[0]
    if torch is None:
        torch = _TORCH[0] = imported("torch")
    return torch


def gpu_driver_present() -> bool:
    """Whether a GPU driver is here for torch to find, asked without importing torch (a numpy
    program's first call paid 0.9 s of ``import torch`` to learn there is no GPU). On Linux: an
    NVIDIA device node or ``libcuda.so.1``, or ROCm's ``/dev/kfd``; elsewhere assumed."""
    if platform.system() != "Linux":
        return True
    if os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/kfd"):
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


@functools.cache
def cuda_available() -> bool:
    """A CUDA device usable from torch (the GPU array library every GPU candidate can use).
    Without a GPU driver, False without importing torch."""
    if not has_module("torch"):
        return False
    if "torch" not in sys.modules and not gpu_driver_present():
        return False
    from kernelkit.signals import import_whole

    return bool(import_whole("torch").cuda.is_available())


def triton_interpret() -> bool:
    """Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1, read at import of triton)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def cupy_available() -> bool:
    """cupy is installed and sees at least one device."""
    if not has_module("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver / no device / broken wheel all mean "no cupy"
        return False


_DISTRIBUTIONS = {"cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy")}


def package_version(name: str) -> str | None:
    """The installed version of the distribution that provides module `name`, or None (also
    when no module `name` can be imported: asking importlib.metadata about each absent
    distribution costs a first call about 0.2 ms)."""
    if name == "kernelkit":  # ours, however installed (an editable install has no dist-info
        # beside the package, and importlib.metadata would scan the whole path: ~1 ms)
        from ._version import __version__

        return __version__
    if not has_module(name):
        return None
    for dist in _DISTRIBUTIONS.get(name, (name,)):
        version = _version_beside(name, dist)
        if version is not None:
            return version
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _version_beside(module: str, dist: str) -> str | None:
    """The version in the name of the ``<dist>-<version>.dist-info`` folder next to the module's
    package (where pip puts it). The answer importlib.metadata gives, without parsing every
    METADATA file on the path (milliseconds each, on every process's first call)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    prefix = dist.replace("-", "_").lower() + "-"
    for location in spec.submodule_search_locations:
        for entry in _listing(str(Path(location).parent)):
            if entry.lower().startswith(prefix) and entry.endswith(".dist-info"):
                return entry[len(prefix):-len(".dist-info")]
    return None


@functools.cache
def _listing(folder: str) -> tuple[str, ...]:
    try:
        return tuple(e for e in os.listdir(folder) if e.endswith(".dist-info"))
    except OSError:
        return ()


@functools.cache
def cpu_info() -> dict:
    """CPU model, core count and per-level cache sizes (bytes), from /proc and sysfs where present."""
    caches: dict[str, int] = {}
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(base.glob("index*")) if base.exists() else []:
        try:
            level = (idx / "level").read_text().strip()
            kind = (idx / "type").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024**2}.get(size[-1], 1)
        n = int(size[:-1]) if size[-1] in "KM" else int(size)
        name = f"L{level}" + ("d" if kind == "Data" else "i" if kind == "Instruction" else "")
        caches[name] = n * mult
    return {"model": cpu_model(), "cores": os.cpu_count() or 1, "caches": caches}


@functools.cache
def _first_cpu_block() -> bytes:
    """/proc/cpuinfo's first CPU block, read once for `cpu_model`, `cpu_flags` and `cpu_kind`
    (b"" where it cannot be read)."""
    lines: list[bytes] = []
    try:
        with open("/proc/cpuinfo", "rb") as f:
            for raw in f:
                if not raw.strip():
                    if lines:
                        break
                    continue
                lines.append(raw)
    except OSError:
        pass
    return b"".join(lines)


def _field(block: bytes, *names: bytes) -> str | None:
    """The value of the first line of `block` whose key is one of `names`."""
    for raw in block.splitlines():
        key, _, value = raw.partition(b":")
        if key.strip() in names:
            return value.strip().decode(errors="replace")
    return None


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (what the autotune cache's fingerprint names: without the cache
    sizes, whose sysfs walk costs a first call about a millisecond)."""
    model = _field(_first_cpu_block(), b"model name")
    if model is None:  # (platform.processor() runs `uname -p` on some systems: milliseconds)
        model = platform.processor() or platform.machine()
    return model


# The feature flags a kernel's speed or its choice of code depends on: what the autotune cache's
# fingerprint names beside the model (`cpu_kind`)
_KERNEL_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                 "avx512dq", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                 "amx_bf16", "amx_fp16", "amx_int8", "asimd", "asimdhp", "sve", "sve2", "bf16",
                 "i8mm")


@functools.cache
def cpu_kind() -> str:
    """The CPU's family and model numbers and its kernel-relevant feature flags, as one string:
    what tells apart CPUs whose model name is the same (a VM's "AMD EPYC" is Zen 3, 4 or 5, with
    or without AVX-512; an arm64 machine's name is its architecture), for the autotune cache's
    fingerprint."""
    return cpu_kind_of(_first_cpu_block())


def cpu_kind_of(cpuinfo: bytes) -> str:
    """`cpu_kind` of a /proc/cpuinfo's text (its first CPU's block)."""
    block = cpuinfo.strip().split(b"\n\n", 1)[0]
    ident = {name.decode(): value for name in (b"cpu family", b"model", b"CPU implementer",
                                                b"CPU part")
             if (value := _field(block, name)) is not None}
    flags = _flags_of(block)
    return ";".join([*(f"{k}={v}" for k, v in sorted(ident.items())),
                     ",".join(f for f in _KERNEL_FLAGS if f in flags)])


def _flags_of(block: bytes) -> frozenset[str]:
    return frozenset((_field(block, b"flags", b"Features") or "").split())


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The first CPU's feature flags (Linux: /proc/cpuinfo), e.g. "avx512_bf16"; empty where
    they cannot be read."""
    return _flags_of(_first_cpu_block())


@functools.cache
def gpu_info() -> dict | None:
    """Name, compute capability, driver/CUDA versions of device 0, or None without a GPU."""
    if not cuda_available():
        return None
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "memory_gib": round(props.total_memory / 2**30, 1),
        "cuda": torch.version.cuda,
        "count": torch.cuda.device_count(),
    }


def versions() -> dict[str, str | None]:
    return {name: package_version(name) for name in PACKAGES}


def module_missing(name: str) -> str | None:
    """Why a backend built on the library `name` cannot load here, or None."""
    return None if has_module(name) else f"{name} is not installed"
