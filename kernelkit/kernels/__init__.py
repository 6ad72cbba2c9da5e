"""Hand-written kernels, one folder per backend and one file per op.

A kernel file only knows how to launch its own kernel: no dispatch, no tuning, no array conversion.
"""

# Epilogue activations every matmul/conv kernel implements. The names are the public API's.
# "gelu" is the exact erf form; "gelu_tanh" is torch's approximate="tanh".
ACTIVATIONS: tuple[str, ...] = ("relu", "gelu", "gelu_tanh", "silu")

# The codes the compiled kernels take for them (numba's _gemm, cupy's kk_epilogue.cuh).
ACT_CODES: dict[str | None, int] = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}
