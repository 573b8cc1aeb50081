"""The package's import graph: no cycles, and each layer imports only the layers below it.

The graph is read from the source (every `import` statement, at the top of a module or inside a
function), so an import deferred for start-up time still counts."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "chainrule"

# A layer -> the layers it must not import (ir at the bottom; front ends beside passes and
# backends; train, viz, the page and gradcheck above them; then api; then cli).
ABOVE_FRONT_ENDS = ["train", "runners", "distributed", "viz", "page", "gradcheck", "api", "cli"]
FORBIDDEN = {
    "ir": ["dsl", "onnx_import", "passes", "backends", *ABOVE_FRONT_ENDS],
    "backends": ["dsl", "onnx_import", *ABOVE_FRONT_ENDS],
    "passes": ["dsl", "onnx_import", "backends", *ABOVE_FRONT_ENDS],
    "dsl": ["onnx_import", "backends", *ABOVE_FRONT_ENDS],
    "onnx_import": ["dsl", "backends", *ABOVE_FRONT_ENDS],
    "runners": ["train", "distributed", "api", "cli"],
    "distributed": ["train", "api", "cli"],
    "train": ["api", "cli"],
    "page": ["api", "cli"],
    "api": ["cli"],
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` (the module at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from package import module` imports the module; any other name, the package.
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                         for alias in node.names)
    return {target for target in found if target in known}


@functools.lru_cache(maxsize=1)  # read once: parsing every module (the parse tables) takes seconds
def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(name, path, set(found)) for name, path in found.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (the first again at the end), or None."""
    state = {}  # module -> "open" while on the path, "done" once all it imports is seen
    path = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "chainrule"


def test_the_import_graph_is_read_from_every_module():
    graph = import_graph()
    assert "chainrule.train" in graph["chainrule.cli.training"]
    assert "chainrule.backends.numpy_compiled" in graph["chainrule.backends"]  # in a function
    assert "chainrule.ir" in graph["chainrule.passes.optimizers"]


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_cycle_is_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("lower", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(lower):
    wrong = sorted(f"{module} imports {target}"
                   for module, targets in import_graph().items() if layer(module) == lower
                   for target in targets if layer(target) in FORBIDDEN[lower])
    assert wrong == []
