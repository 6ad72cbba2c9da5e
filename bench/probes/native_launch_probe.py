"""What the Python callbacks of a two-share launch cost: a float32 conv forward's one launch on
torch's OpenMP team through ``_pool`` (each share a ctypes callback that takes the GIL to call
the jitted share) against the same region started with a native trampoline (a Numba cfunc that
rebuilds the arrays from a block of pointers, shapes and strides and calls the share: no thread
touches Python), interleaved in one process.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE flock /tmp/kk-bench.lock \\
        python bench/probes/native_launch_probe.py [--batch 1] [--layers 256,256,14,3,1 ...]

A prototype for the measurement only: the trampoline handles ``_conv.fwd`` on float32 with a
C-contiguous input. It checks that both ways write the same output, then prints the medians of
``--rounds`` rounds of 20 calls each way and torch's F.conv2d.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import carray, cfunc, types

from kernelkit import devices
from kernelkit.kernels.numba import _conv, _pool
from kernelkit.kernels.numba import conv2d as nconv
from kernelkit.kernels.numba._resample import _make_ptr, f32_ptr

LAYERS = ["256,256,14,3,1", "512,512,7,3,1", "2048,512,7,1,1", "128,128,56,3,2"]
_ARRAYS = 7  # wsrc, wp, xpb, bias, out1, geo, sync: (address, size) pairs from slot 7


def _trampoline(omp_thread_num):
    i64_ptr = _make_ptr(types.int64)
    fwd = _conv.fwd

    @numba.njit(nogil=True)
    def f32(blk, i):
        return carray(f32_ptr(blk[i]), (blk[i + 1],))

    @numba.njit(nogil=True)
    def i64(blk, i):
        return carray(i64_ptr(blk[i]), (blk[i + 1],))

    @cfunc(types.void(types.CPointer(types.int64)), nogil=True)
    def body(data):
        blk = carray(data, (7 + 2 * _ARRAYS,))
        x4 = carray(f32_ptr(blk[2]), (blk[3], blk[4], blk[5], blk[6]))
        fwd(omp_thread_num(), blk[0], blk[1], x4, f32(blk, 7), f32(blk, 9), f32(blk, 11),
            f32(blk, 13), f32(blk, 15), i64(blk, 17), i64(blk, 19))

    return body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    args = ap.parse_args()
    torch.set_num_threads(2)
    path = _pool._loaded_openmp()
    if not path or not _pool._team():
        print("torch's OpenMP runtime not found: nothing to compare")
        return 1
    lib = ctypes.CDLL(path)
    thread_num = lib.omp_get_thread_num
    thread_num.restype, thread_num.argtypes = ctypes.c_int, []
    parallel = lib.GOMP_parallel
    parallel.restype = None
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    body = _trampoline(thread_num)
    captured: dict = {}
    real = nconv._launch
    print(f"cpu: {devices.cpu_info()['model']}; float32, batch {args.batch}; ms, medians of "
          f"{args.rounds} rounds of 20 calls")
    print("| layer | Python callbacks | native trampoline | torch |")
    print("| --- | --- | --- | --- |")
    for spec in args.layers:
        c, k, hw, r, st = (int(v) for v in spec.split(","))
        x = torch.randn(args.batch, c, hw, hw)
        w = torch.randn(k, c, r, r) * 0.05
        p = r // 2
        nconv._launch = lambda fn, tn, pack_tn, *a: captured.update(call=(fn, tn, pack_tn, a))
        try:
            nconv.conv2d_forward(x.numpy(), w.numpy(), None, (st, st), (p, p, p, p), (1, 1), 1,
                                 None, "NCHW")
        finally:
            nconv._launch = real
        fn, tn, pack_tn, a = captured["call"]
        x4, out1 = a[0], a[5]
        if tn < 2 or not x4.flags.c_contiguous:
            print(f"| {spec} | one thread or a strided input: not compared | | |")
            continue

        def through_python(fn=fn, tn=tn, pack_tn=pack_tn, a=a):
            real(fn, tn, pack_tn, *a)

        def native(tn=tn, a=a):
            blk = np.zeros(7 + 2 * _ARRAYS, np.int64)
            blk[0], blk[1], blk[2] = tn, 2, a[0].ctypes.data
            blk[3:7] = a[0].shape
            for i, arr in enumerate((*a[1:], np.zeros(2, np.int64))):
                blk[7 + 2 * i], blk[8 + 2 * i] = arr.ctypes.data, arr.size
            parallel(body.address, blk.ctypes.data, tn, 0)

        through_python()
        want = out1.copy()
        out1[:] = np.nan
        native()
        if not np.array_equal(out1, want):
            print(f"| {spec} | outputs differ | | |")
            return 1
        times: dict = {"python": [], "native": [], "torch": []}
        rows = {"python": through_python, "native": native,
                "torch": lambda x=x, w=w, p=p, st=st: F.conv2d(x, w, padding=p, stride=st)}
        for _ in range(args.rounds):
            for key, f in rows.items():
                f()
                t0 = time.perf_counter()
                for _ in range(20):
                    f()
                times[key].append((time.perf_counter() - t0) / 20)
        med = {key: statistics.median(v) * 1e3 for key, v in times.items()}
        print(f"| {c}->{k} {hw}px {r}x{r} s{st} | {med['python']:.3f} | {med['native']:.3f} | "
              f"{med['torch']:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
