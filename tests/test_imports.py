"""The shape of the house: tuner's modules import each other without a circle, lazy imports
inside functions included (a circle there is a design that has to hide one)."""

from __future__ import annotations

import ast
from pathlib import Path

import tuner

ROOT = Path(tuner.__file__).parent


def _graph() -> dict[str, set[str]]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path

    def module_of(dotted: str) -> str:
        while dotted not in modules and "." in dotted:
            dotted = dotted.rsplit(".", 1)[0]
        return dotted

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tuner":
                deps |= {module_of(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {module_of(a.name) for a in node.names if a.name.split(".")[0] == "tuner"}
        # a module importing its own package (the package's __init__ re-exports it) is no circle of concerns
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    return graph


def test_no_module_imports_itself_round_a_circle():
    graph, state, path, circles = _graph(), {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                circles.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, circles
    assert {"tuner.study.objective", "tuner.study.usercode", "tuner.study.store"} <= set(graph)  # the scan sees the study's modules
