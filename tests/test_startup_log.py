"""What a person or a log collector sees at start-up: JSON lines only (no progress bars inside them),
each step with its time, and probes kept out of the INFO access log."""

from __future__ import annotations

import json

from tests.helpers import EXAMPLE_PROMPT, ServiceProcess, generate, request


def test_json_start_up_log_says_each_step_and_leaves_probes_out(tiny_service: ServiceProcess) -> None:
    # The session's service: its stderr is a file, not a terminal, so auto means JSON; its start-up
    # polled /readyz, and other tests may have sent it anything since (their records must be JSON too).
    for path in ("/healthz", "/readyz", "/metrics"):
        assert request(tiny_service.base_url, "GET", path).status == 200
    assert generate(tiny_service.base_url, {"prompt": EXAMPLE_PROMPT}).status == 200
    # A prompt past CLIP's 77 tokens: transformers' tokenizer warns, in a line of its own unless routed to ours.
    assert generate(tiny_service.base_url, {"prompt": "a lighthouse " * 60}).status == 200
    lines = tiny_service.log().splitlines()
    records = [json.loads(line) for line in lines]  # a progress bar or a stray print fails here
    messages = [r["message"] for r in records]
    for step in ("model: tiny preset at", "loading unet:", "loaded, ", "warm-up image made and checked", "ready on http://127.0.0.1:"):
        assert any(m.startswith(step) for m in messages), f"no line starts with {step!r}:\n" + "\n".join(messages)
    access = {r.get("path") for r in records if "status" in r}
    assert "/generate-image" in access and not access & {"/healthz", "/readyz", "/metrics"}, access
