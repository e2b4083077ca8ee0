"""The layers hold by construction: no import circle and no import from a lower floor to a higher one, read
from the source (function-local imports included; ``if TYPE_CHECKING:`` blocks, which never run, excluded).

Floors, lowest first: ``search_spaces`` < ``trainers`` < ``nas_service``; only ``nas_service.ray_runtime``
imports Ray.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOORS = ["search_spaces", "trainers", "nas_service"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever the import statement stands."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from . import x`` / ``from pkg import submodule``: the submodule is imported too.
            found.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for floor in FLOORS for p in (REPO / floor).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def test_the_graph_sees_function_local_and_relative_imports() -> None:
    graph = _graph()
    assert "nas_service.stage_kinds.base" in graph["nas_service.stage_kinds.cell_search"]
    assert "nas_service.trial_lifecycle" in graph["nas_service.ray_runtime.tune"]
    assert len(graph) > 40


def test_no_module_imports_a_higher_floor() -> None:
    upward = []
    for module, targets in _graph().items():
        floor = FLOORS.index(module.split(".")[0])
        upward += [f"{module} -> {t}" for t in targets if FLOORS.index(t.split(".")[0]) > floor]
    assert upward == []


def test_only_ray_runtime_imports_ray() -> None:
    files = [p for floor in FLOORS for p in (REPO / floor).rglob("*.py")]
    offenders = [
        _module_name(p) for p in files
        if not _module_name(p).startswith("nas_service.ray_runtime")
        and any(m == "ray" or m.startswith("ray.") for m in _imports(p))
    ]  # fmt: skip
    assert offenders == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def _without_package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    # A package's __init__ importing its own submodules, which import siblings, is how packages are
    # built; an import of the package *from* one of its own submodules would close a real circle.
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_no_import_circle() -> None:
    assert _cycles(_without_package_edges(_graph())) == []


def test_a_circle_would_be_found() -> None:
    graph = _without_package_edges(_graph())
    # nas_service.planner imports nas_service.trials; the reverse import would close a circle.
    assert "nas_service.trials" in graph["nas_service.planner"]
    graph["nas_service.trials"] = graph["nas_service.trials"] | {"nas_service.planner"}
    assert any({"nas_service.planner", "nas_service.trials"} <= set(c) for c in _cycles(graph))
