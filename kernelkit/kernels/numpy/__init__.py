"""numpy's own BLAS (OpenBLAS in the wheels) on the CPU: the vendor a numpy user calls instead.

Its matmul is a candidate for numpy inputs, so the dispatcher can never do worse than ``a @ b``
in numpy. It runs torch CPU tensors too (the zero-copy ``Tensor.numpy()``), but only when forced
(`Backend.own_data_only`): in a torch process, OpenBLAS's threads spin for about 0.1 s after each
call and torch's next OpenMP region waits a scheduler tick for a core (on 2 cores: 4 ms after a
160^3 matmul that takes 0.07 ms, measured with numpy and torch calls alternating), a cost that no
timing of the call alone shows.
"""

from kernelkit import devices
from kernelkit.core import Backend

BACKENDS = (
    Backend(name="numpy", device="cpu", native="numpy", package=__name__,
            # numpy's float16 matmul has no BLAS (a scalar loop): not a candidate for it
            dtypes={"matmul": ("float32", "float64")},
            missing=lambda: devices.module_missing("numpy"),
            vendor=True, roofline=(2e-6, 1.5e11, 2e10), own_data_only=("*",)),
)
