"""The house rules, checked on the source: layers import downwards only, and nothing imports in a
circle. Every import statement counts, including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "kernelkit"


def _module_name(path: Path) -> str:
    parts = ["kernelkit", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """kernelkit module -> the kernelkit modules it imports."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import mod` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in modules:  # `import kernelkit.kernels.numba.matmul as m`
                    t = t.rpartition(".")[0]
                if t.startswith("kernelkit") and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


GRAPH = _graph()


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kernelkit"


# (layer, layers it must never import)
FORBIDDEN = {
    "kernels": {"ops", "autotune", "nn", "cli", "kernelkit", "settings"},
    "core": {"ops", "autotune", "nn", "cli", "kernels", "kernelkit", "settings"},
    "devices": {"ops", "autotune", "nn", "cli", "kernels", "core", "kernelkit"},
    "arrays": {"ops", "autotune", "nn", "cli", "kernels", "core", "kernelkit"},
    "autotune": {"ops", "nn", "cli", "kernelkit"},
    "ops": {"nn", "cli", "kernelkit"},
}


def test_the_walk_sees_the_package():
    assert {"kernelkit.core", "kernelkit.ops.matmul", "kernelkit.kernels.numba.matmul",
            "kernelkit.autotune.tuner"} <= set(GRAPH)
    assert "kernelkit.core" in GRAPH["kernelkit.ops.matmul"]  # relative imports resolve


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_downwards_only(layer):
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _layer(m) == layer
                 for d in deps if _layer(d) in FORBIDDEN[layer])
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


def test_no_import_circle():
    """Tarjan's strongly connected components over the module graph: every one is a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_no_backend_name_in_the_op_layer():
    """`ops/` knows ops, not backends: the kernel backends appear in comments and docstrings only."""
    hits = []
    for path in (ROOT / "ops").glob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
                      and n.body and isinstance(n.body[0], ast.Expr)
                      and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            text = None
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if id(node) not in docstrings:
                    text = node.value
            elif isinstance(node, ast.Name):
                text = node.id
            elif isinstance(node, ast.Attribute):
                text = node.attr
            elif isinstance(node, ast.alias):
                text = node.name
            if text and any(b in text.lower() for b in ("numba", "triton", "cupy")):
                hits.append(f"{path.name}:{getattr(node, 'lineno', '?')}: {text!r}")
    assert not hits, "\n".join(hits)
