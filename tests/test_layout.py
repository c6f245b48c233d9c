"""The shape of the code, checked: the design's top level, one home per ecosystem, small
modules, imports in one direction and without cycles, and no registry named in shared code.

These read the source as text and syntax trees; they run nothing of it but the registration
list itself.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexers import ALIASES, ECOSYSTEMS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("forage", "indexers", "storage")
#: The longest a source module may grow before it is split along its seams.
MAX_LINES = 600
#: What each ecosystem's home package holds.
HOME_MODULES = ("indexer", "mirror", "lockfiles", "fake")
#: Shared code that may name a registry: the demo says what it publishes.
MAY_NAME_REGISTRIES = {Path("forage/runtime/demo.py")}


def _modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if "migrations" in relative.parts:
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join(parts), path


MODULES = dict(_modules())


def _module_level_imports(name: str, path: Path) -> set[str]:
    """The first-party modules ``name`` imports when it is imported (function bodies and
    ``TYPE_CHECKING`` blocks aside)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                test = ast.unparse(node.test)
                if "TYPE_CHECKING" not in test:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in MODULES else node.module)

    visit(tree.body)
    return {target for target in found if target in MODULES and target != name}


GRAPH = {name: _module_level_imports(name, path) for name, path in MODULES.items()}


def test_the_top_level_is_the_design_s() -> None:
    for entry in (*PACKAGES, "tests", "scripts", "pyproject.toml", "README.md"):
        assert (ROOT / entry).exists(), entry
    assert not (ROOT / "src").exists()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_is_over_the_limit(name: str) -> None:
    lines = MODULES[name].read_text().count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines"


def test_module_level_imports_have_no_cycle() -> None:
    """Tarjan's strongly connected components over the import graph: every one is a single
    module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in GRAPH[node]:
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in GRAPH:
        if node not in index:
            connect(node)
    assert cycles == []


def _imports_anywhere(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("indexers", {"forage", "storage"}), ("storage", {"forage", "indexers"})],
)
def test_the_libraries_import_nothing_of_ours(package: str, forbidden: set[str]) -> None:
    offenders = {
        name: sorted(_imports_anywhere(path) & forbidden)
        for name, path in MODULES.items()
        if name.split(".")[0] == package and _imports_anywhere(path) & forbidden
    }
    assert offenders == {}


@pytest.mark.parametrize("name", list(ECOSYSTEMS))
def test_every_ecosystem_has_one_home_that_registers_it(name: str) -> None:
    home = importlib.import_module(f"indexers.{name}")
    assert home.ECOSYSTEM is ECOSYSTEMS[name]
    for module in HOME_MODULES:
        assert f"indexers.{name}.{module}" in MODULES, f"indexers/{name}/{module}.py is missing"
    ecosystem = ECOSYSTEMS[name]
    assert ecosystem.mirror().__module__ == f"indexers.{name}.mirror"
    assert type(ecosystem.fake()).__module__ == f"indexers.{name}.fake"
    assert ecosystem.indexer.__module__ == f"indexers.{name}.indexer"
    for fmt in ecosystem.lockfiles:
        assert fmt.read.__module__ == f"indexers.{name}.lockfiles"


def _named_registries(path: Path) -> list[tuple[int, str]]:
    spellings = set(ALIASES)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value in spellings
        ):
            found.append((node.lineno, node.value))
    return found


def test_shared_code_names_no_registry() -> None:
    """Nothing outside the homes says ``if ecosystem == "npm"``: the homes' registrations are
    the only place an ecosystem's name is written (docstrings aside)."""
    homes = {f"indexers.{name}" for name in ECOSYSTEMS}
    offenders = {
        str(path.relative_to(ROOT)): found
        for name, path in MODULES.items()
        if not any(name == home or name.startswith(home + ".") for home in homes)
        and path.relative_to(ROOT) not in MAY_NAME_REGISTRIES
        and (found := _named_registries(path))
    }
    assert offenders == {}
