"""A cache of many records: the first read, a refresh after another process appended a line, and a
miss's decision.

    python bench/probes/cache_refresh_probe.py [--records 100000]

Prints the file's size, the load's time and five refreshes' (seconds), each after one more line
appended by a second `Cache` on the same directory (another process, as the tuner sees it); then
the `auto` tuner's decisions for 41 new sizes of a family of two fake candidates (timed on a
simulated clock, so only the tuner's own work counts) beside the records of another family.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from kernelkit.autotune import timing, tuner
from kernelkit.autotune.cache import Cache
from kernelkit.core import Candidate, Problem
from kernelkit.settings import Settings

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
    print(f"a miss's decision (s): {_misses(directory)}")


def _misses(directory: str) -> str:
    clock = timing.SimulatedClock()

    def cand(name: str, per_flop: float) -> Candidate:
        def launcher(p, cfg):
            def run():
                clock.advance(p.flops * per_flop)
            return run
        return Candidate("fake", name, "cpu", "numpy", lambda p: None, lambda p: [{}], launcher,
                         roofline=(1e-9, 1e9, 1e12))

    cands = [cand("a", 1e-9), cand("b", 1.02e-9)]
    settings = Settings(cache_dir=directory, tune="auto")
    times = []
    with timing.use_clock(clock):
        for n in range(17, 300, 7):
            p = Problem("fake", ((n, n),), "float32", "N", "numpy", "cpu", flops=2.0 * n**3)
            t0 = time.perf_counter()
            tuner.decide(p, cands, lambda c, cfg, p=p: c.launcher(p, cfg), lambda out: None,
                         settings)
            times.append(time.perf_counter() - t0)
    rest = times[1:]
    return (f"the first {times[0]:.2f} (it reads the file), then median {statistics.median(rest):.4f}"
            f", max {max(rest):.4f} ({len(rest)} sizes)")


if __name__ == "__main__":
    main()
