"""Kernels compiled off the critical path: no call waits for a compiler it did not ask for.

A backend whose kernels are compiled on first use declares ``compiles=True`` (Numba: 10-20 s per
op the first time on a small machine, then about half a second to load from its on-disk cache in
each new process). Each of its kernel modules has ``warm(dtype)``: compile, or load from the
on-disk cache, everything the module's entry point runs for that dtype.

The tuner asks :func:`ready` about each such candidate before it would import the kernel module.
The first ask queues a background job and answers False; the call then runs on the best candidate
that is ready (the vendor at worst). Nothing about that choice is stored, and its plan is kept only
until a job finishes (`finished`). Once the job is done, the next call decides as usual with the
compiled candidate in the race.

A job runs on one daemon thread (jobs one after another: two compiles at once would only fight
for the cores). It first has a child process (``python -c``) compile the kernels into the on-disk
cache: compiling is mostly Python that holds the GIL, so a compile in a thread here would slow the
caller's own work for its whole length. The thread then loads the cached kernels (a fraction of a
second); kernels already compiled into the on-disk cache (:func:`on_disk`) just load there. The
child is allowed to finish if this process exits first, so the next process starts
warm; a file lock per (module, dtype) keeps concurrent processes (DataLoader workers, DDP ranks)
from compiling the same kernels twice. If the child cannot run or fails, the thread compiles here.

One call does not take the vendor while the job runs: numpy data whose only ready candidate is
torch's, in a process that has not imported torch, loads kernels that some process already
compiled into the on-disk cache (:func:`on_disk`: the backend's mark, set after each warm) in the
calling thread, since importing torch for that one call costs more than the load.

``KERNELKIT_COMPILE=foreground`` (or ``kernelkit.use(compile="foreground")``) makes the first call
compile before it runs, as plain Numba does. A forced backend (``KERNELKIT_BACKEND``), `explain`
and ``kernelkit tune`` always wait for the kernels they time. ``kernelkit warmup`` compiles every
kernel ahead of time (:func:`targets`, then :func:`warm_here` for each).
"""

from __future__ import annotations

import _thread
import contextlib
import importlib
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from kernelkit.signals import deferred, fork_waits, import_whole, raised_by_signal_handler

CHILD_TIMEOUT_S = 1800  # a compile that takes longer than this is abandoned (then done here)
# The background thread sleeps this long before its first job, so that the call which
# queued it (which runs meanwhile on a ready candidate) does not share the cores with the child
# process's start (a Python interpreter importing numba: about a second of CPU). A job takes
# seconds; starting it a few milliseconds later costs nothing.
START_DELAY_S = 0.05


@dataclass
class Job:
    """The compile (or load) of one kernel module's kernels for one dtype."""

    module: str
    dtype: str
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    # "queued", then "loaded" (from the on-disk cache), "compiled" (here), "compiled in a child
    # process" or "failed"
    how: str = "queued"
    seconds: float = 0.0
    error: str | None = None


_lock = threading.Lock()
_jobs: dict[tuple[str, str], Job] = {}
_queue: deque[Job] = deque()
_working = False  # the background thread is running (or about to)
# jobs finished in this process: a plan chosen while kernels compiled stays memoised until this
# changes (ops/dispatch.py), so the calls of a warming period do not each decide again
finished = 0
_child_ok = True  # False once a child process could not start (then compile here)


def ready(module: str, dtype: str) -> bool:
    """The kernels of `module` for `dtype` are loaded in this process (never blocks; queues
    nothing: see `submit`)."""
    job = _jobs.get((module, dtype))
    return job is not None and job.done.is_set()


def submit(module: str, dtype: str) -> Job:
    """Queue the compile of `module` for `dtype` on the background thread (once per process)."""
    global _working
    start = False
    with _lock:
        job = _jobs.get((module, dtype))
        if job is None:
            job = _jobs[(module, dtype)] = Job(module, dtype)
            _queue.append(job)
            start, _working = not _working, True
    if start:
        # A bare thread and a lock as the handshake: 0.15-0.25 ms where threading.Timer's start
        # took 0.3-0.5 ms on a 2-core VM. The caller waits until the thread runs (then sleeps):
        # a thread still starting while the caller's kernel runs took a core from the BLAS's
        # threads and made 4 of 14 first numpy matmuls 8-17 ms instead of 1 ms.
        started = _thread.allocate_lock()
        started.acquire()
        _thread.start_new_thread(_work, (START_DELAY_S, started))
        started.acquire()
    return job


def wait(module: str | None = None, dtype: str | None = None,
         timeout: float | None = None) -> bool:
    """Block until the job for (`module`, `dtype`) is done (queued first if need be), or with no
    arguments until every queued job is. True unless the timeout ran out."""
    if module is not None:
        return submit(module, dtype or "").done.wait(timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    for job in list(_jobs.values()):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not job.done.wait(left):
            return False
    return True


def jobs() -> list[Job]:
    """Every job of this process, in the order they were queued (for `kernelkit info`, tests)."""
    return list(_jobs.values())


def warm_here(module: str, dtype: str) -> Job:
    """Compile (or load) now, in this thread, unless a job already did; returns the job."""
    job = _jobs.get((module, dtype))
    if job is not None:
        if job.how == "queued" and not job.done.is_set():
            job.done.wait()  # the background thread has it: wait rather than compile twice
        return job
    with _lock:
        job = _jobs.setdefault((module, dtype), Job(module, dtype))
    if not job.done.is_set():
        _run(job, child=False)
    return job


def on_disk(module: str, dtype: str) -> bool:
    """Whether some process compiled `module`'s kernels for `dtype` into its backend's on-disk
    cache (the backend's mark: ``warmed_on_disk``), so that loading them here takes a fraction of
    a second rather than a compile's seconds; False where the backend keeps no mark."""
    return bool(_backend_hook(module, "warmed_on_disk", module, dtype))


def _backend_hook(module: str, name: str, *args):
    """The kernel module's backend package's function `name` called with `args`, where it has
    one; None otherwise (a backend without on-disk marks, or a failing one: only a shortcut is
    lost)."""
    package = module.rpartition(".")[0]
    if not package:  # (a top-level kernel module: tests' stand-ins)
        return None
    try:
        hook = getattr(import_whole(package), name, None)
        if hook is None:
            return None
        # (a hook may import its backend's compiler, numba: a fork from another thread waits
        # for that import, and a deadline's handler runs after it, as `import_whole` has them;
        # else a forked DataLoader worker hung on numba's import lock, and a deadline left numba
        # half imported for the rest of the process, found by a review)
        with deferred(), fork_waits():
            return hook(*args)
    except Exception as exc:  # noqa: BLE001 - a mark is a shortcut: its failure fails no compile
        if raised_by_signal_handler(exc):
            raise
        return None


def targets(ops: Iterable[str] | None = None,
            dtypes: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """Every (kernel module, dtype) this machine can compile: the compiled backends that load
    here, on a device present, for `ops` (default all) and `dtypes` (default each backend's own;
    "float32" where a backend takes any dtype, its kernels having one signature for all)."""
    from . import arrays, core, devices

    wanted_ops = set(ops) if ops is not None else None
    wanted_dtypes = list(dtypes) if dtypes is not None else None
    known = (*arrays.FLOAT_DTYPES, "uint8")
    if wanted_dtypes is not None and (odd := [d for d in wanted_dtypes if d not in known]):
        raise ValueError(f"unknown dtype(s) {odd}; expected some of {list(known)}")
    found: dict[tuple[str, str], None] = {}
    for spec in core.op_specs():
        if wanted_ops is not None and spec.name not in wanted_ops:
            continue
        for be in core.backends():
            if not be.compiles or be.missing() is not None:
                continue
            if be.device == "cuda" and not devices.cuda_available():
                continue
            module = f"{be.package}.{spec.kernel}"
            if not core._has_module(module):
                continue
            own = be.dtypes_for(spec)
            for dtype in own or ("float32",):
                if wanted_dtypes is None or dtype in wanted_dtypes or own is None:
                    found[(module, dtype)] = None
    if wanted_ops is not None and (unknown := wanted_ops - {sp.name for sp in core.op_specs()}):
        raise ValueError(f"unknown op(s) {sorted(unknown)}; expected some of "
                         f"{sorted(sp.name for sp in core.op_specs())}")
    return list(found)


# -- the background thread -----------------------------------------------------------------------
def forced_allows(module: str, backend: str | None, device: str | None) -> bool:
    """Whether a kernel module's backend is one the knobs (KERNELKIT_BACKEND, KERNELKIT_DEVICE)
    let run: what `kernelkit warmup` compiles."""
    from . import core

    if not backend and not device:
        return True
    return any(module.startswith(be.package + ".") and (not backend or be.name == backend)
               and (not device or be.device == device) for be in core.backends())


def forced_nothing(backend: str | None, device: str | None) -> tuple[bool, str] | None:
    """Where `kernelkit warmup` finds nothing to compile under a forced `backend` and `device`
    (the knobs): (whether that is an error, why): no backend matches them; one that compiles
    ahead cannot here; or none of them compiles ahead (Triton's kernels compile at their first
    call). None where nothing is forced, or a matching backend compiles here (then the ops and
    dtypes asked for left nothing)."""
    from . import core, devices

    if not backend and not device:
        return None
    cannot, lazy, matched = [], [], False
    for be in core.backends():
        if (backend and be.name != backend) or (device and be.device != device):
            continue
        matched = True
        here = be.missing() or (None if be.device != "cuda" or devices.cuda_available()
                                else "no CUDA device here")
        if be.compiles and not here:
            return None
        if be.compiles:
            cannot.append(f"{be.name} ({be.device}): {here}")
        else:
            lazy.append(f"{be.name} ({be.device})" + (f", which cannot run here: {here}"
                                                      if here else ""))
    if not matched:
        return True, f"no backend {backend or ''} runs on {device or 'any device'}".replace("  ", " ")
    if cannot:
        return True, "cannot compile here: " + "; ".join(cannot)
    return False, "nothing is compiled ahead of a call for " + "; ".join(lazy)


def _work(delay: float, started: _thread.LockType) -> None:
    global _working
    started.release()
    time.sleep(delay)
    while True:
        with _lock:
            if not _queue:
                # cleared under the lock, so a job queued from now on starts a new thread (a
                # thread that is still alive but past this point would never run it)
                _working = False
                return
            job = _queue.popleft()
        _run(job, child=_child_ok)


def _run(job: Job, *, child: bool) -> None:
    global finished
    start = time.perf_counter()
    try:
        # (kernels some process compiled into the on-disk cache load here: a child would only
        # load them too, and its Python and numba's import cost 1.4-2.1 s of CPU beside the
        # program's first calls in every process, 2-vCPU Zen 4)
        by_child = _compile_in_child(job) if child and not on_disk(job.module, job.dtype) \
            else None
        with _file_lock(job), fork_waits():  # (numba's lock is held while it loads)
            how = import_whole(job.module).warm(job.dtype)
        job.how = "compiled in a child process" if by_child == "compiled" else how
        _backend_hook(job.module, "mark_warmed", job.module, job.dtype)
    except KeyboardInterrupt:  # (Ctrl-C through Python's own handler, a notebook's interrupt:
        # the job was marked done, and a later call compiled on the caller's time)
        job.how = "interrupted"
        with _lock:
            _jobs.pop((job.module, job.dtype), None)
        raise
    except Exception as exc:  # noqa: BLE001 - a failed compile must not break calls: the
        # candidate joins the decision and fails there, recorded like any failing config
        if raised_by_signal_handler(exc):  # the caller's (a deadline): a later call compiles
            job.how = "interrupted"
            with _lock:
                _jobs.pop((job.module, job.dtype), None)
            raise
        job.how, job.error = "failed", f"{type(exc).__name__}: {exc}"[:500]
    finally:
        job.seconds = time.perf_counter() - start
        job.done.set()  # first: a plan that sees `finished` change finds the job ready
        with _lock:
            finished += 1


def _compile_in_child(job: Job) -> str | None:
    """Have a child process fill the on-disk cache: what its `warm` said ("compiled" or
    "loaded"), or None if it could not."""
    global _child_ok
    # (this process's kernelkit first on the child's path: `python -c` puts the working
    # directory first, and a program run from inside another checkout had the child compile
    # that checkout's kernels, and this process then its own)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (f"import sys; sys.path.insert(0, {root!r}); from kernelkit.compiling import _child; "
            f"_child(sys.argv[1], sys.argv[2])")
    env = {**os.environ, "KERNELKIT_COMPILE": "foreground"}
    try:
        proc = subprocess.Popen([sys.executable, "-c", code, job.module, job.dtype], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
    except OSError:
        _child_ok = False
        return None
    try:
        out, _ = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None
    if proc.returncode != 0:
        return None
    return out.decode(errors="replace").strip() or None


def _child(module: str, dtype: str) -> None:
    """The child process: compile into the on-disk cache, at a lower priority than the parent."""
    with contextlib.suppress(AttributeError, OSError):
        os.nice(5)
    with _file_lock(Job(module, dtype)):
        how = importlib.import_module(module).warm(dtype)
        _backend_hook(module, "mark_warmed", module, dtype)  # (the parent may exit first)
        print(how, flush=True)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _lock_folders(job: Job) -> list:
    """Where `job`'s file lock may be, in order: beside the compiled kernels (the backend's
    ``compile_lock_dir``), else in the autotune cache dir (a backend without one), then the
    temporary dir. Why beside the kernels: the lock was in the autotune cache dir, so processes
    that share a Numba cache but not an autotune cache, as the README's split of the two knobs
    has them, each compiled the same kernels at once (four children at 1.4 GB each on a 2-core
    machine, found by a user hunt)."""
    from .paths import cache_root, user_temp_dir

    own = _backend_hook(job.module, "compile_lock_dir")
    return [own if own is not None else cache_root() / "compile-locks",
            user_temp_dir("compile-locks")]


class _LockWherePossible:
    """A FileLock in `_lock_folders`' first folder that takes it, else none: a read-only cache
    dir (an image's) let the lock be made but not taken, and every background compile failed
    for good with "Read-only file system"."""

    def __init__(self, job: Job):
        self._folders = _lock_folders(job)
        self._name = f"{job.module}-{job.dtype}.lock"
        self._held = None

    def __enter__(self):
        from filelock import FileLock, Timeout

        for folder in self._folders:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                lock = FileLock(str(folder / self._name), timeout=CHILD_TIMEOUT_S)
                lock.acquire()
            except Timeout:
                raise
            except OSError:
                continue
            self._held = lock
            break
        return self

    def __exit__(self, *exc):
        if self._held is not None:
            self._held.release()
        return False


def _file_lock(job: Job):
    """One process at a time compiles a (module, dtype); the others then load what it wrote."""
    try:
        import filelock  # noqa: F401
    except ImportError:  # (a dependency; without it, compile without the lock)
        return _NoLock()
    return _LockWherePossible(job)


def _after_fork_in_child() -> None:
    """A forked child (a DataLoader worker) keeps the kernels its parent loaded, but not the
    parent's thread: jobs not done yet are forgotten and queued again on demand. `finished`
    moves on, so the plans the parent chose while they compiled decide again (and so queue them)
    instead of running the vendor for good."""
    global _lock, _working, finished
    _lock = threading.Lock()
    _working = False
    _queue.clear()
    forgotten = [k for k, job in _jobs.items() if not job.done.is_set()]
    for key in forgotten:
        del _jobs[key]
    if forgotten:
        finished += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
