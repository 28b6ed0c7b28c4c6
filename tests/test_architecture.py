"""The house rules of service/ (docs/architecture.md), read from the code with ``ast``: packages import
only packages below them, no module imports itself back through others, the decode workers' packages
stay free of torch and grpc, and no module grows past a size a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import ROOT

SERVICE = ROOT / "service"
# Each package's floor: a module may import its own package and packages on lower floors, never higher.
# classify and management are side by side (one floor, neither imports the other); the client is what
# users install, beside the server: it may import only the error table and the protocol stubs.
FLOORS = {
    "core": 0, "video": 1, "models": 2, "inference": 3, "live": 4, "classify": 5, "management": 5,
    "server": 6, "api": 7, "runtime": 8, "__main__": 9, "client": 9,
}  # fmt: skip
CLIENT_MAY_IMPORT = ("service.core.errors", "service.api.pb")
WORKER_PACKAGES = ("core", "video")  # what a decode worker process imports: no torch, no grpc
MAX_LINES = 360  # the largest module, hand-written (the generated protocol stubs are not)


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SERVICE.rglob("*.py")):
        if "pb" in path.relative_to(SERVICE).parts:
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(path: Path) -> set[str]:
    """Every module it imports, at the top, in a function or for type checking only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # ``from service.api import oip``
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def package(module: str) -> str:
    parts = module.split(".")
    return "core" if len(parts) == 1 else parts[1]  # service/__init__ holds only the version


GRAPH = {name: {m for m in imports(path) if m in modules()} for name, path in modules().items()}


def test_every_module_belongs_to_a_package_with_a_floor() -> None:
    assert {package(m) for m in GRAPH} <= set(FLOORS), {package(m) for m in GRAPH} - set(FLOORS)
    assert GRAPH, "no module found: the test would prove nothing"


def test_no_package_imports_one_above_it_or_its_sibling() -> None:
    wrong = [
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        for d in deps
        if package(d) != package(m) and FLOORS[package(d)] >= FLOORS[package(m)] and not d.startswith("service.api.pb")
    ]
    assert not wrong, wrong


def test_the_client_imports_only_the_error_table_and_the_stubs_of_the_server() -> None:
    wrong = [
        f"{m} -> {d}"
        for m, deps in GRAPH.items()
        if package(m) == "client"
        for d in imports(modules()[m])
        if d.startswith("service.") and package(d) != "client" and not d.startswith(CLIENT_MAY_IMPORT)
    ]
    assert not wrong, wrong


def test_no_import_circle() -> None:
    """Depth-first search for a path from a module back to itself."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == "open":
                pytest.fail("import circle: " + " -> ".join([*path[path.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("name", WORKER_PACKAGES)
def test_the_decode_workers_packages_import_neither_torch_nor_grpc(name: str) -> None:
    heavy = ("torch", "grpc", "openvino", "fastapi")
    for module, path in modules().items():
        if package(module) == name and module != "service":
            found = [m for m in imports(path) if m.split(".")[0] in heavy]
            assert not found, (module, found)
    assert (SERVICE / name / "__init__.py").read_text() == "", "a worker imports every __init__ on its way"


def test_no_module_needs_a_defence_of_its_length() -> None:
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
    defended = [m for m, p in modules().items() if "Why one module of this length" in p.read_text()]
    assert not defended, defended
