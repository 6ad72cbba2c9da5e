"""Numba's compiled-kernel cache is keyed by every source the kernels depend on (issue 15).

Numba's own ``cache=True`` stamps a function with its own file only, so a caller kept the machine
code of a helper from another file after that file changed. The test edits a helper in a copy of
the package and checks that the next process sees the change with the same (warm) cache dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

from kernelkit.kernels.numba import _cache  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "kernelkit"

# One small entry point (no packing, one thread) whose activation lives in another file
# (_gemm.py's act_row), so a stale cache would keep the old helper.
_PROBE = r"""
import json, sys
import numpy as np
from kernelkit.kernels.numba import _cache, matmul as m
from kernelkit.kernels.numba._gemm import ACT_RELU, entry_point
small = entry_point(m._matmul_small, m._sig("small", np.float32))
a = np.array([[[-2.0, 3.0]]], np.float32)      # (1, 1, 2)
b = np.array([[[1.0, -1.0], [0.0, 0.0]]], np.float32)  # (1, 2, 2): C = [[-2, 2]]
out = np.empty((1, 1, 2), np.float32)
small(a, b, np.zeros(0, np.float32), False, ACT_RELU, out)
print(json.dumps({"out": out.ravel().tolist(), "dir": str(_cache.cache_dir()),
                  "key": _cache.cache_key(), "file": m.__file__}))
"""


def _run(root: Path, cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "KERNELKIT_CACHE_DIR": str(cache)}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)  # (tests/conftest.py shares the user's kernels)
    res = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sources_cover_helpers_and_shared_tables():
    names = {p.relative_to(PACKAGE).as_posix() for p in _cache.source_files()}
    for must in ("kernels/numba/_gemm.py", "kernels/numba/_resample.py", "kernels/numba/_conv.py",
                 "kernels/numba/matmul.py", "kernels/numba/conv2d.py",
                 "kernels/numba/preprocess.py", "kernels/taps.py", "kernels/__init__.py"):
        assert must in names


def test_cache_dir_is_keyed_under_kernelkit_cache():
    d = _cache.cache_dir()
    assert d is not None and d.name == _cache.cache_key() and d.parent.name == "numba"
    # kernels decorated so far were located there (the package dir may be read-only)
    from kernelkit.kernels.numba import _gemm

    assert _gemm.epilogue._cache._cache_path.startswith(str(d))


def test_the_numba_folder_has_its_own_knob(monkeypatch, tmp_path):
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path / "autotune"))
    monkeypatch.delenv("KERNELKIT_NUMBA_CACHE_DIR", raising=False)
    assert _cache.numba_root() == tmp_path / "autotune" / "numba"
    monkeypatch.setenv("KERNELKIT_NUMBA_CACHE_DIR", str(tmp_path / "kernels"))
    assert _cache.numba_root() == tmp_path / "kernels"


def test_edited_helper_in_another_file_is_recompiled(tmp_path):
    root = tmp_path / "src"
    shutil.copytree(PACKAGE, root / "kernelkit", ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache"
    first = _run(root, cache)
    assert first["file"].startswith(str(root))
    assert first["out"] == [0.0, 2.0]  # relu([-2, 2])
    again = _run(root, cache)  # warm: same key, same dir
    assert again["key"] == first["key"] and again["out"] == first["out"]
    assert any(Path(first["dir"]).rglob("*.nbi"))

    gemm = root / "kernelkit" / "kernels" / "numba" / "_gemm.py"
    src = gemm.read_text()
    old = "c[_U(o + j)] = _F0 if v < _F0 else v"
    assert src.count(old) == 1
    gemm.write_text(src.replace(old, "c[_U(o + j)] = v"))  # relu -> identity, in the helper only

    edited = _run(root, cache)  # matmul.py is unchanged; its cached machine code must not be used
    assert edited["key"] != first["key"]
    assert edited["out"] == [-2.0, 2.0]


_READ_ONLY_PROBE = _PROBE.replace('"key": _cache.cache_key(),',
                                  '"key": _cache.cache_key(), "compiled": m._gemm.COMPILED[0],')


def test_a_read_only_folder_of_compiled_kernels_is_loaded_not_compiled_again(tmp_path):
    """Kernels compiled into a folder the job cannot write (an image's, built ahead): before, the
    folder was passed over and every kernel compiled again in a temporary dir (12.7 s for a
    first matmul). Now they are copied there once and loaded. As root (CI), the child runs
    without the capabilities that let root ignore file modes (setpriv)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache), "TMPDIR": str(tmp_path / "tmp")}
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)
    (tmp_path / "tmp").mkdir()

    def probe(read_only: bool) -> dict:
        cmd = [sys.executable, "-c", _READ_ONLY_PROBE]
        if read_only and os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.fail("running as root without setpriv: cannot make a read-only folder")
            cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
        res = subprocess.run(cmd, env=env, cwd=PACKAGE.parent, capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    built = probe(False)
    assert built["compiled"] == 1 and Path(built["dir"]).is_relative_to(cache)
    dirs = [cache, *(p for p in cache.rglob("*") if p.is_dir())]
    for p in cache.rglob("*"):
        if p.is_file():
            p.chmod(0o444)
    for d in dirs:
        d.chmod(0o555)
    try:
        ran = probe(True)
    finally:
        for d in dirs:
            d.chmod(0o755)
    assert ran["out"] == built["out"] and ran["key"] == built["key"]
    assert Path(ran["dir"]).is_relative_to(tmp_path / "tmp")  # the writable copy
    assert ran["compiled"] == 0  # loaded from the copy, not compiled again


def test_a_new_keys_folder_prunes_the_key_folders_unused_for_a_month(tmp_path):
    now = 1_000_000_000.0
    month = _cache.STALE_AFTER_S
    old_marked = tmp_path / ("a" * 20)      # marked long ago: another version, gone
    recent_marked = tmp_path / ("b" * 20)   # an old folder a process still starts with
    old_unmarked = tmp_path / ("c" * 20)    # from before the marks: its own time
    not_a_key = tmp_path / "notes"          # anything else in the folder is left alone
    for folder in (old_marked, recent_marked, old_unmarked, not_a_key):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f.nbi").write_bytes(b"x")
    for folder, used in ((old_marked, now - month - 60), (recent_marked, now - month + 60)):
        (folder / _cache._USED).touch()
        os.utime(folder / _cache._USED, (used, used))
        os.utime(folder, (now - 10 * month,) * 2)
    os.utime(old_unmarked, (now - month - 60,) * 2)
    os.utime(not_a_key, (now - 10 * month,) * 2)

    removed = _cache.prune_stale(tmp_path, keep="d" * 20, now=now)

    assert sorted(removed) == ["a" * 20, "c" * 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b" * 20, "notes"]


def test_only_making_a_keys_folder_prunes_and_every_start_marks_its_use(tmp_path, monkeypatch):
    pruned = []
    monkeypatch.setattr(_cache, "prune_stale", lambda root, keep: pruned.append((root, keep)))
    folder = tmp_path / ("e" * 20)

    assert _cache._usable(folder)          # made here: its siblings are looked at
    assert pruned == [(tmp_path, "e" * 20)]
    mark = folder / _cache._USED
    os.utime(mark, (0, 0))
    assert _cache._usable(folder)          # there already: marked, nothing pruned
    assert pruned == [(tmp_path, "e" * 20)]
    assert mark.stat().st_mtime > 0


def test_a_moved_install_loads_the_kernels_compiled_before_the_move(tmp_path):
    """Numba files a kernel under a folder named after its source's absolute path: an install
    moved after `kernelkit warmup` (an image build that copies the package elsewhere; a checkout
    and a wheel sharing one cache) found nothing there, while the warmed mark said the kernels
    were on disk, and a first call compiled for 13.6 s in the caller's thread (a user hunt).
    The subfolder is named after the source's place in the package now."""
    first_root, moved_root, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    shutil.copytree(PACKAGE, first_root / "kernelkit", ignore=shutil.ignore_patterns("__pycache__"))

    def probe(root: Path) -> dict:
        env = {**os.environ, "PYTHONPATH": str(root), "KERNELKIT_CACHE_DIR": str(cache)}
        env.pop("NUMBA_CACHE_DIR", None)
        env.pop("KERNELKIT_NUMBA_CACHE_DIR", None)
        res = subprocess.run([sys.executable, "-c", _READ_ONLY_PROBE], env=env, cwd=root,
                             capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    built = probe(first_root)
    assert built["compiled"] == 1 and built["file"].startswith(str(first_root))
    first_root.rename(moved_root)
    ran = probe(moved_root)
    assert ran["file"].startswith(str(moved_root)) and ran["key"] == built["key"]
    assert ran["out"] == built["out"] and ran["compiled"] == 0
