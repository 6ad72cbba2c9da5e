"""Turn a pytest-benchmark JSON file into markdown tables of medians, GFLOP/s and ratios.

    python bench/report.py results.json [--baseline numpy] [--only "conv2d depthwise"]

Each group is one problem; every row's ratio is baseline median / row median from the same run
(above 1: faster than the baseline). The dispatch-overhead figure is printed when present.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("json", type=argparse.FileType(), help="a --benchmark-json file")
    p.add_argument("--baseline", default="numpy", help="the row every ratio is against")
    p.add_argument("--only", default="", help="keep groups whose name contains this")
    args = p.parse_args()
    with args.json as f:
        data = json.load(f)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for bm in data["benchmarks"]:
        row = bm["extra_info"].get("row")
        if row and args.only in bm["group"]:
            groups[bm["group"]][row] = bm
        elif "overhead_us" in bm["extra_info"]:
            info = bm["extra_info"]
            what = f"{info.get('op', 'matmul')} on {info.get('lib', 'numpy')}"
            print(f"dispatch overhead ({what}, cache hit): {info['overhead_us']:.2f} us over "
                  f"{info['candidate']}'s launcher ({info['direct_us']:.2f} us)\n")
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('cpu', {}).get('brand_raw', machine.get('processor'))}, "
          f"{data.get('datetime', '')}\n")
    rows_order: list[str] = []
    for g in groups.values():
        for r in g:
            if r not in rows_order:
                rows_order.append(r)
    ratios: dict[str, list[float]] = defaultdict(list)
    print("| problem | " + " | ".join(rows_order) + " |")
    print("| --- |" + " --- |" * len(rows_order))
    for name, g in groups.items():
        base = g.get(args.baseline)
        cells = []
        for r in rows_order:
            bm = g.get(r)
            if bm is None:
                cells.append("-")
                continue
            med = bm["stats"]["median"]
            info = bm["extra_info"]
            if info.get("gflops"):
                cell = f"{info['gflops']:.1f} GF/s"
            elif info.get("images_per_s"):
                cell = f"{info['images_per_s']:.0f} img/s"
            else:
                cell = f"{med * 1e6:.1f} us"
            if base:
                ratio = base["stats"]["median"] / med
                ratios[r].append(ratio)
                cell += f" ({ratio:.2f}x)"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\ngeometric mean of the ratio to {args.baseline}:")
    for r, xs in ratios.items():
        print(f"  {r}: {math.exp(sum(map(math.log, xs)) / len(xs)):.2f}x over {len(xs)} problems")


if __name__ == "__main__":
    main()
