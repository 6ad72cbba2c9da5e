"""How a process's first call gets its Numba kernels: the compile jobs (how, seconds) and the
child processes started for them, in a process whose kernels are on disk already (run it twice
with one KERNELKIT_CACHE_DIR: the first run may compile) and after `kernelkit.explain` (which
times the kernels in this process first).

    D=$(mktemp -d); KERNELKIT_CACHE_DIR=$D python bench/probes/compile_child_probe.py plain
    KERNELKIT_CACHE_DIR=$D python bench/probes/compile_child_probe.py plain
    KERNELKIT_CACHE_DIR=$(mktemp -d) python bench/probes/compile_child_probe.py explain
"""

from __future__ import annotations

import sys

SPAWNED: list = []
# (before numpy and kernelkit: the hook sees every process the run starts)
sys.addaudithook(lambda event, args: SPAWNED.append(args) if event == "subprocess.Popen"
                 else None)

import numpy as np  # noqa: E402

import kernelkit  # noqa: E402
from kernelkit import compiling  # noqa: E402


def main() -> None:
    a = np.random.default_rng(0).standard_normal((256, 256), dtype=np.float32)
    if sys.argv[1:] == ["explain"]:
        print("explain chose", kernelkit.explain("matmul", a, a).choice.candidate)
    kernelkit.matmul(a, a)
    compiling.wait(timeout=600)
    print("jobs:", [(j.module.rsplit(".", 1)[-1], j.how, round(j.seconds, 2))
                    for j in compiling.jobs()])
    print("compile children started:", sum("_child" in str(args) for args in SPAWNED))


if __name__ == "__main__":
    main()
