"""kernelkit.keep_heap: freed blocks reused page for page instead of mapped and faulted anew.

glibc's settings are process-wide, so each case runs in a child process of its own, with
glibc's malloc variables cleared from its environment and transparent huge pages off for it
(``prctl(PR_SET_THP_DISABLE)``: under THP "always" a 48 MiB mapping faults in 2 MiB pages). Each
case checks glibc's own decision (``mallinfo2().hblks``: whether the block is mapped apart,
while it lives) and the page faults that follow from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import kernelkit
from kernelkit import heap

glibc_only = pytest.mark.skipif(heap._glibc() is None, reason="keep_heap acts on glibc only")

_PRELUDE = r"""
import ctypes, json, resource
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages whatever the host's THP mode
class _Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = _Info
import kernelkit
done = [kernelkit.keep_heap(step == "on") for step in {action!r}.split(",") if step]
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
"""

# A 48 MiB block (above glibc's largest dynamic mmap threshold, 32 MiB, so by default each is a
# mapping of its own) malloc'd, written page by page and freed ten times; the faults of the
# last nine. Through libc itself: numpy asks for huge pages on blocks this size, and torch's
# posix_memalign pads each request.
_BLOCKS = _PRELUDE + r"""
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 48 << 20
mapped = []
def once():
    before = libc.mallinfo2().hblks  # (blocks mapped apart already: the imports')
    p = libc.malloc(size)
    for off in range(0, size, 4096):
        ctypes.c_char.from_address(p + off).value = b"x"
    mapped.append(libc.mallinfo2().hblks - before)
    libc.free(p)
once()
f0 = faults()
for _ in range(9):
    once()
print(json.dumps(dict(faults=(faults() - f0) / 9, mapped=mapped[-1], done=done,
                      kept=kernelkit.heap_kept())))
"""
PAGES = (48 << 20) // 4096

# A torch CNN's forward at batch 8, 256 px: its 33.5 MB activations made and freed each call;
# the median of five calls' faults after three untimed ones (the heap may still grow once in
# the first calls).
_CNN = _PRELUDE + r"""
import statistics, torch
torch.set_num_threads(1)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                        torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
x = torch.randn(8, 3, 256, 256)
per_call = []
with torch.no_grad():
    for i in range(8):
        f0 = faults()
        m(x)
        per_call.append(faults() - f0)
print(json.dumps(dict(faults=statistics.median(per_call[3:]), done=done)))
"""


def _child(code: str, action: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", code.replace("{action!r}", repr(action))],
                         check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


@glibc_only
def test_a_freed_block_made_again_faults_no_page_with_the_heap_kept():
    default, kept = _child(_BLOCKS, ""), _child(_BLOCKS, "on")
    assert default["mapped"] >= 1 and default["faults"] > 0.9 * PAGES  # (the case it is for)
    assert kept["done"] == [True] and kept["kept"]
    assert kept["mapped"] == 0 and kept["faults"] < 0.01 * PAGES


@glibc_only
def test_a_torch_cnns_calls_fault_no_page_with_the_heap_kept():
    default, kept = _child(_CNN, ""), _child(_CNN, "on")
    assert default["faults"] > 3 * 8192  # (three 33.5 MB activations a call, at least)
    assert kept["done"] == [True]
    assert kept["faults"] < 0.01 * default["faults"]


@glibc_only
def test_a_worker_started_by_fork_keeps_the_heap_kept():
    """A DataLoader's workers under the fork start method inherit the setting (glibc's, in the
    process's memory)."""
    forked = _child(_BLOCKS.replace("once()\nf0", "import os\nif os.fork():\n"
                                    "    os.wait()\n    raise SystemExit\nonce()\nf0"), "on")
    assert forked["mapped"] == 0 and forked["faults"] < 0.01 * PAGES


@glibc_only
def test_keep_heap_off_maps_large_blocks_apart_again():
    back = _child(_BLOCKS, "on,off")
    assert back["done"] == [True, True] and not back["kept"]
    assert back["mapped"] >= 1 and back["faults"] > 0.9 * PAGES


def test_keep_heap_without_glibc_says_it_did_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert kernelkit.keep_heap() is False
    assert kernelkit.keep_heap(False) is False
    assert not kernelkit.heap_kept()
