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


def _save_and_load(tmp_path, ep, model, args: tuple, imports: str, after: str = "") -> None:
    """Save the exported program `ep` of `model`, load it in a fresh process (`imports` first,
    `after` last) and check its result there against `model`'s eager one on `args`."""
    torch.export.save(ep, tmp_path / "model.pt2")
    with torch.no_grad():
        torch.save((args, model(*args)), tmp_path / "io.pt")
    load = (f"{imports}\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "args, want = torch.load(sys.argv[2])\n"
            "torch.testing.assert_close(ep.module()(*args), want, rtol=1e-5, atol=1e-5)\n"
            f"{after}")
    subprocess.run([sys.executable, "-c", load, str(tmp_path / "model.pt2"),
                    str(tmp_path / "io.pt")], check=True)


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
    _save_and_load(tmp_path, ep, model, (x,), imports)


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
    _save_and_load(tmp_path, ep, model, (x,), "import sys, torch",
                   "assert 'kernelkit' not in sys.modules\n")


class _FunctionalOps(nn.Module):
    """A user's module calling kernelkit's functional ops (not patched layers)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(12, 7, generator=g))
        self.b = nn.Parameter(torch.randn(7, generator=g))
        self.cw = nn.Parameter(torch.randn(4, 3, 3, 3, generator=g))
        self.v = nn.Parameter(torch.randn(7, generator=g))

    def forward(self, x, img):
        h = kernelkit.matmul(x, self.w, bias=self.b, activation="relu")
        y = kernelkit.conv2d(img, self.cw, padding=1, activation="relu")
        return kernelkit.matmul(h, self.v), y  # (a vector operand: the rule for vectors)


def _export_and_load(tmp_path, model, args, strict: bool, imports: str,
                     after: str = "") -> list[str]:
    """Export `model`, save it and check it in a fresh process (`_save_and_load`); the
    program's call targets."""
    ep = torch.export.export(model, args, strict=strict)
    _save_and_load(tmp_path, ep, model, args, imports, after)
    return [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]


def test_a_strict_export_of_the_functional_ops_records_kernelkits_ops_and_loads(tmp_path):
    """A module calling `kernelkit.matmul`/`conv2d` (a vector Parameter among the operands)
    exports strictly as kernelkit's registered ops, as torch.compile traces them, and loads in
    a fresh process after `import kernelkit`. Before, the vector Parameter raised dynamo's
    "Unsupported method call" (`_vector` read its type's module name)."""
    model = _FunctionalOps().eval()
    targets = _export_and_load(tmp_path, model, (torch.randn(5, 12), torch.randn(2, 3, 6, 5)),
                               True, "import sys, torch, kernelkit")
    assert targets.count("kernelkit.matmul.default") == 2, targets
    assert targets.count("kernelkit.conv2d.default") == 1, targets


def test_a_non_strict_export_of_the_functional_ops_is_torchs_program(tmp_path):
    """torch.export's default, non-strict trace runs the ops on FakeTensors, which kernelkit's
    ops leave to torch's: the program holds torch's ops, so it loads where kernelkit is not
    imported and the tools built on that trace take it (torch.onnx's exporter tries it first
    and has no translation for a kernelkit op)."""
    model = _FunctionalOps().eval()
    targets = _export_and_load(tmp_path, model, (torch.randn(5, 12), torch.randn(2, 3, 6, 5)),
                               False, "import sys, torch",
                               "assert 'kernelkit' not in sys.modules\n")
    assert not any(t.startswith("kernelkit") for t in targets), targets


def test_a_fullgraph_compile_of_a_product_with_a_vector_parameter_runs():
    """torch.compile(fullgraph=True) of `kernelkit.matmul` with a vector Parameter operand
    (before: dynamo's "Unsupported method call" on its type's module name)."""
    v = nn.Parameter(torch.randn(7))
    x = torch.randn(5, 7)
    fn = torch.compile(lambda x: kernelkit.matmul(x, v, activation="relu"), fullgraph=True,
                       backend="eager")
    torch.testing.assert_close(fn(x), torch.relu(x @ v), rtol=1e-5, atol=1e-5)
