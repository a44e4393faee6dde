"""The documentation holds to the code: the settings page is what the parser says, every relative
link and anchor resolves, and the README stays one screen that starts with the two commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from service.settings import OPTIONS, env_name, flag_name
from service.settings_doc import MORE, render
from tests.helpers import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_settings_page_is_what_the_parser_says() -> None:
    assert (DOCS / "settings.md").read_text() == render(), "run: python -m service.settings_doc > docs/settings.md"


def test_the_settings_page_names_every_flag_and_variable() -> None:
    rows = [line for line in render().splitlines() if line.startswith("| `--")]
    assert len(rows) == len(OPTIONS)
    for field, row in zip(OPTIONS, rows):
        assert row.startswith(f"| `{flag_name(field)}` | `{env_name(field)}` |"), row


def test_the_generator_runs_as_a_module() -> None:
    result = subprocess.run([sys.executable, "-m", "service.settings_doc"], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout == render()


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens (headings in code blocks are not headings)."""
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-") for title in re.findall(r"(?m)^#+ (.+)$", text)}


def test_every_relative_link_and_anchor_resolves() -> None:
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            assert destination.exists(), f"{page.relative_to(REPO)} links to {target}: no such file"
            if anchor:
                assert anchor in anchors(destination), f"{page.relative_to(REPO)} links to {target}: no such heading"
            checked += 1
    assert checked > 50, "too few links found: the check would pass for nothing"


def test_every_more_link_of_the_settings_page_names_a_heading() -> None:
    assert set(MORE) <= set(OPTIONS)
    for target in MORE.values():
        page, _, anchor = target.partition("#")
        assert anchor in anchors(DOCS / page), target


def test_the_readme_is_one_screen_that_starts_with_the_two_commands() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    first_block = readme.split("```", 2)[1]
    assert [line.split()[:2] for line in first_block.splitlines()[1:3]] == [["make", "serve"], ["make", "test"]]
    for page in DOCS.glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"the README's table of contents misses docs/{page.name}"
