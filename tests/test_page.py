"""The page at /, in a real headless Chromium (Debian's, driven by Playwright) against the tiny service.

`make test` installs Chromium; screenshots land in build/test-artifacts/page/ for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import REPO, ServiceProcess, request

ARTIFACTS = REPO / "build" / "test-artifacts" / "page"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As the probe of this workplace starts it: no sandbox as root, no background traffic to the network.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "Chromium is not installed: `make test` installs it (apt-get install chromium)"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, tiny_service: ServiceProcess, request: pytest.FixtureRequest) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 800, "height": 900})
    page = context.new_page()
    page.set_default_timeout(120_000)  # two shared cores: an image can take seconds
    page.goto(tiny_service.base_url + "/")
    yield page
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


def test_type_generate_and_see_the_image(page) -> None:
    page.fill("#prompt", "a lighthouse at dusk")
    disabled_on_click = page.evaluate("() => { document.querySelector('#generate').click(); return document.querySelector('#generate').disabled; }")
    assert disabled_on_click, "the button must not take a second click while a request runs"
    page.wait_for_function("() => document.querySelector('#image').naturalWidth === 512")
    assert page.is_enabled("#generate")
    assert page.is_visible("#result")
    assert page.text_content("#caption").startswith("seed ")
    assert page.locator("#recent li").count() == 1
    link = page.locator("#recent li a")
    assert link.get_attribute("download").endswith(".png")


def test_a_bad_size_shows_the_servers_error_and_no_stale_image(page) -> None:
    page.fill("#prompt", "first a good one")
    page.click("#generate")
    page.wait_for_selector("#result:not([hidden])")
    page.select_option("#size", "custom")
    page.fill("#width", "500")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    status = page.text_content("#status")
    assert status.startswith("422: ") and "width" in status
    assert page.is_hidden("#result")
    assert page.is_enabled("#generate")


def test_live_mode_aborts_the_stale_request(page, tiny_service: ServiceProcess) -> None:
    aborted = []
    page.on("requestfailed", lambda r: aborted.append(r.failure) if r.url.endswith("/generate-image") else None)
    page.check("#live")
    page.select_option("#num_inference_steps", "2")
    page.select_option("#size", "768x768")  # slow enough to still be running when the next one starts
    page.fill("#prompt", "a red fox")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('generating')")
    page.fill("#prompt", "a red fox in the snow")
    page.wait_for_selector("#result:not([hidden])")
    assert aborted and all("ABORTED" in str(failure).upper() for failure in aborted)
    assert page.locator("#recent li").count() == 1  # only the request that was not replaced made an image


def test_a_network_failure_is_said_and_the_button_comes_back(page) -> None:
    page.route("**/generate-image", lambda route: route.abort())
    page.fill("#prompt", "anything")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status").startswith("network error")
    assert page.is_enabled("#generate")


def test_a_proxys_html_error_is_said_plainly(page) -> None:
    page.route(
        "**/generate-image",
        lambda route: route.fulfill(status=502, content_type="text/html", body="<html><h1>502 Bad Gateway</h1></html>"),
    )
    page.fill("#prompt", "anything")
    page.click("#generate")
    page.wait_for_selector("#status.error")
    assert page.text_content("#status") == "502 Bad Gateway: 502 Bad Gateway"


def test_favicon_viewport_and_static_files(tiny_service: ServiceProcess) -> None:
    icon = request(tiny_service.base_url, "GET", "/favicon.ico")
    assert icon.status == 200 and icon.headers["content-type"] == "image/svg+xml"
    page = request(tiny_service.base_url, "GET", "/").body.decode()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        reply = request(tiny_service.base_url, "GET", path)
        assert reply.status == 200 and kind in reply.headers["content-type"]
    assert request(tiny_service.base_url, "GET", "/static/../settings.py").status == 404


def test_screenshots_are_kept(page) -> None:
    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.fill("#prompt", "a phone-sized page")
    page.click("#generate")
    page.wait_for_selector("#result:not([hidden])")
    assert Path(ARTIFACTS).is_dir()
