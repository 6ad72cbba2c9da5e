"""kernelkit's version: one place, read by the package, its build (pyproject.toml) and the autotune
cache's fingerprint (devices.package_version), which must not import the package above it."""

__version__ = "0.1.0"
