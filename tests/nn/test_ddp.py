"""DDP on CPU (gloo, 2 processes via torchrun): a patched conv model trained a few steps on half a
batch per rank ends with the same parameters as plain torch trained in one process on the whole
batch, and both ranks ran the same choices (each miss is decided by one rank and shared: the
sequence of the tuner's choices, configs and sources included, is identical; each rank has its
own cache folder, as on two machines). The kernelkit kernels are forced (numba), so the forward
and backward products inside DDP really are kernelkit's."""

from __future__ import annotations

import json
import textwrap

from torchrun import run_two_ranks

import kernelkit
import kernelkit.nn as knn

RANK_SCRIPT = textwrap.dedent("""
    import json, os, sys
    base = sys.argv[1]
    rank = int(os.environ["RANK"])
    os.environ["KERNELKIT_CACHE_DIR"] = os.path.join(base, f"cache-{rank}")
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    import kernelkit
    import kernelkit.nn as knn
    from kernelkit.autotune import tuner

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    seen = []  # every choice the tuner made on this rank, in order
    real_choose = tuner.choose

    def choose(problem, *args, **kwargs):
        c = real_choose(problem, *args, **kwargs)
        seen.append([problem.op, [list(s) for s in problem.shapes], c.candidate, c.config,
                     c.source])
        return c

    tuner.choose = choose

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 10))

    def train(net, x, y, steps=3):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        losses = []
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return losses

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    net = model()
    swapped = len(knn.patch(net).swapped)
    ddp = nn.parallel.DistributedDataParallel(net)
    mine = slice(4 * rank, 4 * rank + 4)
    with kernelkit.use(backend="numba"):
        losses = train(ddp, x[mine], y[mine])
    ref = model()  # plain torch, one process, the whole batch
    ref_losses = train(ref, x, y)
    diff = max((p - q).abs().max().item() for p, q in zip(net.parameters(), ref.parameters()))
    with open(os.path.join(base, f"rank{rank}.json"), "w") as f:
        json.dump({"swapped": swapped, "param_diff": diff, "losses": losses,
                   "ref_losses": ref_losses,
                   "choices": seen,
                   "where": sorted([n, list(s), r] for n, s, r in knn.where(net))}, f)
    dist.destroy_process_group()
""")


def _share_compiled_kernels(tmp_path) -> None:
    """The ranks' own cache folders get this session's compiled Numba kernels (a link to its
    numba folder, keyed by the kernel sources), loaded once here: without them each rank would
    compile every kernel cold (a minute and a half here)."""
    import torch
    from torch import nn

    from kernelkit.kernels.numba import _cache

    numba_dir = _cache.cache_dir()
    for rank in range(2):
        (tmp_path / f"cache-{rank}").mkdir()
        if numba_dir is not None:
            (tmp_path / f"cache-{rank}" / "numba").symlink_to(numba_dir.parent)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    knn.patch(net)
    with kernelkit.use(backend="numba"):
        net(torch.randn(2, 3, 4, 4)).sum().backward()


def test_ddp_two_ranks_match_one_process_and_make_the_same_choices(tmp_path):
    _share_compiled_kernels(tmp_path)
    run_two_ranks(RANK_SCRIPT, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    for rank in ranks:
        assert rank["swapped"] == 3
        # DDP's averaged half-batch gradients = the whole batch's: the same parameters
        assert rank["param_diff"] < 1e-5, rank
        assert rank["losses"][-1] < rank["losses"][0]
    # the mean of the ranks' first losses is the one-process loss on the whole batch
    first = (ranks[0]["losses"][0] + ranks[1]["losses"][0]) / 2
    assert abs(first - ranks[0]["ref_losses"][0]) < 1e-5
    # every layer ran kernelkit's kernel, and both ranks made the same choices, configs included
    assert {r for _, _, r in ranks[0]["where"]} == {"numba-cpu"}
    assert ranks[0]["where"] == ranks[1]["where"]
    assert ranks[0]["choices"] and ranks[0]["choices"] == ranks[1]["choices"]
    ops = {op for op, *_ in ranks[0]["choices"]}
    assert {"conv2d", "conv2d_backward_input", "conv2d_backward_weight", "matmul"} <= ops
