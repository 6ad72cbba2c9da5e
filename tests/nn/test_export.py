"""torch.export of a patched model saves, and loads in a fresh process after `import kernelkit`.

Issue 11: torch.export.load of a saved program that uses kernelkit ops failed in a new process
(the ops were registered only on first use of kernelkit.nn)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

import kernelkit
import kernelkit.nn as knn


# `import kernelkit` before `import torch` (isort's order) left the ops unregistered: the load
# failed with "We failed to resolve torch.ops.kernelkit.linear.default"
@pytest.mark.parametrize("imports", ["import sys, torch, kernelkit",
                                     "import sys\nimport kernelkit\nimport torch"])
def test_export_save_and_load_in_a_fresh_process(tmp_path, imports):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    knn.patch(model)
    x = torch.randn(2, 3, 6, 6)
    with kernelkit.use(backend="numba"):  # (forced, and an eager call: the custom ops traced)
        with torch.no_grad():
            model(x)
        ep = torch.export.export(model, (x,))
    code = ep.graph_module.code
    assert "kernelkit.conv2d" in code and "kernelkit.linear" in code
    torch.export.save(ep, tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "io.pt")
    load = (f"{imports}\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "x, want = torch.load(sys.argv[2])\n"
            "torch.testing.assert_close(ep.module()(x), want, rtol=1e-5, atol=1e-5)\n")
    subprocess.run([sys.executable, "-c", load, str(tmp_path / "model.pt2"),
                    str(tmp_path / "io.pt")], check=True)


def test_export_before_any_eager_call_records_torchs_ops_and_loads_without_kernelkit(tmp_path):
    """A layer no eager call decided has no in-model evidence that a kernel beats torch: it
    traces torch's own op (`_route.compiled`), so the program is torch's and loads where
    kernelkit is not installed. Before, it recorded the custom ops."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5)).eval()
    knn.patch(model)
    x = torch.randn(2, 3, 6, 6)
    ep = torch.export.export(model, (x,))
    assert "kernelkit" not in ep.graph_module.code
    torch.export.save(ep, tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "io.pt")
    load = ("import sys, torch\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "x, want = torch.load(sys.argv[2])\n"
            "torch.testing.assert_close(ep.module()(x), want, rtol=1e-5, atol=1e-5)\n"
            "assert 'kernelkit' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", load, str(tmp_path / "model.pt2"),
                    str(tmp_path / "io.pt")], check=True)
