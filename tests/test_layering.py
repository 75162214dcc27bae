"""The package's shape: no import cycle, compute below io, outputs and the pipeline.

Read from the source (every import, also those inside functions; ``if TYPE_CHECKING:``
blocks aside), so a lazy import that closes a cycle is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlsquant"

# pure compute on arrays and values: never a file, a writer, the pipeline or the CLI
COMPUTE = ("tlsquant.segment", "tlsquant.cells", "tlsquant.classify", "tlsquant.measure", "tlsquant.background",
           "tlsquant.thresholds", "tlsquant.stats", "tlsquant.polygons", "tlsquant.maxstat", "tlsquant.roc",
           "tlsquant.survival", "tlsquant.blocks", "tlsquant.markers", "tlsquant.steps", "tlsquant.pixel_size")
ABOVE_COMPUTE = ("tlsquant.io", "tlsquant.outputs", "tlsquant.pipeline", "tlsquant.workflow", "tlsquant.batch",
                 "tlsquant.cli", "tlsquant.demo", "tlsquant.report")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.with_suffix("").relative_to(PACKAGE.parent).parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for name in [target] + [f"{target}.{alias.name}" for alias in node.names]:
                if name in modules and name != module:
                    found.add(name)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules and alias.name != module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_graph_is_read_from_the_source(graph):
    assert "tlsquant.steps" in graph["tlsquant.pipeline"] and "tlsquant.segment.evidence" in graph["tlsquant.steps.signal"]
    assert "tlsquant.pipeline" in graph["tlsquant.workflow"]  # an import inside a function counts


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back(graph):
    assert _cycles(graph) == []


def test_compute_modules_import_neither_files_nor_the_pipeline(graph):
    wrong = {module: sorted(other for other in imported if other.startswith(ABOVE_COMPUTE))
             for module, imported in graph.items() if module.startswith(COMPUTE)}
    assert {module: others for module, others in wrong.items() if others} == {}


def test_outputs_sit_above_the_pipeline_not_inside_it(graph):
    below = [module for module, imported in graph.items()
             if module.startswith(("tlsquant.pipeline", "tlsquant.steps", "tlsquant.segment", "tlsquant.cells"))
             and any(other.startswith("tlsquant.outputs") for other in imported)]
    assert below == []
