"""The `kernelkit` command: info, tune, warmup, cache, explain, bench, data-bench."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import core, devices
from . import settings as _settings


def _cache():
    from .autotune.cache import cache_for

    return cache_for(_settings.current().cache_path)


def cmd_info(args: argparse.Namespace, con: Console) -> int:
    cpu = devices.cpu_info()
    gpu = devices.gpu_info()
    s = _settings.current()
    info = {
        "cpu": cpu,
        "gpu": gpu,
        "backends": {f"{b.name} ({b.device})": b.missing() is None and
                     (b.device != "cuda" or devices.cuda_available()) for b in core.backends()},
        "versions": devices.versions(),
        "settings": {"tune": s.tune, "backend": s.backend, "device": s.device},
        "cache": {"path": str(_cache().path), "entries": len(_cache().entries())},
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    t = Table(title="kernelkit info", show_header=False)
    t.add_row("CPU", f"{cpu['model']}  ({cpu['cores']} cores, caches {cpu['caches']})")
    t.add_row("GPU", "none" if gpu is None else
              f"{gpu['name']} (sm {gpu['capability']}, CUDA {gpu['cuda']}, x{gpu['count']})")
    for name, ok in info["backends"].items():
        t.add_row(name, "[green]available[/]" if ok else "[red]not available[/]")
    t.add_row("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    t.add_row("settings", ", ".join(f"{k}={v}" for k, v in info["settings"].items()))
    t.add_row("cache", f"{info['cache']['path']} ({info['cache']['entries']} entries)")
    con.print(t)
    return 0


def cmd_tune(args: argparse.Namespace, con: Console) -> int:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from .autotune import generate

    if args.threads < 0 or args.shards < 1 or args.gpus < 0:
        raise ValueError(f"--threads must be >= 0 (0: leave the pools as they are), --shards >= 1 "
                         f"and --gpus >= 0, got {args.threads}, {args.shards} and {args.gpus}")
    _check_where(args.where)
    if args.gpus > 1 and args.shards <= 1:  # (one shard runs on one device: said, not ignored)
        raise ValueError(f"--gpus {args.gpus} spreads shards over GPUs: give --shards (at least "
                         f"{args.gpus}), or leave --gpus out")
    for flag, path in (("--json", args.json), ("--out", args.out)):
        _check_writable(flag, path)  # (before the tuning, not after it)
    if args.threads and args.shards <= 1:
        generate.pin_threads(args.threads)
    if args.shapes:
        problems, name = generate.load_shapes(args.shapes), f"shapes {args.shapes}"
    else:
        known = generate.presets()
        problems, name = known.get(args.preset), f"preset {args.preset!r}"
        if problems is None:  # (said as the other errors are: "kernelkit tune: ...")
            raise ValueError(f"unknown preset {args.preset!r}; one of {sorted(known)}")
    where = args.where or ("cuda" if devices.cuda_available() else "numpy")
    # One step per measured size, on stderr (stdout keeps the table), off when stderr is not a
    # terminal or with --quiet. The ETA is rich's: the remaining steps at the recent pace.
    err = Console(stderr=True)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err,
                  transient=True, disable=args.quiet or not err.is_terminal) as bar:
        task = bar.add_task(f"tuning {name} ({where})", total=len(problems))

        def starting(job) -> None:
            op, dims, dtype = job
            bar.update(task, description=f"{op} {'x'.join(map(str, dims))} {dtype}")

        rows = generate.generate(problems, where=where, shards=args.shards, gpus=args.gpus,
                                 remeasure=args.remeasure, threads=args.threads,
                                 progress=lambda r: bar.advance(task), starting=starting)
    generate.release_group()  # under torchrun: the ranks end the group together
    t = Table(title=f"kernelkit tune: {name}, data on {where}, cache {_cache().path}")
    for col in ("op", "size", "dtype", "chosen", "runs on", "config", "time", "GFLOP/s",
                "vendor", "vendor time", "speed-up", "timed"):
        t.add_column(col, justify="right" if col in ("time", "GFLOP/s", "vendor time",
                                                     "speed-up") else "left")
    for r in rows:
        backend, _, dev = r.candidate.partition("-")
        gflops = f"{r.flops / r.best_s / 1e9:.1f}" if r.best_s else "-"
        timed = ("now" if r.source == "measured" else "before (cache)") + (
            ", busy machine" if r.provisional else "")
        t.add_row(r.op, "x".join(map(str, r.dims)), r.dtype, backend, dev,
                  json.dumps(r.config, separators=(",", ":")), _us(r.best_s), gflops,
                  r.vendor or "-", _us(r.vendor_s), f"{r.ratio:.2f}x" if r.ratio else "-", timed)
    con.print(t)
    con.print("speed-up = vendor time / chosen time, medians timed side by side: in this run where "
              "'timed' says now, when the cache entry was made where it says before "
              "(--remeasure times them again); 'busy machine': the load was high while it was "
              "timed, so the times are a hint only (the next tuning times it again, up to 3 "
              "busy timings running). A value "
              "below 1 cannot happen unless the vendor failed verification.")
    # (written after the table is printed: a file that fails to write loses nothing shown)
    if args.json:
        Path(args.json).write_text(json.dumps([generate.row_dict(r) for r in rows], indent=1))
    if args.out:
        doc = _cache().export()
        Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True))
    if not _cache().writable and not args.out:
        # (the table is this run's only record: the process, and its in-memory cache, ends)
        con.print(f"[red]kernelkit tune: cannot write the autotune cache {_cache().path}: "
                  "nothing was stored (give --out FILE to keep the entries in an export)")
        return 2
    return 0


def _us(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e6:,.1f} us"


def _check_writable(flag: str, path: str | None) -> None:
    """Raise where `path` cannot be written (its folder missing, not a folder or read-only; a
    read-only file; a symlink to any of those): said before a run whose result it would hold,
    not after."""
    if path is None:
        return
    import os

    target = Path(path).resolve()  # (a symlink, dangling or not: where the write would go)
    if target.is_dir():
        raise ValueError(f"{flag} {path}: is a folder, not a file")
    folder = target.parent
    if not folder.exists():
        raise ValueError(f"{flag} {path}: the folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is not a folder")
    if not os.access(target if target.exists() else folder, os.W_OK):
        raise ValueError(f"{flag} {path}: cannot write there (permission denied)")


def _check_where(where: str | None) -> None:
    """--where cuda needs a CUDA device (else torch's "not compiled with CUDA" AssertionError)."""
    if where == "cuda" and not devices.cuda_available():
        raise ValueError("--where cuda: no CUDA device here (torch sees none); use numpy or torch")


def _written(cache) -> None:
    """Raise where the cache could not write what a command changed (a read-only directory: the
    change stayed in this process's memory, which ends with the command)."""
    if not cache.writable:
        raise OSError(f"cannot write the autotune cache {cache.path}: nothing was changed")


def cmd_cache(args: argparse.Namespace, con: Console) -> int:
    from .autotune import cache as cache_mod

    cache = _cache()
    if args.action == "clear":
        n = len(cache.entries())
        cache.clear()
        _written(cache)
        con.print(f"removed {n} entries from {cache.path}")
        return 0
    if args.action == "path":
        print(cache.path)
        return 0
    if args.action == "coverage":
        from .autotune import generate

        if not args.shapes:
            raise ValueError("coverage takes --shapes FILE")
        rows = generate.coverage(generate.load_shapes(args.shapes))
        if args.json:
            print(json.dumps(rows, indent=1))
            return 0
        t = Table(title=f"coverage of {args.shapes} by {cache.path}")
        for col in ("op", "size", "dtype", "state", "choice"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["op"], "x".join(map(str, r["dims"])), r["dtype"], r["state"],
                      r["choice"] or "-")
        con.print(t)
        counts = {st: sum(r["state"] == st for r in rows)
                  for st in ("measured", "provisional", "predicted", "uncertain", "missing")}
        con.print(", ".join(f"{n} {st}" for st, n in counts.items()))
        return 0
    if args.action == "verify":
        return _verify(cache, args, con)
    if args.action == "export":
        if len(args.files) != 1:
            raise ValueError("export takes one FILE")
        doc = cache.export()
        Path(args.files[0]).write_text(json.dumps(doc, indent=1, sort_keys=True))
        con.print(f"wrote {len(doc['entries'])} entries ({len(doc['header']['fingerprints'])} "
                  f"machine fingerprints) to {args.files[0]}")
        return 0
    if args.action == "import":
        if not args.files:
            raise ValueError("import takes FILE [FILE ...]")
        for f in args.files:
            records, fps = cache_mod.read_export(f)
            held = cache.holds(records)
            older = cache.import_records(records, fps)
            _written(cache)
            mine = sum(1 for fid, _ in records if fid == cache.fp)
            kept = f"; {older} older than this cache's own entries left out" if older else ""
            kept += f"; {held} already in this cache" if held else ""
            con.print(f"imported {len(records) - older - held} entries from {f} (of its "
                      f"{len(records)}: {mine} made on this machine and usable here, "
                      f"{len(records) - mine} kept for other machines{kept})")
        return 0
    if args.action == "merge":
        if len(args.files) < 2 or not args.out:
            raise ValueError("merge takes A B [...] --out C")
        doc = cache_mod.merge_exports(args.files)
        Path(args.out).write_text(json.dumps(doc, indent=1, sort_keys=True))
        con.print(f"merged {len(args.files)} files into {args.out}: {len(doc['entries'])} entries")
        return 0
    entries = cache.entries()
    if args.json:
        print(json.dumps(entries, indent=1))
        return 0
    from .autotune import generate

    ops = {spec.name for spec in core.op_specs()}
    t = Table(title=f"{cache.path} ({len(entries)} entries for this machine)")
    for col in ("key", "choice", "device", "config", "source", "candidates (best time each)",
                "vs vendor"):
        t.add_column(col)
    for key, e in sorted(entries.items()):
        best: dict[str, float] = {}
        for x in e.get("trials", []):
            if "median" in x:
                best[x["candidate"]] = min(best.get(x["candidate"], float("inf")), x["median"])
        choice = e["choice"]["candidate"]
        # the vendor of the data's own library, as `tune` takes it: numpy's for numpy data (it
        # was always torch's)
        prob = e.get("problem") or {}
        if "lib" not in prob:  # (an entry written before entries held their problem: the key's
            # third field is "lib:device")
            fields = key.split("|")
            lib_dev = fields[2].partition(":") if len(fields) > 2 else ("", "", "")
            prob = {"op": fields[0], "lib": lib_dev[0], "device": lib_dev[2]}
        op, lib, dev = prob.get("op"), prob.get("lib", ""), prob.get("device", "")
        vendor = generate.pick_vendor(core.candidates(op) if op in ops else [], lib, dev, best)
        vendor_s = best.get(vendor) if vendor else None
        ratio = f"{vendor_s / best[choice]:.2f}x" if vendor_s and best.get(choice) else "-"
        times = ", ".join(f"{c} {_us(v)}" for c, v in sorted(best.items(), key=lambda kv: kv[1]))
        t.add_row(key, choice, choice.rpartition("-")[2], json.dumps(e["choice"]["config"]),
                  e["choice"]["source"] + (" (provisional)" if e.get("provisional") else ""),
                  times or "-", ratio)
    con.print(t)
    return 0


def _verify(cache, args: argparse.Namespace, con: Console) -> int:
    """`cache verify`: re-time each entry's top two; exit 1 when drift is found (and not fixed)."""
    from rich.progress import Progress

    from .autotune import verify

    if not args.tolerance >= 0:  # (a negative one reported every entry as drifted)
        raise ValueError(f"verify: --tolerance must be a fraction >= 0, got "
                         f"{args.tolerance}")
    keys = [k for k in cache.entries() if all(f in k for f in args.files)] if args.files else None
    err = Console(stderr=True)
    with Progress(console=err, transient=True, disable=args.quiet or not err.is_terminal) as bar:
        task = bar.add_task("verifying", total=len(keys if keys is not None else cache.entries()))
        verdicts = verify.verify_cache(cache, tolerance=args.tolerance, fix=args.fix, keys=keys,
                                       progress=lambda key: bar.advance(task))
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=1))
    else:
        t = Table(title=f"kernelkit cache verify: {cache.path} (tolerance {args.tolerance:.0%})")
        for col in ("key", "status", "winner", "stored", "now", "change", "runner-up",
                    "stored", "now", "why"):
            t.add_column(col, justify="right" if col in ("stored", "now", "change") else "left")
        for v in verdicts:
            status = v.status + (" (fixed)" if v.fixed else "")
            colour = {"ok": "green", "drift": "red"}.get(v.status, "yellow")
            t.add_row(v.key, f"[{colour}]{status}[/]", v.winner, _us(v.winner_stored_s),
                      _us(v.winner_now_s), "-" if v.change is None else f"{v.change:+.0%}",
                      v.runner_up or "-", _us(v.runner_up_stored_s), _us(v.runner_up_now_s),
                      v.reason)
        con.print(t)
        counts = {st: sum(v.status == st for v in verdicts)
                  for st in ("ok", "drift", "busy", "skipped")}
        con.print(", ".join(f"{n} {st}" for st, n in counts.items())
                  + (f"; {sum(v.fixed for v in verdicts)} fixed" if args.fix else ""))
    return 1 if any(v.status == "drift" and not v.fixed for v in verdicts) else 0


def cmd_explain(args: argparse.Namespace, con: Console) -> int:
    import kernelkit

    spec = core.op_spec(args.op)
    if any(d < 0 for d in args.dims):  # (numpy's "negative dimensions are not allowed" named
        # neither the op nor its sizes)
        raise ValueError(f"{args.op}: dims must be >= 0, got {list(args.dims)}")
    dims = spec.cli_inputs(tuple(args.dims))  # (its ValueError: "kernelkit explain: ...")
    dtype = args.dtype or ("uint8" if args.op == "preprocess" else "float32")
    _check_where(args.where)
    if args.sweep < 0:
        raise ValueError(f"--sweep takes a number of sizes >= 1, got {args.sweep}")
    if args.sweep:
        return _sweep(spec, dims, dtype, args, con)
    arrs, kwargs = spec.make_inputs(dims, dtype, args.where)
    if args.activation is not None:
        kwargs["activation"] = args.activation
    print(kernelkit.explain(args.op, *arrs, **kwargs))
    return 0


def _sweep(spec, dims: tuple[int, ...], dtype: str, args: argparse.Namespace, con: Console) -> int:
    """explain at `args.sweep` sizes, doubling the op's scaled dims each step: every candidate's
    predicted (roofline) and measured time, the choice, and where it switches device."""
    import kernelkit

    from .autotune import model

    rows, names, last_device = [], [], None
    for i in range(args.sweep):
        d = spec.scale(dims, 2**i)
        arrs, kwargs = spec.make_inputs(d, dtype, args.where)
        if args.activation is not None:
            kwargs["activation"] = args.activation
        ex = kernelkit.explain(spec.name, *arrs, **kwargs)
        measured: dict[str, float] = {}
        for t in ex.trials:
            if "median" in t:
                measured[t["candidate"]] = min(measured.get(t["candidate"], float("inf")),
                                               t["median"])
        cands = [c for c in core.candidates(spec.name) if c.name not in ex.skipped]
        names = names or [c.name for c in cands]
        device = ex.choice.candidate.rpartition("-")[2]
        switch = last_device is not None and device != last_device
        last_device = device
        rows.append(("x".join(map(str, d)), {c.name: (model.roofline_seconds(c, ex.problem),
                                                      measured.get(c.name)) for c in cands},
                     ex.choice.candidate, switch))
    t = Table(title=f"kernelkit explain {spec.name} --sweep {args.sweep} (data on {args.where}): "
                    "predicted (roofline) / measured")
    t.add_column("size")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("choice")
    for size, times, choice, switch in rows:
        cells = [f"{_us(p)} / {_us(m)}" for p, m in (times.get(n, (None, None)) for n in names)]
        t.add_row(size, *cells, choice + ("  <- crossover" if switch else ""))
    con.print(t)
    return 0


def cmd_bench(args: argparse.Namespace, con: Console) -> int:
    bench = Path(__file__).resolve().parent.parent / "bench"
    if not bench.exists():
        con.print("[red]bench/ is not next to this installation (run from a source checkout)")
        return 2
    cmd = [sys.executable, "-m", "pytest", str(bench), "--benchmark-only", "-q", *args.pytest_args]
    return subprocess.call(cmd)


def cmd_warmup(args: argparse.Namespace, con: Console) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from . import compiling

    # (the knobs checked, as the other commands do: a typo is an error here too)
    s = _settings.current()
    todo = [t for t in compiling.targets(args.ops or None, args.dtypes or None)
            if compiling.forced_allows(t[0], s.backend, s.device)]
    if not todo and (said := compiling.forced_nothing(s.backend, s.device)):
        # KERNELKIT_BACKEND=triton on a machine without a GPU compiled the Numba kernels and
        # said nothing of Triton (exit 0): the knob now picks what warmup compiles, and says so
        forced = " ".join(f"KERNELKIT_{k.upper()}={v}" for k, v in (("backend", s.backend),
                                                                   ("device", s.device)) if v)
        error, why = said
        if error:
            Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {forced}: {why}")
            return 1
        con.print(f"{forced}: {why}")
        return 0
    if not todo:
        asked = " for " + " and ".join(
            f"{what} {' '.join(v)}" for what, v in (("ops", args.ops), ("dtypes", args.dtypes))
            if v) if args.ops or args.dtypes else ""
        con.print(f"nothing to compile{asked}: no backend here compiles such kernels on first use")
        return 0
    done = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total}"), TimeElapsedColumn(), console=con,
                  disable=args.quiet or not con.is_terminal) as bar:
        task = bar.add_task("compiling", total=len(todo))
        for module, dtype in todo:
            bar.update(task, description=f"compiling {module.rsplit('.', 2)[-2]}.{module.rsplit('.', 1)[-1]} {dtype}")
            done.append(compiling.warm_here(module, dtype))
            bar.advance(task)
    rows = [{"module": j.module, "dtype": j.dtype, "how": j.how, "seconds": round(j.seconds, 3),
             **({"error": j.error} if j.error else {})} for j in done]
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not args.quiet:
        t = Table(title="kernelkit warmup: compiled (or loaded from the on-disk cache)")
        for col in ("kernel module", "dtype", "how", "seconds"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["module"], r["dtype"], r.get("error") or r["how"], f"{r['seconds']:.2f}")
        con.print(t)
    numba_jobs = [j for j in done if ".numba." in j.module]
    if numba_jobs and (elsewhere := _numba_cache_elsewhere()):
        wanted, went = elsewhere
        err = Console(stderr=True, soft_wrap=True)
        if any(j.how.startswith("compiled") for j in numba_jobs):
            # an image build that ran warmup into a folder it cannot write shipped no kernels:
            # they compiled into a temporary folder of this user's, silently (exit 0)
            err.print(f"[bold red]error:[/] cannot write the Numba kernels' folder {wanted} "
                      f"(KERNELKIT_NUMBA_CACHE_DIR, else <cache dir>/numba): what compiled went "
                      f"to {went}, which this user's processes on this machine read, but no "
                      f"other machine or image")
            return 1
        # (a job's warmup from an image's read-only folder: its kernels were copied out and
        # loaded, as the README describes; nothing is missing)
        err.print(f"note: {wanted} cannot be written; its kernels were loaded through {went}")
    return 1 if any(j.error for j in done) else 0


def _numba_cache_elsewhere() -> tuple[str, str] | None:
    """(the folder the Numba kernels should be compiled into, where they went) when those differ;
    else None."""
    from .kernels.numba import _cache

    wanted, used = _cache.numba_root() / _cache.cache_key(), _cache.cache_dir()
    if used == wanted:
        return None
    return str(wanted), str(used) if used is not None else "Numba's own cache locations"


def cmd_data_bench(args: argparse.Namespace, con: Console) -> int:
    from rich.progress import Progress

    from .data import report

    if args.folder is None and args.images < 1 or args.batch_size < 1 or args.epochs < 1 \
            or args.size < 1 or (args.threads is not None and args.threads < 1):
        raise ValueError(f"--images (without --folder), --batch-size, --epochs, --size and "
                         f"--threads must be >= 1, got {args.images}, {args.batch_size}, "
                         f"{args.epochs}, {args.size} and {args.threads}")
    with Progress(console=con, transient=True) as progress:
        rows = report.run(images=args.images, folder=args.folder, batch_size=args.batch_size,
                          size=args.size, epochs=args.epochs, model_ms=args.model_ms,
                          decode_threads=args.threads, progress=progress)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    t = Table(title="kernelkit.data.Loader: ms per image per stage (stages overlap)")
    for col in ("epoch", "images/s", "decode", "decode cpu", "preprocess", "copy", "wait",
                "wait fraction"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["epoch"]), f"{r['images_per_s']:.0f}",
                  *(f"{r[k + '_ms_per_image']:.2f}" for k in ("decode", "decode_cpu",
                                                             "preprocess", "copy", "wait")),
                  f"{r['wait_fraction']:.2f}")
    con.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kernelkit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("info", help="backends and devices found, versions, cache path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_info)

    s = sub.add_parser("tune", help="tune this machine for a preset of sizes and print the choices")
    s.add_argument("--preset", default="quick",
                   help="quick (the default), square, mlp, odd, transformer (matmul); resnet50 "
                        "(conv2d forward and both backward ops); imagenet (preprocess)")
    s.add_argument("--quiet", action="store_true",
                   help="no progress bar (it is also off when stderr is not a terminal)")
    s.add_argument("--where", choices=("numpy", "torch", "cuda"),
                   help="where the inputs live (default: cuda when there is a GPU, else numpy)")
    s.add_argument("--shards", type=int, default=1, help="worker processes (1 on a CPU)")
    s.add_argument("--gpus", type=int, default=0, help="spread shards over this many GPUs")
    s.add_argument("--threads", type=int, default=0, help="pin every CPU thread pool to N (split evenly between --shards workers)")
    s.add_argument("--remeasure", action="store_true", help="measure even where cached")
    s.add_argument("--shapes", help="tune these sizes instead of a preset: a JSON file of "
                                    "{op, dims, dtype} rows (dims as `kernelkit explain` takes), "
                                    "or that JSON list itself")
    s.add_argument("--out", help="also export the resulting cache to this file")
    s.add_argument("--json", help="also write the rows to this file")
    s.set_defaults(fn=cmd_tune)

    s = sub.add_parser("cache", help="show, clear, export, import, merge, verify autotune "
                                     "caches; their path; a shapes file's coverage")
    s.add_argument("action", nargs="?", default="show",
                   choices=("show", "clear", "path", "export", "import", "merge", "coverage",
                            "verify"), help="what to do (default: show)")
    s.add_argument("files", nargs="*", help="export FILE | import FILE... | merge A B... | "
                                            "verify [TEXT...]: only keys containing every TEXT")
    s.add_argument("--out", help="merge: the merged file")
    s.add_argument("--shapes", help="coverage: a shapes file (JSON rows of op, dims, dtype)")
    s.add_argument("--tolerance", type=float, default=0.25,
                   help="verify: how far (a fraction) the winner's time may move before the "
                        "entry counts as drifted (default 0.25)")
    s.add_argument("--fix", action="store_true",
                   help="verify: rewrite drifted entries with the new timings and winner")
    s.add_argument("--quiet", action="store_true", help="verify: no progress bar")
    s.add_argument("--json", action="store_true",
                   help="show, coverage, verify: print JSON instead of a table")
    s.set_defaults(fn=cmd_cache)

    specs = [sp for sp in core.op_specs() if sp.cli_inputs is not None]
    s = sub.add_parser("explain", help="candidates, skips, times and the choice for one call")
    s.add_argument("op", choices=[sp.name for sp in specs])
    s.add_argument("dims", type=int, nargs="+",
                   help="; ".join(f"{sp.name}: {sp.cli_dims}" for sp in specs)
                   + " (conv2d padding R // 2)")
    s.add_argument("--dtype", default=None, help="float32 (uint8 images for preprocess)")
    s.add_argument("--where", choices=("numpy", "torch", "cuda"), default="numpy")
    s.add_argument("--activation", default=None)
    s.add_argument("--sweep", type=int, default=0, metavar="N",
                   help="explain N sizes, doubling the size each step; show the crossover")
    s.set_defaults(fn=cmd_explain)

    s = sub.add_parser("warmup", help="compile every kernel this machine can run, ahead of the "
                                      "first call (into the on-disk cache every process reads)")
    s.add_argument("--ops", nargs="+", help="only these ops (default: all)")
    s.add_argument("--dtypes", nargs="+", help="only these dtypes (default: each backend's own)")
    s.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(fn=cmd_warmup)


    s = sub.add_parser("data-bench", help="time kernelkit.data.Loader: images/s, the per-stage "
                                          "split and the wait fraction")
    s.add_argument("--images", type=int, default=192, help="JPEGs to generate (default 192)")
    s.add_argument("--folder", help="read the images from this folder instead")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--epochs", type=int, default=3)
    s.add_argument("--threads", type=int, default=None, help="decode threads (default: cores)")
    s.add_argument("--model-ms", type=float, default=0.0,
                   help="a consumer step of this many ms per batch, to measure the overlap")
    s.add_argument("--json", help="also write the rows to this file")
    s.set_defaults(fn=cmd_data_bench)

    s = sub.add_parser("bench", help="run the pytest-benchmark suites in bench/")
    s.add_argument("pytest_args", nargs=argparse.REMAINDER)
    s.set_defaults(fn=cmd_bench)
    return p


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command's user reads it: its category and text. The location Python
    prints was a frame of runpy (`<frozen runpy>:88:`) or of kernelkit, never the user's."""
    return f"{category.__name__}: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `kernelkit bench -k NAME`: what follows `bench` goes to pytest as it is, options included
    # (argparse's REMAINDER alone would reject a leading "-k")
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "cache" and not any(e.startswith("-") for e in extra):
        # `cache merge --out C A B`: argparse matched the files (nargs="*") to nothing before
        # the option and leaves those after it over; they are the files all the same
        args.files, extra = [*args.files, *extra], []
    if extra:
        if args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.pytest_args = [*extra, *args.pytest_args]
    con = Console(width=None if sys.stdout.isatty() else 160)
    try:
        with warnings.catch_warnings():  # (restores the hook for a caller of main())
            # the format, not the show hook: a caller recording warnings (pytest.warns,
            # catch_warnings(record=True)) still gets them, unformatted
            warnings.formatwarning = _format_warning
            return args.fn(args, con)
    except (ValueError, TypeError, OSError) as exc:  # (OSError: a file to read or write)
        # escaped: a message's own brackets ("[op, dims, dtype]") are not rich markup
        # (a message that names kernelkit or the command already is not prefixed twice)
        msg = str(exc).removeprefix("kernelkit: ").removeprefix(f"{args.command}: ")
        con.print(f"[red]kernelkit {args.command}: {escape(msg)}")
        return 2
    except KeyboardInterrupt:  # (Ctrl-C: a line, not a traceback through the tuner's threads)
        kept = args.command == "tune" and _cache().writable  # (else it tuned in memory)
        con.print(f"[red]kernelkit {args.command}: interrupted"
                  + (" (what was measured before is in the cache)" if kept else ""))
        return 130
    except MemoryError as exc:  # (numpy's own names the bytes: an `explain` of a huge size)
        con.print(f"[red]kernelkit {args.command}: out of memory: "
                  f"{escape(str(exc) or 'the inputs do not fit')}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
