"""A cache of many records: the first read, and a refresh after another process appended a line.

    python bench/probes/cache_refresh_probe.py [--records 100000]

Prints the file's size, the load's time and five refreshes' (seconds), each after one more line
appended by a second `Cache` on the same directory (another process, as the tuner sees it).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from kernelkit.autotune.cache import Cache

ENTRY = {
    "choice": {"candidate": "torch-cpu", "config": {"BM": 64}, "source": "measured"},
    "trials": [{"candidate": c, "config": {"BM": b}, "median": 1e-3, "spread": 0.0, "count": 3}
               for c in ("torch-cpu", "numba-cpu") for b in (32, 64, 128)],
    "problem": {"family": "matmul|float32|x", "flops": 1e6, "nbytes": 1e4, "op": "matmul",
                "shapes": [[4, 4], [4, 4]]},
    "measured_at": "2026-11-30T00:00:00+00:00",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    args = ap.parse_args()
    directory = tempfile.mkdtemp()
    writer = Cache(directory)
    writer.update({f"k{i}": ENTRY for i in range(args.records)})
    print(f"file {writer.path.stat().st_size / 1e6:.1f} MB, {args.records} records")
    reader = Cache(directory)
    t0 = time.perf_counter()
    reader.records()
    print(f"load {time.perf_counter() - t0:.2f} s")
    times = []
    for i in range(5):
        writer.put(f"new{i}", ENTRY)
        t0 = time.perf_counter()
        assert reader.refresh()
        times.append(time.perf_counter() - t0)
    print("refresh after one appended line (s):", " ".join(f"{t:.4f}" for t in times))


if __name__ == "__main__":
    main()
