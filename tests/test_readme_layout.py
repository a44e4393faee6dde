"""The Layout (docs/layout.md) is the tree: every module of service/ and engines/ is in it, and it names no file that is gone."""

from __future__ import annotations

import re

from tests.helpers import REPO

PACKAGES = ("service", "engines")
LAYOUT = REPO / "docs" / "layout.md"


def layout_block() -> str:
    return LAYOUT.read_text().split("```", 2)[1]


def test_every_module_is_in_the_layout() -> None:
    named = set(re.findall(r"[\w-]+\.py", layout_block()))
    modules = {path.name for package in PACKAGES for path in (REPO / package).rglob("*.py") if path.name != "__init__.py"}
    assert modules, "no modules found: the check would pass for nothing"
    assert sorted(modules - named) == []


def test_the_layout_names_no_missing_file() -> None:
    named = set(re.findall(r"[\w-]+\.py", layout_block()))
    existing = {path.name for path in REPO.rglob("*.py") if ".venv" not in path.parts}
    assert named and sorted(named - existing) == []
