"""Device choice with the transfer counted, tested without a GPU.

Devices are described by a timing model (launch latency, throughput) and a link (latency,
bandwidth). Each fake kernel advances a simulated clock by what the model says its run costs,
including both copies when it runs away from the data (as the real plans do: copy in, run, copy
back), so the tuner's measurement sees exactly the modelled times. The decisions must switch from
the CPU to the GPU once as sizes grow, for all three ops, and data already on the GPU stays there
unless the CPU wins even after both copies. The cost model (roofline, no measurement) must make
the same decisions from the same constants.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kernelkit import core, devices
from kernelkit.autotune import model, timing, tuner
from kernelkit.autotune.cache import fingerprint
from kernelkit.core import Candidate, Problem
from kernelkit.settings import Settings

LINK_LATENCY, LINK_BW = model.LINK_LATENCY_S, model.LINK_BYTES_PER_S


@dataclasses.dataclass(frozen=True)
class Device:
    launch: float  # s per call (launch + host overhead)
    rate: float  # flop/s
    bw: float  # bytes/s of its own memory

    def seconds(self, problem: Problem, device: str) -> float:
        t = self.launch + problem.flops / self.rate + problem.nbytes / self.bw
        if device != problem.device:  # both copies: the inputs over, the result back
            t += 2 * LINK_LATENCY + problem.nbytes / LINK_BW
        return t


def candidates(op: str, clock: timing.SimulatedClock, cpu: Device, gpu: Device) -> list[Candidate]:
    def fake(device: str, spec: Device) -> Candidate:
        def launcher(p, config):
            return lambda: clock.advance(spec.seconds(p, device)) or "ok"

        return Candidate(op, "model", device, "numpy", lambda p: None, lambda p: [{}], launcher,
                         vendor=device == "cpu", roofline=(spec.launch, spec.rate, spec.bw))

    return [fake("cpu", cpu), fake("cuda", gpu)]


def problems(op: str) -> list[Problem]:
    """Real Problems of growing size, from the op's own spec (numpy data on the CPU)."""
    spec = core.op_spec(op)
    sizes = {
        "matmul": [(n, n, n) for n in (4, 16, 64, 256, 1024, 4096)],
        "conv2d": [(1, c, 28, c, 3, 1, 1, 1) for c in (1, 4, 16, 64, 256, 1024)],
        "preprocess": [(n, 64, 80, 32) for n in (1, 4, 16, 64, 256)],
    }[op]
    out = []
    for dims in sizes:
        args, kwargs = spec.make_inputs(dims, "uint8" if op == "preprocess" else "float32", "numpy")
        out.append(spec.prepare(*args, **kwargs).problem)
    return out


@pytest.fixture
def fake_gpu(monkeypatch):
    fingerprint()  # this machine's real validators (no GPU), read before the GPU is faked
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    monkeypatch.setattr(tuner, "cuda_sync", lambda: None)  # the clock is the only device here
    tuner.clear_memo()
    yield
    tuner.clear_memo()


def decide_devices(op, probs, cpu, gpu, tmp_path, mode, where) -> list[str]:
    clock = timing.SimulatedClock()
    cands = candidates(op, clock, cpu, gpu)
    chosen = []
    with timing.use_clock(clock):
        for i, p in enumerate(probs):
            if where == "cuda":
                p = dataclasses.replace(p, lib="torch", device="cuda")
            d = tuner.decide(p, cands, lambda c, cfg, p=p: c.launcher(p, cfg), lambda out: None,
                             Settings(cache_dir=str(tmp_path / f"{mode}-{where}-{i}"), tune=mode))
            chosen.append(d.choice.candidate.rpartition("-")[2])
    return chosen


def switches(chosen: list[str]) -> int:
    return sum(a != b for a, b in zip(chosen, chosen[1:]))


CPU = Device(launch=3e-6, rate=5e10, bw=5e9)
GPU = Device(launch=2e-5, rate=2e13, bw=2e12)
SLOW_LAUNCH_GPU = Device(launch=3e-4, rate=2e13, bw=2e12)


@pytest.mark.parametrize("op", ["matmul", "conv2d", "preprocess"])
@pytest.mark.parametrize("mode", ["measure", "model"])
def test_data_on_the_cpu_moves_to_the_gpu_once_it_pays(op, mode, fake_gpu, tmp_path):
    probs = problems(op)
    chosen = decide_devices(op, probs, CPU, GPU, tmp_path, mode, "cpu")
    assert chosen[0] == "cpu" and chosen[-1] == "cuda" and switches(chosen) == 1, chosen
    # the switch is where the model says both copies are paid for, no earlier and no later
    expect = ["cuda" if GPU.seconds(p, "cuda") < CPU.seconds(p, "cpu") else "cpu" for p in probs]
    assert chosen == expect


@pytest.mark.parametrize("op", ["matmul", "conv2d", "preprocess"])
@pytest.mark.parametrize("mode", ["measure", "model"])
def test_data_on_the_gpu_stays_unless_the_cpu_wins_after_both_copies(op, mode, fake_gpu, tmp_path):
    probs = [dataclasses.replace(p, lib="torch", device="cuda") for p in problems(op)]
    assert decide_devices(op, problems(op), CPU, GPU, tmp_path, mode, "cuda") == ["cuda"] * len(probs)
    # a GPU with a slow launch: small problems go to the CPU even after both copies
    chosen = decide_devices(op, problems(op), CPU, SLOW_LAUNCH_GPU, tmp_path / "slow", mode, "cuda")
    expect = ["cuda" if SLOW_LAUNCH_GPU.seconds(p, "cuda") < CPU.seconds(p, "cpu") else "cpu"
              for p in probs]
    assert chosen == expect and chosen[0] == "cpu" and chosen[-1] == "cuda"
    # and the same GPU keeps data that lives on the CPU on the CPU for longer
    on_cpu = decide_devices(op, problems(op), CPU, SLOW_LAUNCH_GPU, tmp_path / "c", mode, "cpu")
    assert on_cpu.index("cuda") >= chosen.index("cuda")


def test_the_simulated_clock_is_what_the_timer_reads():
    clock = timing.SimulatedClock()
    with timing.use_clock(clock):
        t = timing.measure(lambda: clock.advance(0.125), min_reps=3, budget_s=0.0)
    assert t.median == 0.125 and t.spread == 0.0 and t.count == 3
    assert np.isclose(timing._clock(), timing._clock())  # the real clock is back


def _matmul_problem(n: int) -> Problem:
    spec = core.op_spec("matmul")
    args, kwargs = spec.make_inputs((n, n, n), "float32", "numpy")
    return spec.prepare(*args, **kwargs).problem


def _decide(p, cands, settings):
    return tuner.decide(p, cands, lambda c, cfg: c.launcher(p, cfg), lambda out: None, settings)


def test_the_model_extrapolates_each_candidate_not_the_nearest_winner(fake_gpu, tmp_path):
    """The finding: with 16 and 64 measured (the CPU won both), the model sent 4096 to the CPU,
    24x slower than the GPU. Each candidate's own fit says where it goes."""
    clock = timing.SimulatedClock()
    cands = candidates("matmul", clock, CPU, GPU)
    s = Settings(cache_dir=str(tmp_path), tune="measure")
    with timing.use_clock(clock):
        for n in (16, 64):
            assert _decide(_matmul_problem(n), cands, s).choice.candidate == "model-cpu"
        big = _matmul_problem(4096)
        choice = _decide(big, cands, Settings(cache_dir=str(tmp_path), tune="model")).choice
    assert choice.candidate == "model-cuda" and choice.source == "model"
    assert CPU.seconds(big, "cpu") > 20 * GPU.seconds(big, "cuda")


def test_auto_takes_a_confident_prediction_without_measuring(fake_gpu, tmp_path, monkeypatch):
    clock = timing.SimulatedClock()
    cands = candidates("matmul", clock, CPU, GPU)
    with timing.use_clock(clock):
        for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):  # a fitted family
            _decide(_matmul_problem(n), cands, Settings(cache_dir=str(tmp_path), tune="measure"))
        calls = []
        real = tuner.measure_all
        monkeypatch.setattr(tuner, "measure_all", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
        auto = Settings(cache_dir=str(tmp_path), tune="auto")
        small, big = _decide(_matmul_problem(12), cands, auto), _decide(_matmul_problem(3000), cands, auto)
    assert (small.choice.candidate, small.choice.source) == ("model-cpu", "model")
    assert (big.choice.candidate, big.choice.source) == ("model-cuda", "model")
    assert calls == []


def test_auto_measures_only_what_the_model_cannot_tell_apart(fake_gpu, tmp_path, monkeypatch):
    clock = timing.SimulatedClock()
    # a third candidate, always 100x slower than the CPU one: never worth measuring again
    slow = Device(CPU.launch * 100, CPU.rate / 100, CPU.bw / 100)
    cands = candidates("matmul", clock, CPU, GPU)
    cands.append(dataclasses.replace(candidates("matmul", clock, slow, slow)[0], backend="slow"))
    with timing.use_clock(clock):
        for n in (8, 64, 512, 4096):
            _decide(_matmul_problem(n), cands, Settings(cache_dir=str(tmp_path), tune="measure"))
        calls = []
        real = tuner.measure_all
        monkeypatch.setattr(tuner, "measure_all", lambda *a, **kw: calls.append(a[1]) or real(*a, **kw))
        # near the crossover (between 64 and 512) the CPU and GPU fits overlap
        crossover = next(n for n in range(64, 513, 8)
                         if GPU.seconds(_matmul_problem(n), "cuda") < CPU.seconds(_matmul_problem(n), "cpu"))
        d = _decide(_matmul_problem(crossover), cands, Settings(cache_dir=str(tmp_path), tune="auto"))
    assert d.choice.source == "measured" and len(calls) == 1
    assert sorted(c.name for c in calls[0]) == ["model-cpu", "model-cuda"]  # not the slow one


def test_configs_are_ranked_by_the_family_not_by_list_position(tmp_path):
    """A config space in shipping order: the config that won at the neighbouring size is timed
    first, and a cap drops the tail, not the winner."""
    configs = [{"t": i} for i in range(10)]
    clock = timing.SimulatedClock()

    def launcher(p, cfg):  # config 8 is the fastest
        return lambda: clock.advance(1e-4 * (1 if cfg["t"] == 8 else 2)) or "ok"

    cand = Candidate("matmul", "many", "cpu", "numpy", lambda p: None,
                     lambda p: [dict(c) for c in configs], launcher)
    s = Settings(cache_dir=str(tmp_path), tune="measure")
    with timing.use_clock(clock):
        first = _decide(_matmul_problem(32), [cand], s)
    assert first.choice.config == {"t": 8} and len(first.trials) == 10  # measure: every config
    key = tuner.make_key(_matmul_problem(100))
    from kernelkit.autotune.cache import cache_for

    ranked = model.ranked_configs(cand, _matmul_problem(100), key, cache_for(tmp_path).entries(), 3)
    assert ranked == [{"t": 8}, {"t": 0}, {"t": 1}]


def test_the_prior_counts_the_switch_to_another_array_library():
    """Before anything is measured, a small product on torch tensors goes to torch, not to Numba
    (which would take zero-copy numpy views in and out, and the op's generic plan around them:
    30 us against torch's 5-8 us on a 32^3 product); on numpy arrays Numba pays no such switch."""
    import torch

    from kernelkit.ops import matmul as op

    a = np.ones((32, 32), np.float32)
    cands = [c for c in core.candidates("matmul") if c.name in ("numba-cpu", "torch-cpu")]
    torch_problem = op.prepare(torch.from_numpy(a), torch.from_numpy(a)).problem
    numpy_problem = op.prepare(a, a).problem
    numba = next(c for c in cands if c.name == "numba-cpu")
    switch = model.roofline_seconds(numba, torch_problem) - model.roofline_seconds(numba,
                                                                                 numpy_problem)
    assert switch == pytest.approx(model.LIBRARY_SWITCH_S)
    key = tuner.make_key(torch_problem, "")
    preds = model.predict_times(key, torch_problem, cands, {})
    assert preds[0].candidate == "torch-cpu"


def _conv_entry(c: int, hw: int, times: dict[str, float]) -> tuple[Problem, dict]:
    spec = core.op_spec("conv2d")
    args, kwargs = spec.make_inputs((1, c, hw, c, 3, 1, 1, 1), "float32", "numpy")
    p = spec.prepare(*args, **kwargs).problem
    key = tuner.make_key(p)
    entry = {"choice": {"candidate": min(times, key=times.get), "config": {}, "source": "measured"},
             "trials": [{"candidate": n, "config": {}, "median": t} for n, t in times.items()],
             "problem": {"op": p.op, "shapes": [list(s) for s in p.shapes], "flops": p.flops,
                         "nbytes": p.nbytes, "family": key.family}}
    return p, {str(key): entry}


def test_an_unaligned_size_is_not_predicted_from_aligned_ones_with_confidence():
    """The oracle's finding: torch's conv at 24 channels ran 1.6x what its 16- and 32-channel
    neighbours predicted (oneDNN blocks channels by 16), so the model, sure that torch would win,
    skipped measuring a size Numba won. Measured only at aligned channel counts, the model is
    still sure at an aligned size between them, but not at an unaligned one."""
    cands = [Candidate("conv2d", name, "cpu", "numpy", lambda p: None, lambda p: [{}],
                       lambda p, c: None) for name in ("vendor", "kernel")]
    entries = {}
    for c, hw in ((16, 56), (32, 28), (64, 14), (128, 7)):
        # (the same work at each: C^2 * HW^2 is constant)
        p, e = _conv_entry(c, hw, {"vendor-cpu": 1e-4, "kernel-cpu": 1.6e-4})
        entries.update(e)
    assert model.lane_alignment("conv2d", p.shapes) == model.ALIGN_CAP
    for c, hw, sure in ((48, 20, True), (24, 40, False), (40, 24, False)):
        q, _ = _conv_entry(c, hw, {"vendor-cpu": 1.0})
        assert model.lane_alignment("conv2d", q.shapes) == (model.ALIGN_CAP if sure else 3)
        preds = model.predict_times(tuner.make_key(q), q, cands, entries)
        assert preds[0].candidate == "vendor-cpu"
        assert model.confident(preds) is sure, (c, preds)
    # matmul: K and N are its lanes; a K of 3 is its own class
    assert model.lane_alignment("matmul", ((1, 1000, 3), (1, 3, 1000))) == 0
    assert model.lane_alignment("matmul", ((1, 7, 64), (1, 64, 32))) == model.ALIGN_CAP
    assert model.lane_alignment("preprocess", ((3, 480, 640, 3), (224, 224))) == model.ALIGN_CAP


def test_a_kernel_far_from_the_data_is_not_compiled_for_it(fake_gpu):
    """CUDA data: a CPU kernel that still has to compile is skipped, with the cost model's
    reason, where its roofline with both copies is FAR_FROM_DATA times the GPU vendor's; it is
    compiled as before where it comes within that, and whenever the device or backend is forced."""
    def cand(device, roofline, vendor=False, compiles=False):
        return Candidate("matmul", "vend" if vendor else "jit", device, "torch", lambda p: None,
                         lambda p: [{}], lambda p, c: (lambda: "ok"), vendor=vendor,
                         roofline=roofline, module="kernelkit.kernels.numba.matmul",
                         compiles=compiles)
    cands = [cand("cuda", (1e-5, 5e14, 2e12), vendor=True),
             cand("cpu", (6e-6, 1.2e11, 2e10), compiles=True)]

    def split(n, **knobs):
        p = Problem("matmul", ((1, n, n), (1, n, n)), "float16", "NN", "torch", "cuda",
                    flops=2.0 * n**3, nbytes=3 * n * n * 2)
        pending = []
        usable, skipped = tuner.split_candidates(p, cands, Settings(**knobs), pending)
        return [c.name for c in usable], [c.name for c in pending], skipped

    usable, pending, skipped = split(4096)  # ~2 s on the CPU against ~0.3 ms: far
    assert usable == ["vend-cuda"] and pending == []
    assert "not compiled" in skipped["jit-cpu"] and "cost model" in skipped["jit-cpu"]
    assert split(8) [1] == ["jit-cpu"]  # tiny: launch costs dominate, it stays a candidate
    assert split(4096, device="cpu")[1] == ["jit-cpu"]  # forced: compiled as asked
    assert split(4096, backend="jit")[1] == ["jit-cpu"]
