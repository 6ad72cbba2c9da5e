"""The persistent cache: across processes, concurrent writers, corruption, foreign machines."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import pytest

from kernelkit.autotune.cache import SCHEMA, Cache, CacheWarning, header


def entry(name="torch-cpu", median=1e-3):
    return {"choice": {"candidate": name, "config": {}, "source": "measured"},
            "trials": [{"candidate": name, "config": {}, "median": median, "spread": 0.0,
                        "count": 3}]}


def test_round_trip_in_a_new_process(tmp_path):
    Cache(tmp_path).put("k1", entry())
    code = textwrap.dedent(f"""
        import json
        from kernelkit.autotune.cache import Cache
        print(json.dumps(Cache({str(tmp_path)!r}).get("k1")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == entry()


def test_concurrent_writers_lose_nothing(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from kernelkit.autotune.cache import Cache
        w = int(sys.argv[1])
        for i in range(15):
            Cache({str(tmp_path)!r}).put(f"w{{w}}-{{i}}", {{"choice": {{"candidate": "c",
                "config": {{"i": i}}, "source": "measured"}}}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    entries = Cache(tmp_path).entries()
    assert len(entries) == 60 and all(f"w{w}-{i}" in entries for w in range(4) for i in range(15))
    assert not list(tmp_path.glob(".autotune-*.tmp")), "a temporary file was left behind"


def test_writer_merges_with_what_is_on_disk(tmp_path):
    a, b = Cache(tmp_path), Cache(tmp_path)
    a.entries(), b.entries()  # both loaded the (empty) file before either wrote
    a.put("from-a", entry())
    b.put("from-b", entry())
    assert set(Cache(tmp_path).entries()) == {"from-a", "from-b"}


@pytest.mark.parametrize("content", ["{not json", "", '{"header": 1}', "[1, 2]",
                                     '{"header": {}, "entries": []}'])
def test_corrupt_file_warns_and_starts_fresh(tmp_path, content):
    (tmp_path / "autotune.json").write_text(content)
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning):
        assert c.entries() == {}
    c.put("k", entry())  # and writing repairs the file
    assert Cache(tmp_path).get("k") == entry()


def test_foreign_fingerprint_is_ignored_with_one_warning(tmp_path):
    head = header()
    foreign = {**head, "fingerprint": {**head["fingerprint"], "gpu": "NVIDIA Imaginary 9000"}}
    (tmp_path / "autotune.json").write_text(json.dumps({"header": foreign, "entries": {"k": entry()}}))
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="machine fingerprint") as record:
        assert c.get("k") is None
        assert c.get("k") is None
    assert len(record) == 1
    old_schema = {**head, "schema": SCHEMA + 100}
    (tmp_path / "autotune.json").write_text(json.dumps({"header": old_schema, "entries": {"k": entry()}}))
    with pytest.warns(CacheWarning, match="schema"):
        assert Cache(tmp_path).get("k") is None


def test_unreadable_directory_is_not_fatal(tmp_path):
    (tmp_path / "autotune.json").mkdir()  # a directory where the file should be
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert Cache(tmp_path).entries() == {}
    assert any(issubclass(x.category, CacheWarning) for x in w)


def test_clear(tmp_path):
    c = Cache(tmp_path)
    c.put("k", entry())
    c.clear()
    assert c.entries() == {} and Cache(tmp_path).entries() == {}
