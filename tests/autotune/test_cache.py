"""The persistent cache survives real use: many processes, killed writers, damaged files, foreign
machines, old schemas, read-only and missing directories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from kernelkit.autotune.cache import (
    FILENAME,
    LEGACY_FILENAME,
    SCHEMA,
    Cache,
    CacheWarning,
    fingerprint,
    fingerprint_id,
    read_export,
)

REPO = Path(__file__).resolve().parents[2]


def entry(name="torch-cpu", median=1e-3, when="2026-11-30T00:00:00+00:00"):
    return {"choice": {"candidate": name, "config": {}, "source": "measured"},
            "trials": [{"candidate": name, "config": {}, "median": median, "spread": 0.0,
                        "count": 3}], "measured_at": when}


def foreign_fingerprint():
    return {**fingerprint(), "gpu": "NVIDIA Imaginary 9000"}


def write_foreign_lines(path: Path, keys) -> str:
    fp = foreign_fingerprint()
    fid = fingerprint_id(fp)
    lines = [json.dumps({"fp": fid, "fingerprint": fp})]
    lines += [json.dumps({"schema": SCHEMA, "fp": fid, "key": k, "entry": entry("cupy-cuda")})
              for k in keys]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    return fid


def fresh(tmp_path) -> Cache:
    """A new Cache object on the directory, as a new process would see it."""
    return Cache(tmp_path)


def test_round_trip_in_a_new_process(tmp_path):
    Cache(tmp_path).put("k1", entry())
    code = textwrap.dedent(f"""
        import json
        from kernelkit.autotune.cache import Cache
        print(json.dumps(Cache({str(tmp_path)!r}).get("k1")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == entry()


def test_four_concurrent_writer_processes_lose_nothing(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from kernelkit.autotune.cache import Cache
        w = int(sys.argv[1])
        for i in range(40):  # enough appends to trigger compaction while others append
            Cache({str(tmp_path)!r}).put(f"w{{w}}-{{i}}", {{"choice": {{"candidate": "c",
                "config": {{"i": i}}, "source": "measured"}}}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(w)]) for w in range(4)]
    assert all(p.wait(timeout=180) == 0 for p in procs)
    entries = fresh(tmp_path).entries()
    assert len(entries) == 160 and all(entries[f"w{w}-{i}"]["choice"]["config"] == {"i": i}
                                       for w in range(4) for i in range(40))
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"


def test_writer_merges_with_what_is_on_disk(tmp_path):
    a, b = Cache(tmp_path), Cache(tmp_path)
    a.entries(), b.entries()  # both loaded the (empty) file before either wrote
    a.put("from-a", entry())
    b.put("from-b", entry())
    assert set(fresh(tmp_path).entries()) == {"from-a", "from-b"}


def test_killed_writer_leaves_a_readable_store(tmp_path):
    code = textwrap.dedent(f"""
        from kernelkit.autotune.cache import Cache
        i = 0
        while True:
            Cache({str(tmp_path)!r}).put(f"k{{i}}", {{"choice": {{"candidate": "c", "config": {{}},
                "source": "measured"}}, "pad": "x" * 5000}})
            i += 1
    """)
    p = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
            not (tmp_path / FILENAME).exists() or (tmp_path / FILENAME).stat().st_size < 200_000):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # a partial last line is allowed
        survivors = fresh(tmp_path).entries()
    assert len(survivors) >= 20
    assert all(survivors[f"k{i}"]["pad"] == "x" * 5000 for i in range(len(survivors) - 1))
    c = fresh(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)
        c.put("after", entry())
    assert fresh(tmp_path).get("after") == entry()  # the next write is not glued to a partial line


def test_truncated_file_salvaged(tmp_path):
    c = Cache(tmp_path)
    for k in ("a", "b", "c"):
        c.put(k, entry(median=0.5))
    path = tmp_path / FILENAME
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # cut inside the last entry's line
    with pytest.warns(CacheWarning, match="damaged") as record:
        got = fresh(tmp_path).entries()
    assert set(got) == {"a", "b"} and got["a"] == entry(median=0.5)
    assert len([w for w in record if "damaged" in str(w.message)]) == 1
    lines = text.splitlines()
    lines[2] = lines[2][:10] + "\x00garbage" + lines[2][10:]  # damage in the middle
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(CacheWarning, match="damaged"):
        got = fresh(tmp_path).entries()
    assert len(got) == 2 and "c" in got


@pytest.mark.parametrize("content", ["{not json", "", '{"header": 1}', "[1, 2]",
                                     '{"header": {}, "entries": []}'])
def test_damaged_old_file_is_set_aside_and_never_deleted(tmp_path, content):
    (tmp_path / LEGACY_FILENAME).write_text(content)
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="set aside"):
        assert c.entries() == {}
    assert (tmp_path / f"{LEGACY_FILENAME}.unreadable.bak").read_text() == content
    c.put("k", entry())
    assert fresh(tmp_path).get("k") == entry()


def test_foreign_fingerprint_kept_not_used_never_wiped(tmp_path):
    fid = write_foreign_lines(tmp_path / FILENAME, ["k", "other"])
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="machine fingerprint") as record:
        assert c.get("k") is None
        assert c.get("k") is None
    assert len(record) == 1
    c.put("k", entry())  # this machine's own entry for the same key
    for i in range(60):  # enough writes to compact the file
        c.put(f"mine-{i}", entry())
    with pytest.warns(CacheWarning, match="machine fingerprint"):
        again = fresh(tmp_path)
        assert again.get("k") == entry()
        assert again.records()[(fid, "k")]["choice"]["candidate"] == "cupy-cuda"
        assert again.fingerprints()[fid]["gpu"] == "NVIDIA Imaginary 9000"
    assert len((tmp_path / FILENAME).read_text().splitlines()) < 100  # compacted


def test_old_schema_migrated(tmp_path):
    """A schema-1 file (one JSON document) is migrated entry by entry, each under the fingerprint
    its header named, and the old file is kept as a named backup."""
    old = {"header": {"schema": 1, "fingerprint": fingerprint()},
           "entries": {"mine": entry(), "also-mine": entry(median=2.0)}}
    (tmp_path / LEGACY_FILENAME).write_text(json.dumps(old))
    assert fresh(tmp_path).entries() == old["entries"]
    assert json.loads((tmp_path / f"{LEGACY_FILENAME}.schema1.bak").read_text()) == old
    assert not (tmp_path / LEGACY_FILENAME).exists()
    assert fresh(tmp_path).entries() == old["entries"]  # migrated once, read from the new file
    foreign = {"header": {"schema": 1, "fingerprint": foreign_fingerprint()},
               "entries": {"theirs": entry()}}
    (tmp_path / LEGACY_FILENAME).write_text(json.dumps(foreign))
    with pytest.warns(CacheWarning, match="machine fingerprint"):
        c = fresh(tmp_path)
        assert c.get("theirs") is None
        assert (fingerprint_id(foreign_fingerprint()), "theirs") in c.records()


def test_unknown_schema_is_set_aside(tmp_path):
    newer = {"header": {"schema": SCHEMA + 100, "fingerprint": fingerprint()},
             "entries": {"k": entry()}}
    (tmp_path / LEGACY_FILENAME).write_text(json.dumps(newer))
    with pytest.warns(CacheWarning, match="schema"):
        assert fresh(tmp_path).get("k") is None
    assert json.loads((tmp_path / f"{LEGACY_FILENAME}.unreadable.bak").read_text()) == newer


def test_unreadable_file_is_not_fatal(tmp_path):
    (tmp_path / FILENAME).mkdir()  # a directory where the file should be
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        c = Cache(tmp_path)
        assert c.entries() == {}
        c.put("k", entry())  # cannot append either: kept in memory
        assert c.get("k") == entry()
    assert any(issubclass(x.category, CacheWarning) for x in w)


def test_missing_directory_is_created(tmp_path):
    c = Cache(tmp_path / "does" / "not" / "exist")
    assert c.entries() == {}
    c.put("k", entry())
    assert fresh(tmp_path / "does" / "not" / "exist").get("k") == entry()


def test_uncreatable_directory_tunes_in_memory_with_one_warning(tmp_path):
    (tmp_path / "a-file").write_text("")
    c = Cache(tmp_path / "a-file" / "cache")  # cannot be a directory
    with pytest.warns(CacheWarning, match="in memory") as record:
        c.put("k1", entry())
        c.put("k2", entry())
    assert len(record) == 1
    assert c.get("k1") == entry() and set(c.entries()) == {"k1", "k2"}


def test_a_cache_warning_from_an_op_call_points_at_the_callers_line(tmp_path, monkeypatch):
    """A cache that cannot be written warns once, at the line of the user's call: it pointed
    into kernelkit (a fixed stacklevel), where a `-W error` traceback's last user frame and a
    filter by module are no help. So do a bad knob's warning and a damaged import's."""
    import numpy as np

    import kernelkit
    from kernelkit import envvars

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path / "a-file" / "cache"))
    a = np.random.default_rng(0).standard_normal((37, 29), dtype=np.float32)
    with kernelkit.use(tune="measure"), pytest.warns(CacheWarning, match="in memory") as record:
        kernelkit.matmul(a, a.T)  # (a size of its own: measured, then stored)
    assert [w.filename for w in record] == [__file__], [(w.filename, w.lineno) for w in record]
    monkeypatch.setattr(envvars, "_WARNED_ENV", set())
    monkeypatch.setenv("KERNELKIT_TEST_KNOB", "many")
    with pytest.warns(UserWarning, match="KERNELKIT_TEST_KNOB") as record:
        envvars.env_number("KERNELKIT_TEST_KNOB", 3, 1, 8)
    assert [w.filename for w in record] == [__file__]
    export = tmp_path / "export.json"
    export.write_text(json.dumps({"header": {"schema": SCHEMA, "fingerprints": {"f": {}}},
                                  "entries": [{"fp": "f", "key": "k", "entry": {"x": 1}}]}))
    with pytest.warns(CacheWarning, match="damaged") as record:
        read_export(export)
    assert [w.filename for w in record] == [__file__]


_READ_ONLY_CHILD = textwrap.dedent("""
    import json, sys, warnings
    from kernelkit.autotune import tuner
    from kernelkit.autotune.cache import Cache, CacheWarning
    from kernelkit.core import Candidate, Problem
    from kernelkit.settings import Settings

    d = sys.argv[1]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        before = Cache(d).get("seen")
        cands = [Candidate("fake", name, "cpu", "numpy", lambda p: None, lambda p: [{}],
                           lambda p, c, v=v: (lambda: v), vendor=name == "slow")
                 for name, v in (("slow", 1), ("fast", 1))]
        p = Problem("fake", ((64, 64),), "float32", "N", "numpy", "cpu", flops=1.0)
        choice = tuner.choose(p, cands, lambda c, cfg: c.launcher(p, cfg),
                              lambda out: None if out == 1 else "wrong", Settings(cache_dir=d))
        again = tuner.choose(p, cands, lambda c, cfg: c.launcher(p, cfg),
                             lambda out: None, Settings(cache_dir=d))
    print(json.dumps({"before": before, "choice": choice.candidate, "again": again.source,
                      "warnings": [str(x.message) for x in w if x.category is CacheWarning]}))
""")


def test_read_only_directory_tunes_in_memory(tmp_path):
    """A cache directory the user cannot write: the seeded entry is still read, tuning works in
    memory, one warning, nothing written. As root (CI), the child runs without the capabilities
    that let root ignore file modes (setpriv), so the directory really is read-only to it."""
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"kk-ro-{os.getpid()}"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    try:
        Cache(d).put("seen", entry())
        before = (d / FILENAME).read_bytes()
        os.chmod(d, 0o555)
        os.chmod(d / FILENAME, 0o444)
        cmd = [sys.executable, "-c", _READ_ONLY_CHILD, str(d)]
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.fail("running as root without setpriv: cannot make a read-only directory")
            cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["before"] == entry()
        assert got["choice"] in ("slow-cpu", "fast-cpu") and got["again"] != "cache"
        assert len(got["warnings"]) == 1 and "in memory" in got["warnings"][0]
        assert (d / FILENAME).read_bytes() == before
    finally:
        os.chmod(d, 0o755)
        shutil.rmtree(d, ignore_errors=True)


def test_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        c = Cache(tmp_path)
        c.put("k", entry())
        assert (tmp_path / FILENAME).stat().st_mode & 0o777 == 0o664
        for i in range(60):  # through a compaction, which rewrites the file
            c.put(f"k{i}", entry())
        assert (tmp_path / FILENAME).stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)


def test_export_carries_the_validators(tmp_path):
    fid = write_foreign_lines(tmp_path / FILENAME, ["theirs"])
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="machine fingerprint"):  # the foreign entry, once
        c.put("mine", entry())
        doc = c.export()
    assert doc["header"]["fingerprints"][fid]["gpu"] == "NVIDIA Imaginary 9000"
    assert doc["header"]["fingerprints"][c.fp] == fingerprint()
    (tmp_path / "x.json").write_text(json.dumps(doc))
    records, fps = read_export(tmp_path / "x.json")
    assert records[(c.fp, "mine")] == entry() and records[(fid, "theirs")]["choice"]
    assert set(fps) == {fid, c.fp}


def test_clear_forgets_this_machine_only(tmp_path):
    fid = write_foreign_lines(tmp_path / FILENAME, ["theirs"])
    with pytest.warns(CacheWarning):
        c = Cache(tmp_path)
        c.put("k", entry())
        c.clear()
        assert c.entries() == {} and fresh(tmp_path).entries() == {}
        assert (fid, "theirs") in fresh(tmp_path).records()


def test_import_never_replaces_a_newer_measurement_with_an_older_one(tmp_path):
    # `cache import` overwrote this cache's newer entry with the file's older one, where `cache
    # merge` kept the newer: one rule now (cache.newer_than)
    c = Cache(tmp_path)
    c.put("k", entry(median=2e-3, when="2026-12-04T12:00:00+00:00"))
    older = {(c.fp, "k"): entry(median=9e-3, when="2026-12-01T00:00:00+00:00")}
    newer = {(c.fp, "k"): entry(median=1e-3, when="2026-12-05T00:00:00+00:00"),
             (c.fp, "new"): entry(median=5e-3)}
    assert c.import_records(older, {c.fp: fingerprint()}) == 1
    assert fresh(tmp_path).get("k")["trials"][0]["median"] == 2e-3
    assert c.import_records(newer, {c.fp: fingerprint()}) == 0
    got = fresh(tmp_path)
    assert got.get("k")["trials"][0]["median"] == 1e-3 and got.get("new") is not None


def _compact_by_writing(c: Cache, n: int = 40) -> None:
    """Enough appends of one key for `c` to compact the file (COMPACT_WHEN x its records)."""
    for i in range(n):
        c.put("filler", entry(median=i * 1e-6))


def test_compaction_keeps_another_processs_newer_measurement(tmp_path):
    """Process A holds k from its first read; B measures k again; A's compaction wrote A's memory
    over the file, so a new reader saw A's older entry (and so would B after a restart)."""
    Cache(tmp_path).put("k", entry(median=9e-3, when="2026-12-01T00:00:00+00:00"))
    a = Cache(tmp_path)
    assert a.get("k")["trials"][0]["median"] == 9e-3
    Cache(tmp_path).put("k", entry(median=1e-3, when="2026-12-05T00:00:00+00:00"))
    _compact_by_writing(a)
    assert len((tmp_path / FILENAME).read_text().splitlines()) < 20  # compacted
    assert fresh(tmp_path).get("k")["trials"][0]["median"] == 1e-3
    assert a.get("k")["trials"][0]["median"] == 1e-3  # A now holds what the file holds


def test_compaction_does_not_undo_a_clear_by_another_process(tmp_path):
    """`kernelkit cache clear` while a process holds entries: that process's next compaction wrote
    them all back."""
    seed = Cache(tmp_path)
    for i in range(10):
        seed.put(f"k{i}", entry())
    a = Cache(tmp_path)
    assert len(a.entries()) == 10
    Cache(tmp_path).clear()  # (the CLI's clear: another process)
    _compact_by_writing(a)
    assert set(fresh(tmp_path).entries()) == {"filler"}


def test_clear_and_import_say_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    """`kernelkit cache clear` / `import` printed success and exited 0 on a read-only cache."""
    from kernelkit import cli

    Cache(tmp_path).put("k", entry())
    other = tmp_path / "other"  # (entries the cache does not hold: its own need no write)
    Cache(other).put("k2", entry())
    export = tmp_path / "e.json"
    export.write_text(json.dumps(Cache(other).export()))

    def refuse(*a, **k):
        raise PermissionError(13, "Read-only file system")

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(Cache, "_rewrite", refuse)  # clear's write
    with pytest.warns(CacheWarning, match="cannot write"):
        assert cli.main(["cache", "clear"]) == 2
    monkeypatch.setattr("kernelkit.autotune.cache.FileLock", refuse)  # import's append
    from kernelkit.autotune import cache as cache_mod

    cache_mod._caches.clear()
    with pytest.warns(CacheWarning, match="cannot write"):
        assert cli.main(["cache", "import", str(export)]) == 2


def test_a_compaction_whose_read_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    """A file that exists but cannot be read at compaction (EIO, a stale NFS handle) was read as
    empty and rewritten as such: every entry, other machines' too, was lost."""
    seed = Cache(tmp_path)
    for i in range(10):
        seed.put(f"k{i}", entry())
    a = Cache(tmp_path)
    a.entries()
    real_open = open

    def failing_open(path, *args, **kwargs):
        if str(path) == str(tmp_path / FILENAME) and "r" in (args[0] if args else kwargs.get(
                "mode", "r")) and "+" not in (args[0] if args else ""):
            raise OSError(5, "Input/output error")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", failing_open)
    _compact_by_writing(a)
    monkeypatch.undo()
    assert set(fresh(tmp_path).entries()) == {f"k{i}" for i in range(10)} | {"filler"}


def test_a_migrated_old_file_never_wins_over_the_lines_files_own_entry(tmp_path):
    """The schema-1 file's entries were appended after the lines file's own, so a reader saw the
    old file's entry for a key both held (the migrating process, the lines file's)."""
    c = Cache(tmp_path)
    c.put("both", entry(median=1e-3, when="2026-12-05T00:00:00+00:00"))
    (tmp_path / LEGACY_FILENAME).write_text(json.dumps({
        "header": {"schema": 1, "fingerprint": fingerprint()},
        "entries": {"both": entry(median=9e-3, when="2026-01-01T00:00:00+00:00"),
                    "old-only": entry(median=5e-3)}}))
    migrating = Cache(tmp_path)
    assert migrating.get("both")["trials"][0]["median"] == 1e-3
    got = fresh(tmp_path)
    assert got.get("both")["trials"][0]["median"] == 1e-3 and got.get("old-only") is not None


def test_entries_and_export_read_while_another_thread_stores(tmp_path):
    """The cost model reads entries() on a tuning miss while another serving thread's
    measurement is stored: iterating the live records raised "dictionary changed size"."""
    import threading

    c = Cache(tmp_path)
    entry = {"choice": {"candidate": "numpy-cpu", "config": {}}, "trials": []}
    c.update({f"seed{i}": entry for i in range(2000)})
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                c.entries()
                c.export()
            except Exception as exc:  # noqa: BLE001 - the test's finding
                errors.append(repr(exc))
                stop.set()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(300):
            if stop.is_set():
                break
            c.put(f"k{i}", entry)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert len(c.entries()) == 2300


def test_another_schemas_lines_survive_compaction_and_clear(tmp_path):
    """Lines of another schema (another kernelkit version sharing the directory) were read as
    damaged and dropped by the next compaction or `cache clear`, with no backup; they are kept as
    they are, and not used."""
    path = tmp_path / FILENAME
    theirs = [json.dumps({"schema": SCHEMA + 1, "fp": "future", "key": f"k{i}",
                          "entry": {"choice": {"candidate": "x"}, "new_field": i}}, sort_keys=True)
              for i in range(40)]
    path.write_text("\n".join(theirs) + "\n")
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="40 entries of another cache schema"):
        assert c.get("k0") is None
    _compact_by_writing(c, 200)
    lines = path.read_text().splitlines()
    assert len(lines) < 100  # compacted (240 lines written)
    assert [ln for ln in lines if f'"schema": {SCHEMA + 1}' in ln] == theirs
    with pytest.warns(CacheWarning, match="another cache schema"):
        fresh(tmp_path).clear()
    assert [ln for ln in path.read_text().splitlines() if f'"schema": {SCHEMA + 1}' in ln] == theirs
    with pytest.warns(CacheWarning, match="another cache schema"):
        assert fresh(tmp_path).entries() == {}


def test_an_old_files_damaged_entries_are_left_out_of_its_migration(tmp_path):
    # an entry without a config made the migrating process's call of its size raise KeyError
    old = {"header": {"schema": 1, "fingerprint": fingerprint()},
           "entries": {"good": entry(), "no-config": {"choice": {"candidate": "numpy-cpu"}}}}
    (tmp_path / LEGACY_FILENAME).write_text(json.dumps(old))
    assert fresh(tmp_path).entries() == {"good": entry()}


def test_a_deeply_nested_line_costs_only_itself(tmp_path):
    # json.loads raises RecursionError there, which broke every op and the CLI
    c = Cache(tmp_path)
    c.put("k", entry())
    with open(tmp_path / FILENAME, "a") as f:
        f.write("[" * 100_000 + "\n")
    with pytest.warns(CacheWarning, match="1 damaged line"):
        assert fresh(tmp_path).get("k") == entry()
    (tmp_path / "x.json").write_text("[" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply"):
        read_export(tmp_path / "x.json")


def test_an_export_whose_fingerprint_is_not_an_object_is_not_an_export(tmp_path):
    # "dictionary update sequence element #0 has length 1; 2 is required", naming no file
    bad = tmp_path / "fpstr.json"
    bad.write_text(json.dumps({"header": {"schema": SCHEMA, "fingerprints": {"abc": "x"}},
                               "entries": []}))
    with pytest.raises(ValueError, match="fpstr.json: not a kernelkit cache export"):
        read_export(bad)


def test_a_rewrite_removes_a_killed_writers_temporary_file(tmp_path):
    # a writer killed while compacting left its .tmp (megabytes) for good
    stale = tmp_path / f".{FILENAME}.99999999.tmp"
    stale.write_text("half a compaction")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    live = tmp_path / f".{FILENAME}.99999998.tmp"  # (another host's rewrite, under a lock this
    live.write_text("being written")               # host does not see: left alone)
    _compact_by_writing(Cache(tmp_path))
    assert not stale.exists() and live.exists()
    assert fresh(tmp_path).get("filler") is not None


def test_a_symlinked_cache_file_stays_a_link_and_keeps_its_mode_through_rewrites(tmp_path):
    """`cache clear` and a compaction replaced a cache file that is a symbolic link (a shared or
    mounted file) with a plain file, which the shared file then never saw again; and each
    rewrite gave the file this user's umask, so a group-writable shared file stopped being
    writable by the group (a user hunt)."""
    shared = tmp_path / "shared" / "team.jsonl"
    shared.parent.mkdir()
    Cache(shared.parent).put("theirs", entry())
    (shared.parent / FILENAME).rename(shared)
    os.chmod(shared, 0o664)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / FILENAME).symlink_to(shared)
    old = os.umask(0o077)
    try:
        c = Cache(mine)
        for i in range(60):  # through a compaction
            c.put(f"k{i}", entry())
        assert (mine / FILENAME).is_symlink() and shared.stat().st_mode & 0o777 == 0o664
        c.clear()
        assert (mine / FILENAME).is_symlink() and shared.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    assert fresh(mine).entries() == {} and "theirs" not in shared.read_text()
    assert not list(shared.parent.glob(".*.tmp")) and not list(mine.glob(".*.tmp"))


def test_rewrites_in_two_containers_with_one_pid_take_different_temporary_files(tmp_path,
                                                                              monkeypatch):
    """The rewrite's temporary file was named by the pid: two containers sharing the directory
    (each process pid 1) where locks are not shared wrote into one file."""
    names = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: names.append(Path(a).name) or real(a, b))
    monkeypatch.setattr(os, "getpid", lambda: 1)
    for _ in range(2):
        c = fresh(tmp_path)
        c.put("k", entry())
        c.clear()
    assert len(names) == 2 and names[0] != names[1]
    assert all(n.startswith(f".{FILENAME}.") and n.endswith(".tmp") for n in names)


def test_refresh_reads_what_another_process_wrote_and_only_that(tmp_path, monkeypatch):
    """Each process read the file once, so processes started together on a clean cache each
    measured every size. `refresh` reads the file again where another process wrote it since;
    this process's own appends and compactions are no news (no read)."""
    a = Cache(tmp_path)
    a.put("mine", entry())
    b = fresh(tmp_path)  # (another process)
    b.put("theirs", entry("numba-cpu"))
    assert a.get("theirs") is None
    reads = []
    real = Cache._read_lines
    monkeypatch.setattr(Cache, "_read_lines", lambda self, *x, **k: reads.append(1)
                        or real(self, *x, **k))
    assert a.refresh() and a.get("theirs") == entry("numba-cpu") and a.get("mine") == entry()
    assert not a.refresh() and len(reads) == 1
    for _ in range(60):  # (one size again and again: through a compaction of its own)
        a.put("again", entry())
    compactions = len(reads) - 1
    assert compactions >= 1 and not a.refresh() and len(reads) == 1 + compactions
    b.put("later", entry())
    assert a.refresh() and a.get("later") == entry()


def test_refresh_reads_only_the_lines_appended_since(tmp_path, monkeypatch):
    """A line another process appended made every other process read the whole file again (5 s
    at 10^5 records, and DataLoader workers or ranks that tune append often). Only what was
    appended is read; a file another process rewrote (a compaction, `cache clear`) is read whole,
    even where the new file is as long and has the old one's inode (a freed inode's number is
    soon given to a new file: here, the file rewritten in place)."""
    a = Cache(tmp_path)
    for i in range(40):
        a.put(f"k{i}", entry())
    b = fresh(tmp_path)  # (another process)
    b.put("theirs", entry("numba-cpu"))
    starts = []
    real = Cache._read_lines
    monkeypatch.setattr(Cache, "_read_lines", lambda self, path, *x, **k:
                        starts.append(k.get("start", 0)) or real(self, path, *x, **k))
    size_before = (tmp_path / FILENAME).stat().st_size - len(
        (tmp_path / FILENAME).read_bytes().splitlines(keepends=True)[-1])
    assert a.refresh() and a.get("theirs") == entry("numba-cpu") and a.get("k7") == entry()
    assert starts == [size_before]  # the appended line alone
    b.put("more", entry("numba-cpu"))
    assert a.refresh() and a.get("more") == entry("numba-cpu") and starts[-1] > size_before
    # another process rewrites the file in place: same inode, at least as long, other lines
    path = tmp_path / FILENAME
    lines = path.read_text().splitlines()
    head = [ln for ln in lines if '"fingerprint"' in ln]
    rows = [json.loads(ln) for ln in lines if '"fingerprint"' not in ln]
    for r in rows:
        r["entry"] = entry("numba-cpu", median=2e-3)
    with open(path, "r+") as f:  # (write_text would truncate first: the same inode either way)
        f.write("\n".join(head + [json.dumps(r) for r in reversed(rows)]) + "\n")
    starts.clear()
    assert a.refresh() and starts == [0]
    assert a.get("k7") == entry("numba-cpu", median=2e-3)


def test_a_line_being_written_is_read_once_whole_and_not_called_damaged(tmp_path):
    a = Cache(tmp_path)
    a.put("mine", entry())
    line = json.dumps({"schema": SCHEMA, "fp": a.fp, "key": "theirs", "entry": entry("x")})
    path = tmp_path / FILENAME
    with open(path, "a") as f:  # another process's append, caught half written
        f.write(line[:30])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert a.refresh() and a.get("theirs") is None
        with open(path, "a") as f:
            f.write(line[30:] + "\n")
        assert a.refresh() and a.get("theirs") == entry("x")
        a.put("after", entry())
    assert fresh(tmp_path).get("after") == entry() and fresh(tmp_path).get("theirs") == entry("x")


def _fam(name, family, median=1e-3):
    return {**entry(name, median), "problem": {"family": family, "flops": 1.0, "nbytes": 1.0}}


def test_a_file_replaced_between_the_check_and_the_read_is_read_whole(tmp_path, monkeypatch):
    """`refresh` checked the mark on one open of the file and read from it on another: another
    process's compaction in between made it read the new file from the old file's offset, mid-
    line (a "damaged line" warning, which is given once and then hides real damage) and skip
    the new file's lines before it (a review)."""
    a = Cache(tmp_path)
    for i in range(30):
        a.put(f"k{i:02d}", entry())
    for i in range(10):
        a.put(f"k{i:02d}", entry())  # (superseded lines: a compaction drops them)
    fresh(tmp_path).put("theirs", entry("numba-cpu"))
    real = Cache._continues

    def racing(self, seen):
        ok = real(self, seen)
        if self is a:  # another process compacts right here, and appends
            monkeypatch.setattr(Cache, "_continues", real)
            c = fresh(tmp_path)
            c.records()
            with c._lock():
                c._compact()
            c.put("later", entry("numba-cpu"))
        return ok

    monkeypatch.setattr(Cache, "_continues", racing)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert a.refresh()
    assert a.get("theirs") == entry("numba-cpu") and a.get("later") == entry("numba-cpu")
    assert a.get("k00") == entry()


def test_a_file_rewritten_in_place_after_a_blank_last_line_is_read_whole(tmp_path):
    """The mark kept the last line's bytes only: after a blank last line that was one newline,
    and a file rewritten in place (same inode) passed the check, its rewritten lines never read
    (a review)."""
    path = tmp_path / FILENAME
    w = Cache(tmp_path)
    for i in range(40):
        w.put(f"k{i}", entry())
    with open(path, "a") as f:
        f.write("\n")
    a = fresh(tmp_path)
    a.records()
    lines = path.read_text().splitlines()
    head = [ln for ln in lines if '"fingerprint"' in ln]
    rows = [json.loads(ln) for ln in lines if ln.strip() and '"fingerprint"' not in ln]
    for r in rows:
        r["entry"] = entry("numba-cpu", median=2e-3)
    with open(path, "r+") as f:
        f.write("\n".join(head + [json.dumps(r, sort_keys=True) for r in rows]) + "\n\n")
    fresh(tmp_path).put("later", entry("numba-cpu"))
    assert a.refresh() and a.get("later") == entry("numba-cpu")
    assert a.get("k7") == entry("numba-cpu", median=2e-3)


def test_the_line_count_for_compaction_stays_the_files_with_two_writers(tmp_path):
    """A partial refresh read this process's own appends again and counted them twice, so the
    file was compacted at 1.5x its records instead of 2x (a review)."""
    a, b = Cache(tmp_path), fresh(tmp_path)
    for i in range(20):
        b.put(f"b{i}", entry())
        a.put(f"a{i}", entry())
        a.refresh()
    assert a._lines == len((tmp_path / FILENAME).read_text().splitlines())


def test_the_family_index_follows_refreshes_clears_and_moved_keys(tmp_path):
    """What `refresh` reads joins the family index; a clear or a compaction rebuilds it; a key
    whose entry now names another family (or none) leaves its old one (a review)."""
    a = Cache(tmp_path)
    a.put("k1", _fam("torch-cpu", "F"))
    assert set(a.family_entries("F")) == {"k1"}  # (the index is built)
    fresh(tmp_path).put("k2", _fam("numba-cpu", "F"))
    assert a.refresh() and set(a.family_entries("F")) == {"k1", "k2"}
    a.put("k1", _fam("torch-cpu", "G"))
    assert set(a.family_entries("F")) == {"k2"} and set(a.family_entries("G")) == {"k1"}
    a.put("k2", entry())  # (no family)
    assert a.family_entries("F") == {}
    a.clear()
    assert a.family_entries("G") == {}


def test_a_failed_compaction_leaves_the_appends_going(tmp_path, monkeypatch):
    """A compaction that could not write (a symlinked file in a folder this user cannot write)
    turned the whole process's tuning in-memory: later measurements never reached the file,
    which then made every later process do the same at its first append (a review)."""
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Cache, "_rewrite", refuse)
    c = Cache(tmp_path)
    with pytest.warns(CacheWarning, match="cannot compact"):
        _compact_by_writing(c)
    c.put("after", entry())
    assert c.writable and fresh(tmp_path).get("after") == entry()


def test_writers_through_two_links_to_one_file_share_its_lock(tmp_path, monkeypatch):
    """Each link's folder had its own lock, so one process's compaction dropped what another,
    writing through another link, appended meanwhile (a review)."""
    import threading

    shared = tmp_path / "shared" / "team.jsonl"
    shared.parent.mkdir()
    shared.touch()
    links = []
    for who in ("a", "b"):
        (tmp_path / who).mkdir()
        (tmp_path / who / FILENAME).symlink_to(shared)
        links.append(tmp_path / who)
    a, b = Cache(links[0]), Cache(links[1])
    a.records()
    b.records()
    real = Cache._read_lines
    writer = []

    def reading(self, path, *x, **k):
        got = real(self, path, *x, **k)
        if self is a and k.get("strict") and not writer:  # (a's compaction read the file)
            writer.append(threading.Thread(target=b.put, args=("theirs", entry("numba-cpu"))))
            writer[0].start()
            writer[0].join(0.5)  # (a shared lock holds b here until a's rewrite is done)
        return got

    monkeypatch.setattr(Cache, "_read_lines", reading)
    _compact_by_writing(a)
    writer[0].join(30)
    assert fresh(links[1]).get("theirs") == entry("numba-cpu")
    assert (links[0] / FILENAME).is_symlink() and (links[1] / FILENAME).is_symlink()


def test_reading_the_file_leaves_pythons_collector_as_it_found_it(tmp_path, monkeypatch):
    """The read pauses the cyclic collector (its passes were most of a large file's read): it is
    on again afterwards, after a read that raised too, and stays off where the program had
    turned it off."""
    import gc

    Cache(tmp_path).put("k", entry())
    assert gc.isenabled()
    seen = []
    real = json.loads
    monkeypatch.setattr(json, "loads", lambda *a, **k: seen.append(gc.isenabled())
                        or real(*a, **k))
    assert fresh(tmp_path).get("k") == entry() and seen and not any(seen)
    assert gc.isenabled()
    with pytest.raises(OSError):
        monkeypatch.setattr(json, "loads", lambda *a, **k: (_ for _ in ()).throw(OSError(5)))
        fresh(tmp_path)._read_lines(tmp_path / FILENAME, strict=True)
    assert gc.isenabled()
    gc.disable()
    try:
        monkeypatch.setattr(json, "loads", real)
        fresh(tmp_path).records()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_size_another_process_measured_meanwhile_is_not_measured_again(tmp_path,
                                                                         monkeypatch):
    from kernelkit.autotune import tuner
    from kernelkit.core import Candidate, Problem
    from kernelkit.settings import Settings

    cands = [Candidate("fake", name, "cpu", "numpy", lambda p: None, lambda p: [{}],
                       lambda p, c: (lambda: 1), vendor=name == "slow") for name in ("slow", "fast")]
    measured = []
    real = tuner.measure_all
    monkeypatch.setattr(tuner, "measure_all", lambda *a, **k: measured.append(1) or real(*a, **k))
    s = Settings(cache_dir=str(tmp_path), tune="measure")

    def problem(n):
        return Problem("fake", ((n, n),), "float32", "N", "numpy", "cpu", flops=1.0)

    def decide(n):
        p = problem(n)
        return tuner.decide(p, cands, lambda c, cfg: c.launcher(p, cfg), lambda out: None, s)

    first = decide(32)  # this process reads the file (and measures its first size)
    assert first.choice.source == "measured" and measured == [1]
    fresh(tmp_path).put(tuner.make_key(problem(64), ""), entry("fast-cpu"))  # another process
    d = decide(64)
    assert d.choice == tuner.Choice("fast-cpu", {}, "cache") and measured == [1]
    assert decide(80).choice.source == "measured" and measured == [1, 1]  # (a real miss)


def test_a_warning_from_a_thread_with_no_user_frame_names_kernelkits_line(monkeypatch):
    """A warning raised on a thread whose frames are all kernelkit's (the background compile's,
    started with `_thread`) is attributed to kernelkit's line that raised it: `callsite.warn`
    walked past the stack's end and Python named it "sys:1" (found by a review)."""
    import _thread
    import threading

    from kernelkit import envvars

    monkeypatch.setattr(envvars, "_WARNED_ENV", set())
    done = threading.Event()

    def target():  # (stands for a kernelkit thread: only kernelkit's frames above it)
        try:
            envvars._warn_env("KERNELKIT_TEST_KNOB", "many", "a number", 1)
        finally:
            done.set()

    target.__code__ = target.__code__.replace(co_filename=envvars.__file__)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _thread.start_new_thread(target, ())
        assert done.wait(30)
    assert [w.filename for w in record] == [envvars.__file__], [
        (w.filename, w.lineno) for w in record]


def test_cpus_of_one_model_name_and_other_kinds_have_other_fingerprints():
    """The fingerprint named the CPU by its model name only, which a VM gives as "AMD EPYC" on
    Zen 3, 4 and 5 alike (with and without AVX-512), and an arm64 machine as its architecture:
    an entry tuned on one was used on the others as this machine's (a user hunt)."""
    from kernelkit import devices

    block = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma f16c{extra}\n\n"
             "processor\t: 1\nmodel\t\t: 99\n")
    zen3 = devices.cpu_kind_of(block.format(model=1, extra="").encode())
    zen4 = devices.cpu_kind_of(block.format(model=17, extra=" avx512f avx512_bf16").encode())
    zen4_no512 = devices.cpu_kind_of(block.format(model=17, extra="").encode())
    assert zen3 == "cpu family=25;model=1;sse4_2,avx,avx2,fma,f16c"
    assert len({zen3, zen4, zen4_no512}) == 3
    arm = devices.cpu_kind_of(b"processor\t: 0\nFeatures\t: fp asimd sve bf16\n"
                              b"CPU implementer\t: 0x41\nCPU part\t: 0xd40\n\n")
    assert arm == "CPU implementer=0x41;CPU part=0xd40;asimd,sve,bf16"
    assert fingerprint()["cpu_kind"] == devices.cpu_kind()


@pytest.mark.parametrize("ending", ["\r", "\r\n"])
def test_a_file_whose_lines_end_in_cr_keeps_every_entry(tmp_path, ending):
    """A cache file copied through a tool that ended its lines in a bare CR (or in CRLF) is
    read entry by entry; before, a bare-CR file read as one damaged line and lost them all."""
    c = Cache(tmp_path)
    for k in ("a", "b", "c"):
        c.put(k, entry(median=0.5))
    path = tmp_path / FILENAME
    path.write_bytes(path.read_bytes().replace(b"\n", ending.encode()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # nothing damaged
        d = fresh(tmp_path)
        assert set(d.entries()) == {"a", "b", "c"}
        d.put("d", entry(median=0.25))  # an append after them (LF) is read back too
        assert fresh(tmp_path).entries()["d"] == entry(median=0.25)
        assert set(fresh(tmp_path).entries()) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("field, value", [("key", None), ("key", 3), ("fp", 5), ("fp", None)])
def test_an_entry_whose_key_or_fp_is_not_a_string_is_damaged(tmp_path, field, value):
    """A null key was read as the usable entry "None" (and an fp of 5 as a machine "5"): in an
    export it is left out with the damaged entries' warning, in a cache file it is a damaged
    line (a user hunt)."""
    c = Cache(tmp_path / "c")
    c.put("good", entry())
    data = json.loads(json.dumps(c.export()))
    bad = dict(data["entries"][0], **{field: value})
    data["entries"].append(bad)
    (tmp_path / "e2.json").write_text(json.dumps(data))
    with pytest.warns(CacheWarning, match="left out 1 damaged entry"):
        records, _ = read_export(tmp_path / "e2.json")
    assert [key for _, key in records] == ["good"]
    line = {"schema": SCHEMA, "fp": bad["fp"], "key": bad["key"], "entry": entry()}
    with open(tmp_path / "c" / FILENAME, "a") as f:
        f.write(json.dumps(line) + "\n")
    with pytest.warns(CacheWarning, match="1 damaged line"):
        assert list(fresh(tmp_path / "c").entries()) == ["good"]


def test_an_export_whose_entries_are_not_a_list_is_not_an_export(tmp_path):
    bad = tmp_path / "dict.json"
    bad.write_text(json.dumps({"header": {"schema": SCHEMA, "fingerprints": {}}, "entries": {}}))
    with pytest.raises(ValueError, match="dict.json: not a kernelkit cache export"):
        read_export(bad)
