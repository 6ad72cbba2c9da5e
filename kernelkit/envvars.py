"""The yes/no and number environment variables below the settings (KERNELKIT_FROZEN_WEIGHTS,
KERNELKIT_OPENMP_TEAM, KERNELKIT_NATIVE_SHARES, KERNELKIT_BUSY_SHARE), read where they act: a
leaf module, so the kernel packages may read them too (they may not import `settings`)."""

from __future__ import annotations

import os

_YES, _NO = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_WARNED_ENV: set = set()


def env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable: 1/0, true/false, yes/no or on/off in any case; unset gives
    `default`, and any other value warns once and gives `default` (before, "true" for a
    variable that took only "1" was silently off)."""
    value = os.environ.get(name)
    if value is None:
        return default
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    _warn_env(name, value, "1 or 0 (or true/false, yes/no, on/off)", default)
    return default


def env_number(name: str, default: float, low: float, high: float) -> float:
    """A number in [low, high] from the environment; unset gives `default`, and anything else
    warns once and gives `default`."""
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if low <= number <= high:
        return number
    _warn_env(name, value, f"a number in [{low:g}, {high:g}]", default)
    return default


def _warn_env(name: str, value: str, expected: str, default) -> None:
    if (name, value) not in _WARNED_ENV:
        _WARNED_ENV.add((name, value))
        from .callsite import warn  # (at the user's line: the knob is read deep in kernelkit)

        warn(f"kernelkit: {name}={value!r} is not {expected}; using {default}")
