"""The rooms of DESIGN.md hold: dependencies point one way, and no module imports itself back.

Imports are read from the source (those inside functions count too; those under
`if TYPE_CHECKING:` are for the type checker only and do not).
"""

from __future__ import annotations

import ast
import graphlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedrisk", "clients", "server")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.Module) -> set[str]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {_module(p): p for p in files}
    graph = {}
    for name, path in modules.items():
        imports = _runtime_imports(ast.parse(path.read_text()))
        graph[name] = {m for m in imports if m in modules and m != name}
    return graph


def test_no_import_cycle_between_modules():
    graph = _graph()
    # A package's __init__ is imported with any of its modules; only real module edges count.
    edges = {m: {d for d in deps if not (m.startswith(f"{d}.") and (ROOT / d.replace('.', '/')).is_dir())}
             for m, deps in graph.items()}
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_the_library_never_imports_the_apps():
    for module, deps in _graph().items():
        if module.startswith("fedrisk"):
            assert not {d for d in deps if d.split(".")[0] in ("clients", "server")}, module


def test_only_the_launcher_and_the_protocol_import_flower():
    """(and the simulation engine's message dispatch the launcher installs)"""
    for path in (ROOT / "fedrisk").rglob("*.py"):
        flower = {m for m in _runtime_imports(ast.parse(path.read_text())) if m.split(".")[0] == "flwr"}
        if _module(path) not in ("fedrisk.launcher", "fedrisk.protocol", "fedrisk.simulation_dispatch"):
            assert not flower, f"{path.name} imports {sorted(flower)}"


def test_no_private_name_is_imported_across_modules():
    for package in (*PACKAGES, "experiments", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PACKAGES:
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"


def test_the_launcher_loads_the_apps_pyproject_declares():
    from fedrisk.launcher import CLIENT_APP, SERVER_APP, load_component

    components = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": SERVER_APP, "clientapp": CLIENT_APP}
    assert type(load_component(SERVER_APP)).__name__ == "ServerApp"
    assert type(load_component(CLIENT_APP)).__name__ == "ClientApp"
