"""ResNet-18, ResNet-50 and MobileNetV2 written out (torchvision's layouts: BasicBlock /
Bottleneck with the stride on the 3x3, inverted residuals; zero-initialised nothing), so the nn
benchmarks need neither torchvision nor weights.
Random init (Kaiming for convs, as torchvision), which is all a timing needs."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, c: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, c * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


def _downsample(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    def __init__(self, block: type, layers: list[int], classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in, stages = 64, []
        for i, n in enumerate(layers):
            c = 64 * 2 ** i
            blocks = []
            for j in range(n):
                blocks.append(block(c_in, c, 2 if (j == 0 and i > 0) else 1))
                c_in = c * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(classes: int = 1000) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], classes)


def resnet50(classes: int = 1000) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], classes)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1,
             relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion, 3x3 depthwise (the stride), 1x1 linear projection."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int):
        super().__init__()
        hidden = c_in * expand
        layers = [] if expand == 1 else [_conv_bn(c_in, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   _conv_bn(hidden, c_out, 1, relu=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) written out: its 17 inverted residual blocks hold
    the 10 depthwise shapes of tests/reference.CONV_MOBILENET_DW."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # (expansion, channels, blocks, first stride)

    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, c_in = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers.append(_conv_bn(c_in, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(classes)


MODELS = {"resnet18": resnet18, "resnet50": resnet50, "mobilenet_v2": mobilenet_v2}


# -- side-by-side timing (bench/probes/nn_resnets.py, bench/test_bench_nn.py) --------------------
VARIANTS = ("torch", "patched", "torch.compile", "patched+compile", "torch twin")


class Pair:
    """A model and its patched deep copy, one input batch, and one SGD optimiser each; tuned once
    (`tune`) before anything is timed. With `control`, also an unpatched deep copy ("torch
    twin", eager only): torch against itself, the band within which two identical models
    differ in the same run."""

    def __init__(self, name: str, batch: int, size: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32, control: bool = False,
                 device: str = "cpu", channels_last: bool = False):
        import copy

        import kernelkit.nn as knn

        # forget earlier pairs' compiled graphs: they share ResNet.forward's code object, and
        # dynamo's recompile limit (8 per code object) would otherwise leave later pairs eager
        torch._dynamo.reset()
        torch.manual_seed(seed)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.device = torch.device(device)
        self.ref = MODELS[name]().to(dtype).to(self.device, memory_format=fmt)
        self.pat = copy.deepcopy(self.ref)
        self.twin = copy.deepcopy(self.ref) if control else None
        self.report = knn.patch(self.pat)
        self.x = torch.randn(batch, 3, size, size, dtype=dtype).to(self.device, memory_format=fmt)
        self.target = torch.randint(0, 1000, (batch,)).to(self.device)
        self.opt = {id(m): torch.optim.SGD(m.parameters(), lr=1e-4)
                    for m in (self.ref, self.pat, self.twin) if m is not None}
        self.compiled: dict[str, nn.Module] = {}

    def _done(self, out: torch.Tensor) -> torch.Tensor:
        """`out` once the device has finished it: a timed call on CUDA ends with its work."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def infer(self, m: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            return self._done(m(self.x))

    def step(self, m: nn.Module, owner: nn.Module) -> torch.Tensor:
        """One training step: zero_grad, forward, cross-entropy, backward, SGD step."""
        import torch.nn.functional as F

        opt = self.opt[id(owner)]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(m(self.x), self.target)
        loss.backward()
        opt.step()
        return self._done(loss)

    def tune(self, modes: tuple[str, ...] = ("infer", "train")) -> float:
        """Measure every forward and backward size the patched model runs in `modes` (an
        inference call, a training step, under KERNELKIT_TUNE=measure), restore the weights;
        seconds taken."""
        import time

        import kernelkit

        t0 = time.perf_counter()
        with kernelkit.use(tune="measure"):
            self.pat.eval()
            self.infer(self.pat)
            if "train" in modes:
                self.pat.train()
                self.step(self.pat, self.pat)
        self.pat.load_state_dict(self.ref.state_dict())
        return time.perf_counter() - t0

    def settle(self, mode: str, fns: dict) -> tuple[int, float]:
        """Call ``fns["patched"]`` (the patched model in `mode`) until every kernel-routed
        layer's in-model trial decided it (kernelkit.nn._route.InContext, one layer at a time),
        or for a bound of calls; (calls, seconds)."""
        import time

        from kernelkit.nn import _route

        limit = 2 * (_route.TRIAL_CALLS + 1) * len(self.report.swapped)
        calls, t0 = 0, time.perf_counter()
        while True:
            fns["patched"]()
            calls += 1
            if not _route.pending(self.pat, grad=mode == "train") or calls > limit:
                return calls, time.perf_counter() - t0

    def fns(self, mode: str, compiled: bool) -> dict:
        """The variants' calls for `mode` ("infer": eval + no_grad; "train": one step)."""
        models = {"torch": self.ref, "patched": self.pat}
        if self.twin is not None:
            models["torch twin"] = self.twin
        for m in models.values():
            m.train(mode == "train")
        if compiled and not self.compiled:
            self.compiled = {"torch": torch.compile(self.ref), "patched": torch.compile(self.pat)}
        out = {}
        for label, m in models.items():
            if mode == "infer":
                out[label] = lambda m=m: self.infer(m)
                if compiled and label in self.compiled:
                    c = self.compiled[label]
                    out[VARIANTS[VARIANTS.index(label) + 2]] = lambda c=c: self.infer(c)
            else:
                out[label] = lambda m=m: self.step(m, m)
                if compiled and label in self.compiled:
                    c = self.compiled[label]
                    out[VARIANTS[VARIANTS.index(label) + 2]] = lambda c=c, m=m: self.step(c, m)
        return {k: out[k] for k in VARIANTS if k in out}


def interleaved_times(fns: dict, reps: int) -> dict[str, list[float]]:
    """Seconds of each call in each of `reps` rounds, one call of each per round, after one
    warm-up round, so drift of the machine falls on every variant alike; each round starts at
    the next variant, so that none always runs right after the same other one (torch's OpenMP
    workers spin on after its calls, and the second of two calls finds the caches the first
    left)."""
    import time

    labels = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for rep in range(reps + 1):
        for j in range(len(labels)):
            label = labels[(rep + j) % len(labels)]
            t0 = time.perf_counter()
            fns[label]()
            if rep:
                times[label].append(time.perf_counter() - t0)
    return times


def interleaved(fns: dict, reps: int) -> dict[str, float]:
    """Median seconds of each call over `reps` interleaved rounds (`interleaved_times`)."""
    import statistics

    return {k: statistics.median(v) for k, v in interleaved_times(fns, reps).items()}


def paired_ratio(base: list[float], other: list[float], resamples: int = 4000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(median, 2.5th and 97.5th percentile of a bootstrap of that median) of the per-round
    ratios base / other: each round's two calls ran next to each other, so the ratio of a pair
    sees the same state of the machine, and the interval says how far the median ratio could
    move with other rounds of the same run (not between runs: this VM also drifts by process)."""
    import random
    import statistics

    ratios = [b / o for b, o in zip(base, other, strict=True)]
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                  for _ in range(resamples))
    return (statistics.median(ratios), meds[int(0.025 * resamples)],
            meds[int(0.975 * resamples) - 1])
