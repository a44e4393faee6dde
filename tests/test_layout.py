"""The architecture's import rules, read from the source: imports run one way (DESIGN.md, Layout)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("engines", "service", "benchmarks")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every project module `path` imports, at the top or deferred inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


GRAPH = {
    module_name(path): imports_of(path) for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))
}
MODULES = set(GRAPH)


def edges(prefix: str) -> list[tuple[str, str]]:
    return [(m, i) for m, targets in GRAPH.items() if m.startswith(prefix) for i in sorted(targets) if i in MODULES]


def test_the_graph_was_read() -> None:
    assert {"engines.base", "engines.select", "engines.backends.torch_engine", "service.app"} <= MODULES
    assert ("engines.backends.torch_engine", "engines.core.engine") in edges("engines.backends")


@pytest.mark.parametrize(
    ("prefix", "allowed"),
    [
        ("engines.core", ("engines.base", "engines.core")),
        ("engines.models", ("engines.base", "engines.core", "engines.models")),
        ("engines.backends", ("engines.base", "engines.core", "engines.models", "engines.backends", "engines.manifest")),
        ("service", ("engines.base", "engines.select", "service")),
    ],
)
def test_imports_run_one_way(prefix: str, allowed: tuple[str, ...]) -> None:
    wrong = [(m, i) for m, i in edges(prefix) if not i.startswith(allowed)]
    assert wrong == [], f"{prefix} may import only {allowed}"


def test_runtime_code_never_imports_build_code() -> None:
    runtime = [m for m in MODULES if m.startswith("engines.") and not m.startswith("engines.build")]
    assert [(m, i) for m in runtime for i in GRAPH[m] if i.startswith("engines.build")] == []


def test_engines_never_import_the_service() -> None:
    assert [(m, i) for m, i in edges("engines") if i.startswith("service")] == []


def test_no_module_pair_imports_each_other() -> None:
    cycles = sorted({tuple(sorted((m, i))) for m, i in edges("") if m in GRAPH.get(i, ())})
    assert cycles == []
