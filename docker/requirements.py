"""Print the project's requirements (its dependencies plus the named extras) from pyproject.toml.

The image installs these before it copies the code, so a code change reuses the dependency layers
instead of reinstalling torch. Usage: python requirements.py PYPROJECT [EXTRA ...]
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Sequence


def requirements(pyproject: Path, extras: Sequence[str]) -> list[str]:
    """Dependencies, then each extra's, in order, without repeats; raises ValueError for an unknown extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"unknown extra {', '.join(unknown)} (the project has {', '.join(sorted(optional))})")
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += optional[extra]
    return list(dict.fromkeys(found))


def main(argv: Sequence[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        lines = requirements(Path(argv[0]), argv[1:])
    except (OSError, KeyError, ValueError) as exc:
        print(f"requirements.py: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
