"""The Numba kernels survive fork (DataLoader workers) in either order of the parent's work, and
concurrent launches from threads do not abort the process. Each case runs in a
subprocess with a timeout, so a hang fails the test instead of hanging the run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORK_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import torch
    import kernelkit

    order = sys.argv[1]
    imgs = [np.random.default_rng(i).integers(0, 256, (60 + i, 80, 3), dtype=np.uint8)
            for i in range(8)]

    def collate(items):
        from kernelkit.kernels.numba import _pool
        out = kernelkit.preprocess(list(items), size=32, mean=(120,) * 3, std=(60,) * 3)
        return out, "team" if _pool._team() else "pool"

    if order == "torch-first":  # torch's OpenMP pool is live in the parent
        torch.ones(256, 256) @ torch.ones(256, 256)
        torch.nn.functional.conv2d(torch.ones(1, 3, 64, 64), torch.ones(8, 3, 3, 3))
    elif order == "numba-pool-first":  # Numba's pool launched outside kernelkit (as the bench
        import numba  # conftest does), after `import kernelkit`
        numba.set_num_threads(2)
    else:  # kernelkit's Numba kernels have run in the parent
        collate(imgs)
    dl = torch.utils.data.DataLoader(imgs, batch_size=4, num_workers=2, collate_fn=collate,
                                     multiprocessing_context="fork")
    for epoch in range(3):  # new workers (forks) every epoch
        for out, layer in dl:
            assert out.shape == (4, 3, 32, 32) and np.isfinite(out).all()
        print("epoch", epoch, layer, flush=True)
""")


def _run(args: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    full_env.update(PYTHONPATH=str(ROOT), KERNELKIT_BACKEND="numba", **env)  # numba must run
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                              timeout=timeout, env=full_env, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"hung for {timeout} s (stdout: {e.stdout!r})")


@pytest.mark.slow
@pytest.mark.parametrize("order", ["torch-first", "kernelkit-first", "numba-pool-first"])
def test_dataloader_workers_survive_fork(order):
    """Before the fix: torch-first hung at the second epoch; kernelkit-first killed the workers
    ("fork() called from a process already using GNU OpenMP"). The workers run the Numba
    kernels' shares on kernelkit's own pool, never on the parent's OpenMP team."""
    r = _run(["-c", FORK_SCRIPT, order], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.split()
    assert r.stdout.count("epoch") == 3
    assert lines[-1] == "pool", r.stdout


@pytest.mark.slow
def test_a_parent_on_numbas_openmp_layer_does_not_stop_the_workers():
    """The user forced Numba's OpenMP layer and the parent launched it: kernelkit's kernels do
    not enter Numba's layer (their shares run on kernelkit's pool), so forked workers still work."""
    r = _run(["-c", FORK_SCRIPT, "numba-pool-first"], timeout=240, NUMBA_THREADING_LAYER="omp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("epoch") == 3 and r.stdout.split()[-1] == "pool", r.stdout


CONCURRENT_SCRIPT = textwrap.dedent("""
    import threading
    import numba
    import numpy as np
    import kernelkit

    imgs = [np.random.default_rng(i).integers(0, 256, (200, 300, 3), dtype=np.uint8)
            for i in range(6)]
    a = np.ones((128, 128), np.float32)

    def work():
        for _ in range(15):
            kernelkit.preprocess(imgs, size=64, mean=0, std=1)
            kernelkit.matmul(a, a)

    threads = [threading.Thread(target=work) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print("ok")
""")


def test_concurrent_launches_from_threads_do_not_abort():
    """workqueue aborts the process on concurrent launches; kernelkit serialises them."""
    r = _run(["-c", CONCURRENT_SCRIPT], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0] == "ok"


CONV_FORK_SCRIPT = textwrap.dedent("""
    import multiprocessing as mp
    import os
    import numpy as np
    import torch
    import kernelkit
    from kernelkit.kernels.numba import _pool as numba_pool

    # torch tensors: their launches run on torch's OpenMP team (numpy data would not)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 16, 40, 40),
                                                                  dtype=np.float32))
    w = torch.from_numpy(np.random.default_rng(1).standard_normal((32, 16, 3, 3),
                                                                  dtype=np.float32))

    def run(_=None):
        return float(kernelkit.conv2d(x, w, padding=1).numpy().sum(dtype=np.float64))

    parent = run()
    # the parent's conv ran its shares on torch's OpenMP team, or with the team turned off on
    # the Python pool
    team = os.environ.get("KERNELKIT_OPENMP_TEAM") != "0"
    assert bool(numba_pool._TEAM[0]) == team and (numba_pool._POOL[0] is None) == team
    # as a DataLoader worker does: torch's own OpenMP cannot run in a forked child either
    with mp.get_context("fork").Pool(1, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        child = pool.apply_async(run).get(timeout=120)
    assert abs(child - parent) <= 1e-3 * abs(parent), (child, parent)
    print("ok")
""")


@pytest.mark.slow
@pytest.mark.parametrize("team", ["1", "0"], ids=["openmp-team", "python-pool"])
def test_numba_conv_thread_pool_survives_fork(team):
    """The Numba conv2d's threads (torch's OpenMP team, or the Python pool): a forked child
    waited forever for the pool's threads; the team's do not exist there either."""
    r = _run(["-c", CONV_FORK_SCRIPT], timeout=400, KERNELKIT_OPENMP_TEAM=team)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-1] == "ok"


USER_TORCH_AFTER_FORK_SCRIPT = r"""
import os, sys, time
import numpy as np, torch, kernelkit
torch.set_num_threads(2)
a = np.random.default_rng(0).random((256, 256), np.float32)
with kernelkit.use(backend=sys.argv[1], tune="off"):
    kernelkit.matmul(a, a)  # numpy data: the user has run no torch op of their own
pid = os.fork()
if pid == 0:  # the child's own torch: a multiprocessing fork pool's worker, a preloaded server's
    x = torch.randn(300, 300)
    for _ in range(3):
        x = (x @ x).clamp(-1, 1)
    os._exit(0 if torch.get_num_threads() == 1 else 3)
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        sys.exit(os.waitstatus_to_exitcode(status))
    time.sleep(0.05)
os.kill(pid, 9)
print("the child's torch op hung")
sys.exit(1)
"""


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_a_forked_childs_own_torch_ops_do_not_hang_after_kernelkit_used_torchs_team(backend):
    """kernelkit on numpy data ran work on torch's OpenMP team (the Numba kernels' shares, or
    torch's CPU matmul), in a process whose user had run no torch op: a forked child's first
    parallel torch op then waited forever for the parent's OpenMP threads. The child now runs
    torch on one thread, as torch's DataLoader workers do."""
    r = _run(["-c", USER_TORCH_AFTER_FORK_SCRIPT, backend], timeout=240,
             KERNELKIT_COMPILE="foreground")
    assert r.returncode == 0, (r.stdout, r.stderr[-2000:])


def test_a_forked_child_keeps_its_torch_threads_where_the_openmp_runtime_survives_fork(
        monkeypatch):
    """Only GNU OpenMP's team is lost in a fork; LLVM's (libomp) and Intel's (libiomp5) start a
    new one, so their children keep torch's threads."""
    import torch

    from kernelkit import threads

    monkeypatch.setattr(threads, "_team_used", [True])
    before = torch.get_num_threads()
    try:
        for runtime, want in (("/env/lib/libiomp5.so", 2), ("/env/lib/libomp.so.5", 2),
                              ("/env/torch/lib/libgomp-a34b3233.so.1", 1)):
            torch.set_num_threads(2)
            monkeypatch.setattr(threads, "loaded_openmp", lambda r=runtime: r)
            threads._single_threaded_torch()
            assert torch.get_num_threads() == want, runtime
    finally:
        torch.set_num_threads(before)


def test_kernels_take_no_more_threads_than_torch_is_given(monkeypatch):
    """torch.set_num_threads (and OMP_NUM_THREADS, threadpoolctl's limits on torch's OpenMP, and
    the one thread torch's DataLoader gives each worker) bound kernelkit's Numba kernels too:
    they took numba.get_num_threads() alone, so 2 DataLoader workers ran 4 compute threads on 2
    cores and a user's limits were ignored."""
    import numba
    import numpy as np
    import torch

    import kernelkit
    from kernelkit import threads
    from kernelkit.kernels.numba import conv2d as nconv
    from kernelkit.kernels.numba import matmul as nmm
    from kernelkit.kernels.numba import preprocess as npre

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    before = torch.get_num_threads()
    numba.set_num_threads(2)
    try:
        torch.set_num_threads(2)
        assert threads.kernel_threads() == 2
        torch.set_num_threads(1)
        assert threads.kernel_threads() == 1
        assert nmm._threads(10**12) == 1 and nconv._threads(10**12) == 1
        shares = []
        real = npre._run
        monkeypatch.setattr(npre, "_run", lambda entry, nthr, *a: (shares.append(nthr),
                                                                   real(entry, nthr, *a))[1])
        img = np.random.default_rng(0).integers(0, 256, (4, 64, 80, 3), dtype=np.uint8)
        with kernelkit.use(backend="numba", tune="off"):
            kernelkit.preprocess(img, size=32, mean=0.0, std=1.0)
        assert shares == [1]
    finally:
        torch.set_num_threads(before)


def test_omp_num_threads_bounds_the_kernels_of_a_program_without_torch(monkeypatch):
    import numba

    from kernelkit import devices, threads

    monkeypatch.setattr(devices, "_TORCH", [None])
    monkeypatch.setattr(threads, "imported_torch", lambda: None)
    monkeypatch.setattr(threads, "_OMP_ENV", 1)
    assert threads.kernel_threads() == 1
    monkeypatch.setattr(threads, "_OMP_ENV", 0)
    assert threads.kernel_threads() == numba.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")
    assert threads._omp_num_threads_env() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert threads._omp_num_threads_env() == 0


LAYER_SCRIPT = textwrap.dedent("""
    import json, threading
    import numpy as np
    import torch
    import kernelkit
    from kernelkit import threads
    from numba.np.ufunc import parallel

    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    with kernelkit.use(backend="numba", tune="off"):
        kernelkit.matmul(a, a)  # (a multi-threaded kernel)
        kernelkit.conv2d(torch.randn(2, 16, 20, 20), torch.randn(16, 16, 3, 3), padding=1)
        imgs = np.random.default_rng(0).integers(0, 256, (4, 64, 80, 3), dtype=np.uint8)
        kernelkit.preprocess(imgs, size=32, mean=0.0, std=1.0)
    out = {"launched": parallel._is_initialized, "threads": threads.kernel_threads(),
           "alive": threading.active_count()}
    seen = []
    def limited():
        threads.limit_kernel_threads(1)
        seen.append(threads.kernel_threads())
    t = threading.Thread(target=limited)
    t.start(); t.join()
    out["limited_thread"], out["main_after"] = seen[0], threads.kernel_threads()
    import numba
    numba.set_num_threads(1)  # (a user's own setting: launches Numba's layer, and still binds)
    out["user_set"] = threads.kernel_threads()
    print(json.dumps(out))
""")


def test_the_kernels_never_launch_numbas_threading_layer():
    """kernelkit's Numba kernels run on torch's OpenMP team or kernelkit's pool; reading Numba's
    thread count (`numba.get_num_threads`) launched Numba's threading layer anyway: idle
    workqueue threads, NUMBA_NUM_THREADS of them per process, and a semaphore that a forkserver
    pool's resource tracker reported as leaked. A per-thread limit (`limit_kernel_threads`, the
    loaders') binds only its thread; a user's ``numba.set_num_threads`` still binds."""
    import json

    import numba

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", LAYER_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["launched"] is False, got
    assert got["threads"] == 2 and got["main_after"] == 2, got
    assert got["limited_thread"] == 1 and got["user_set"] == 1, got
