"""kernelkit.keep_heap: freed blocks reused page for page instead of mapped and faulted anew.

glibc's settings are process-wide, so each case runs in a child process of its own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import kernelkit
from kernelkit import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="keep_heap acts on glibc only")

# A child that mallocs and frees a 48 MiB block (above glibc's largest dynamic mmap threshold,
# 32 MiB, so by default each is a new mapping) ten times, writing every page, and reports the
# page faults of the last nine. Through libc itself: numpy asks for huge pages on blocks this
# size (24 faults a block), torch's posix_memalign pads each request.
_BLOCKS = r"""
import ctypes, json, resource
import kernelkit
done = [kernelkit.keep_heap(step == "on") for step in {action!r}.split(",") if step]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 48 << 20
def once():
    p = libc.malloc(size)
    for off in range(0, size, 4096):  # a write to every page
        ctypes.c_char.from_address(p + off).value = b"x"
    libc.free(p)
once()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    once()
f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps(dict(faults=(f1 - f0) / 9, done=done, kept=kernelkit.heap_kept())))
"""
PAGES = (48 << 20) // 4096

# A torch CNN's forward at batch 8, 256 px: its 33.5 MB activations made and freed each call.
_CNN = r"""
import json, resource, torch
import kernelkit
done = [kernelkit.keep_heap(step == "on") for step in {action!r}.split(",") if step]
torch.set_num_threads(1)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                        torch.nn.MaxPool2d(2), torch.nn.Conv2d(16, 16, 3, padding=1)).eval()
x = torch.randn(8, 3, 256, 256)
with torch.no_grad():
    m(x)
    m(x)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        m(x)
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(json.dumps(dict(faults=(f1 - f0) / 3, done=done, kept=kernelkit.heap_kept())))
"""


def _child(code: str, action: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code.format(action=action)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_a_freed_block_made_again_faults_no_page_with_the_heap_kept():
    default, kept = _child(_BLOCKS, ""), _child(_BLOCKS, "on")
    assert default["faults"] > 0.9 * PAGES  # (each block a new mapping: the case it is for)
    assert kept["done"] == [True] and kept["kept"]
    assert kept["faults"] < 0.01 * PAGES


def test_a_torch_cnns_calls_fault_no_page_with_the_heap_kept():
    default, kept = _child(_CNN, ""), _child(_CNN, "on")
    assert default["faults"] > 3 * 8192  # (three 33.5 MB activations a call, at least)
    assert kept["done"] == [True]
    assert kept["faults"] < 0.01 * default["faults"]


def test_a_forked_worker_keeps_the_heap_kept():
    """A DataLoader's forked workers inherit the setting (glibc's, in the process's memory)."""
    forked = _child(_BLOCKS.replace("once()\nf0", "import os\nif os.fork():\n"
                                    "    os.wait()\n    raise SystemExit\nonce()\nf0"), "on")
    assert forked["faults"] < 0.01 * PAGES


def test_keep_heap_off_gives_freed_blocks_back_again():
    back = _child(_BLOCKS, "on,off")
    assert back["done"] == [True, True] and not back["kept"]
    assert back["faults"] > 0.9 * PAGES


def test_keep_heap_without_glibc_says_it_did_nothing(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    assert kernelkit.keep_heap() is False
    assert kernelkit.keep_heap(False) is False
    assert not kernelkit.heap_kept()
