"""The layers hold by construction: no import circle and no import from a lower floor to a higher one, read
from the source (function-local imports included; ``if TYPE_CHECKING:`` blocks, which never run, excluded).

Floors, lowest first: ``search_spaces`` < ``trainers`` < ``nas_service``; only ``nas_service.ray_runtime``
imports Ray. The command line's parsers and the spec/plan path import neither torch nor Ray when loaded
(imports inside functions run only when called; ``tests/test_cli_light.py`` runs the commands themselves).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

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


def _imports(path: Path, *, at_load: bool = False) -> set[str]:
    """Every module ``path`` imports (absolute names), wherever the import statement stands; with
    ``at_load``, only those imported when the module itself is (function bodies left out)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if at_load and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
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


def _loaded_with(start: str) -> set[str]:
    """The top-level names of every package importing ``start`` loads: project modules followed through their
    load-time imports (and their parent packages' ``__init__``), the rest as found."""
    files = {_module_name(p): p for floor in FLOORS for p in (REPO / floor).rglob("*.py")}
    seen: set[str] = set()
    outside: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in files]
        for target in _imports(files[name], at_load=True):
            if target in files:
                todo.append(target)
            elif target.split(".")[0] not in FLOORS:
                outside.add(target.split(".")[0])
    return outside


def test_the_load_time_graph_leaves_function_bodies_out() -> None:
    # nas_service.commands.experiment imports Ray's runtime only inside its handlers.
    assert "ray" not in _loaded_with("nas_service.commands.experiment")
    assert "torch" in _loaded_with("search_spaces.ops")


# What building the parser of every command may load: `nas-service --help` stays in the standard library.
COMMAND_MODULES = sorted(p.stem for p in (REPO / "nas_service" / "commands").glob("*.py") if p.stem != "__init__")


def test_the_parsers_load_no_third_party_package() -> None:
    stdlib = set(sys.stdlib_module_names)
    heavy = {m: sorted(_loaded_with(f"nas_service.commands.{m}") - stdlib) for m in COMMAND_MODULES}
    assert {m: h for m, h in heavy.items() if h} == {}
    assert _loaded_with("nas_service.cli") <= stdlib


@pytest.mark.parametrize("module", ["nas_service.planner", "nas_service.spec", "nas_service.results",
                                    "nas_service.report", "nas_service.experiment_runner",
                                    "search_spaces.genotypes", "search_spaces.paths", "search_spaces.spaces",
                                    "search_spaces.names", "trainers.config", "trainers.dataset_shapes"])
def test_the_spec_and_plan_path_loads_no_torch_and_no_ray(module: str) -> None:
    # What validate, plan and status load; torch and Ray wait for a trial that runs.
    assert _loaded_with(module) & {"torch", "ray"} == set()
