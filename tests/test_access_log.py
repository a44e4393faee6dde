"""Logging off the event loop: records are formatted and written by a listener thread, and
--access-log chooses which requests get an access line (all, errors, off)."""

from __future__ import annotations

import json
import logging
import threading

import aiohttp
import pytest
from aiohttp import web

from service.app import create_app
from service.cache import ImageCache
from service.logs import JsonFormatter, current_request_id, queued_logging
from service.server import ServiceRunner, runner_options
from service.settings import SettingsError, load_settings, Settings
from tests.engines import ControlledEngine
from tests.helpers import free_port


def test_the_access_log_setting_reads_from_flag_and_variable_and_defaults_to_all():
    assert load_settings([], environ={}).access_log == "all"
    assert load_settings([], environ={"SDXL_ACCESS_LOG": "errors"}).access_log == "errors"
    assert load_settings(["--access-log", "off"], environ={"SDXL_ACCESS_LOG": "errors"}).access_log == "off"


@pytest.mark.parametrize(("argv", "env", "words"), [
    (["--access-log", "some"], {}, "--access-log='some': must be one of all, errors, off"),
    ([], {"SDXL_ACCESS_LOG": "ALL"}, "SDXL_ACCESS_LOG='ALL': must be one of all, errors, off"),
])
def test_a_bad_access_log_value_is_refused_naming_its_source(argv, env, words):
    with pytest.raises(SettingsError) as caught:
        load_settings(argv, environ=env)
    assert words in str(caught.value)


@pytest.mark.parametrize(("mode", "expected"), [("all", {200, 404}), ("errors", {404}), ("off", set())])
async def test_access_lines_follow_the_setting(tmp_path, caplog, mode, expected):
    settings = Settings(model="test", cache_dir=tmp_path / "cache", access_log=mode)
    app = create_app(settings, ControlledEngine(), ImageCache(settings.cache_dir, settings.cache_size))
    runner = ServiceRunner(app, **runner_options(settings))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/openapi.json", "/no-such-path"):
                async with session.get(f"http://127.0.0.1:{port}{path}") as reply:
                    await reply.read()
    finally:
        await runner.cleanup()
    logged = {r.status for r in caplog.records if r.name == "aiohttp.access"}
    assert logged == expected


def test_records_are_formatted_on_the_listener_thread_with_the_callers_request_id(capsys, monkeypatch):
    formatted_on = []
    real_format = JsonFormatter.format

    def spying_format(self, record):  # type: ignore[no-untyped-def]
        formatted_on.append(threading.current_thread())
        return real_format(self, record)

    monkeypatch.setattr(JsonFormatter, "format", spying_format)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with queued_logging("INFO", "json"):
            token = current_request_id.set("req-42")
            logging.getLogger("service.test").info("made %d images", 3)
            current_request_id.reset(token)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [(e["message"], e.get("request_id")) for e in lines] == [("made 3 images", "req-42")]
    assert formatted_on and threading.main_thread() not in formatted_on
