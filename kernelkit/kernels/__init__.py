"""Hand-written kernels, one folder per backend and one file per op.

A kernel file only knows how to launch its own kernel: no dispatch, no tuning, no array conversion.
"""

import math

import numpy as np

# Epilogue activations every matmul/conv kernel implements. The names are the public API's.
# "gelu" is the exact erf form; "gelu_tanh" is torch's approximate="tanh".
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_tanh", "silu")


def check_activation(op: str, activation) -> None:
    """The epilogue activation must be None or one of ACTIVATIONS (else a TypeError naming op
    for a value that is not a str, a ValueError for another str)."""
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"{op}: 'activation' must be None or one of {ACTIVATIONS}, got "
                        f"{activation!r}")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"{op}: 'activation' must be None or one of {ACTIVATIONS}, got "
                         f"{activation!r}")

def check_flag(op: str, name: str, value) -> None:
    """A yes/no argument must be a bool (else a TypeError naming op): "no" and 0.5 are not
    flags, and a string is always true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name!r} must be a bool, got {value!r}")


# The codes the compiled kernels take for them (numba's _gemm, cupy's kk_epilogue.cuh).
ACT_CODES: dict[str | None, int] = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}


def torch_activations() -> dict:
    """The activations as torch functions: the vendor's epilogue and the float64 references'.
    (Built once into a plain dict, not behind functools.cache: torch.compile warned "Dynamo
    detected a call to a functools.lru_cache-wrapped function" on every patched model.)"""
    if not _TORCH_ACTIVATIONS:
        _TORCH_ACTIVATIONS.update(_torch_activations())
    return _TORCH_ACTIVATIONS


_TORCH_ACTIVATIONS: dict = {}


def _torch_activations() -> dict:
    import torch
    import torch.nn.functional as F

    # torch's vectorised float32 GELU on an AVX-512 CPU (torch 2.13) returns NaN for +inf, where
    # every other kernel (and the float64 reference) gives +inf: put +inf back there. On every CPU
    # tensor (probing the CPU here would break torch.compile's full graphs; Inductor fuses the
    # select into the GELU, eager pays one more elementwise pass), and in an FX symbolic trace,
    # whose device is a Proxy (an `if` on it raised "symbolically traced variables cannot be used
    # as inputs to control flow"; the select is a no-op where the trace runs on CUDA).
    proxy = torch.fx.Proxy

    def gelu(x):
        y = F.gelu(x)
        if isinstance(x, proxy) or x.device.type == "cpu":
            return torch.where(x == math.inf, x, y)
        return y

    return {"relu": torch.relu, "gelu": gelu,
            "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}


def numpy_activation(c: np.ndarray, activation: str) -> np.ndarray:
    """`activation` of `c` in numpy, from the definitions: where torch (a dependency) is not
    installed, for the numpy backend's epilogue and the float64 reference. erfc goes through
    math.erfc element by element (slow; the torch path is the one that runs normally)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if activation == "relu":
            return np.maximum(c, 0)
        if activation == "silu":  # (x e / (1 + e), e = exp(x), below 0: exp(-x) overflows)
            e = np.exp(-np.abs(c))
            return np.where(c < 0, c * e, c) / (1 + e)
        if activation == "gelu_tanh":
            return 0.5 * c * (1 + np.tanh(math.sqrt(2 / math.pi) * (c + 0.044715 * c * c * c)))
        if activation == "gelu":  # (0.5 x erfc(-x / sqrt 2): 0.5 x (1 + erf) cancels for x < 0)
            # (the argument in float64: rounded to float32 first, erfc's tail was 4e-6 off)
            z = np.asarray(c, dtype=np.float64) * (-1 / math.sqrt(2))
            erfc = np.frompyfunc(math.erfc, 1, 1)(z).astype(c.dtype)
            return 0.5 * c * erfc
    raise ValueError(f"unknown activation {activation!r}")
