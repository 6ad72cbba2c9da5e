"""The persistent autotune cache: an append-only JSON-lines file per cache directory.

Each line is one record: an entry (its key, the machine fingerprint it was measured under, and
the entry itself), or the definition of a fingerprint. Validation is per entry: an entry measured
on another machine or with other library versions is kept under its own fingerprint and simply
not used here, never wiped.

Why JSON lines rather than SQLite: a line is the unit of damage. A truncated or partly damaged
file keeps every line that still parses (one warning), a killed writer can only leave a partial
last line, and the file stays readable and diffable by people. Writers take an inter-process file
lock and append (O(1) per measurement), so concurrent tuners lose nothing; the file is compacted
(rewritten atomically, last record per key wins) when superseded lines pile up. The file's mode
follows the umask, like any file the user creates.

The previous format (one JSON document, ``autotune.json``, schema 1) is migrated on first use,
its entries kept under the fingerprint its header named, and the old file set aside as
``autotune.json.schema1.bak``; a file that cannot be read that way is set aside as
``autotune.json.unreadable.bak``. A cache directory that cannot be created or written means
tuning in memory, with one warning.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from filelock import FileLock, Timeout

from .. import callsite, devices

SCHEMA = 2
FILENAME = "autotune.jsonl"
LEGACY_FILENAME = "autotune.json"  # schema 1: {"header": {...}, "entries": {key: entry}}
LOCK_TIMEOUT_S = 60
COMPACT_WHEN = 2.0  # rewrite the file when it holds this many times more lines than live records
STALE_TMP_S = 600.0  # a rewrite's temporary file this old is a killed writer's (a rewrite takes ~1 s)


_MARK_BYTES = 256


class _Mark(NamedTuple):
    """Where a read of the file stopped: the offset after the last whole line read, and that
    line's last bytes. A later read starts there only if those bytes are still there: a file
    compacted or cleared by another process is a new file (another inode, but a freed inode's
    number is soon given to a new file), whose bytes at that offset differ."""

    end: int = 0
    tail: bytes = b""


class _Read(NamedTuple):
    """What `Cache._read_lines` read: the records and fingerprint definitions, the lines, where
    the read stopped (`_Mark`), the file as opened (`Cache._stat`'s tuple; None: no file) and
    whether it read only the lines appended after the given start."""

    records: dict
    fps: dict
    lines: int
    mark: _Mark
    seen: tuple | None
    partial: bool


class CacheWarning(UserWarning):
    """The cache on disk could not be used as it is (damaged, foreign entries, unwritable)."""


@functools.cache
def fingerprint() -> dict[str, Any]:
    """What a measurement depends on: the CPU, the GPU, the driver, and every library's version."""
    gpu = devices.gpu_info()
    return {
        "cpu": devices.cpu_model(),
        # (a VM's model name alone is "AMD EPYC" on Zen 3, 4 and 5: another machine's choices
        # were used here as this one's)
        "cpu_kind": devices.cpu_kind(),
        "cores": os.cpu_count() or 1,
        "gpu": gpu["name"] if gpu else None,
        "capability": gpu["capability"] if gpu else None,
        "cuda": gpu["cuda"] if gpu else None,
        "versions": devices.versions(),
    }


def fingerprint_id(fp: dict[str, Any]) -> str:
    """A short stable name of a fingerprint (what each entry line carries)."""
    text = json.dumps(fp, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def header() -> dict[str, Any]:
    """The validators of this machine, as the export files' header names them."""
    return {"schema": SCHEMA, "fingerprint": fingerprint()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Cache:
    """Entries keyed by `autotune.key.make_key`; each entry is a JSON object (see tuner.py).

    `entries()` and `get()` see this machine's entries; `records()` every record of the file,
    foreign ones included (for export).
    """

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.path = self.dir / FILENAME
        self.legacy_path = self.dir / LEGACY_FILENAME
        self._fp: str | None = None  # this machine's fingerprint id, worked out when first needed
        self._records: dict[tuple[str, str], dict] | None = None  # (fp, key) -> entry
        self._fingerprints: dict[str, dict] = {}
        self._lines = 0  # lines in the file when last read (to decide on compaction)
        self._fps_on_disk: set[str] = set()  # fingerprints whose definition the file holds
        self._other_schema: list[str] = []  # the file's lines of another schema, kept verbatim
        self._in_memory = False  # the directory cannot be written: tune in memory
        self._seen: tuple | None = None  # the file as last read or written here (`_stat`)
        self._mark = _Mark()  # where the last read or write here left the file (`_Mark`)
        # this machine's entries by problem family, key -> entry (`family_entries`); None: not
        # built since the records were last replaced
        self._families: dict[str, dict[str, dict]] | None = None
        self._families_of: dict | None = None  # the records it was built from
        self._family_of: dict[str, str] = {}  # key -> the family the index holds it under
        self._compactable = True  # False: a rewrite failed here, or no shared lock (`_lock`)
        self._reread = 0  # lines appended here after the mark: the next partial read's again
        self._mutex = threading.RLock()
        self._warned: set[str] = set()

    # -- warnings, once each -----------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            # (at the user's line: a fixed stacklevel pointed into kernelkit, where a filter by
            # module or a `-W error` traceback's last user frame is no help)
            callsite.warn(f"kernelkit: {message}", CacheWarning)

    def unusable(self, key: str, why: str) -> None:
        """Say (once per cache) that the entry for `key` cannot be used here, and why; the tuner
        then treats it as a miss (a measuring mode measures it again)."""
        self._warn("unusable", f"the autotune cache {self.path} has an entry this build cannot "
                   f"run ({key}: {why}); treated as a miss")

    # -- reading -------------------------------------------------------------------------------
    def _read_lines(self, path: Path, strict: bool = False, start: int = 0,
                    tail: bytes = b"") -> _Read:
        """Every record of a JSON-lines file, or (`refresh`) only those after byte `start`
        where the bytes before it are still `tail` (a `_Mark`'s; checked on the descriptor that
        is read: a file another process replaced in between is read whole). A line another
        process appended re-read the whole file, 5 s at 10^5 records. Damaged lines are skipped
        with one warning. A last line without its newline is kept if it parses, and read again
        by the next partial read (a write may have been in progress), which does not count it as
        damaged. A file that exists but cannot be read gives nothing (one warning), or raises
        with `strict` (a rewrite must not replace what it could not read). The records of
        another schema (another kernelkit version sharing the directory) are not read but kept
        as they are, in `self._other_schema`, for `_rewrite` to write back: a compaction or
        `cache clear` dropped them as damaged."""
        records: dict[tuple[str, str], dict] = {}
        fps: dict[str, dict] = {}
        others: list[str] = []
        bad = lines = 0
        # Python's cyclic collector paused while the records are parsed: JSON makes no cycles,
        # and its passes over the growing heap were 55-60% of reading 10^5 records (4.2-4.7 s
        # against 1.8 paused, 2-vCPU Zen 4; `bench/probes/cache_refresh_probe.py`)
        collecting = gc.isenabled()
        gc.disable()
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                seen = (st.st_ino, st.st_size, st.st_mtime_ns)
                if start and (not tail or start < len(tail) or st.st_size < start
                              or _bytes_at(f, start - len(tail), len(tail)) != tail):
                    start = 0
                f.seek(start)
                end = start
                for raw, whole in _records(f):
                    end += len(raw) if whole else 0
                    lines += whole or not start  # (a partial read counts whole lines only)
                    line = raw.decode("utf-8", errors="replace")
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                        if "fingerprint" in rec:
                            fps[_text(rec["fp"])] = dict(rec["fingerprint"])
                        elif rec.get("schema", SCHEMA) != SCHEMA:
                            others.append(line.strip())
                        else:
                            entry = rec["entry"]
                            if entry_error(entry):
                                raise ValueError("not an entry of this schema")
                            records[(_text(rec["fp"]), _text(rec["key"]))] = entry
                    # (RecursionError: a line of deeply nested brackets)
                    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                        bad += whole or not start  # (a refresh: may be a write in progress)
                mark = _mark_at(f, end)
        except (FileNotFoundError, NotADirectoryError):  # nothing cached there (yet)
            if not start:
                self._other_schema = []
            return _Read({}, {}, 0, _Mark(), None, bool(start))
        except OSError as exc:
            if strict:
                raise
            self._warn("unreadable", f"cannot read the autotune cache {path}: {exc}; tuning "
                       "without it")
            return _Read({}, {}, 0, _Mark(), None, False)
        finally:
            if collecting:
                gc.enable()
        if start:
            self._other_schema += others
        else:
            self._other_schema = others
        if bad:
            self._warn("damaged", f"the autotune cache {path} has {bad} damaged line(s) of "
                       f"{lines}; kept the {len(records)} entries that could be read")
        if others:
            self._warn("other-schema", f"the autotune cache {path} holds {len(others)} entries "
                       f"of another cache schema (another kernelkit version): kept, not used")
        return _Read(records, fps, lines, mark, seen, bool(start))

    def _load(self) -> None:
        # (the file as opened, before the read: a line appended meanwhile is read again later)
        records, fps, lines, self._mark, seen, _ = self._read_lines(self.path)
        self._lines, self._fps_on_disk, self._seen = lines, set(fps), seen
        if self.legacy_path.exists():
            legacy = self._migrate_legacy(records)
            for (fp, key), entry in legacy[0].items():
                records.setdefault((fp, key), entry)
            fps.update(legacy[1])
        self._records, self._fingerprints = records, fps
        foreign = sum(1 for fp, _ in records if fp != self.fp)
        if foreign:
            names = {(fps.get(fp) or {}).get("gpu") for fp, _ in records if fp != self.fp}
            self._warn("foreign", f"the autotune cache {self.path} holds {foreign} entries made "
                       f"with another machine fingerprint (other CPU, GPU {sorted(map(str, names))}"
                       ", driver or library versions): kept, not used here")

    def _migrate_legacy(self, have: dict[tuple[str, str], dict]
                        ) -> tuple[dict[tuple[str, str], dict], dict[str, dict]]:
        """Read the schema-1 file, append those of its entries the lines file does not hold
        (`have`: appended after them, an old entry would win over the file's own) under the
        fingerprint its header named, and set it aside as a named backup. Never deletes
        anything."""
        try:
            data = json.loads(self.legacy_path.read_text())
            head, entries = data["header"], data["entries"]
            if not isinstance(entries, dict) or not isinstance(head, dict):
                raise TypeError("entries is not an object")
            if head.get("schema") != 1:
                raise ValueError(f"unknown schema {head.get('schema')!r}")
            fp = dict(head["fingerprint"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            why = "schema" if isinstance(exc, ValueError) and "schema" in str(exc) else "damaged"
            backup = self._set_aside("unreadable")
            self._warn(f"legacy-{why}",
                       f"the autotune cache {self.legacy_path} could not be read ({exc}: "
                       f"{why}); set aside as {backup}, starting without it")
            return {}, {}
        fid = fingerprint_id(fp)
        # (each entry checked as any reader's: one without a config made its size raise
        # KeyError in the migrating process)
        records = {(fid, str(k)): e for k, e in entries.items()
                   if entry_error(e) is None and (fid, str(k)) not in have}
        if self._append(records, {fid: fp}):
            self._set_aside("schema1")
        return records, {fid: fp}

    def _set_aside(self, tag: str) -> Path | None:
        backup = self.legacy_path.with_name(f"{LEGACY_FILENAME}.{tag}.bak")
        try:
            os.replace(self.legacy_path, backup)
            return backup
        except OSError:
            return None

    def _stat(self) -> tuple | None:
        """The file's identity, size and modification time; None where there is none."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def refresh(self) -> bool:
        """Read what another process wrote to the file since this one last read or wrote it;
        True if it did. One stat otherwise. The tuner asks before it measures a size: each
        process read the file once, so processes started together on a clean cache each measured
        every size (three processes, 32 sizes: 96 measurements, 64 of them superseded). Lines
        appended since are read alone (`_Mark`); a file rewritten since is read whole."""
        if self._records is None or self._in_memory:
            return False
        seen = self._stat()
        if seen is None or seen == self._seen:
            return False
        with self._mutex:
            start, tail = self._mark if self._continues(seen) else (0, b"")
            got = self._read_lines(self.path, start=start, tail=tail)
            self._records.update(got.records)  # (the file holds every record this process added)
            self._index(got.records)
            self._fingerprints.update(got.fps)
            if got.partial:  # (this process's own lines, appended after the mark, counted once)
                self._lines += max(0, got.lines - self._reread)
                self._fps_on_disk.update(got.fps)
            else:
                self._lines, self._fps_on_disk = got.lines, set(got.fps)
            self._reread = 0
            if got.seen is not None:
                self._mark, self._seen = got.mark, got.seen
        return True

    def _continues(self, seen: tuple) -> bool:
        """Whether the file `seen` (`_stat`) is the one last read here, with lines appended."""
        end, tail = self._mark
        if not tail or self._seen is None or seen[0] != self._seen[0] or seen[1] < end:
            return False
        try:
            with open(self.path, "rb") as f:
                return _bytes_at(f, end - len(tail), len(tail)) == tail
        except OSError:
            return False

    @property
    def fp(self) -> str:
        """This machine's fingerprint id (the versions and devices: a few ms once per process, so
        not before something is read from or written to a file that exists)."""
        if self._fp is None:
            self._fp = fingerprint_id(fingerprint())
        return self._fp

    @property
    def writable(self) -> bool:
        """No write to the file has failed (what this process measures is kept on disk)."""
        return not self._in_memory

    @property
    def loaded(self) -> bool:
        """The file was read in this process (reading it again costs nothing)."""
        return self._records is not None

    def records(self) -> dict[tuple[str, str], dict]:
        """Every record, (fingerprint id, key) -> entry, this machine's and others'."""
        if self._records is None:
            with self._mutex:
                if self._records is None:
                    self._load()
        return self._records

    def fingerprints(self) -> dict[str, dict]:
        self.records()
        return {**self._fingerprints, self.fp: fingerprint()}

    def entries(self) -> dict[str, dict]:
        """This machine's entries, key -> entry (a copy: another thread's measurement may be
        stored meanwhile; iterating the records under it raised "dictionary changed size")."""
        return {key: e for (fp, key), e in self._snapshot() if fp == self.fp}

    def family_entries(self, family: str) -> dict[str, dict]:
        """This machine's entries of one problem family (``entry["problem"]["family"]``), key ->
        entry: what the cost model reads on a miss. Kept as an index: each miss copied every
        entry of the cache and the model scanned them all (0.2-1.2 s a miss at 10^5 records)."""
        records = self.records()
        with self._mutex:
            if self._families is None or self._families_of is not records:
                self._families, self._families_of, self._family_of = {}, records, {}
                self._index(records)
            return dict(self._families.get(family, ()))

    def _index(self, records: dict[tuple[str, str], dict]) -> None:
        """Add `records` to the family index where it is built (under the mutex)."""
        if self._families is None:
            return
        fp = self.fp
        for (fid, key), e in records.items():
            if fid != fp:
                continue
            prob = e.get("problem")
            fam = prob.get("family") if isinstance(prob, dict) else None
            fam = fam if isinstance(fam, str) else None
            old = self._family_of.get(key)
            if old is not None and old != fam:  # (an entry that names another family, or none)
                self._families.get(old, {}).pop(key, None)
            if fam is not None:
                self._families.setdefault(fam, {})[key] = e
                self._family_of[key] = fam
            else:
                self._family_of.pop(key, None)

    def _snapshot(self) -> list:
        records = self.records()
        with self._mutex:
            return list(records.items())

    def get(self, key: str) -> dict | None:
        records = self.records()
        return records.get((self.fp, key)) if records else None

    # -- writing -------------------------------------------------------------------------------
    def put(self, key: str, entry: dict) -> None:
        self.update({key: entry})

    def update(self, new: dict[str, dict]) -> None:
        """Record `new` (this machine's entries) in memory and append them to the file."""
        self.add_records({(self.fp, k): e for k, e in new.items()}, {self.fp: fingerprint()})

    def import_records(self, records: dict[tuple[str, str], dict],
                       fingerprints: dict[str, dict]) -> int:
        """`add_records` of those of `records` measured no earlier than the entry this cache
        holds for their key (`merge_exports`' rule: an import never replaces a newer
        measurement with an older one), and not the very entry it holds (an export imported
        back was appended again, and reported as imported); returns how many were left out as
        older."""
        with self._mutex:
            have = self.records()
            newer = {k: e for k, e in records.items()
                     if newer_than(e, have.get(k)) and not same_entry(e, have.get(k))}
            self.add_records(newer, fingerprints)
            return sum(1 for k, e in records.items() if not newer_than(e, have.get(k)))

    def holds(self, records: dict[tuple[str, str], dict]) -> int:
        """How many of `records` this cache holds as they are."""
        have = self.records()
        with self._mutex:
            return sum(1 for k, e in records.items() if same_entry(e, have.get(k)))

    def add_records(self, records: dict[tuple[str, str], dict],
                    fingerprints: dict[str, dict]) -> None:
        """Record entries under any fingerprint (import, merge)."""
        with self._mutex:
            self.records()
            self._records.update(records)
            self._index(records)
            self._fingerprints.update(fingerprints)
            self._append(records, fingerprints)

    def _append(self, records: dict[tuple[str, str], dict], fps: dict[str, dict]) -> bool:
        """Append under the lock; False (and tuning in memory, one warning) if it cannot."""
        if self._in_memory or not records:
            return not self._in_memory
        # a fingerprint's definition is written once per file, not with every entry
        lines = [json.dumps({"fp": fid, "fingerprint": fp}, sort_keys=True)
                 for fid, fp in fps.items() if fid not in self._fps_on_disk]
        lines += [json.dumps({"schema": SCHEMA, "fp": fid, "key": key, "entry": e}, sort_keys=True)
                  for (fid, key), e in records.items()]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            with self._lock():
                before = self._stat()
                with open(self.path, "a+b") as f:  # appends always go to the end
                    f.seek(0, os.SEEK_END)
                    text = "\n".join(lines) + "\n"
                    if f.tell():
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":  # a killed writer's partial line stays its own
                            text = "\n" + text
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
                self._fps_on_disk.update(fps)
                self._lines += len(lines)
                if before != self._seen:  # (the next refresh reads these lines again)
                    self._reread += len(lines)
                else:  # (nobody else wrote since: this append is no news)
                    self._seen = self._stat()
                    if self._seen is not None:
                        self._mark = _mark_of(self.path, self._seen[1])
                live = len(self._records or ()) + len(self._other_schema)
                if (self._records is not None and self._compactable
                        and self._lines > COMPACT_WHEN * max(live, 16)):
                    self._compact()
        except (OSError, Timeout) as exc:
            self._in_memory = True
            self._warn("unwritable", f"cannot write the autotune cache in {self.dir} ({exc}); "
                       "tuning results stay in memory for this process")
            return False
        return True

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """The file lock every writer of the cache file holds: beside the file, which for a
        symbolic link is beside its target, so that writers through other links (several
        users' cache folders linking one shared file) take the same one; a lock beside each
        link let one process's compaction drop what another appended meanwhile. Where the
        target's folder cannot hold a lock (another user's), the one beside the link: appends
        stay whole lines, but this process no longer compacts (a rewrite needs every writer
        excluded)."""
        target = os.path.realpath(self.path)
        lock = None
        if target != str(self.path):
            lock = FileLock(target + ".lock", timeout=LOCK_TIMEOUT_S)
            try:
                lock.acquire()
            except Timeout:
                raise
            except OSError:
                lock, self._compactable = None, False
        if lock is None:
            lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _compact(self) -> None:
        """Rewrite the file with the last record per (fingerprint, key), atomically, under the
        lock the caller holds; this process then holds what the file holds. The file alone is
        the truth: every record this process added was appended to it, and what it still holds
        in memory may be older than what other processes appended since (an entry measured
        again) or gone from the file (`cache clear`). Before, the memory won, which put older
        measurements back and undid a clear."""
        try:
            on_disk, fps = self._read_lines(self.path, strict=True)[:2]
        except OSError:  # (EIO, a stale NFS handle: compacting then would empty the file)
            return
        fps.update(self._fingerprints)
        try:
            self._rewrite(on_disk, fps)
        except OSError as exc:
            # (a symlinked file whose folder this user cannot write: the appends went through,
            # and a failed compaction must not turn this process's tuning in-memory)
            self._compactable = False
            self._warn("compaction", f"cannot compact the autotune cache {self.path} ({exc}); "
                       "appending to it as it is")

    def _rewrite(self, records: dict[tuple[str, str], dict], fps: dict[str, dict]) -> None:
        """Replace the file by exactly these records, and the lines of another schema it held
        when last read (the caller holds the lock, and read it under the lock). A cache file that
        is a symbolic link (to a shared or mounted file) is rewritten where it points, keeping
        the link (os.replace on the link put a plain file in its place, and the shared file no
        longer saw this machine's writes); the rewritten file keeps the old one's mode (a file
        made group-writable for several users stays so, whatever this user's umask)."""
        target = Path(os.path.realpath(self.path))
        # a writer killed while rewriting left its temporary file; under the lock no other
        # writer is rewriting, but a lock that another host does not see (some network file
        # systems) would not stop one there: only files untouched for a while go
        for stale in target.parent.glob(f".{FILENAME}.*.tmp"):
            try:
                if time.time() - stale.stat().st_mtime > STALE_TMP_S:
                    stale.unlink(missing_ok=True)
            except OSError:
                pass
        try:
            mode = os.stat(target).st_mode & 0o777
        except OSError:
            mode = 0o666 & ~_umask()
        # (a name of its own: a pid's is not, for containers sharing the directory, each pid 1)
        fd, name = tempfile.mkstemp(prefix=f".{FILENAME}.", suffix=".tmp", dir=target.parent)
        tmp = Path(name)
        try:
            with open(fd, "w", encoding="utf-8") as f:
                for fid, fp in fps.items():
                    f.write(json.dumps({"fp": fid, "fingerprint": fp}, sort_keys=True) + "\n")
                for line in self._other_schema:
                    f.write(line + "\n")
                for (fid, key), e in records.items():
                    f.write(json.dumps({"schema": SCHEMA, "fp": fid, "key": key, "entry": e},
                                       sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        self._records, self._fingerprints = records, fps
        self._fps_on_disk = set(fps)
        self._lines = len(records) + len(fps) + len(self._other_schema)
        self._reread = 0
        self._seen = self._stat()  # (under the caller's lock: what it holds is the file)
        self._mark = _mark_of(self.path, self._seen[1]) if self._seen else _Mark()

    def clear(self) -> None:
        """Forget this machine's entries (other machines' entries stay in the file)."""
        with self._mutex:
            self.records()
            self._records = {k: e for k, e in self._records.items() if k[0] != self.fp}
            if self._in_memory:
                return
            try:
                with self._lock():
                    if self.path.exists():
                        on_disk, fps = self._read_lines(self.path, strict=True)[:2]
                        self._fingerprints.update(fps)
                        self._rewrite({k: e for k, e in on_disk.items() if k[0] != self.fp},
                                      self._fingerprints)
            except (OSError, Timeout) as exc:
                self._in_memory = True
                self._warn("unwritable", f"cannot write the autotune cache in {self.dir} ({exc})")

    # -- moving caches between machines ----------------------------------------------------------
    def export(self) -> dict:
        """One readable JSON document: the validators of every fingerprint in the header, then
        every entry with its key and fingerprint."""
        fps = self.fingerprints()
        records = sorted(self._snapshot())
        used = {fid for (fid, _), _ in records}
        return {"header": {"schema": SCHEMA, "this_machine": self.fp,
                           "fingerprints": {fid: fps.get(fid) for fid in sorted(used | {self.fp})}},
                "entries": [{"key": key, "fp": fid, "entry": e} for (fid, key), e in records]}


def _records(f) -> Iterator[tuple[bytes, bool]]:
    """Each line of binary file `f` from where it stands, and whether it ends in its newline;
    a line that holds bare CRs (a file whose lines end in CR alone: an old Mac editor's, or a
    copy through a tool that wrote them) as its CR-ended pieces, the last one carrying whatever
    followed, so that their lengths still add up to the line's. Before, the whole file read as
    one damaged line and every entry in it was lost."""
    for raw in f:
        whole = raw.endswith(b"\n")
        if b"\r" not in raw or raw.count(b"\r") == 1 and raw.endswith(b"\r\n"):
            yield raw, whole  # (LF or CRLF: the common case, without a copy)
            continue
        *pieces, last = raw.split(b"\r")
        for piece in pieces:
            yield piece + b"\r", True
        if last:
            yield last, whole
        # (a line that ended in its CR: its last piece is empty, and counted already)


def _bytes_at(f, offset: int, n: int) -> bytes:
    """`n` bytes of the open file `f` from `offset` (the position is left there)."""
    f.seek(offset)
    return f.read(n)


def _mark_at(f, end: int) -> _Mark:
    """The mark of a read or write of the open file `f` that stopped at `end`: the file's last
    bytes before it, at most _MARK_BYTES (not the last line's alone: a short or blank last line
    would make a weak check of the file's identity)."""
    return _Mark(end, _bytes_at(f, max(0, end - _MARK_BYTES), min(end, _MARK_BYTES))) \
        if end else _Mark()


def _mark_of(path: Path, end: int) -> _Mark:
    """`_mark_at` of the file at `path` (an empty mark where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return _mark_at(f, end)
    except OSError:
        return _Mark()


def read_json(path: str | os.PathLike, text: str | None = None) -> Any:
    """The JSON in file `path` (or in `text`, read from nowhere): a file that cannot be read or
    text that is no JSON raises ValueError naming it."""
    if text is None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {str(path)!r} ({exc.strerror or exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: not JSON this reader takes (nested too deeply)") from None


def entry_error(entry) -> str | None:
    """What makes `entry` not a cache entry of this schema, or None: what every reader of an
    entry relies on, checked where entries come in (the file, an import, a merge), so that a
    damaged or hand-edited one costs only itself. One with no config in its choice used to make
    every call of its size raise KeyError, and trials that were not a list every call of its
    family (through the cost model), as did `cache show` and `cache verify`."""
    if not isinstance(entry, dict):
        return "not a JSON object"
    choice = entry.get("choice")
    if not (isinstance(choice, dict) and isinstance(choice.get("candidate"), str)
            and isinstance(choice.get("config"), dict)
            and isinstance(choice.get("source", ""), str)):
        return "its choice is not {candidate, config, source}"
    trials = entry.get("trials", [])
    if not isinstance(trials, list):
        return "its trials are not a list"
    # (loops, not all() over generators: this check was 72% of reading a cache file, 3.3 s of
    # 4.6 at 10^5 records)
    for t in trials:
        if not (isinstance(t, dict) and isinstance(t.get("candidate"), str)
                and isinstance(t.get("config"), dict)):
            return "a trial is not {candidate, config, ...}"
        if "median" in t:
            for f in _TIMING:
                if not _is_number(t.get(f)):
                    return "a trial's timing is not finite non-negative numbers"
    problem = entry.get("problem", {})
    if not isinstance(problem, dict):
        return "its problem is not an object of finite non-negative numbers"
    for f in _SIZES:
        if f in problem and not _is_number(problem[f]):
            return "its problem is not an object of finite non-negative numbers"
    return None


_TIMING, _SIZES = ("median", "spread", "count"), ("flops", "nbytes")
_INF = math.inf


def _is_number(v) -> bool:
    """A finite, non-negative number: an infinite roofline or median raised "math domain error"
    or OverflowError in every call of the entry's family, through the cost model. (JSON's
    floats and ints by their exact type first: bool is an int, and is not one here.)"""
    t = type(v)
    if t is float or t is int:
        return 0 <= v < _INF
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < _INF


def read_export(path: str | os.PathLike) -> tuple[dict[tuple[str, str], dict], dict[str, dict]]:
    """The records and fingerprints of an exported file (or of a schema-1 cache file). A file
    that cannot be read, or is not an export, raises ValueError naming it; entries that are not
    entries of this schema (`entry_error`) are left out, with one warning."""
    data = read_json(path)
    named: dict[tuple[str, str], str] = {}  # entries whose key or fp is not a string
    try:
        head = data["header"]
        if head.get("schema") == 1:  # an old cache file: one fingerprint for all its entries
            fp = _object(head["fingerprint"])
            fid = fingerprint_id(fp)
            records, fps = {(fid, str(k)): e for k, e in data["entries"].items()}, {fid: fp}
        else:
            if head.get("schema") != SCHEMA:
                raise ValueError(f"{path}: unknown cache export schema {head.get('schema')!r}")
            fps = {str(k): _object(v) for k, v in head["fingerprints"].items() if v is not None}
            if not isinstance(data["entries"], list):
                raise TypeError("the entries are not a list")
            records = {}
            for r in data["entries"]:
                fid, key = r["fp"], r["key"]
                if isinstance(fid, str) and isinstance(key, str):
                    records[(fid, key)] = r["entry"]
                else:  # (str() had filed a null key as "None", usable under that name)
                    named[(str(fid), str(key))] = "its key and fp must be strings"
    except (KeyError, TypeError, AttributeError, IndexError):
        raise ValueError(f"{path}: not a kernelkit cache export (`kernelkit cache export` "
                         "writes one: a header and its entries)") from None
    bad = {k: why for k, e in records.items() if (why := entry_error(e)) is not None}
    bad.update(named)
    if bad:
        (_, key), why = next(iter(bad.items()))
        callsite.warn(f"kernelkit: {path}: left out {len(bad)} damaged entr"
                      f"{'y' if len(bad) == 1 else 'ies'} (the first, {key}: {why})", CacheWarning)
    return {k: e for k, e in records.items() if k not in bad}, fps


def _text(v) -> str:
    """A key or fingerprint id read from a cache line: a JSON string (str() had filed a null
    key as "None", read as a usable entry under that name)."""
    if not isinstance(v, str):
        raise TypeError("a key or fingerprint id is not a string")
    return v


def _object(v) -> dict:
    """A fingerprint read from an export: a JSON object ("dictionary update sequence element #0"
    was the error a string gave)."""
    if not isinstance(v, dict):
        raise TypeError("a fingerprint is not an object")
    return dict(v)


def same_entry(entry: dict | None, other: dict | None) -> bool:
    """The same record as written to the file (one side may have come through JSON, the other
    through pickling, as a rank's broadcast does: tuples and lists are alike)."""
    if entry is None or other is None:
        return entry is other
    return json.dumps(entry, sort_keys=True) == json.dumps(other, sort_keys=True)


def newer_than(entry: dict, other: dict | None) -> bool:
    """Whether `entry` replaces `other` for the same key: measured at the same time or later
    (ISO timestamps compare as strings), or there is no other."""
    return other is None or str(entry.get("measured_at", "")) >= str(other.get("measured_at", ""))


def merge_exports(paths: list[str | os.PathLike]) -> dict:
    """Several exported files as one export: for a (fingerprint, key) in more than one, the entry
    measured last wins."""
    records: dict[tuple[str, str], dict] = {}
    fps: dict[str, dict] = {}
    for p in paths:
        recs, f = read_export(p)
        fps.update(f)
        for k, e in recs.items():
            if newer_than(e, records.get(k)):
                records[k] = e
    return {"header": {"schema": SCHEMA, "fingerprints": {k: fps.get(k) for k in sorted(fps)}},
            "entries": [{"key": key, "fp": fid, "entry": e} for (fid, key), e in sorted(records.items())]}


_caches: dict[str, Cache] = {}


def _after_fork_in_child() -> None:
    """A child forked while a parent thread held a cache's mutex (appending an entry, reading a
    snapshot) would block for good at its first call: that thread does not exist here."""
    for c in _caches.values():
        c._mutex = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def cache_for(directory: str | os.PathLike) -> Cache:
    """One Cache object per directory in this process."""
    key = str(directory)
    c = _caches.get(key)
    if c is None:
        c = _caches[key] = Cache(directory)
    return c
