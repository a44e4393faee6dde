"""Settings: flags over environment variables over defaults; a bad value stops start-up clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings, SettingsError, load_settings, parse_size
from tests.helpers import REPO, free_port


def test_defaults_match_the_original_service_address():
    settings = load_settings([], environ={})
    assert (settings.host, settings.port, settings.model) == ("127.0.0.1", 5000, "stabilityai/sdxl-turbo")
    assert settings == Settings()


def test_flag_beats_environment_beats_default():
    env = {"SDXL_PORT": "6000", "SDXL_MODEL": "tiny", "SDXL_CACHE_SIZE": "500MB"}
    settings = load_settings(["--port", "7000"], environ=env)
    assert settings.port == 7000 and settings.model == "tiny" and settings.cache_size == 500 * 1024**2
    assert isinstance(settings.cache_dir, Path)


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--port", "abc"], {}, "--port='abc': must be an integer from 1 to 65535"),
        ([], {"SDXL_PORT": "70000"}, "SDXL_PORT='70000': must be from 1 to 65535"),
        (["--engine", "magic"], {}, "--engine='magic': must be one of auto, torch"),
        ([], {"SDXL_CACHE_SIZE": "lots"}, "SDXL_CACHE_SIZE='lots': must be a size"),
        ([], {"SDXL_CACHE_SIZE": "0"}, "must be larger than 0"),
        (["--max-queue", "0"], {}, "--max-queue='0': must be from 1"),
        (["--request-timeout", "nan"], {}, "--request-timeout='nan'"),
        (["--model", " "], {}, "--model=' ': must not be empty"),
        (["--cache-url", "http://redis:6379"], {}, "--cache-url='http://redis:6379': must be redis://host:port/db"),
        ([], {"SDXL_CACHE_URL": "redis://redis:port/0"}, "SDXL_CACHE_URL='redis://redis:port/0': the port must be a number"),
        (["--cache-url", "redis://redis:6379/cache"], {}, "the database must be a number"),
        (["--memory-cache-size", "big"], {}, "--memory-cache-size='big': must be a size"),
        (["--cache-ttl", "0"], {}, "--cache-ttl='0': must be from 1"),
        (["--static-sizes", "512"], {}, "--static-sizes='512': must be WIDTHxHEIGHT sizes separated by commas"),
        ([], {"SDXL_STATIC_SIZES": "512x512,big"}, "SDXL_STATIC_SIZES='512x512,big': must be WIDTHxHEIGHT"),
        (["--cuda-graphs", "sometimes"], {}, "--cuda-graphs='sometimes': must be true or false"),
    ],
)
def test_bad_values_name_their_source_and_rule(argv, env, words):
    with pytest.raises(SettingsError) as caught:
        load_settings(argv, environ=env)
    assert words in str(caught.value)


def test_static_sizes():
    assert Settings().static_sizes is None, "the default: the engine's base size"
    assert load_settings(["--static-sizes", "512x512, 768x512,512x512"], environ={}).static_sizes == ((512, 512), (768, 512))
    assert load_settings([], environ={"SDXL_STATIC_SIZES": "none"}).static_sizes == ()
    assert load_settings(["--static-sizes", "512x512"], environ={}).engine_request().static_sizes == ((512, 512),)


def test_sizes():
    assert parse_size("2GB") == 2 * 1024**3 and parse_size("1048576") == 1048576 and parse_size("1.5k") == 1536


def test_bad_setting_exits_2_with_one_line_before_torch_is_imported():
    """A bad flag is refused at once: settings are checked before the engine factory imports torch."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "service", "--port", "nope"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    timings = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in timings}
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line not in timings] == [
        "error: --port='nope': must be an integer from 1 to 65535"
    ]
    assert "service.settings" in imported, "-X importtime lists every module imported"
    assert not {name for name in imported if name.split(".")[0] == "torch"}


def test_a_model_path_that_is_not_a_pipeline_stops_start_up(tmp_path):
    """Checked before the service listens: one line saying why, exit 2, never 503s forever."""
    result = subprocess.run(
        [sys.executable, "-m", "service", "--model", str(tmp_path), "--port", str(free_port()), "--cache-dir", str(tmp_path / "c")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]  # JSON lines are logs
    assert len(errors) == 1 and "not an SDXL pipeline directory" in errors[0]
    assert "Traceback" not in result.stderr


def test_cuda_graphs_reach_the_engine_request():
    assert Settings().cuda_graphs is False, "off by default: not yet measured on a GPU"
    assert load_settings(["--cuda-graphs", "true"], environ={}).engine_request().cuda_graphs is True
    assert load_settings([], environ={"SDXL_CUDA_GRAPHS": "1"}).cuda_graphs is True
