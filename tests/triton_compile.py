"""Compile ``@triton.jit`` kernels for a CUDA target without a GPU, for compile tests.

The tests run with ``TRITON_INTERPRET=1`` on machines without a GPU, which turns every
``@triton.jit`` function into an interpreter function that cannot be compiled. So the compiles run
in a child process (this module as ``__main__``) with ``TRITON_INTERPRET`` removed from its
environment; jobs go in and results come back as JSON. Batch many jobs into one call of
:func:`compile_many`: the child pays Triton's import once and the jobs are spread over the cores.

A job names the kernel by module and attribute, the argument types of its runtime arguments
(``"*fp16"``, ``"i32"``, ...), the values of its constexprs (any argument may be given as a
constexpr, as Triton does for integer arguments equal to 1), and the target::

    job = CompileJob("kernelkit.kernels.triton.matmul", "matmul_kernel",
                     signature={"a_ptr": "*fp16", "M": "i32", ...},
                     constexprs={"BLOCK_M": 128, "stride_ak": 1, ...},
                     cc=90, num_warps=8, num_stages=3, sass=True)
    result = compile_many([job])[0]
    result.ok, result.metadata["shared"], result.asm["sass"].count("HGMMA")

Pointer and integer arguments named in ``divisible_by_16`` get Triton's ``tt.divisibility = 16``
hint, as the runtime gives to 16-byte aligned pointers and integers that are multiples of 16.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Largest dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_MEMORY_LIMIT: dict[int, int] = {
    80: 166912,  # A100: 163 KiB
    86: 101376,  # RTX 30xx / A10: 99 KiB
    89: 101376,  # RTX 40xx / L4: 99 KiB
    90: 232448,  # H100 / H200: 227 KiB
}


@dataclass(frozen=True)
class CompileJob:
    module: str  # importable module holding the kernel, e.g. "kernelkit.kernels.triton.matmul"
    fn: str  # attribute name of the @triton.jit function in that module
    signature: dict[str, str]  # runtime argument -> Triton type ("*fp16", "*bf16", "*fp32", "i32")
    constexprs: dict[str, object] = field(default_factory=dict)  # argument -> value (JSON types)
    cc: int = 90  # compute capability: GPUTarget("cuda", cc, 32)
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: tuple[str, ...] = ()  # arguments that get tt.divisibility = 16
    asm: tuple[str, ...] = ()  # asm stages to return as text ("ttgir", "llir", "ptx"); "cubin" as bytes
    sass: bool = False  # also disassemble the cubin with the wheel's cuobjdump into asm["sass"]
    label: str = ""  # free text, echoed back in the result


@dataclass
class CompileResult:
    job: CompileJob
    ok: bool
    error: str = ""
    asm: dict = field(default_factory=dict)  # stage -> text ("cubin" -> bytes)
    # Triton's metadata (shared, num_warps, num_stages, name, ...) plus regs, stack and local
    # (bytes per thread) from cuobjdump -res-usage, and compile_s (seconds in the child).
    metadata: dict = field(default_factory=dict)


def compile_many(jobs: list[CompileJob], *, workers: int | None = None,
                 timeout: float = 900) -> list[CompileResult]:
    """Compile every job in child processes without the interpreter; results in job order.

    A job that fails to compile gives ``ok=False`` and the error text; it never raises. A child
    that crashes or times out raises ``RuntimeError`` with its stderr.
    """
    jobs = list(jobs)
    if not jobs:
        return []
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    chunks = [jobs[i::workers] for i in range(workers)]
    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(lambda chunk: _run_child(chunk, timeout), chunks))
    out: list[CompileResult | None] = [None] * len(jobs)
    for w, part in enumerate(parts):
        for j, res in enumerate(part):
            out[w + j * workers] = res
    return out  # type: ignore[return-value]


def compile_one(job: CompileJob) -> tuple[dict, dict]:
    """Compile one job; return (asm dict, metadata dict) or raise RuntimeError if it fails."""
    res = compile_many([job], workers=1)[0]
    if not res.ok:
        raise RuntimeError(f"compile of {job.fn} ({job.label}) for sm_{job.cc} failed:\n{res.error}")
    return res.asm, res.metadata


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run_child(jobs: list[CompileJob], timeout: float) -> list[CompileResult]:
    payload = json.dumps([dataclasses.asdict(j) for j in jobs])
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=payload,
                          capture_output=True, text=True, timeout=timeout, env=_child_env(),
                          cwd=str(ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"compile child exited with {proc.returncode}:\n{proc.stderr[-4000:]}")
    results = []
    for job, raw in zip(jobs, json.loads(proc.stdout), strict=True):
        asm = raw["asm"]
        if "cubin" in asm:
            asm["cubin"] = base64.b64decode(asm["cubin"])
        results.append(CompileResult(job=job, ok=raw["ok"], error=raw["error"], asm=asm,
                                     metadata=raw["metadata"]))
    return results


# ---------------------------------------------------------------------------------------------
# Child side: runs without TRITON_INTERPRET, reads jobs as JSON on stdin, writes results on stdout.


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"cuobjdump not found in the triton wheel at {path}")
    return str(path)


def _sass(cubin: bytes, tmpdir: str) -> str:
    path = Path(tmpdir) / "kernel.cubin"
    path.write_bytes(cubin)
    return subprocess.run([_cuobjdump(), "-sass", str(path)], check=True, capture_output=True,
                          text=True).stdout


def _resource_usage(cubin: bytes, tmpdir: str) -> dict:
    """Registers, stack (spills) and local memory per thread, from ``cuobjdump -res-usage``."""
    import re

    path = Path(tmpdir) / "kernel.cubin"
    path.write_bytes(cubin)
    text = subprocess.run([_cuobjdump(), "-res-usage", str(path)], check=True, capture_output=True,
                          text=True).stdout
    usage = {}
    for key, name in (("REG", "regs"), ("STACK", "stack"), ("LOCAL", "local")):
        m = re.search(rf"\b{key}:(\d+)", text)
        if m:
            usage[name] = int(m.group(1))
    return usage


def _compile_job(job: dict, tmpdir: str) -> dict:
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job["module"]), job["fn"])
    names = list(fn.arg_names)
    unknown = [n for n in [*job["signature"], *job["constexprs"]] if n not in names]
    if unknown:
        raise ValueError(f"{job['fn']} has no arguments {unknown}; its arguments are {names}")
    signature = {}
    for name in names:
        if name in job["constexprs"]:
            signature[name] = "constexpr"
        elif name in job["signature"]:
            signature[name] = job["signature"][name]
        else:
            raise ValueError(f"argument {name!r} of {job['fn']} has neither a type nor a value")
    constexprs = {(names.index(k),): v for k, v in job["constexprs"].items()}
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in job["divisible_by_16"]}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", job["cc"], 32),
                            options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
    md = kernel.metadata
    md = md._asdict() if hasattr(md, "_asdict") else dict(vars(md))
    metadata = {k: v for k, v in md.items() if isinstance(v, (int, float, str, bool, type(None)))}
    asm = {}
    for stage in job["asm"]:
        val = kernel.asm[stage]
        asm[stage] = base64.b64encode(val).decode() if isinstance(val, bytes) else str(val)
    metadata.update(_resource_usage(kernel.asm["cubin"], tmpdir))
    if job["sass"]:
        asm["sass"] = _sass(kernel.asm["cubin"], tmpdir)
    return {"ok": True, "error": "", "asm": asm, "metadata": metadata}


def _child_main() -> None:
    import tempfile
    import time
    import traceback

    if os.environ.get("TRITON_INTERPRET"):
        raise SystemExit("triton_compile child must run without TRITON_INTERPRET")
    jobs = json.loads(sys.stdin.read())
    # Anything Triton or ptxas prints goes to stderr; fd 1 carries only the JSON result.
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for job in jobs:
            start = time.perf_counter()
            try:
                out.append(_compile_job(job, tmpdir))
                out[-1]["metadata"]["compile_s"] = time.perf_counter() - start
            except Exception:  # noqa: BLE001 - a failed compile is a result, not a crash
                out.append({"ok": False, "error": traceback.format_exc()[-4000:], "asm": {},
                            "metadata": {}})
    with os.fdopen(result_fd, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    _child_main()
