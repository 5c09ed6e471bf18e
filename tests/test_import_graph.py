"""No import circles in minivllm: no module imports, directly or through others, a module that imports it.
Imports inside functions count (a lazy import still ties the two modules together), and so do imports under
``if TYPE_CHECKING:``: they never run, but a reader still has to go round the circle."""

import ast
import os

import minivllm

ROOT = os.path.dirname(os.path.dirname(minivllm.__file__))


def modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(os.path.dirname(minivllm.__file__)):
        for file in files:
            if file.endswith(".py"):
                name = os.path.relpath(os.path.join(folder, file), ROOT)[:-3].replace(os.sep, ".")
                found[name.removesuffix(".__init__")] = os.path.join(folder, file)
    return found


def imports(name: str, path: str, known: dict[str, str]) -> set[str]:
    """The minivllm modules ``name`` imports (``from pkg import submodule`` counts as the submodule)."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return found & set(known)


def test_no_module_imports_itself_through_others():
    known = modules()
    graph = {name: imports(name, path, known) - {name} for name, path in known.items()}
    cycles = []
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for dep in sorted(graph[name]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


ABOVE_CORE = (
    "minivllm.layers",
    "minivllm.plugins",
    "minivllm.entrypoints",
    "minivllm.cli",
    "minivllm.bench",
    "minivllm.testing",
)


def test_core_builds_on_nothing_above_it():
    """Layers, plugins, the ways in (entrypoints, the CLI), the benchmark and the kit build on core; core
    reaches them only through the registries (strings)."""
    known = modules()
    upward = {
        name: sorted(dep for dep in imports(name, path, known) if dep.startswith(ABOVE_CORE))
        for name, path in known.items()
        if name.startswith("minivllm.core")
    }
    assert not {name: deps for name, deps in upward.items() if deps}
