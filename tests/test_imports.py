"""The package's import graph: configuration at the bottom, no module importing one that
imports it back (type-only and function-level imports count too: a circle there is one
refactor away from an import error)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mlx_gft"


def imports() -> dict[str, set[str]]:
    """{module: the package modules it imports anywhere in its source}."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= (
                    {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
                )
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mlx_gft."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("mlx_gft.")}
        graph[path.stem] = (found & modules) - {path.stem}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph[name]
    return seen


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    circles = sorted(name for name in graph if name in reachable(graph, name))
    assert not circles, f"import circle through {circles}"


def test_the_finder_sees_a_circle():
    # The check above would pass on a graph it cannot read: it must see this one.
    assert "a" in reachable({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a")
    assert len(imports()) > 20 and "config" in imports()["metrics"]


def test_configuration_sits_at_the_bottom():
    graph = imports()
    assert reachable(graph, "config") <= {"formats"}, graph["config"]


def test_the_configured_names_are_the_implemented_ones():
    from mlx_gft.config import LOSSES, REPORT_TO
    from mlx_gft.methods import METHODS
    from mlx_gft.metrics import SERVICES

    assert set(METHODS) == set(LOSSES)
    assert set(SERVICES) | {"jsonl"} == set(REPORT_TO)
