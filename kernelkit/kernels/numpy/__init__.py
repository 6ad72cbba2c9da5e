"""numpy's own BLAS (OpenBLAS in the wheels) on the CPU: the vendor a numpy user calls instead.

Its matmul is a candidate for numpy inputs and, through the zero-copy ``Tensor.numpy()``, for
torch CPU tensors, so the dispatcher can never do worse than ``a @ b`` in numpy.
"""

from kernelkit import devices
from kernelkit.core import Backend

BACKENDS = (
    Backend(name="numpy", device="cpu", native="numpy", package=__name__,
            # numpy's float16 matmul has no BLAS (a scalar loop): not a candidate for it
            dtypes={"matmul": ("float32", "float64")},
            missing=lambda: devices.module_missing("numpy"),
            vendor=True, roofline=(2e-6, 1.5e11, 2e10)),
)
