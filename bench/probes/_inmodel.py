"""What the in-model probes share: a patched ResNet-50 at batch 1, tuned into the probe's cache,
its in-model trials settled, and the trial of one layer the tuner gave a kernel."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/resnets.py


def settled_trial(layer_name: str):
    """(pair, layer, trial): the pair tuned as nn_resnets.py does, inference calls until no trial
    is pending, and the InContext trial of `layer_name`; trial is None where the tuner gave the
    layer no kernel in this run."""
    import torch
    from resnets import Pair

    from kernelkit import settings
    from kernelkit.nn import _route

    torch.set_num_threads(2)
    pair = Pair("resnet50", 1, 224)
    pair.tune()
    pair.pat.eval()
    for _ in range(200):
        pair.infer(pair.pat)
        if not _route.pending(pair.pat, grad=False):
            break
    layer = dict(pair.pat.named_modules())[layer_name]
    trials = [_route._trial_of(r) for _, r in _route._routes_under(layer.__dict__,
                                                                   settings.token())]
    trials = [t for t in trials if t is not None]
    return pair, layer, (trials[0] if trials else None)
