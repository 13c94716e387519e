"""The training app is split by where its code runs (training/README.md, Modules): `server/` (the
ServerApp's process), `client/` (the ClientApp's), `common/` (both). Read from the source's imports,
function-level and TYPE_CHECKING ones included."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.inprocess import TRAINING_APP_DIR

PACKAGE = "flowerbed_training"
PARTS = ("server", "client", "common")
# What each part may import of the package: its own modules and common's.
ALLOWED = {"server": {"server", "common"}, "client": {"client", "common"}, "common": {"common"}}
MAX_LINES = 300


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    root = TRAINING_APP_DIR / PACKAGE
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(TRAINING_APP_DIR).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that `path` imports (`from pkg.part import module` names the module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(PACKAGE)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found |= submodules or {node.module}
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports(path, known) - {name} for name, path in modules().items()}


def part_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else None


def test_every_module_lives_in_server_client_or_common():
    outside = [name for name in modules() if name != PACKAGE and part_of(name) is None]
    assert outside == []


def test_client_never_imports_server_and_common_imports_neither():
    wrong = sorted(f"{module} -> {imported}" for module, imported_set in import_graph().items()
                   for imported in imported_set
                   if part_of(module) and part_of(imported) not in ALLOWED[part_of(module)])  # type: ignore[index]
    assert wrong == []


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module):], module]))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, [*path, module])
        done.add(module)

    for module in graph:
        visit(module, [])


def test_no_module_is_longer_than_300_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
