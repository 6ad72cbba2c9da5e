"""Native trampolines: a Numba kernel's shares run on torch's OpenMP team without Python.

``_pool`` runs a kernel's shares ``fn(t, nthr, *args)`` as one parallel region of torch's OpenMP
runtime. Through a ctypes callback each share is a call into Python: the thread takes the GIL,
converts the arguments and calls the jitted entry point, which releases the GIL again. On these
VMs a thread blocked on the GIL wakes slowly, and a two-share launch cost 0.1-0.35 ms a call more
than its work (Zen 4, `docs/performance.md`, "Two threads cost 0.1-0.35 ms a call at batch 1").

Here no thread touches Python. Per signature of a compiled share entry point
(``_gemm.entry_point`` asks for both):

- the **launcher** (``_launch_region``, a jitted function without the GIL) writes the arguments
  into a block of int64 words (an array as its data address, shape and strides in bytes; a scalar
  as its value) and starts the region with ``GOMP_parallel``;
- the **trampoline** (a Numba ``cfunc``, the region's function) rebuilds the arguments with
  exactly the signature's types and calls the compiled kernel (by its native address, numba's
  own calling convention) for each of its thread's shares, counting the ones that returned.

Both sit in numba's on-disk cache under kernelkit's keyed locator (``_cache``); the trampoline's
index key is its signature (numba's default key hashes the function's closure, which names a
per-process spec). A share that raises is counted as failed, never as done, and the caller raises;
where the job's shares meet at a barrier (``_pool.run_synced``) it also marks the barrier's
``sync`` so that the others leave it. A synced job on a team smaller than its shares runs
nothing (``REFUSED``: the caller takes the Python pool). ``KERNELKIT_NATIVE_SHARES=0`` turns
trampolines off (each share a Python callback again).
"""

from __future__ import annotations

import contextlib
import os
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from kernelkit.envvars import env_flag
from kernelkit.kernels.numba import _cache

_cache.install()  # the keyed locator, before the first cache=True function below

ENV = "KERNELKIT_NATIVE_SHARES"

# the block's header words
H_NTHR = 0  # shares
H_SYNC = 1  # address of a synced job's sync (int64[2]), 0 for an unsynced job
H_THREAD_NUM = 2  # address of the runtime's omp_get_thread_num
H_NUM_THREADS = 3  # address of omp_get_num_threads
H_DONE = 4  # shares that returned (counted atomically)
H_REFUSED = 5  # set: a synced job got fewer threads than shares (nothing ran)
H_FAILED = 6  # set: a share raised
H_FN = 7  # the native address of the compiled entry point
HEADER = 8

# the launcher's head words (per entry point and OpenMP runtime, built once)
K_PARALLEL, K_TRAMPOLINE, K_FN, K_THREAD_NUM, K_NUM_THREADS = range(5)

# launch outcomes
OK, REFUSED, FAILED, INCOMPLETE = range(4)

_LOCK = threading.Lock()


def _new_lock_in_child() -> None:
    global _LOCK
    _LOCK = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_in_child)

_SPECS: dict[str, tuple] = {}  # spec name -> ((t, nthr) types, argument types) it rebuilds
_TRAMPOLINES: dict[tuple, object] = {}  # a signature's argument types -> its trampoline
_BY_ENTRY: dict[int, tuple] = {}  # id(entry point) -> (entry point, launcher, trampoline, fn)


def enabled() -> bool:
    return env_flag(ENV, True)


# ------------------------------------------------------------------------ codegen: the trampoline

@intrinsic
def _call_int(typingctx, addr):
    """The int returned by the C function ``int f(void)`` at address ``addr``."""
    sig = types.int64(types.int64)

    def codegen(context, builder, sig, args):
        fnty = ir.FunctionType(ir.IntType(32), [])
        fn = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return sig, codegen


@intrinsic
def _atomic_add(typingctx, data, idx, val):
    """data[idx] += val, atomically, on a CPointer(int64)."""
    sig = types.void(data, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        ptr = builder.gep(args[0], [args[1]])
        builder.atomic_rmw("add", ptr, args[2], "seq_cst")
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_at(typingctx, addr, val):
    """*(int64 *)addr = val, atomically (a flag another thread spins on)."""
    sig = types.void(types.int64, types.int64)

    def codegen(context, builder, sig, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        builder.store_atomic(args[1], ptr, "seq_cst", 8)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _call_share(typingctx, data, spec, share, nthr):
    """Call the compiled entry point whose native address is block word H_FN as
    ``fn(share, nthr, *args)``, the arguments rebuilt from the block with the types registered
    under the literal ``spec`` (numba's own calling convention, as one jitted function calls
    another); whether it failed (raised)."""
    if not isinstance(spec, types.StringLiteral):
        return None
    head, argtys = _SPECS[spec.literal_value]
    sig = types.boolean(data, spec, types.int64, types.int64)

    def codegen(context, builder, sig, args):
        from numba.core.callconv import excinfo_t
        from numba.np.arrayobj import make_array, populate_array

        block, _, share, nthr = args
        i64 = ir.IntType(64)
        word = [HEADER]

        def load():
            v = builder.load(builder.gep(block, [ir.Constant(i64, word[0])]))
            word[0] += 1
            return v

        values = [context.cast(builder, share, types.int64, head[0]),
                  context.cast(builder, nthr, types.int64, head[1])]
        for ty in argtys:
            if isinstance(ty, types.Array):
                addr = load()
                shape = [load() for _ in range(ty.ndim)]
                strides = [load() for _ in range(ty.ndim)]
                ary = make_array(ty)(context, builder)
                dtype = context.get_data_type(ty.dtype)
                populate_array(ary,
                               data=builder.inttoptr(addr, dtype.as_pointer()),
                               shape=cgutils.pack_array(builder, shape),
                               strides=cgutils.pack_array(builder, strides),
                               itemsize=context.get_constant(types.intp,
                                                             context.get_abi_sizeof(dtype)),
                               meminfo=None)
                values.append(ary._getvalue())
            else:
                values.append(context.cast(builder, load(), types.int64, ty))
        conv = context.call_conv
        full = (*head, *argtys)
        fnty = conv.get_function_type(types.void, full)
        fnaddr = builder.load(builder.gep(block, [ir.Constant(i64, H_FN)]))
        callee = builder.inttoptr(fnaddr, fnty.as_pointer())
        retty = conv.get_return_type(types.void).pointee
        retval = cgutils.alloca_once(builder, retty)
        builder.store(cgutils.get_null_value(retty), retval)
        excinfo = cgutils.alloca_once(builder, ir.PointerType(excinfo_t), name="excinfo")
        realargs = [retval, excinfo, *conv._get_arg_packer(full).as_arguments(builder, values)]
        code = builder.call(callee, realargs)
        status = conv._get_return_status(builder, code, builder.load(excinfo))
        return status.is_error

    return sig, codegen


# --------------------------------------------------------------------------- codegen: the launcher

def _words(argtys) -> int:
    return sum(1 + 2 * ty.ndim if isinstance(ty, types.Array) else 1 for ty in argtys)


@intrinsic
def _block_size(typingctx, args):
    """HEADER plus the words that describe the tuple ``args`` (a compile-time constant)."""
    if not isinstance(args, types.BaseTuple):
        return None
    n = HEADER + _words(args.types)
    sig = types.int64(args)

    def codegen(context, builder, sig, a):
        return context.get_constant(types.int64, n)

    return sig, codegen


@intrinsic
def _write_args(typingctx, blk, args):
    """Write the tuple ``args`` into the int64 array ``blk`` from word HEADER on (an array as its
    data address, shape and strides in bytes; a scalar as its value); the data address of the
    last array (a synced job's ``sync``)."""
    if not isinstance(args, types.BaseTuple):
        return None
    sig = types.int64(blk, args)

    def codegen(context, builder, sig, a):
        from numba.np.arrayobj import make_array

        i64 = ir.IntType(64)
        base = make_array(sig.args[0])(context, builder, a[0]).data
        word = [HEADER]
        last = ir.Constant(i64, 0)

        def store(v):
            builder.store(v, builder.gep(base, [ir.Constant(i64, word[0])]))
            word[0] += 1

        for k, ty in enumerate(sig.args[1].types):
            v = builder.extract_value(a[1], k)
            if isinstance(ty, types.Array):
                ary = make_array(ty)(context, builder, v)
                last = builder.ptrtoint(ary.data, i64)
                store(last)
                for d in cgutils.unpack_tuple(builder, ary.shape, ty.ndim):
                    store(d)
                for d in cgutils.unpack_tuple(builder, ary.strides, ty.ndim):
                    store(d)
            else:
                store(context.cast(builder, v, ty, types.int64))
        return last

    return sig, codegen


@intrinsic
def _parallel(typingctx, gomp, tramp, blk, nthr):
    """GOMP_parallel(tramp, blk's data, nthr, 0), the runtime's entry point at address ``gomp``."""
    sig = types.void(types.int64, types.int64, blk, types.int64)

    def codegen(context, builder, sig, a):
        from numba.np.arrayobj import make_array

        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        body_ty = ir.FunctionType(ir.VoidType(), [i8p])
        fnty = ir.FunctionType(ir.VoidType(), [body_ty.as_pointer(), i8p, i32, i32])
        fn = builder.inttoptr(a[0], fnty.as_pointer())
        data = builder.bitcast(make_array(sig.args[2])(context, builder, a[2]).data, i8p)
        builder.call(fn, [builder.inttoptr(a[1], body_ty.as_pointer()), data,
                          builder.trunc(a[3], i32), ir.Constant(i32, 0)])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(nogil=True, cache=True)
def _launch_region(head, nthr, synced, args):
    """One parallel region of ``nthr`` shares of the entry point at head[K_FN] on ``args``,
    through the trampoline at head[K_TRAMPOLINE]; the outcome (OK, REFUSED, FAILED,
    INCOMPLETE). Runs without the GIL: the calling thread takes its shares natively too."""
    blk = np.zeros(_block_size(args), np.int64)
    blk[H_NTHR] = nthr
    blk[H_THREAD_NUM] = head[K_THREAD_NUM]
    blk[H_NUM_THREADS] = head[K_NUM_THREADS]
    blk[H_FN] = head[K_FN]
    last = _write_args(blk, args)
    if synced:
        blk[H_SYNC] = last
    _parallel(head[K_PARALLEL], head[K_TRAMPOLINE], blk, nthr)
    if blk[H_REFUSED] != 0:
        return REFUSED
    if blk[H_FAILED] != 0:
        return FAILED
    return OK if blk[H_DONE] == nthr else INCOMPLETE


# ---------------------------------------------------------------------------------- compiling

def _make_body(spec: str):
    """The trampoline: the region's one function, run by every thread of the team."""

    def body(data):
        nthr = data[H_NTHR]
        t = _call_int(data[H_THREAD_NUM])
        n = _call_int(data[H_NUM_THREADS])
        sync = data[H_SYNC]
        if n < nthr and sync != 0:
            data[H_REFUSED] = 1  # a synced job needs every share at once: run none
            return
        for share in range(t, nthr, n):
            if _call_share(data, spec, share, nthr):
                data[H_FAILED] = 1
                if sync != 0:
                    _store_at(sync + 8, 1)  # sync[1]: the other shares leave the barrier
            else:
                _atomic_add(data, H_DONE, 1)

    return body


def _cache_class():
    from numba.core import caching

    class KeyedIndexCache(caching.FunctionCache):
        """numba's function cache with an index key of our own (see the module's doc)."""

        def __init__(self, py_func, key: str):
            super().__init__(py_func)
            self._kk_key = key

        def _index_key(self, sig, codegen):
            return (sig, codegen.magic_tuple(), self._kk_key)

    return KeyedIndexCache


def _trampoline(sig) -> int:
    """The address of the trampoline for entry points of signature ``sig`` (compiled, or loaded
    from numba's cache)."""
    from numba.core.ccallback import CFunc

    key = tuple(sig.args)
    with _LOCK:
        cf = _TRAMPOLINES.get(key)
        if cf is not None:
            return cf.address
        spec = f"s{len(_SPECS)}"
        _SPECS[spec] = (key[:2], key[2:])
    body = _make_body(spec)
    cf = CFunc(body, ((types.CPointer(types.int64),), types.void), locals={},
               options={"nogil": True, "nopython": True, "error_model": "numpy"})
    with contextlib.suppress(Exception):  # no cache dir: compiled, kept in memory only
        cf._cache = _cache_class()(body, repr(key))
    cf.compile()
    with _LOCK:
        cf = _TRAMPOLINES.setdefault(key, cf)
    return cf.address


def _launcher(argtys):
    """``_launch_region``'s entry point for argument tuples of ``argtys``."""
    head = types.Array(types.int64, 1, "C", readonly=True)
    sig = types.int64(head, types.int64, types.boolean, types.Tuple(argtys))
    _launch_region.compile(sig)
    return _launch_region.overloads[sig.args].entry_point


def prepare(entry, disp, sig) -> None:
    """Compile (or load) what runs ``entry`` (``disp`` compiled for ``sig``) without Python: its
    signature's trampoline and launcher. Never raises: without them the shares stay Python
    callbacks."""
    if not enabled() or id(entry) in _BY_ENTRY or len(sig.args) < 3:
        return
    if not all(isinstance(ty, types.Integer) for ty in sig.args[:2]):
        return  # not a share (t, nthr, ...)
    argtys = tuple(sig.args[2:])
    ok = all(isinstance(ty, (types.Array, types.Integer, types.Boolean)) for ty in argtys)
    cres = disp.overloads.get(tuple(sig.args))
    if not ok or cres is None:
        return
    try:
        fn = cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)
        if not fn:
            return
        tramp = _trampoline(sig)
        launcher = _launcher(argtys)
    except Exception:  # noqa: BLE001 - an unsupported signature or numba version
        return
    _BY_ENTRY[id(entry)] = (entry, launcher, tramp, fn)


def runner(entry, team: tuple):
    """(launcher, head) that run ``entry``'s shares natively on the OpenMP runtime ``team``
    (``_pool._team()``: its last item the addresses of GOMP_parallel, omp_get_thread_num and
    omp_get_num_threads); None without a trampoline. Call ``launcher(head, nthr, synced,
    args)``."""
    got = _BY_ENTRY.get(id(entry))
    if got is None or got[0] is not entry or len(team) < 4:
        return None
    _, launcher, tramp, fn = got
    parallel, thread_num, num_threads = team[3]
    head = np.array([parallel, tramp, fn, thread_num, num_threads], np.int64)
    head.flags.writeable = False
    return launcher, head
