"""torchrun with 2 ranks (gloo, CPU): ahead-of-time tuning sharded over the ranks ends with every
rank holding every entry, and a miss at run time is decided once and shared, so the ranks
always make the same choices. Each rank has its own cache folder, as on two machines."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from torchrun import run_two_ranks

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["KERNELKIT_CACHE_DIR"] = os.path.join(base, f"cache-{rank}")
    import numpy as np
    import kernelkit
    from kernelkit.autotune import generate, tuner
    from kernelkit.autotune.cache import cache_for
    from kernelkit.settings import current

    problems = [("matmul", d, "float32") for d in ((7, 13, 5), (97, 61, 89), (33, 40, 20),
                                                      (3, 100, 3))]
    rows = generate.generate(problems, threads=2)  # initialises the gloo group (torchrun's env)
    import torch.distributed as dist
    cache = cache_for(current().cache_path)
    with kernelkit.use(tune="pinned"):  # from the gathered cache only: no measuring, no writing
        pinned = [kernelkit.explain("matmul", *generate.make_inputs("matmul", d, "float32",
                                                                    "numpy")[0]).choice.candidate
                  for _, d, _ in problems]
    # a miss at run time: decided by one rank, shared
    rng = np.random.default_rng(rank)  # different data per rank, same shape
    with kernelkit.use(tune="measure"):  # (auto might take a confident model and store nothing)
        kernelkit.matmul(rng.standard_normal((45, 31), dtype=np.float32),
                         rng.standard_normal((31, 29), dtype=np.float32))
    runtime = {k[1]: v.to_dict() for k, v in tuner._memo.items()}
    with open(os.path.join(base, f"rank{rank}.json"), "w") as f:
        json.dump({"rows": len(rows), "entries": sorted(cache.entries()), "pinned": pinned,
                   "runtime": runtime, "mine": sum(r.threads > 0 for r in rows)}, f)
    dist.destroy_process_group()
""")


def test_two_ranks_agree(tmp_path):
    run_two_ranks(RANK_SCRIPT, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["rows"] == ranks[1]["rows"] == 4  # every rank sees every row
    # the 4 tuned sizes and the run-time miss, on both ranks
    assert len(ranks[0]["entries"]) == 5 and ranks[0]["entries"] == ranks[1]["entries"]
    assert ranks[0]["pinned"] == ranks[1]["pinned"]
    assert ranks[0]["runtime"] == ranks[1]["runtime"] and len(ranks[0]["runtime"]) == 1


CLI_RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["KERNELKIT_CACHE_DIR"] = os.path.join(base, f"cache-{rank}")
    from kernelkit import cli
    code = cli.main(["tune", "--shapes", os.path.join(base, "shapes.json"), "--quiet"])
    import torch.distributed as dist
    with open(os.path.join(base, f"cli{rank}.json"), "w") as f:
        json.dump({"code": code, "group_alive": dist.is_initialized()}, f)
""")


def test_kernelkit_tune_under_torchrun_ends_the_group_it_made(tmp_path):
    """`kernelkit tune` under torchrun made a gloo group and left it alive at exit; one rank then
    aborted in a loaded CI run ("terminate called without an active exception")."""
    (tmp_path / "shapes.json").write_text(json.dumps(
        [{"op": "matmul", "dims": [9, 7, 5], "dtype": "float32"}]))
    run_two_ranks(CLI_RANK_SCRIPT, tmp_path, "cli_rank.py")
    for i in range(2):
        assert json.loads((tmp_path / f"cli{i}.json").read_text()) == {"code": 0,
                                                                        "group_alive": False}


class _Group:
    """Stands in for torch.distributed: records what release_group asks of it."""

    def __init__(self):
        self.calls: list[str] = []

    def is_initialized(self) -> bool:
        return True

    def barrier(self) -> None:
        self.calls.append("barrier")

    def destroy_process_group(self) -> None:
        self.calls.append("destroy")


def test_release_group_ends_only_a_group_kernelkit_made(monkeypatch):
    from kernelkit.autotune import generate

    theirs = _Group()
    monkeypatch.setattr(generate, "_MADE_GROUP", [False])
    generate.release_group(theirs)
    assert theirs.calls == []  # the caller's group: theirs to end
    ours = _Group()
    monkeypatch.setattr(generate, "_MADE_GROUP", [True])
    generate.release_group(ours)
    generate.release_group(ours)  # once
    assert ours.calls == ["barrier", "destroy"]


SHARED_RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["KERNELKIT_CACHE_DIR"] = os.path.join(base, "cache-shared")  # one folder, both
    import numpy as np
    import kernelkit
    from kernelkit.autotune import generate
    from kernelkit.autotune.cache import cache_for
    from kernelkit.settings import current

    generate.generate([("matmul", d, "float32") for d in ((7, 13, 5), (33, 40, 20), (3, 100, 3))],
                      threads=2)
    import torch.distributed as dist
    with kernelkit.use(tune="measure"):  # a miss at run time, decided by one rank
        kernelkit.matmul(np.ones((45, 31), np.float32), np.ones((31, 29), np.float32))
    dist.barrier()
    if rank == 0:
        with open(os.path.join(base, "shared.json"), "w") as f:
            json.dump({"path": str(cache_for(current().cache_path).path)}, f)
    dist.destroy_process_group()
""")


def test_ranks_sharing_one_cache_file_write_each_entry_once(tmp_path):
    """torchrun ranks of one machine share its cache folder (the default: the user's cache
    dir). Each rank appended every gathered entry and every broadcast run-time choice to the
    one file: 2 ranks wrote each line twice (8 ranks, 8 times)."""
    run_two_ranks(SHARED_RANK_SCRIPT, tmp_path, "shared_rank.py")
    path = json.loads((tmp_path / "shared.json").read_text())["path"]
    lines = Path(path).read_text().splitlines()
    keys = [json.loads(line)["key"] for line in lines if "\"key\"" in line]
    assert len(keys) == 4 and len(set(keys)) == 4, keys  # 3 tuned, 1 run-time miss: once each


UNEVEN_RANK_SCRIPT = textwrap.dedent("""
    import datetime, json, os, sys, time
    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["KERNELKIT_CACHE_DIR"] = os.path.join(base, f"cache-{rank}")
    os.environ["KERNELKIT_COMPILE"] = "background"  # (the user's default)
    import numpy as np
    import torch
    import torch.distributed as dist
    import kernelkit
    from kernelkit import settings
    from kernelkit.autotune import tuner
    from kernelkit.autotune.cache import cache_for
    from kernelkit.settings import current

    # a hang fails in a minute, not gloo's default 30
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rng = np.random.default_rng(rank)

    def mm(m, k=64, n=48):
        return kernelkit.matmul(rng.standard_normal((m, k), dtype=np.float32),
                                rng.standard_normal((k, n), dtype=np.float32))

    # 1. a background compile finishing on one rank first: that rank's plan asks again (and,
    # deterministically, rank 0 asking again for every size it knows, as after a fork)
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    for i in range(50):  # (the same count on both ranks: the loop's own collectives match)
        kernelkit.matmul(a, b)
        dist.all_reduce(torch.ones(1))
        time.sleep(0.01)
    if rank == 0:
        tuner.clear_memo()
        settings.new_epoch()
        for _ in range(3):
            kernelkit.matmul(a, b)
    dist.barrier()
    # 2. validation on rank 0 only
    # (stages 2 and 3 measure with their kernels compiled first: final choices, whatever the
    # background compile reached)
    if rank == 0:
        with kernelkit.use(tune="measure", compile="foreground"):
            mm(100, 32, 16)
    dist.barrier()
    # 3. per-rank sizes missed at once, then each rank the other's
    mine, theirs = (8, 300) if rank == 0 else (300, 8)
    with kernelkit.use(tune="measure", compile="foreground"):
        mm(mine)
        dist.barrier()
        mm(theirs)
    dist.barrier()
    cache = cache_for(current().cache_path)
    entries = {k: e.get("problem", {}).get("shapes") for k, e in cache.entries().items()}
    memo = {k[1]: v.to_dict() for k, v in tuner._memo.items() if "x48|" in k[1]}
    with open(os.path.join(base, f"uneven{rank}.json"), "w") as f:
        json.dump({"entries": entries, "memo": memo}, f)
    dist.destroy_process_group()
""")


def test_ranks_that_miss_other_sizes_or_at_other_times_never_wait_for_each_other(tmp_path):
    """A miss was decided on rank 0 and broadcast, so every rank had to miss the same size at
    the same moment. A background compile finishing on rank 0 first (its plan asked again), a
    validation pass on rank 0 only, or per-rank sizes each hung both ranks until gloo's
    timeout; two sizes missed at once gave rank 1 rank 0's choice and cache entry under its own
    key. Misses are now shared through the job's store."""
    run_two_ranks(UNEVEN_RANK_SCRIPT, tmp_path, "uneven_rank.py")
    ranks = [json.loads((tmp_path / f"uneven{i}.json").read_text()) for i in range(2)]
    for rank in ranks:
        for key, shapes in rank["entries"].items():  # each entry measured its own key's size
            if shapes and "x48|" in key:
                m, m_key = shapes[0][-2], int(key.split("|")[4].split("x")[1])  # (bucketed)
                assert m <= m_key < 2 * m, (key, shapes)
    # both sizes decided once and run the same everywhere
    assert len(ranks[0]["memo"]) == 2 and ranks[0]["memo"] == ranks[1]["memo"]
