"""What a person or a log collector sees at start-up: JSON lines only (no progress bars inside them),
each step with its time, and probes kept out of the INFO access log."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import EXAMPLE_PROMPT, generate, request, running_service


def test_json_start_up_log_says_each_step_and_leaves_probes_out(presets_dir: Path, tmp_path: Path) -> None:
    args = ["--model", "tiny", "--precision", "fp32", "--presets-dir", str(presets_dir), "--cache-dir", str(tmp_path / "c")]
    with running_service(args) as service:  # stderr is a file, not a terminal: auto means JSON
        for path in ("/healthz", "/readyz", "/metrics"):
            assert request(service.base_url, "GET", path).status == 200
        assert generate(service.base_url, {"prompt": EXAMPLE_PROMPT}).status == 200
    lines = service.log().splitlines()
    records = [json.loads(line) for line in lines]  # a progress bar or a stray print fails here
    messages = [r["message"] for r in records]
    for step in ("model: tiny preset at", "loading unet:", "loaded, ", "warm-up image made and checked", "ready on http://127.0.0.1:"):
        assert any(m.startswith(step) for m in messages), f"no line starts with {step!r}:\n" + "\n".join(messages)
    access = [r.get("path") for r in records if "status" in r]
    assert access == ["/generate-image"], access
