"""A fault run under load: two replicas sharing a real Redis, steady hits and misses, while Redis is
killed and brought back, a replica's cache disk fills up and is freed, and the other replica gets
SIGTERM. Every request gets its image, or a 503/429 with Retry-After: no 500, no reset, no wrong image."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.faults import SCHEDULE, run_faults
from benchmarks.report import _faults as _faults_section
from benchmarks.redis_server import REDIS_SERVER


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make test installs it)")
def test_every_request_under_faults_gets_its_image_or_a_retry_after(presets_dir):
    def replica(cache_dir: Path, *extra: str) -> list[str]:
        return ["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir), "--cache-dir", str(cache_dir), *extra]

    result = run_faults(replica)
    expected = [fault for _, fault in SCHEDULE if result["disk"] == "tmpfs" or not fault.startswith("disk")]
    assert result["faults"] == expected
    assert result["failures"] == 0, result
    assert result["outcomes"].get("image", 0) >= 20, result
    assert result["replica_b_exit"] == 0
    # The benchmark's `faults` section is this run; its report table (the quick run leaves it to this test):
    report = "\n".join(_faults_section({"faults": result}))
    assert "## Faults under load" in report and f"**{result['failures']}**" in report
    print(result)  # the counts, for the record (pytest -s)
