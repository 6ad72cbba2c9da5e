"""Where kernelkit keeps what it learns: the one rule for the cache folder.

At the bottom of the package (it imports nothing of kernelkit), so the knobs (settings.py) and
the compiled-kernel caches (kernels/numba/_cache.py) read the folder the same way.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """KERNELKIT_CACHE_DIR, else the platform's user cache dir for kernelkit."""
    configured = os.environ.get("KERNELKIT_CACHE_DIR")
    return Path(configured).expanduser() if configured else default_cache_dir()


def user_temp_dir(name: str) -> Path:
    """``<temporary dir>/kernelkit-<name>-<uid>``: a per-user fallback where the cache folder
    cannot be written (a read-only image's)."""
    import tempfile

    uid = getattr(os, "getuid", lambda: "user")()
    return Path(tempfile.gettempdir()) / f"kernelkit-{name}-{uid}"


def default_cache_dir() -> Path:
    """The user cache dir for kernelkit: platformdirs' answer where it is installed, else the
    same path by the platforms' conventions (XDG on Linux), so that nothing optional can stop a
    call (the GPU machines have no platformdirs)."""
    try:
        import platformdirs
    except ImportError:
        return fallback_cache_dir()
    return Path(platformdirs.user_cache_dir("kernelkit", appauthor=False))


def fallback_cache_dir(env=None, platform: str | None = None, home: Path | None = None) -> Path:
    """platformdirs' user_cache_dir("kernelkit", appauthor=False), without platformdirs."""
    import sys

    env = os.environ if env is None else env
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    if platform.startswith("win"):
        base = env.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(base) / "kernelkit" / "Cache"
    if platform == "darwin":
        return home / "Library" / "Caches" / "kernelkit"
    xdg = (env.get("XDG_CACHE_HOME") or "").strip()
    return Path(xdg if xdg else home / ".cache") / "kernelkit"
