"""The shifted GEMM's weight rows read through a copy of each sliver (``SHIFT_INPLACE_COPY``)
against the rule before it, in one process, beside torch's F.conv2d.

    flock /tmp/kk-bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python bench/probes/conv_alias_probe.py [--batch 1] [--rounds 21] [--layers 2048,512,7,1,1 ...]
        [--copy-all]

A layer is C_in,C_out,H=W,kernel,stride (padding kernel // 2), fp32 NCHW, no bias, 2 threads.
"old" is ``conv2d_forward`` with ``SHIFT_INPLACE_COPY`` off (rows 4 KiB apart read where they
lie over up to two column slivers, else the packed weight), "new" with it on; the module's
geometry memo is keyed by the knob, so both run their own geometry. ``--copy-all``: "new" copies
the rows of every layer read in place (``SHIFT_ALIAS_BYTES`` set to the item size), not only
rows a multiple of 4 KiB apart. Both are checked against a float64 torch reference first. Each
round calls the three rows in a rotated order, each once untimed and then twice timed; medians
over rounds (``conv_knob_probe.py``'s table with these two settings: row 0 old, row 1 new).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conv_knob_probe import run  # noqa: E402

# ResNet-50's 1x1 layers whose weight rows lie 4 or 8 KiB apart, and one that does not
LAYERS = ["2048,512,7,1,1", "1024,2048,14,1,2", "1024,256,14,1,1", "1024,512,14,1,1",
          "512,2048,7,1,1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--layers", nargs="+", default=LAYERS)
    ap.add_argument("--copy-all", action="store_true")
    args = ap.parse_args()
    new = {"SHIFT_INPLACE_COPY": True}
    if args.copy_all:  # every row stride counts as aliasing
        new["SHIFT_ALIAS_BYTES"] = np.dtype(np.float32).itemsize
    run([{"SHIFT_INPLACE_COPY": False}, new], args.batch, args.rounds, args.layers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
