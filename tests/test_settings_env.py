"""A container is configured by SDXL_* variables: a bad one stops `python -m service` at start-up,
with exit code 2 and a message naming the variable and its rule, before any model loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.mark.parametrize(
    "variable, value, rule",
    [
        ("SDXL_PORT", "http", "must be an integer from 1 to 65535"),
        ("SDXL_ENGINE", "cuda", "must be one of auto, torch"),
        ("SDXL_CACHE_SIZE", "lots", "must be a size such as 2GB"),
        ("SDXL_MAX_QUEUE", "0", "must be from 1 to"),
        ("SDXL_HOST", "  ", "must not be empty"),
    ],
)
def test_a_bad_variable_stops_start_up_with_its_name_and_rule(variable: str, value: str, rule: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDXL_")}
    env[variable] = value
    result = subprocess.run(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert f"{variable}={value!r}: {rule}" in result.stderr
    assert "Traceback" not in result.stderr
