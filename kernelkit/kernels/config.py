"""What every kernel's config dataclass shares: the JSON round trip the tuner's cache relies on."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T", bound="KernelConfig")


class KernelConfig:
    """Mixin for the frozen config dataclasses: `to_dict()` and a strict `from_dict()`.

    `from_dict` rejects unknown keys and missing keys that have no default, so a cache entry
    written by another version of a kernel fails loudly instead of configuring it wrongly.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        names = {f.name for f in fields}
        required = {f.name for f in fields if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING}
        if set(d) - names or required - set(d):
            raise ValueError(f"{cls.__name__}.from_dict: expected keys {sorted(names)}, got "
                             f"{sorted(d)}")
        return cls(**{k: d[k] for k in names if k in d})


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for Python ints (host-side block arithmetic; the jitted code has its own)."""
    return -(-a // b)


def next_pow2(x: int) -> int:
    """The smallest power of two >= x (1 for x <= 1): how config spaces round problem sizes."""
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class VendorConfig(KernelConfig):
    """The vendor library's (torch's) config: nothing to choose, it picks its own algorithm."""


def vendor_space(problem) -> list[VendorConfig]:
    """The config space of a vendor kernel module: one empty config."""
    return [VendorConfig()]
