"""A schema-based fuzzer (schemathesis, bounded and seeded) against the live tiny service: whatever it
sends within or outside /openapi.json, the service never answers 5xx, answers only documented
statuses, and its JSON bodies match the document."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ServiceProcess, running_service

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.mark.slow
def test_schemathesis_finds_nothing(presets_dir: Path, tmp_path: Path) -> None:
    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert schemathesis, "schemathesis is not installed: `make test` installs the test extra"
    # At most 2 steps: the fuzzer's 1024x1024 requests stay quick on a CPU.
    with running_service(["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir), "--max-steps", "2",
                          "--cache-dir", str(tmp_path / "cache")]) as service:
        service: ServiceProcess
        result = subprocess.run(
            # A deadline the fuzzer picks (a millisecond) ends, by design, in a 504: every request gets ten minutes.
            [schemathesis, "run", f"{service.base_url}/openapi.json", "--checks", CHECKS, "--max-examples", "5",
             "--header", "X-Request-Timeout: 600",
             "--seed", "1", "--phases", "examples,coverage,fuzzing", "--request-timeout", "60"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        log = service.log()
    assert result.returncode == 0, result.stdout[-6000:]
    assert "Traceback" not in log
