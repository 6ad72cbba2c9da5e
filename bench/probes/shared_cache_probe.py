"""How many measurements N processes started together on one fresh cache make: each tunes the same
matmul sizes (n x n, n = 32 ... 208 in steps of 16) in its own shuffled order under
KERNELKIT_TUNE=measure; the probe then counts the cache file's entry lines and distinct keys.
Fewer lines than processes x keys means a process used what another had measured meanwhile.

    python bench/probes/shared_cache_probe.py [--processes 3] [--busy-share 1]

``--busy-share 1`` turns the busy-machine check off: processes that load each other otherwise
store provisional entries, which a measuring process measures again by design.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, numpy as np, kernelkit
rng = np.random.default_rng(int(sys.argv[1]))
sizes = [16 * i for i in range(2, 14)]
rng.shuffle(sizes)
for n in sizes:
    a = rng.standard_normal((n, n), dtype=np.float32)
    kernelkit.matmul(a, a)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--busy-share", default=None, help="KERNELKIT_BUSY_SHARE for the processes")
    args = p.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="kk-shared-"))
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache), "KERNELKIT_TUNE": "measure"}
    if args.busy_share is not None:
        env["KERNELKIT_BUSY_SHARE"] = args.busy_share
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(seed)], env=env)
             for seed in range(1, args.processes + 1)]
    if any(proc.wait(timeout=900) for proc in procs):
        sys.exit("a tuning process failed")
    lines = [json.loads(line) for line in (cache / "autotune.jsonl").open() if '"entry"' in line]
    keys = {rec["key"] for rec in lines}
    print(f"{args.processes} processes: {len(lines)} measurements stored for {len(keys)} keys "
          f"(each process alone: {len(keys)}; {cache})")


if __name__ == "__main__":
    main()
