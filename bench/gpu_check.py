"""The whole GPU suite in one run that can be stopped anywhere: correctness, sanitizers, speed.

    timeout -s TERM -k 15 540 python3 bench/gpu_check.py "$OUT"   # on a GPU machine
    python3 bench/gpu_check.py OUT --plan      # phases, planned compiles and seconds (no GPU)
    python3 bench/gpu_check.py OUT --dry-run   # no GPU: Triton in the interpreter, tiny shapes

Phases, in order of value, each with its own deadline (the run's deadline caps them all):
  1. preflight (30 s): card, SMs, shared-memory opt-in, versions; one compile + launch of each
     kernel family through Triton and through CuPy/NVRTC (a child process, run alongside);
  2. correctness: every kernel with its default config on every dtype, small shapes, vs float64;
  3. sweep: every shipped config (of its own dtypes) on one ragged shape per kernel;
  4. sanitizers: compute-sanitizer racecheck + memcheck on small cases (at most 90 s);
  5. benchmarks: matmul vs cuBLAS, conv vs cuDNN (same layout, fused epilogue where torch has
     one), preprocess kernel-only and end to end, the dispatcher's CPU/GPU crossover.
OUT/results.json, OUT/summary.md and OUT/log.txt are rewritten after every check and on SIGTERM;
a phase cut by its deadline or never started is marked so, not failed. Exit: 0 if no check
failed, 1 if one did, 2 without a GPU (and no --dry-run/--plan), 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

T_START = time.perf_counter()
ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT / "bench", ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from gpu_check_runner import (  # noqa: E402
    LIMIT_S,
    STARTUP_S,
    Check,
    Phase,
    Recorder,
    estimate,
    fmt_s,
    spec,
)

DEADLINE_S = 505.0  # the run's own end, from the script's start: 540 s limit - startup - margin
# A dry run exercises the script on the CPU interpreter (and cold CPU caches), not its fit on a
# GPU: its phase budgets and run deadline are this many times the GPU ones, so a slow CI machine
# cannot cut a phase short.
DRY_RUN_BUDGET_SCALE = 20.0
BUDGETS = {"preflight": 30.0, "correctness": 150.0, "sweep": 140.0, "sanitizer": 90.0}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("outdir")
    p.add_argument("--dry-run", action="store_true", help="no GPU: interpreter, tiny shapes")
    p.add_argument("--plan", action="store_true",
                   help="print the phases with planned compiles and seconds, run nothing")
    p.add_argument("--json", action="store_true", help="with --plan: print the plan as JSON")
    p.add_argument("--budget-scale", type=float, default=None,
                   help=f"multiply every phase budget and the run deadline (default 1; "
                        f"{DRY_RUN_BUDGET_SCALE:g} with --dry-run)")
    p.add_argument("--deadline-s", type=float, default=DEADLINE_S,
                   help=f"end of the whole run, seconds from start (default {DEADLINE_S:.0f})")
    p.add_argument("--phases", default="", help="comma-separated subset of the phases to run")
    p.add_argument("--with-model", action="store_true",
                   help="bench: also a patched ResNet-18 against torch (about 90 s more; the "
                        "default run's plan has no room for it)")
    p.add_argument("--match", default="",
                   help="comma-separated substrings: run only the checks whose names hold one")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------- the context

class Env:
    """What the check builders share: device, dry run, helpers; set up lazily (plan: no GPU)."""

    def __init__(self, dry: bool, plan: bool, rec: Recorder | None) -> None:
        self.dry = dry
        self.plan = plan
        self.rec = rec
        self.dev = "cpu" if dry else "cuda"
        self.cupy = not dry  # the plan assumes CuPy is there; a run learns it in preflight
        self._gen = None
        self.timer = None
        self.cache_dir = None
        self.with_model = dry  # a dry run exercises it on a tiny model; a GPU run when asked

    def randn(self, *shape, dtype=None):
        import torch

        if self._gen is None:
            self._gen = torch.Generator(device="cpu").manual_seed(0)
        t = torch.randn(*shape, generator=self._gen)
        return t.to(dtype or torch.float32).to(self.dev)

    def sync(self) -> None:
        if self.dev == "cuda":
            import torch

            torch.cuda.synchronize()


def make_timer(dry: bool):
    """seconds per call: CUDA events after synchronisation (do_bench: warm-up, L2 flush), or
    perf_counter in dry runs."""
    if dry:
        def cpu_time(fn, reps: int = 3) -> float:
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return sorted(ts)[len(ts) // 2]
        return cpu_time
    from triton.testing import do_bench

    return lambda fn: do_bench(fn, warmup=10, rep=40, return_mode="median") * 1e-3


# ----------------------------------------------------------------------------------- preflight

def find_sanitizer() -> str | None:
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    dirs = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
            *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))]
    for d in dirs:
        for sub in ("bin", "compute-sanitizer"):
            if d and (Path(d) / sub / "compute-sanitizer").is_file():
                return str(Path(d) / sub / "compute-sanitizer")
    return None


def fp16_header_dirs() -> list[str]:
    """Folders with cuda_fp16.h that CuPy's NVRTC could be pointed at (CUDA_PATH/include)."""
    out = []
    cands = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda",
             *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))]
    try:
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia"))
    except ImportError:
        pass
    for site in sys.path:
        for p in Path(site).glob("nvidia/*") if site and Path(site).is_dir() else []:
            cands.append(str(p))
    for c in cands:
        if c and (Path(c) / "include" / "cuda_fp16.h").is_file() and c not in out:
            out.append(c)
    return out


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "numpy", "numba", "cupy-cuda13x", "cupy-cuda12x", "cupy",
                 "platformdirs", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def preflight_checks(env: Env) -> list[Check]:
    import torch

    rec = env.rec
    pf = rec.results["preflight"] if rec else {}
    probe = {}

    def card():
        pf["versions"] = versions()
        try:  # kernelkit must not need it (the GPU machines do not have it)
            import platformdirs  # noqa: F401

            pf["platformdirs"] = True
        except ImportError:
            pf["platformdirs"] = False
        pf["compute_sanitizer"] = find_sanitizer()
        if env.dry:
            pf["card"] = "interpreter (CPU)"
            return None
        props = torch.cuda.get_device_properties(0)
        pf.update({"card": props.name, "capability": f"{props.major}.{props.minor}",
                   "sms": props.multi_processor_count,
                   "memory_gib": round(props.total_memory / 2**30, 1),
                   "smem_optin": getattr(props, "shared_memory_per_block_optin", None),
                   "torch_cuda": torch.version.cuda,
                   "driver": _driver_version()})
        return None

    def start_cupy_probe():
        if env.dry:
            pf["cupy_ok"] = False
            pf["cupy_error"] = "dry run: no CuPy"
            return None
        probe["proc"] = _start_probe(env)
        return None

    from gpu_check_conv2d import preflight as conv_pf
    from gpu_check_preprocess import preflight as pre_pf

    def matmul_one():
        from reference import assert_matmul_close

        from kernelkit.kernels.triton import matmul as tri

        dt = torch.float32 if env.dry else torch.float16
        a, b = env.randn(1, 96, 64, dtype=dt), env.randn(1, 64, 80, dtype=dt)
        c = tri.matmul_forward(a, b)
        env.sync()
        assert_matmul_close(c.cpu(), a.cpu(), b.cpu())

    def finish_cupy_probe():
        if "proc" not in probe:
            return None
        res = _finish_probe(probe["proc"], env)
        pf["cupy_probe"] = res
        if not res.get("ok") and "cuda_fp16.h" in json.dumps(res):
            # the truth first (recorded above); then a fallback header folder so the CuPy
            # checks can still run in this one shot
            for d in fp16_header_dirs():
                again = _finish_probe(_start_probe(env, {"CUDA_PATH": d}), env)
                pf.setdefault("cupy_probe_retries", []).append({"CUDA_PATH": d, **again})
                if again.get("ok"):
                    os.environ["CUDA_PATH"] = d
                    pf["cupy_cuda_path_fallback"] = d
                    break
        ok = bool(res.get("ok") or pf.get("cupy_cuda_path_fallback"))
        pf["cupy_ok"] = ok
        env.cupy = ok
        if not ok:
            pf["cupy_error"] = str(res.get("error", res))[:300]
            return f"CuPy/NVRTC probe failed: {pf['cupy_error']}"
        if rec:
            rec.counter.install_cupy()
        if res.get("ok") is False:
            return f"CuPy/NVRTC needed CUDA_PATH={os.environ['CUDA_PATH']}: {res.get('error')}"
        return None

    checks = [Check("preflight card and versions", card, run_s=0.5),
              Check("preflight start the CuPy/NVRTC probe", start_cupy_probe, run_s=0.1),
              Check("preflight triton matmul (compile + launch)", matmul_one,
                    keys=(("triton.matmul", "f16", "default", spec(96, 64, 80)),), run_s=0.3)]
    checks += conv_pf(env) + pre_pf(env)
    checks.append(Check("preflight cupy: NVRTC compile + launch of each family (child)",
                        finish_cupy_probe, keys=(("cupy.matmul", "f16", "default"),
                                                 ("cupy.conv", "f16", "fwd"),
                                                 ("cupy.conv", "f16", "simple"),
                                                 ("cupy.preprocess", "module")), run_s=2.0))

    def triton_ok():
        fails = [c for c in rec.results["checks"] if c.get("phase") == "preflight"
                 and "triton" in c["check"] and c.get("ok") is False] if rec else []
        pf["triton_ok"] = not fails
        if fails:
            pf["triton_error"] = fails[0].get("error", "")
        return None

    checks.append(Check("preflight summary", triton_ok, run_s=0.0))
    return checks


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _start_probe(env: Env, extra_env: dict | None = None):
    e = dict(os.environ)
    e.update(extra_env or {})
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_check_nvrtc.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e,
                            cwd=str(ROOT))


def _finish_probe(proc, env: Env) -> dict:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return {"ok": False, "error": "the CuPy/NVRTC probe took over 60 s"}
    try:
        res = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        res = {"ok": False, "error": f"probe exit {proc.returncode}: {err[-600:]}"}
    return res


# --------------------------------------------------------------------------------------- matmul

ACTS = (None, "relu", "gelu", "gelu_tanh", "silu")


def _tl(dt) -> str:
    return {"torch.float16": "f16", "torch.bfloat16": "bf16", "torch.float32": "f32"}[str(dt)]


def matmul_correctness(env: Env) -> list[Check]:
    import torch
    from reference import assert_matmul_close

    from kernelkit.kernels.triton import matmul as tri

    dtypes = [torch.float32, torch.float16] if env.dry else \
        [torch.float16, torch.bfloat16, torch.float32]
    checks: list[Check] = []

    def tri_check(name, dt, mk, cfg=None, bias=False, act=None, key_extra=(), acc=None,
                  tf32=False):
        def run():
            a, b, bias_t = mk()
            c = tri.matmul_forward(a, b, bias_t, act, cfg, allow_tf32=tf32)
            env.sync()
            assert_matmul_close(c.cpu(), a.cpu(), b.cpu(),
                                None if bias_t is None else bias_t.cpu(), act, acc=acc)
        cname = "default" if cfg is None else str(cfg.to_dict())
        keys = (("triton.matmul", _tl(dt), cname, bias, act, tf32, *key_extra),)
        return Check(name, run, keys=keys, run_s=0.05, needs="triton")

    for dt in dtypes:
        dn = str(dt).removeprefix("torch.")

        def plain(m, k, n, dt=dt):
            return lambda: (env.randn(1, m, k, dtype=dt), env.randn(1, k, n, dtype=dt), None)

        shapes = [(13, 17, 19), (64, 64, 64)] if env.dry else [(97, 61, 89), (256, 512, 384)]
        if dt == dtypes[0]:
            shapes.append((1, 1, 1) if env.dry else (1, 4096, 11008))
        for m, k, n in shapes:
            checks.append(tri_check(f"triton matmul {dn} {m}x{k}x{n}", dt, plain(m, k, n),
                                    key_extra=(spec(m, k, n, m * k, k * n, m * n),)))
        acts = ACTS if dt == dtypes[0] else ("gelu",)
        for act in acts:
            def with_bias(dt=dt):
                return (env.randn(1, 37, 29, dtype=dt), env.randn(1, 29, 43, dtype=dt),
                        env.randn(43, dtype=dt))
            checks.append(tri_check(f"triton matmul {dn} bias+{act}", dt, with_bias, bias=True,
                                    act=act, key_extra=("37x29x43",)))

        def transposed(dt=dt):
            return (env.randn(1, 40, 24, dtype=dt).transpose(1, 2),
                    env.randn(1, 33, 40, dtype=dt).transpose(1, 2), None)

        def broadcast(dt=dt):
            return (env.randn(3, 29, 31, dtype=dt),
                    env.randn(1, 31, 37, dtype=dt).expand(3, 31, 37), None)

        checks.append(tri_check(f"triton matmul {dn} transposed", dt, transposed,
                                key_extra=("transposed",)))
        checks.append(tri_check(f"triton matmul {dn} batch broadcast (stride 0)", dt, broadcast,
                                key_extra=("broadcast",)))
        if dt == dtypes[0]:
            def noncontig(dt=dt):
                return (env.randn(1, 33, 47, dtype=dt)[:, :, ::2],
                        env.randn(1, 24, 50, dtype=dt)[:, :, 1::2], None)
            checks.append(tri_check(f"triton matmul {dn} non-contiguous", dt, noncontig,
                                    key_extra=("noncontig",)))
    if not env.dry:
        checks.append(tri_check("triton matmul float32 allow_tf32", torch.float32,
                                lambda: (env.randn(1, 200, 300), env.randn(1, 300, 100), None),
                                acc="tf32", tf32=True, key_extra=("tf32",)))
        checks += cupy_matmul_checks(env, dtypes=(torch.float16, torch.float32))
        checks += dispatch_checks(env)
    return checks


def _cupy_matmul(a, b, bias=None, act=None, cfg=None):
    import cupy

    from kernelkit.kernels.cupy import matmul as cpk

    c = cpk.matmul_forward(cupy.from_dlpack(a), cupy.from_dlpack(b),
                           None if bias is None else cupy.from_dlpack(bias), act, cfg)
    import torch

    return torch.from_dlpack(c)


def cupy_matmul_checks(env: Env, dtypes, configs=None, shapes=None) -> list[Check]:
    from reference import assert_matmul_close

    checks = []
    configs = configs or [None]
    shapes = shapes or [(97, 61, 89), (256, 512, 384), (37, 29, 43)]
    for dt in dtypes:
        dn = str(dt).removeprefix("torch.")
        for cfg in configs:
            for i, (m, k, n) in enumerate(shapes):
                act = ACTS[i % len(ACTS)] if cfg is None else "gelu"

                def run(m=m, k=k, n=n, dt=dt, act=act, cfg=cfg):
                    a, b, bias = (env.randn(1, m, k, dtype=dt), env.randn(1, k, n, dtype=dt),
                                  env.randn(n, dtype=dt))
                    c = _cupy_matmul(a, b, bias, act, cfg)
                    env.sync()
                    assert_matmul_close(c.cpu(), a.cpu(), b.cpu(), bias.cpu(), act)
                cname = "default" if cfg is None else str(cfg.to_dict())
                checks.append(Check(f"cupy matmul {dn} {cname} {m}x{k}x{n} bias+{act}", run,
                                    keys=(("cupy.matmul", _tl(dt), cname),), run_s=0.05,
                                    needs="cupy"))
    return checks


def dispatch_checks(env: Env) -> list[Check]:
    """kernelkit.matmul on CUDA tensors and on host numpy arrays (really numpy: the tuner may
    move them), with the knobs pinned so no tuning runs here: tune="off" (the safe default),
    a private cache, and CUDA data kept on the GPU (no Numba candidate compiled cold)."""
    import numpy as np
    import torch
    from reference import assert_matmul_close

    import kernelkit

    checks = []
    for where in ("cuda", "numpy"):
        for m, k, n in ((64, 64, 64), (512, 1024, 768)):
            def run(where=where, m=m, k=k, n=n):
                a, b = env.randn(m, k), env.randn(k, n)
                knobs = {"tune": "off", "cache_dir": env.cache_dir}
                if where == "numpy":
                    a, b = a.cpu().numpy(), b.cpu().numpy()
                else:
                    knobs["device"] = "cuda"
                with kernelkit.use(**knobs):
                    c = kernelkit.matmul(a, b)
                if where == "numpy":
                    assert isinstance(c, np.ndarray), f"numpy in, {type(c)} out"
                    c = torch.from_numpy(c)
                else:
                    assert c.is_cuda, f"CUDA in, {c.device} out"
                env.sync()
                assert_matmul_close(torch.as_tensor(c).cpu(), torch.as_tensor(a).cpu(),
                                    torch.as_tensor(b).cpu())
            checks.append(Check(f"kernelkit.matmul fp32 {where} {m}x{k}x{n} (tune off)", run,
                                keys=(("triton.matmul", "f32", "default", False, None, False,
                                       spec(m, k, n)),), run_s=0.3))

    def batched():
        a16, b16 = env.randn(4, 128, 256, dtype=torch.float16), env.randn(256, 512,
                                                                         dtype=torch.float16)
        with kernelkit.use(tune="off", cache_dir=env.cache_dir, device="cuda"):
            c = kernelkit.matmul(a16, b16.expand(4, 256, 512))
        env.sync()
        assert_matmul_close(c.cpu(), a16.cpu(), b16.expand(4, 256, 512).cpu())
    checks.append(Check("kernelkit.matmul fp16 batched cuda (tune off)", batched,
                        keys=(("triton.matmul", "f16", "default", False, None, False,
                               "batched"),), run_s=0.3))
    return checks


def matmul_sweep(env: Env) -> list[Check]:
    """Every shipped config of each dtype's own table (not the union), on one ragged shape."""
    import torch
    from reference import assert_matmul_close

    from kernelkit.kernels.cupy import matmul as cpk_cfg
    from kernelkit.kernels.triton import matmul as tri

    m, k, n = (33, 40, 47) if env.dry else (300, 520, 260)
    # bf16 shares fp16's table (its default runs in the correctness phase)
    order = [torch.float32] if env.dry else [torch.float16, torch.float32]
    checks = []
    for dt in order:
        dn = str(dt).removeprefix("torch.")
        for cfg in tri.shipped_configs(dt):
            def run(cfg=cfg, dt=dt):
                a, b, bias = (env.randn(1, m, k, dtype=dt), env.randn(1, k, n, dtype=dt),
                              env.randn(n, dtype=dt))
                c = tri.matmul_forward(a, b, bias, "gelu", cfg)
                env.sync()
                assert_matmul_close(c.cpu(), a.cpu(), b.cpu(), bias.cpu(), "gelu")
            checks.append(Check(f"triton matmul {dn} config {cfg.to_dict()}", run,
                                keys=(("triton.matmul", _tl(dt), str(cfg.to_dict()), "sweep"),),
                                run_s=0.05, needs="triton"))
        if dt == torch.float32 and not env.dry:  # CuPy's table, before bf16 (least value)
            checks += cupy_matmul_checks(env, (torch.float32,),
                                         configs=list(cpk_cfg.SHIPPED_CONFIGS[1:]),
                                         shapes=[(m, k, n)])
    return checks


def matmul_bench(env: Env) -> list[Check]:
    import torch

    from kernelkit.kernels.torch import matmul as vendor
    from kernelkit.kernels.triton import matmul as tri

    if env.dry:
        cases = [("square", torch.float32, (64, 64, 64))]
    else:
        cases = [("square", dt, (s, s, s)) for s in (4096, 8192)
                 for dt in (torch.float16, torch.bfloat16)]
        cases += [("mlp", torch.float16, (m, k, n)) for m in (1, 16, 2048)
                  for k, n in ((4096, 11008), (11008, 4096))]
        cases += [("odd", torch.float16, (4095, 4097, 3001))]
    checks = []
    for set_name, dt, (m, k, n) in cases:
        def run(set_name=set_name, dt=dt, m=m, k=k, n=n):
            a, b = env.randn(1, m, k, dtype=dt), env.randn(1, k, n, dtype=dt)
            flops = 2.0 * m * n * k
            row = {"set": set_name, "dtype": str(dt)[6:], "mkn": [m, k, n]}
            row["cublas_s"] = env.timer(lambda: vendor.matmul_forward(a, b))
            best = (math.inf, None)
            for cfg in tri.MatmulConfig.space(dt, m, n, k)[:1 if env.dry else 3]:
                try:
                    t = env.timer(lambda cfg=cfg: tri.matmul_forward(a, b, config=cfg))
                    best = min(best, (t, cfg.to_dict()), key=lambda x: x[0])
                except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                    row.setdefault("triton_errors", []).append(f"{cfg.to_dict()}: {exc}"[:200])
            row["triton_s"], row["triton_config"] = best
            if env.cupy and dt in (torch.float16, torch.float32):
                try:
                    import cupy

                    from kernelkit.kernels.cupy import matmul as cpk
                    ca, cb = cupy.from_dlpack(a), cupy.from_dlpack(b)
                    row["cupy_s"] = env.timer(lambda: cpk.matmul_forward(ca, cb))
                except Exception as exc:  # noqa: BLE001
                    row["cupy_error"] = f"{type(exc).__name__}: {exc}"[:200]
            for key in ("cublas", "triton", "cupy"):
                s = row.get(f"{key}_s")
                if s and math.isfinite(s):
                    row[f"{key}_tflops"] = flops / s / 1e12
            if row.get("triton_s") and math.isfinite(row["triton_s"]):
                row["triton_vs_cublas"] = row["cublas_s"] / row["triton_s"]
            return row
        cls = spec(m, k, n, m * k, k * n, m * n)
        nconf = 1 if env.dry else 3
        keys = tuple(("triton.matmul", _tl(dt), f"space{i}", cls) for i in range(nconf))
        keys += (("cupy.matmul", _tl(dt), "default"),) if not env.dry else ()
        checks.append(Check(f"bench matmul {set_name} {_tl(dt)} {m}x{k}x{n}", run, keys=keys,
                            run_s=1.0 if not env.dry else 0.5, bench="bench_matmul"))
    return checks


def crossover_bench(env: Env) -> list[Check]:
    """The dispatcher on host numpy data with real transfers: time forced-CPU (Numba) and
    forced-CUDA (transfer in, kernel, transfer out) calls at growing sizes, and record what the
    tuner chose for the same arrays (explain on the very arrays the call got)."""
    import numpy as np

    import kernelkit

    sizes = (16, 32) if env.dry else (64, 256, 1024, 2048)
    checks = []

    def warm():
        a = np.ones((16, 16), np.float32)
        with kernelkit.use(device="cpu", tune="off", cache_dir=env.cache_dir):
            kernelkit.matmul(a, a)  # Numba's compile (or its disk cache) outside the timings
        return {"what": "numba warm-up"}
    checks.append(Check("bench dispatch: warm Numba", warm, keys=(("numba", "gemm"),),
                        run_s=0.5, bench="bench_dispatch"))
    for n in sizes:
        def run(n=n):
            rng = np.random.default_rng(n)
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            row = {"n": n}
            for dev in ("cpu", "cuda"):
                if dev == "cuda" and env.dry:
                    continue
                with kernelkit.use(device=dev, tune="off", cache_dir=env.cache_dir):
                    row[f"{dev}_s"] = env.timer(lambda: kernelkit.matmul(a, b))
            with kernelkit.use(tune="measure", cache_dir=env.cache_dir):
                row["auto_s"] = env.timer(lambda: kernelkit.matmul(a, b))
                ex = kernelkit.explain("matmul", a, b)
            row["choice"] = ex.choice.to_dict()
            row["choice_source"] = ex.choice.source
            return row
        checks.append(Check(f"bench dispatch crossover fp32 {n}^3 (numpy in)", run,
                            keys=(("triton.matmul", "f32", "space-all", spec(n)),),
                            run_s=3.0, bench="bench_dispatch"))
    return checks


def dispatched_bench(env: Env) -> list[Check]:
    """What a user's call gets on CUDA data: each op through its public function, after
    `kernelkit.explain` has measured every candidate (torch's cuBLAS / cuDNN among them) and
    cached the choice. Rows: the choice, the tuning's seconds, the call's time against the
    vendor's own call and against the chosen kernel's measured time (the op's overhead)."""
    import torch
    import torch.nn.functional as F

    import kernelkit

    dev = "cpu" if env.dry else "cuda"
    half = torch.float32 if env.dry else torch.float16
    # (batch, c, k, hw, kernel, stride): ResNet-50 layers (the conv bench's indices 3, 6, 16)
    convs = [(32, 64, 256, 56, 1, 1, 25.0), (32, 128, 128, 56, 3, 2, 5.0),
             (32, 256, 256, 14, 3, 1, 6.0)]

    def row_of(op, args, kwargs, vendor, what):
        out = {"op": op, "what": what}
        knobs = {"cache_dir": env.cache_dir, "device": dev}
        fn = getattr(kernelkit, op)
        t0 = time.perf_counter()
        with kernelkit.use(**knobs):
            ex = kernelkit.explain(op, *args, **kwargs)
        out["tune_s"] = round(time.perf_counter() - t0, 2)
        ch = ex.choice.to_dict()
        out["choice"] = f"{ch.get('candidate')} {ch.get('config') or ''}".strip()
        out["vendor_s"] = env.timer(vendor)
        with kernelkit.use(**knobs):
            got = fn(*args, **kwargs)
            out["op_s"] = env.timer(lambda: fn(*args, **kwargs))
        want = vendor()
        env.sync()
        g, w = torch.as_tensor(got).double().cpu(), torch.as_tensor(want).double().cpu()
        rel = float((g - w).norm() / max(float(w.norm()), 1e-30))
        out["rel_err_vs_vendor"] = rel
        times = [t["median"] for t in ex.trials if t.get("median")]
        chosen = [t["median"] for t in ex.trials if t.get("median")
                  and (t["candidate"], t["config"]) == (ch.get("candidate"), ch.get("config"))]
        if chosen:
            out["chosen_kernel_s"] = chosen[0]
        if times:
            out["best_trial_s"] = min(times)
        out["op_vs_vendor"] = out["vendor_s"] / out["op_s"]
        tol = 3e-2 if half != torch.float32 or op == "preprocess" else 1e-4
        if not rel <= tol:  # NaN fails too
            raise AssertionError(f"{op} {what}: result off the vendor's by {rel:.3g} (tol {tol})")
        return out

    # run_s: each check's seconds on the H200 machine, its tuning's compiles included (14-20 per
    # explain), so no compile keys are counted on top
    def matmul_check(m, k, n, run_s):
        def run():
            a, b = env.randn(m, k, dtype=half), env.randn(k, n, dtype=half)
            return row_of("matmul", (a, b), {}, lambda: torch.matmul(a, b), f"{m}x{k}x{n}")
        return Check(f"bench dispatched matmul {m}x{k}x{n}", run, run_s=run_s,
                     bench="bench_dispatched")

    def conv_check(nb, c, k, hw, ks, st, run_s):
        def run():
            x = env.randn(nb, c, hw, hw, dtype=half).contiguous(memory_format=torch.channels_last)
            w = env.randn(k, c, ks, ks, dtype=half).contiguous(memory_format=torch.channels_last)
            bias = env.randn(k, dtype=half)
            kw = dict(stride=st, padding=ks // 2, activation="relu")
            return row_of("conv2d", (x, w, bias), kw,
                          lambda: F.relu(F.conv2d(x, w, bias, st, ks // 2)),
                          f"{nb}x{c}x{hw}x{hw} k{k} {ks}x{ks} s{st} +bias+relu")
        return Check(f"bench dispatched conv2d {nb}x{c}->{k} {hw}px {ks}x{ks} s{st}", run,
                     run_s=run_s, bench="bench_dispatched")

    def preprocess_check(n, h, w, size, run_s):
        def run():
            imgs = torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8).to(dev)
            mean = torch.tensor([123.675, 116.28, 103.53], device=dev)[:, None, None]
            std = torch.tensor([58.395, 57.12, 57.375], device=dev)[:, None, None]

            def vendor():
                x = F.interpolate(imgs.permute(0, 3, 1, 2).float(), size=(size, size),
                                  mode="bilinear", align_corners=False, antialias=True)
                return (x - mean) / std
            kw = dict(size=size, mean=mean.flatten().tolist(), std=std.flatten().tolist())
            return row_of("preprocess", (imgs,), kw, vendor,
                          f"{n}x{h}x{w} uint8 -> {size} float32 NCHW, antialias")
        return Check(f"bench dispatched preprocess {n}x{h}x{w} -> {size}", run, run_s=run_s,
                     bench="bench_dispatched")

    if env.dry:  # the code path once, cheaply (CPU candidates; Numba's compile is the cost)
        return [preprocess_check(2, 24, 32, 11, 1.0), vendor_path_check(env, 32, 1.0),
                patched_model_check(env, "resnet18", 2, 32, 10.0)]
    # in order of value: a deadline cuts the tail
    return ([preprocess_check(32, 480, 640, 224, 3.0)]
            # (the first run's 4096^3, 16 x 11008 x 4096 and 4095 x 4097 x 3001 rows: torch
            # chosen, 0.91-1.00x; the vendor path check below times 4096^3 three ways)
            + [matmul_check(*mkn) for mkn in ((8192, 8192, 8192, 64.0), (1, 4096, 11008, 3.0))]
            + [vendor_path_check(env, n, 8.0) for n in (4096, 8192)]
            + [conv_check(*c) for c in convs]
            + ([patched_model_check(env, "resnet18", 32, 224, 90.0)] if env.with_model else []))


def patched_model_check(env: Env, name: str, batch: int, size: int, run_s: float) -> Check:
    """A user's patched model on the GPU from a cold cache under the default policy: the first
    call's seconds, then torch against patched, inference and one training step (eager),
    interleaved rounds after the in-model trials settled (bench/resnets.py, as
    bench/probes/nn_resnets.py). The first H200 run measured inference only, with compiles in
    the foreground: 0.891x at ResNet-18 batch 32, float16."""
    import tempfile

    import torch

    import kernelkit
    from kernelkit.nn import _route

    def run():
        from resnets import Pair, interleaved_times, paired_ratio

        dt = torch.float32 if env.dry else torch.float16
        row = {"model": name, "batch": batch, "size": size, "dtype": str(dt)[6:]}
        before = os.environ.get("KERNELKIT_COMPILE")
        os.environ["KERNELKIT_COMPILE"] = "background"  # what a user's process does
        try:
            with tempfile.TemporaryDirectory() as cache, kernelkit.use(cache_dir=cache):
                pair = Pair(name, batch, size, dtype=dt, device=env.dev,
                            channels_last=not env.dry)
                for m in (pair.ref, pair.pat):
                    m.eval()
                t0 = time.perf_counter()
                pair.infer(pair.pat)
                row["first_call_s"] = round(time.perf_counter() - t0, 2)
                for mode in ("infer", "train"):
                    fns = pair.fns(mode, compiled=False)
                    row[f"{mode}_settle_s"] = round(pair.settle(mode, fns)[1], 2)
                    times = interleaved_times(fns, 3 if env.dry else 10)
                    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
                    row[f"{mode}_torch_ms"] = med["torch"] * 1e3
                    row[f"{mode}_patched_ms"] = med["patched"] * 1e3
                    row[f"{mode}_ratio_paired"] = paired_ratio(times["torch"], times["patched"])[0]
                routes = [_route.describe(r) for _, _, _, r in _route.current_routes(pair.pat)]
                row["kernel_routes"] = sum(r != "torch (aten)" for r in routes)
                row["routes"] = len(routes)
        finally:
            if before is None:
                os.environ.pop("KERNELKIT_COMPILE", None)
            else:
                os.environ["KERNELKIT_COMPILE"] = before
        return row
    return Check(f"bench patched model {name} batch {batch}", run, run_s=run_s,
                 bench="bench_patched_model")


def vendor_path_check(env: Env, n: int, run_s: float) -> Check:
    """The same cuBLAS product three ways, in bursts and sustained: `torch.matmul`, the torch
    candidate's 2-D launcher (which set and restored the TF32 flag around every CUDA call at the
    first run, and now only around float32 ones whose flag differs: `kernels/torch/_tf32.py`) and
    `kernelkit.matmul` forced onto the torch candidate. On the first H200 run the op through the
    torch candidate took 0.201 ms at 4096^3 fp16 against 0.182 for `torch.matmul`, and the tuner,
    timing back to back, saw cuBLAS at 8192^3 14-20% slower than do_bench did."""
    import torch

    import kernelkit
    from kernelkit.kernels.torch import matmul as vendor

    def run():
        dt = torch.float32 if env.dry else torch.float16
        a, b = env.randn(n, n, dtype=dt), env.randn(n, n, dtype=dt)
        knobs = {"cache_dir": env.cache_dir, "backend": "torch",
                 "device": "cpu" if env.dry else "cuda"}

        fns = {"torch.matmul": lambda: torch.matmul(a, b),
               "launcher_2d": lambda: vendor.matmul_forward_2d(a, b),
               "kernelkit.matmul": lambda: kernelkit.matmul(a, b)}
        row = {"n": n, "dtype": str(dt).removeprefix("torch.")}
        with kernelkit.use(**knobs):  # once: a use() block per call would be timed too
            for label in (*fns, *reversed(fns)):  # each twice, mirrored order against drift
                row.setdefault(f"{label} burst_s", []).append(env.timer(fns[label]))
            for label, fn in fns.items():  # back to back for about a second, as the tuner times
                row[f"{label} sustained_s"] = _sustained(env, fn)
        return {k: (min(v) if isinstance(v, list) else v) for k, v in row.items()}
    return Check(f"bench dispatched vendor path {n}^3", run, run_s=run_s,
                 bench="bench_dispatched_vendor")


def _sustained(env: Env, fn, seconds: float = 1.0) -> float:
    """Seconds per call of `fn` run back to back for `seconds` (one synchronisation at the end):
    the clocks a long training loop runs at, not a burst's."""
    fn()
    env.sync()
    t0, calls = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            fn()
        calls += 10
        env.sync()
    return (time.perf_counter() - t0) / calls


# ----------------------------------------------------------------------------------- sanitizer

SANITIZE_CASES = ("cupy_gemm_multi_k", "cupy_conv_bwd_weight", "triton_preprocess_ragged",
                  "cupy_preprocess_ragged")


def sanitizer_checks(env: Env) -> list[Check]:
    checks = []
    budget = BUDGETS["sanitizer"]
    for tool in ("racecheck", "memcheck"):
        def run(tool=tool):
            exe = find_sanitizer()
            if exe is None:
                return "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*)"
            rec = env.rec
            left = rec.phase_deadline - time.perf_counter() if rec else budget / 2
            cases = [c for c in SANITIZE_CASES if env.cupy or not c.startswith("cupy")]
            cmd = [exe, "--tool", tool, "--error-exitcode", "99", "--print-limit", "20"]
            if tool == "racecheck":
                cmd += ["--racecheck-report", "hazard"]
            cmd += [sys.executable, str(ROOT / "bench" / "gpu_check_sanitize.py"), *cases]
            e = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1",
                     PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, env=e, cwd=str(ROOT),
                                   timeout=max(5.0, min(left - 2, budget / 2 + 10)))
            except subprocess.TimeoutExpired as exc:
                return f"{tool}: over its time ({exc.timeout:.0f} s); cases {cases}"
            text = p.stdout + p.stderr
            if env.rec:
                env.rec.results.setdefault("sanitizer", {})[tool] = {
                    "rc": p.returncode, "cases": cases, "tail": text[-3000:]}
            summary = [ln for ln in text.splitlines() if "SUMMARY" in ln]
            if p.returncode != 0:
                return f"{tool} rc={p.returncode}: {' | '.join(summary) or text[-600:]}"
            return None
        # 9.3 s (racecheck) and 7.1 s (memcheck) on the H200 machine; the budget caps the rest
        checks.append(Check(f"compute-sanitizer {tool}: {', '.join(SANITIZE_CASES)}", run,
                            run_s=20.0))
    return checks


# ---------------------------------------------------------------------------------- the phases

def build_phases(env: Env) -> list[Phase]:
    import gpu_check_conv2d as conv
    import gpu_check_preprocess as pre

    def correctness():
        return matmul_correctness(env) + conv.correctness(env) + pre.correctness(env)

    def sweep():
        return matmul_sweep(env) + pre.sweep(env) + conv.sweep(env)

    def bench():
        return (matmul_bench(env) + conv.bench(env) + pre.bench(env) + crossover_bench(env)
                + [Check("bench pipeline overlap", pipeline_overlap, bench="bench_pipeline",
                         run_s=20.0)] + dispatched_bench(env))

    return [
        Phase("preflight", BUDGETS["preflight"], lambda: preflight_checks(env),
              "card, versions, one compile + launch per kernel family (Triton, CuPy/NVRTC)"),
        Phase("correctness", BUDGETS["correctness"], correctness,
              "default config, every dtype, small shapes, vs float64"),
        Phase("sweep", BUDGETS["sweep"], sweep,
              "every shipped config of its own dtypes, one ragged shape per kernel"),
        Phase("sanitizer", BUDGETS["sanitizer"], lambda: sanitizer_checks(env),
              "compute-sanitizer racecheck + memcheck on small cases"),
        Phase("bench", 0.0, bench, "vs cuBLAS / cuDNN / torch; dispatcher crossover"),
    ]


def pipeline_overlap(n_images: int = 128, batch: int = 32, size: int = 224, model_ms: float = 20.0):
    """kernelkit.data.Loader feeding a GPU "model" (matmuls sized to about `model_ms` per batch on
    the current stream): images/s, the consumer's wait fraction, the handoff's copy time, and the
    CUDA batches against the CPU Loader's (same seed and epoch: the pinned ring, copy stream and
    events must deliver the same values). Without a GPU (--dry-run) the same with a sleep model on
    the CPU path."""
    import numpy as np
    import torch

    import kernelkit.data as kd

    try:
        import PIL  # noqa: F401 - makes the JPEGs (and decodes them where simplejpeg is missing)
    except ImportError:
        return {"skipped": "PIL is not installed here: the pipeline check needs it"}
    cuda = torch.cuda.is_available()
    if not cuda:  # --dry-run: checks the script, small
        n_images, batch, size = 32, 16, 64
    files = kd.make_jpegs(n_images, seed=0)
    kw = dict(batch_size=batch, size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
              stats_unit="unit", augment=True, seed=0)
    if cuda:
        a = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(5):
            a @ a
        torch.cuda.synchronize()
        reps = max(1, int(model_ms / 1e3 / ((time.perf_counter() - t0) / 5)))

        def model(x):
            y = a
            for _ in range(reps):
                y = a @ a
            return float(x.float().mean()) + float(y[0, 0]) * 0  # syncs, as a training step does
    else:
        def model(x):
            time.sleep(model_ms / 1e3)
            return float(x.mean())

    loader = kd.Loader(files, device="cuda" if cuda else None, **kw)
    ref = kd.Loader(files, **kw)
    loader.set_epoch(0)
    ref.set_epoch(0)
    worst = 0.0
    for (x, _), (r, _) in zip(loader, ref):  # epoch 0: warm-up (compile, tune) and the check
        got = x.cpu().numpy() if cuda else x
        worst = max(worst, float(np.abs(got - r).max()))
    start = time.perf_counter()
    n = 0
    for x, _ in loader:  # epoch 1: timed
        model(x)
        n += len(x)
    elapsed = time.perf_counter() - start
    s = loader.timings.summary()
    row = {"images_per_s": n / elapsed, "wait_fraction": s["wait_fraction"],
           "model_ms_per_batch": model_ms, "device": "cuda" if cuda else "cpu (dry run)",
           "copy_ms_per_image": s["copy_ms_per_image"],
           "decode_ms_per_image": s["decode_ms_per_image"],
           "preprocess_ms_per_image": s["preprocess_ms_per_image"],
           "max_abs_diff_vs_cpu_loader": worst}
    if worst > 1e-4:
        raise AssertionError(f"the CUDA handoff's batches differ from the CPU Loader's by {worst}")
    return row


def plan_text(rows: list[dict], deadline: float) -> str:
    lines = [f"{'phase':<12} {'budget':>7} {'checks':>7} {'compiles':>9} {'estimate':>9}  fits",
             "-" * 60]
    total = STARTUP_S
    for r in rows:
        budget = r["budget_s"] or (deadline - sum(x["budget_s"] for x in rows))
        est = min(r["estimate_s"], budget)
        total += est
        lines.append(f"{r['phase']:<12} {budget:>6.0f}s {r['checks']:>7} {r['compiles']:>9} "
                     f"{r['estimate_s']:>8.0f}s  {'yes' if r['estimate_s'] <= budget else 'CUT'}"
                     f"   {r['compiles_by_family']}")
    lines.append("-" * 60)
    lines.append(f"startup {STARTUP_S:.0f} s + phases (capped by budgets) = {total:.0f} s; "
                 f"run deadline {deadline:.0f} s; limit {LIMIT_S:.0f} s")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- summary

def render(results: dict) -> str:
    meta, pf = results.get("meta", {}), results.get("preflight", {})
    v = pf.get("versions", {})
    lines = [f"## GPU check on {pf.get('card', meta.get('card', '?'))} "
             f"(torch {v.get('torch')}, triton {v.get('triton')}, "
             f"cupy {v.get('cupy-cuda13x') or v.get('cupy-cuda12x') or v.get('cupy', '-')})", "",
             f"elapsed {meta.get('elapsed_s', 0):.0f} s"
             + (f"; stopped by {meta['stopped_by']}" if meta.get("stopped_by") else ""), "",
             "| phase | status | ok | failed | not run | compiles | compile s | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results.get("phases", []):
        lines.append(f"| {r['phase']} | {r['status']} | {r.get('ok', 0)} | {r.get('failed', 0)} "
                     f"| {r.get('skipped', 0)} | {r.get('compiles', 0)} | "
                     f"{r.get('compile_s', 0):.0f} | {r.get('seconds', 0):.0f} |")
    fails = [c for c in results.get("checks", []) if c.get("ok") is False]
    n_ok = sum(1 for c in results.get("checks", []) if c.get("ok"))
    lines += ["", f"checks: {n_ok} passed, {len(fails)} failed"]
    lines += [f"- FAIL {c['check']}: {c.get('error')}" for c in fails[:30]]
    rows = results.get("bench_matmul", [])
    if rows:
        lines += ["", "| matmul | dtype | cuBLAS TFLOP/s | triton (x cuBLAS) | cupy (x cuBLAS) |",
                  "| --- | --- | --- | --- | --- |"]
        for r in rows:
            cells = []
            for key in ("triton", "cupy"):
                s = r.get(f"{key}_s")
                cells.append(f"{r[f'{key}_tflops']:.1f} ({r['cublas_s'] / s:.2f}x)"
                             if s and math.isfinite(s) else "-")
            lines.append(f"| {r.get('set')} {'x'.join(map(str, r.get('mkn', [])))} | "
                         f"{r.get('dtype')} | {r.get('cublas_tflops', 0):.1f} | {cells[0]} | "
                         f"{cells[1]} |")
    for key, rows in results.items():
        if not key.startswith("bench_") or key == "bench_matmul" or not rows:
            continue
        cols = []
        for r in rows:
            cols += [c for c in r if c not in cols and not isinstance(r[c], dict)]
        lines += ["", f"### {key.removeprefix('bench_')}", "",
                  "| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(_cell(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if isinstance(v, float):
        return fmt_s(v)
    if v is None:
        return ""
    return "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)[:60]


# ----------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse(argv)
    # every phase times kernels, not first calls: compile before running (children inherit it)
    os.environ["KERNELKIT_COMPILE"] = "foreground"
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    scale = args.budget_scale or (DRY_RUN_BUDGET_SCALE if args.dry_run and not args.plan else 1.0)
    deadline = T_START + args.deadline_s * scale

    if args.plan:
        env = Env(args.dry_run, True, None)
        env.with_model = env.with_model or args.with_model
        phases = build_phases(env)
        rows = estimate(phases)
        total = STARTUP_S + sum(min(r["estimate_s"], r["budget_s"] or args.deadline_s)
                                for r in rows)
        if args.json:
            print(json.dumps({"phases": rows, "deadline_s": args.deadline_s,
                              "limit_s": LIMIT_S, "startup_s": STARTUP_S,
                              "budgets": BUDGETS, "total_s": total}, indent=1))
        else:
            print(plan_text(rows, args.deadline_s))
        return 0

    rec = Recorder(out, render, T_START)
    rec.install_signals()
    rec.results["meta"].update({"argv": sys.argv[1:], "dry_run": args.dry_run,
                                "deadline_s": args.deadline_s, "limit_s": LIMIT_S,
                                "budget_scale": scale,
                                "host": platform.node(), "budgets": BUDGETS})
    rec.write()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        rec.log("gpu_check: no CUDA device here; use --dry-run to exercise the script on the CPU")
        rec.results["meta"]["error"] = "no CUDA device"
        rec.write()
        return 2
    rec.results["meta"]["card"] = "interpreter (CPU)" if args.dry_run else \
        torch.cuda.get_device_name(0)
    rec.counter.install()
    rec.results["meta"]["compile_counting"] = rec.counter.how
    env = Env(args.dry_run, False, rec)
    env.with_model = env.with_model or args.with_model
    env.timer = make_timer(args.dry_run)
    env.cache_dir = str(out / "kernelkit-cache")
    phases = build_phases(env)
    only = {p for p in args.phases.split(",") if p}
    match = [m for m in args.match.split(",") if m]
    built = {}
    for ph in phases:  # the plan of this run, from the very checks it will run
        if only and ph.name not in only:
            continue
        try:
            ph.checks = ph.build()
            if match:
                ph.checks = [c for c in ph.checks if any(m in c.name for m in match)]
            built[ph.name] = ph.checks
        except Exception as exc:  # noqa: BLE001 - reported when the phase runs
            rec.log(f"phase {ph.name}: cannot build its checks: {exc}")
    plan = estimate([p for p in phases if p.name in built], built)
    rec.add_phases(phases, plan)
    rec.log(f"gpu_check on {rec.results['meta']['card']}: deadline {args.deadline_s:.0f} s")
    for ph in phases:
        if only and ph.name not in only:
            rec.run_phase(ph, deadline, skip_why="not in --phases")
            continue
        if ph.name == "sanitizer" and (args.dry_run or find_sanitizer() is None):
            rec.run_phase(ph, deadline, skip_why="dry run: no GPU" if args.dry_run else
                          "compute-sanitizer not found (PATH, CUDA_HOME, /usr/local/cuda*)")
            continue
        left = deadline - time.perf_counter()
        if left <= 1:
            rec.run_phase(ph, deadline, skip_why="run deadline reached before it started")
            continue
        ph_deadline = deadline if not ph.budget_s else min(
            deadline, time.perf_counter() + ph.budget_s * scale)
        rec.phase_deadline = ph_deadline
        rec.run_phase(ph, ph_deadline)
    rec.results["meta"]["finished"] = True
    rec.write()
    print(render(rec.results), flush=True)
    return 0 if not any(c.get("ok") is False for c in rec.results["checks"]) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        import traceback

        traceback.print_exc()
        sys.exit(3)
