"""The `kernelkit` command, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def kk(*args, cache_dir, check=True):
    env_cmd = [sys.executable, "-m", "kernelkit.cli", *args]
    import os

    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(cache_dir)}
    return subprocess.run(env_cmd, capture_output=True, text=True, env=env, check=check, timeout=600)


def test_info_json(tmp_path):
    info = json.loads(kk("info", "--json", cache_dir=tmp_path).stdout)
    assert info["backends"]["numba (cpu)"] is True
    assert info["cache"]["path"] == str(tmp_path / "autotune.jsonl")
    assert info["versions"]["numpy"]


def test_tune_then_cache_show_then_clear(tmp_path):
    out = kk("tune", "--preset", "odd", "--threads", "1", "--json", str(tmp_path / "rows.json"),
             cache_dir=tmp_path).stdout
    assert "speed-up" in out and "1000x3x1000" in out
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 6
    for r in rows:
        assert r["source"] == "measured" and r["best_s"] > 0 and r["vendor"] == "numpy-cpu"  # numpy data
        # the ratio is the vendor's measured time over the winner's, and the winner is the
        # fastest measured (the vendor among them): values, not a bound true by construction
        assert r["vendor_s"] > 0 and r["best_s"] <= r["vendor_s"]
        assert r["ratio"] == pytest.approx(r["vendor_s"] / r["best_s"], rel=1e-12)
    shown = json.loads(kk("cache", "show", "--json", cache_dir=tmp_path).stdout)
    assert len(shown) == 6
    kk("tune", "--preset", "odd", cache_dir=tmp_path)  # a second run is all cache hits
    assert "removed 6 entries" in kk("cache", "clear", cache_dir=tmp_path).stdout
    assert json.loads(kk("cache", "show", "--json", cache_dir=tmp_path).stdout) == {}


def test_explain(tmp_path):
    out = kk("explain", "matmul", "33", "17", "9", "--activation", "relu", cache_dir=tmp_path).stdout
    assert "numba-cpu" in out and "numpy-cpu" in out and "torch-cpu" in out and "choice:" in out
    assert "no CUDA device" in out or "cuda" in out


def test_bad_arguments_exit_cleanly(tmp_path):
    r = kk("tune", "--preset", "nope", cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and "unknown preset" in r.stdout
    r = kk("explain", "matmul", "4", "4", "4", "--activation", "tanh", cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and "activation" in r.stdout


def test_explain_conv2d(tmp_path):
    out = kk("explain", "conv2d", "1", "3", "12", "4", "3", "2", cache_dir=tmp_path).stdout
    assert "conv2d" in out and "torch-cpu" in out and "choice:" in out
    r = kk("explain", "conv2d", "1", "3", cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and "conv2d takes" in r.stdout


def test_explain_every_op_through_its_spec(tmp_path):
    """explain works the same way for every registered op: the backward convolutions and
    preprocess included, with the op's own size arguments."""
    for args in (("conv2d_backward_input", "1", "4", "9", "6", "3", "1"),
                 ("conv2d_backward_weight", "1", "4", "9", "6", "3", "2"),
                 ("preprocess", "2", "30", "40", "16")):
        out = kk("explain", *args, cache_dir=tmp_path).stdout
        assert out.startswith(args[0] + ":") and "torch-cpu" in out and "choice:" in out
    r = kk("explain", "preprocess", "2", "30", cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and "preprocess takes N H W SIZE" in r.stdout


def test_importing_a_caches_own_export_imports_nothing(tmp_path):
    """A cache's own export imported back was appended to the file again and reported as
    "imported 1 entries" (a user hunt)."""
    a = tmp_path / "a"
    kk("explain", "matmul", "48", "40", "24", cache_dir=a)
    kk("cache", "export", str(tmp_path / "a.json"), cache_dir=a)
    before = (a / "autotune.jsonl").read_bytes()
    out = kk("cache", "import", str(tmp_path / "a.json"), cache_dir=a).stdout
    assert "imported 0 entries" in out and "1 already in this cache" in out, out
    assert (a / "autotune.jsonl").read_bytes() == before


def test_cache_export_import_merge_and_show(tmp_path):
    """Caches move between machines as one JSON file with its validators in the header; show
    prints every candidate's time and the speed-up over the vendor."""
    a, b = tmp_path / "a", tmp_path / "b"
    kk("explain", "matmul", "48", "40", "24", cache_dir=a)
    kk("explain", "matmul", "9", "5", "7", cache_dir=b)
    kk("cache", "export", str(tmp_path / "a.json"), cache_dir=a)
    kk("cache", "export", str(tmp_path / "b.json"), cache_dir=b)
    doc = json.loads((tmp_path / "a.json").read_text())
    (fp,) = doc["header"]["fingerprints"]
    assert doc["header"]["fingerprints"][fp]["cpu"] and len(doc["entries"]) == 1
    kk("cache", "merge", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out",
       str(tmp_path / "c.json"), cache_dir=a)
    merged = json.loads((tmp_path / "c.json").read_text())
    assert len(merged["entries"]) == 2
    c = tmp_path / "c"
    assert "imported 2 entries" in kk("cache", "import", str(tmp_path / "c.json"), cache_dir=c).stdout
    shown = json.loads(kk("cache", "show", "--json", cache_dir=c).stdout)
    assert {e["problem"]["dims"][1] for e in shown.values()} == {48, 9}
    table = kk("cache", "show", cache_dir=c).stdout
    assert "numpy-cpu" in table and "numba-cpu" in table and "vs vendor" in table


def test_explain_sweep_prints_predicted_and_measured_per_size(tmp_path):
    out = kk("explain", "matmul", "4", "4", "4", "--sweep", "3", cache_dir=tmp_path).stdout
    assert "predicted" in out and "(roofline) / measured" in " ".join(out.split())
    rows = [line for line in out.splitlines() if line.startswith("│ ")]
    assert [r.split("│")[1].strip() for r in rows] == ["4x4x4", "8x8x8", "16x16x16"]
    # numba-cpu, numpy-cpu and torch-cpu (numpy data; the CLI's process has torch), all measured
    assert all(r.count(" us / ") == 3 for r in rows)


def test_tune_shapes_file_out_and_coverage(tmp_path):
    shapes = tmp_path / "shapes.json"
    shapes.write_text(json.dumps([{"op": "matmul", "dims": [9, 10, 11], "dtype": "float32"},
                                  ["matmul", [40, 40, 40], "float32"]]))
    kk("tune", "--shapes", str(shapes), "--out", str(tmp_path / "out.json"), cache_dir=tmp_path)
    assert len(json.loads((tmp_path / "out.json").read_text())["entries"]) == 2
    more = tmp_path / "more.json"
    more.write_text(json.dumps([["matmul", [9, 10, 11]], ["matmul", [2000, 3, 7]],
                                ["conv2d", [1, 3, 8, 4, 3, 1, 1, 1]]]))
    rows = json.loads(kk("cache", "coverage", "--shapes", str(more), "--json",
                         cache_dir=tmp_path).stdout)
    assert rows[0]["state"] == "measured" and rows[2]["state"] == "missing"
    assert rows[1]["state"] in ("predicted", "uncertain") and rows[1]["choice"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([["nosuchop", [1, 2, 3]]]))
    r = kk("tune", "--shapes", str(bad), cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and "unknown op" in r.stdout


def test_tune_shapes_inline_and_bad_shapes_get_a_message(tmp_path):
    """--shapes takes the JSON list itself too; a missing file, a row without dims and broken
    JSON get one line naming the problem (before: tracebacks, FileNotFoundError and KeyError),
    with the message's brackets printed as they are (rich had taken "[op, dims, dtype]" for
    markup and dropped it)."""
    r = kk("tune", "--quiet", "--shapes", '[["matmul", [5, 6, 7]]]', cache_dir=tmp_path)
    assert "5x6x7" in r.stdout
    (tmp_path / "nodims.json").write_text(json.dumps([{"op": "matmul"}]))
    for arg, words in [(str(tmp_path / "none.json"), "cannot read"),
                       (str(tmp_path / "nodims.json"), "row 0 must be"),
                       ('[["matmul", [5, 6', "not JSON")]:
        r = kk("tune", "--shapes", arg, cache_dir=tmp_path, check=False)
        assert r.returncode == 2 and words in r.stdout and "Traceback" not in r.stderr, r
    assert "[op, dims, dtype]" in " ".join(
        kk("tune", "--shapes", str(tmp_path / "nodims.json"), cache_dir=tmp_path,
           check=False).stdout.split())


def test_bad_dims_and_dtypes_get_a_message_and_bfloat16_runs_on_torch(tmp_path):
    """A shapes row with too few dims got "not enough values to unpack (expected 3, got 2)"; a
    misspelt --dtypes was taken silently (warmup exited 0 with "nothing to compile", or compiled
    float32 for "int8"); bfloat16 got "data type 'bfloat16' not understood" from numpy even
    with --where torch."""
    for args, words in [
            (("tune", "--shapes", '[{"op": "matmul", "dims": [24, 16]}]'),
             "row 0: matmul takes M K N (3 numbers), got [24, 16]"),
            (("tune", "--shapes", '[["matmul", [4, 4, 4], "flaot32"]]'),
             "row 0: unknown dtype 'flaot32'"),
            (("warmup", "--dtypes", "floot32", "--ops", "matmul"), "unknown dtype(s) ['floot32']"),
            (("warmup", "--dtypes", "int8", "--json"), "unknown dtype(s) ['int8']"),
            (("explain", "matmul", "8", "8", "8", "--dtype", "bfloat16"),
             "numpy has no bfloat16"),
            (("tune", "--preset", "nope"), "kernelkit tune: unknown preset 'nope'"),
            (("cache", "verify", "--tolerance", "-1"), "--tolerance must be a fraction >= 0")]:
        r = kk(*args, cache_dir=tmp_path, check=False)
        assert r.returncode == 2 and words in " ".join(r.stdout.split()), r
    out = kk("explain", "matmul", "8", "8", "8", "--dtype", "bfloat16", "--where", "torch",
             cache_dir=tmp_path).stdout
    assert "dtype bfloat16" in out and "data on torch:cpu" in out and "choice:" in out
    out = kk("tune", "--quiet", "--where", "torch", "--shapes",
             '[["matmul", [24, 16, 8], "bfloat16"]]', cache_dir=tmp_path).stdout
    assert "24x16x8" in out and "bfloat16" in out


def test_explaining_an_empty_problem_measures_and_stores_nothing(tmp_path):
    # `explain matmul 0 4 4` timed the candidates on nothing and stored the entry
    out = kk("explain", "matmul", "0", "4", "4", cache_dir=tmp_path).stdout
    assert "choice: numpy-cpu {} (default)" in out and " us " not in out
    assert json.loads(kk("cache", "show", "--json", cache_dir=tmp_path).stdout) == {}


def test_cache_files_that_cannot_be_read_or_written_get_a_message(tmp_path):
    """`cache import` / `merge` of a missing file or of JSON that is no export, and `cache export`
    into a missing folder: one line naming the file (before: FileNotFoundError tracebacks, and
    "list indices must be integers or slices, not str")."""
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "text.json").write_text("not json")
    for args, words in [(("cache", "import", str(tmp_path / "none.json")), "cannot read"),
                        (("cache", "import", str(tmp_path / "list.json")), "not a kernelkit cache"),
                        (("cache", "merge", str(tmp_path / "text.json"), str(tmp_path / "list.json"),
                          "--out", str(tmp_path / "m.json")), "not JSON"),
                        (("cache", "export", str(tmp_path / "no" / "dir.json")),
                         "No such file or directory")]:
        r = kk(*args, cache_dir=tmp_path, check=False)
        assert r.returncode == 2 and words in " ".join(r.stdout.split()), r
        assert "Traceback" not in r.stderr


@pytest.mark.parametrize("terminal, quiet, shown", [(True, False, True), (True, True, False),
                                                   (False, False, False)])
def test_tune_progress_bar_on_stderr_only_on_a_terminal(tmp_path, monkeypatch, capfd, terminal,
                                                       quiet, shown):
    """One bar step per measured size with the size and an ETA, on stderr; none with --quiet or
    when stderr is not a terminal (FORCE_COLOR makes rich treat it as one)."""
    from kernelkit import cli
    from kernelkit.autotune import generate

    def fake_generate(problems, *, progress, starting, **kw):
        rows = []
        for op, dims, dtype in problems:
            starting((op, dims, dtype))
            rows.append(generate.Row(op, dims, dtype, "numpy", "torch-cpu", {}, "measured", 1e-3,
                                     "torch-cpu", 1e-3, 2e6))
            progress(rows[-1])
        return rows

    monkeypatch.setattr(generate, "generate", fake_generate)
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    if terminal:
        monkeypatch.setenv("FORCE_COLOR", "1")
    else:
        monkeypatch.delenv("FORCE_COLOR", raising=False)
        monkeypatch.setenv("TTY_COMPATIBLE", "0")
    assert cli.main(["tune", "--preset", "odd", *(["--quiet"] if quiet else [])]) == 0
    out, err = capfd.readouterr()
    assert "1000x3x1000" in out  # the summary table, on stdout either way
    assert ("ETA" in err and "6/6" in err) == shown, err
    assert "ETA" not in out


def test_clean_errors_where_tracebacks_were(tmp_path, monkeypatch, capsys):
    """Each of these printed a traceback (AssertionError "Torch not compiled with CUDA enabled",
    torch's set_num_threads RuntimeError, numpy's _ArrayMemoryError) or ran on nothing and
    exited 0 (an empty sweep, a data bench of no images)."""
    from kernelkit import cli

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cli.devices, "cuda_available", lambda: False)
    for args, words in [
            (("tune", "--where", "cuda", "--shapes", '[["matmul", [4, 4, 4]]]'), "no CUDA device"),
            (("explain", "matmul", "8", "8", "8", "--where", "cuda"), "no CUDA device"),
            (("tune", "--threads", "-2", "--shapes", '[["matmul", [4, 4, 4]]]'),
             "--threads must be >= 0"),
            (("tune", "--shards", "0", "--shapes", '[["matmul", [4, 4, 4]]]'), "--shards >= 1"),
            (("explain", "matmul", "8", "8", "8", "--sweep", "-1"), "--sweep takes a number"),
            (("explain", "matmul", "1000000", "1000000", "1000000"), "out of memory"),
            (("explain", "matmul", "-1", "4", "4"), "matmul: dims must be >= 0, got [-1, 4, 4]"),
            (("data-bench", "--images", "0"), "must be >= 1")]:
        assert cli.main(list(args)) == 2, args
        assert words in " ".join(capsys.readouterr().out.split()), args


def test_cache_options_may_come_before_the_files(tmp_path, monkeypatch, capsys):
    """`cache merge --out C A B` and `cache export --json E` failed with "unrecognized arguments";
    `kernelkit cache` alone said "the following arguments are required: action, files"."""
    from kernelkit import cli
    from kernelkit.autotune.cache import Cache

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    c = Cache(tmp_path)
    c.put("k", {"choice": {"candidate": "numpy-cpu", "config": {}, "source": "measured"},
                "measured_at": "2026-12-05T00:00:00+00:00"})
    a, b, m = (str(tmp_path / n) for n in ("a.json", "b.json", "m.json"))
    assert cli.main(["cache", "export", "--json", a]) == 0 and cli.main(["cache", "export", b]) == 0
    assert cli.main(["cache", "merge", "--out", m, a, b]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["entries"][0]["key"] == "k"
    assert cli.main(["cache", "verify", "--quiet", "no-such-key"]) == 0
    capsys.readouterr()
    assert cli.main(["cache"]) == 0 and "1 entries" in capsys.readouterr().out
    assert cli.main(["cache", "import", "--json", a]) == 0
    assert "of its 1" in capsys.readouterr().out


def test_warmup_of_nothing_says_what_was_asked(tmp_path, capsys):
    from kernelkit import cli

    assert cli.main(["warmup", "--ops", "matmul", "--dtypes", "uint8"]) == 0
    assert "nothing to compile for ops matmul and dtypes uint8" in capsys.readouterr().out


def test_warmup_compiles_only_the_forced_backend_and_says_when_it_cannot(capsys, monkeypatch):
    """`KERNELKIT_BACKEND=triton kernelkit warmup` on a machine without a GPU compiled the Numba
    kernels, which the knob keeps from ever running, and said nothing of Triton (exit 0). The
    knobs now pick what warmup compiles; a forced backend that compiles nothing ahead says so,
    one that compiles ahead but cannot here is an error (an image build would ship nothing)."""
    import dataclasses

    from kernelkit import cli, compiling, core

    warmed = []
    monkeypatch.setattr(compiling, "warm_here", lambda module, dtype: warmed.append(module)
                        or compiling.Job(module, dtype, how="loaded"))
    monkeypatch.setenv("KERNELKIT_BACKEND", "triton")
    monkeypatch.setattr("kernelkit.devices.cuda_available", lambda: False)
    assert cli.main(["warmup", "--ops", "matmul"]) == 0 and warmed == []
    out = capsys.readouterr().out
    assert "KERNELKIT_BACKEND=triton: nothing is compiled ahead of a call for triton (cuda), " \
           "which cannot run here: no CUDA device here" in " ".join(out.split())
    monkeypatch.setenv("KERNELKIT_BACKEND", "numba")
    assert cli.main(["warmup", "--ops", "matmul", "--quiet"]) == 0
    assert warmed and all(".numba." in m for m in warmed)
    capsys.readouterr()
    assert cli.main(["warmup", "--ops", "matmul", "--dtypes", "uint8"]) == 0  # (the ops and
    assert "nothing to compile for ops matmul and dtypes uint8" in capsys.readouterr().out  # dtypes'
    monkeypatch.setenv("KERNELKIT_DEVICE", "cuda")  # (numba on cuda: no such backend)
    assert cli.main(["warmup", "--ops", "matmul"]) == 1
    assert "no backend numba runs on cuda" in capsys.readouterr().err
    monkeypatch.delenv("KERNELKIT_DEVICE")
    real = core.backends()
    monkeypatch.setattr(core, "backends", lambda: [dataclasses.replace(
        b, missing=lambda: "numba is not installed") if b.name == "numba" else b for b in real])
    assert cli.main(["warmup", "--ops", "matmul"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "KERNELKIT_BACKEND=numba: cannot compile here: numba (cpu): numba is not installed" in err


def test_a_cache_dir_given_with_a_tilde_is_under_home(tmp_path, monkeypatch):
    """KERNELKIT_CACHE_DIR='~/kkcache' (Docker's ENV does not expand it) made a folder named "~"
    in the working directory; KERNELKIT_NUMBA_CACHE_DIR already expanded it."""
    from kernelkit import paths, settings

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KERNELKIT_CACHE_DIR", "~/kkcache")
    settings.new_epoch()
    assert settings.current().cache_path == tmp_path / "kkcache"
    assert paths.cache_root() == tmp_path / "kkcache"
    with settings.use(cache_dir="~/other"):
        assert settings.current().cache_path == tmp_path / "other"


def test_a_negative_dim_in_a_shapes_file_names_its_row(tmp_path, capsys):
    from kernelkit import cli

    assert cli.main(["tune", "--shapes", '[["matmul", [4, 4, 4]], ["matmul", [-8, 8, 8]]]']) == 2
    assert "row 1: dims must be >= 0, got [-8, 8, 8]" in capsys.readouterr().out


def test_a_preprocess_rows_dtype_is_the_dtype_of_the_images_it_tunes():
    """make_inputs gave uint8 images whatever the row said (a float32 row tuned the uint8 size,
    which float32 images then missed), and a row without dtype meant float32 for every op."""
    from kernelkit import core
    from kernelkit.autotune.generate import load_shapes

    rows = load_shapes('[["preprocess", [2, 40, 50, 16]], ["preprocess", [2, 40, 50, 16], '
                       '"float32"], ["matmul", [4, 4, 4]]]')
    assert [dtype for _, _, dtype in rows] == ["uint8", "float32", "float32"]
    spec = core.op_spec("preprocess")
    for _, dims, dtype in rows[:2]:
        (images,), _ = spec.make_inputs(dims, dtype, "numpy")
        assert str(images.dtype) == dtype and images.max() > 1
    with pytest.raises(ValueError, match="uint8 or float32"):
        spec.make_inputs((2, 40, 50, 16), "float16", "numpy")


def test_cache_show_compares_with_the_vendor_of_the_datas_own_library(tmp_path, monkeypatch):
    """`cache show` took torch's time as the vendor's for every entry: a numpy matmul that
    numpy's BLAS won showed "8726.14x" vs vendor, where `tune` said 1.00x against numpy-cpu."""
    import os

    monkeypatch.setenv("COLUMNS", "400")
    kk("tune", "--quiet", "--shapes", '[["matmul", [32, 32, 32]]]', "--json",
       str(tmp_path / "rows.json"), cache_dir=tmp_path)
    (row,) = json.loads((tmp_path / "rows.json").read_text())
    assert row["vendor"] == "numpy-cpu"
    env = {**os.environ, "KERNELKIT_CACHE_DIR": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "kernelkit.cli", "cache", "show"],
                           capture_output=True, text=True, env=env, check=True, timeout=600).stdout
    line = next(ln for ln in shown.splitlines() if "matmul|" in ln)
    assert line.rstrip(" │|").split()[-1] == f"{row['ratio']:.2f}x"


def test_tune_says_which_rows_it_timed_now_and_fails_where_nothing_is_stored(tmp_path,
                                                                              monkeypatch):
    """A second `tune` printed the cache's old times under "measured side by side in this run";
    a `tune` whose cache could not be written exited 0 with nothing stored."""
    shapes = '[["matmul", [24, 40, 16]]]'
    monkeypatch.setenv("COLUMNS", "400")
    first = kk("tune", "--quiet", "--shapes", shapes, cache_dir=tmp_path).stdout
    again = kk("tune", "--quiet", "--shapes", shapes, cache_dir=tmp_path).stdout
    assert "24x40x16" in first and "now" in first.split("24x40x16")[1].splitlines()[0]
    assert "before (cache)" in again.split("24x40x16")[1].splitlines()[0]
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = kk("tune", "--quiet", "--shapes", shapes, cache_dir=blocker / "cache", check=False)
    assert r.returncode == 2 and "nothing was stored" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "tuned.json"
    r = kk("tune", "--quiet", "--shapes", shapes, "--out", str(out), cache_dir=blocker / "cache",
           check=False)
    assert r.returncode == 0 and json.loads(out.read_text())["entries"]


def test_error_messages_name_the_command_once(tmp_path):
    """"kernelkit tune: kernelkit: unknown op ..." named kernelkit twice; `explain matmul 1 2`
    printed "matmul takes M K N" without naming the command."""
    r = kk("tune", "--shapes", '[["matmulx", [3, 3, 3]]]', cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and r.stdout.startswith("kernelkit tune: unknown op 'matmulx'")
    r = kk("explain", "matmul", "1", "2", cache_dir=tmp_path, check=False)
    assert r.returncode == 2 and r.stdout.startswith("kernelkit explain: matmul takes M K N")


def test_warmup_that_cannot_write_the_numba_cache_fails_and_says_where_kernels_went(
        tmp_path, monkeypatch, capsys):
    """`kernelkit warmup` into a folder it cannot write (an image build's read-only or misspelt
    path) printed its table and exited 0, the kernels compiled into a temporary folder of its
    own: the image shipped without them. Kernels only loaded through that folder (a job's warmup
    from an image's read-only folder, copied out) are fine: exit 0, with a note. (The folder here
    is a file, which no user can write into, root included; the compile is stubbed: what is
    checked is where it went.)"""
    import tempfile

    from kernelkit import cli, compiling
    from kernelkit.kernels.numba import _cache

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    module = "kernelkit.kernels.numba.matmul"
    how = ["compiled in a child process"]
    monkeypatch.setattr(compiling, "targets", lambda ops, dtypes: [(module, "float32")])
    monkeypatch.setattr(compiling, "warm_here",
                        lambda m, d: compiling.Job(m, d, how=how[0], seconds=0.1))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # (the fallback's parent)
    monkeypatch.setenv("KERNELKIT_NUMBA_CACHE_DIR", str(blocked))
    _cache.cache_dir.cache_clear()
    try:
        assert cli.main(["warmup", "--ops", "matmul", "--json"]) == 1
        out, err = capsys.readouterr()
        json.loads(out)  # (--json's rows stay JSON: the error goes to stderr)
        assert f"cannot write the Numba kernels' folder {blocked / _cache.cache_key()}" in err
        assert str(tmp_path / "tmp") in err
        how[0] = "loaded"
        assert cli.main(["warmup", "--ops", "matmul", "--quiet"]) == 0
        assert "note: " in capsys.readouterr().err
        monkeypatch.setenv("KERNELKIT_NUMBA_CACHE_DIR", str(tmp_path / "numba"))
        _cache.cache_dir.cache_clear()
        how[0] = "compiled"
        assert cli.main(["warmup", "--ops", "matmul", "--quiet"]) == 0
        assert capsys.readouterr().err == ""
    finally:
        _cache.cache_dir.cache_clear()  # (monkeypatch restores the variable; the folder follows)


def test_an_output_file_that_cannot_be_written_is_said_before_the_tuning(tmp_path, monkeypatch,
                                                                         capsys):
    """`tune --json /nonexistent/x.json` tuned every size, then printed only the write error:
    the table was lost (it was written before the table was printed)."""
    from kernelkit import cli
    from kernelkit.autotune import generate

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    tuned = []
    monkeypatch.setattr(generate, "generate", lambda *a, **k: tuned.append(a) or [])
    shapes = '[["matmul", [4, 4, 4]]]'
    for flag in ("--json", "--out"):
        assert cli.main(["tune", "--shapes", shapes, flag, str(tmp_path / "no" / "x.json")]) == 2
        assert f"kernelkit tune: {flag} " in capsys.readouterr().out and not tuned
        assert cli.main(["tune", "--shapes", shapes, flag, str(tmp_path)]) == 2
        assert "is a folder" in capsys.readouterr().out and not tuned
        (tmp_path / "afile").write_text("")
        assert cli.main(["tune", "--shapes", shapes, flag, str(tmp_path / "afile" / "x")]) == 2
        assert "is not a folder" in capsys.readouterr().out and not tuned
        (tmp_path / "dangling").symlink_to(tmp_path / "gone" / "x.json")
        assert cli.main(["tune", "--shapes", shapes, flag, str(tmp_path / "dangling")]) == 2
        assert "does not exist" in capsys.readouterr().out and not tuned
        (tmp_path / "dangling").unlink()
    assert cli.main(["tune", "--shapes", shapes, "--json", str(tmp_path / "rows.json")]) == 0
    assert tuned and json.loads((tmp_path / "rows.json").read_text()) == []


def test_a_shapes_row_with_dims_that_are_not_integers_gets_a_message(tmp_path, monkeypatch,
                                                                      capsys):
    """[8.5, 8, 8] was tuned as 8x8x8 without a word (int(8.5)); True as 1."""
    from kernelkit import cli

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    for dims in ("[8.5, 8, 8]", "[8, true, 8]", '[8, "8", 8]'):
        assert cli.main(["tune", "--shapes", f'[{{"op": "matmul", "dims": {dims}}}]']) == 2
        assert "with integer dims" in capsys.readouterr().out, dims


def test_cache_and_data_bench_errors_name_the_command_once(tmp_path, monkeypatch, capsys):
    """"kernelkit cache: cache export takes one FILE", "kernelkit data-bench: data-bench: no
    image files ..."."""
    from kernelkit import cli

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))
    (tmp_path / "empty").mkdir()
    for args, start in ((["cache", "export"], "kernelkit cache: export takes one FILE"),
                        (["cache", "import"], "kernelkit cache: import takes FILE"),
                        (["cache", "merge", "a"], "kernelkit cache: merge takes A B"),
                        (["cache", "coverage"], "kernelkit cache: coverage takes --shapes"),
                        (["data-bench", "--folder", str(tmp_path / "empty")],
                         "kernelkit data-bench: no image files")):
        assert cli.main(args) == 2, args
        assert capsys.readouterr().out.strip().startswith(start), args


def test_the_help_names_every_command_and_cache_action(capsys):
    from kernelkit import cli

    parser = cli.build_parser()
    for command in ("info", "tune", "warmup", "cache", "explain", "bench", "data-bench"):
        assert command in parser.description.replace(",", " ").rstrip(".").split(), command
    import argparse

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cache_help = next(a.help for a in commands._choices_actions if a.dest == "cache")
    for action in ("show", "clear", "export", "import", "merge", "verify", "path", "coverage"):
        assert action in cache_help, action


def test_ctrl_c_gives_a_line_and_exit_130_not_a_traceback(tmp_path, monkeypatch, capsys):
    from kernelkit import cli
    from kernelkit.autotune import generate

    monkeypatch.setenv("KERNELKIT_CACHE_DIR", str(tmp_path))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(generate, "generate", interrupted)
    assert cli.main(["tune", "--shapes", '[["matmul", [4, 4, 4]]]']) == 130
    out = capsys.readouterr().out
    assert out.startswith("kernelkit tune: interrupted") and "Traceback" not in out


def test_warmup_checks_the_knobs_and_tune_refuses_gpus_it_would_ignore(capsys, monkeypatch):
    """`KERNELKIT_DEVICE=gpu kernelkit warmup` exited 0 (info, tune, explain and cache reject
    the typo); `tune --gpus 2` with one shard ignored --gpus without a word."""
    from kernelkit import cli

    monkeypatch.setenv("KERNELKIT_DEVICE", "gpu")
    assert cli.main(["warmup", "--ops", "matmul", "--dtypes", "float32"]) == 2
    assert "KERNELKIT_DEVICE must be one of" in capsys.readouterr().out
    monkeypatch.delenv("KERNELKIT_DEVICE")
    assert cli.main(["tune", "--gpus", "2", "--preset", "quick"]) == 2
    assert "--gpus 2 spreads shards over GPUs: give --shards" in capsys.readouterr().out


def test_a_warning_shows_its_text_not_runpy_s_frame(tmp_path):
    """`python -m kernelkit cache show` on a damaged cache printed "<frozen runpy>:88:
    CacheWarning: ..." (a user tour): the command prints the category and the text."""
    (tmp_path / "autotune.jsonl").write_text('{"schema": 2, "fp": null, "key": "x"}\n')
    env = dict(os.environ, KERNELKIT_CACHE_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "kernelkit", "cache", "show"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CacheWarning: kernelkit: the autotune cache" in out.stderr
    assert "runpy" not in out.stderr and "cli.py" not in out.stderr
