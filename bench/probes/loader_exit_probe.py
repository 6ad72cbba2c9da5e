"""A script that ends while a daemon thread iterates a kernelkit.data.Loader: how many of N runs
exit cleanly and how many abort ("terminate called without an active exception", exit 134).

Before `kernelkit/data/loader.py`'s `_stop_at_exit`, 4 of 5 runs aborted on a 2-core Zen 4
(2026-12-05), with a tuned cache: the producer was inside a preprocess call while the runtime's
destructors ran. The abort did not reproduce inside the pytest session (not found why), so this
probe is the check:

    KERNELKIT_CACHE_DIR=$(mktemp -d) python bench/probes/loader_exit_probe.py 5
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = r"""
import threading, time
import torch  # (a PyTorch user's script)
from kernelkit.data import Loader, make_jpegs
train = [(b, 0) for b in make_jpegs(32, sizes=[(120, 160), (97, 131)], seed=5)]

def trainer():
    lo = Loader(train, batch_size=8, size=48, mean=0.0, std=1.0, augment=True, shuffle=True)
    while True:
        for _ in lo:
            pass

threading.Thread(target=trainer, daemon=True).start()
time.sleep(2.0)
"""


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    codes = [subprocess.run([sys.executable, "-c", SCRIPT], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, timeout=300).returncode
             for _ in range(runs)]
    print(f"exit codes {codes}: {sum(c != 0 for c in codes)} of {runs} runs did not exit cleanly")


if __name__ == "__main__":
    main()
