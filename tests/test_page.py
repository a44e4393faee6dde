"""The page at /, in a real headless Chromium (Debian's, driven by Playwright) against the tiny service.

`make test` installs Chromium; screenshots land in build/test-artifacts/page/ for a person to look at.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


@contextmanager
def opened(browser, base_url: str, name: str, **context_options: Any) -> Iterator[Any]:
    """The page in a fresh browser context (800 x 900 unless told); its screenshot kept, pass or fail."""
    context = browser.new_context(**{"viewport": {"width": 800, "height": 900}, **context_options})
    page = context.new_page()
    page.set_default_timeout(120_000)  # two shared cores: an image can take seconds
    page.goto(base_url + "/")
    try:
        yield page
    finally:
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        context.close()


@pytest.fixture
def page(browser, tiny_service: ServiceProcess, request: pytest.FixtureRequest) -> Iterator[Any]:
    with opened(browser, tiny_service.base_url, request.node.name) as page:
        yield page


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


# --- Image-to-image, layout, colour scheme, keyboard, copy as curl ---------------------------------

GENERATE_IMAGE = "**/generate-image"
INPUT_NAME = "photo.png"


@pytest.fixture(scope="module")
def input_png() -> bytes:
    """A 768 x 512 PNG (3:2, so the page picks the 768 x 512 preset): a smooth gradient, a few KiB."""
    import io

    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:512, 0:768]
    pixels = np.stack([x * 255 // 767, y * 255 // 511, np.full_like(x, 160)], axis=-1).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def set_strength(page, value: float) -> None:
    """As a drag does: the value, then an input event (Playwright's fill() does not take a range)."""
    page.eval_on_selector("#strength", "(e, v) => { e.value = v; e.dispatchEvent(new Event('input', {bubbles: true})); }", str(value))


def generate_and_wait(page, trigger=lambda page: page.click("#generate")) -> tuple[dict[str, Any], Any]:
    """The JSON the page sent and the response, once the image is shown."""
    with page.expect_response(GENERATE_IMAGE) as answer:
        trigger(page)
    response = answer.value
    assert response.ok, response.text()
    page.wait_for_selector("#result:not([hidden])")
    page.wait_for_function("() => document.querySelector('#image').complete && document.querySelector('#image').naturalWidth > 0")
    return response.request.post_data_json, response


def box(page, selector: str) -> dict[str, float]:
    return page.locator(selector).bounding_box()


def pick(page, input_png: bytes) -> None:
    page.set_input_files("#image_file", files=[{"name": INPUT_NAME, "mimeType": "image/png", "buffer": input_png}])
    page.wait_for_function(f"() => document.querySelector('#input_caption').textContent.startsWith('{INPUT_NAME}')")


def test_a_picked_image_and_the_strength_reach_the_request(page, input_png: bytes) -> None:
    page.fill("#prompt", "the same scene at night")
    pick(page, input_png)
    assert page.is_visible("#input") and page.text_content("#input_caption") == f"{INPUT_NAME} · 768 × 512"
    assert page.input_value("#size") == "768x512", "the preset nearest the input's 3:2 aspect"
    set_strength(page, 0.75)
    # 1 step x 0.75 runs none (the service refuses it): the page raises the steps to the fewest that run one.
    assert page.input_value("#num_inference_steps") == "2"
    assert page.text_content("#steps_hint") == "(1 run from the image)"
    sent, _ = generate_and_wait(page)
    assert base64.b64decode(sent["image"]) == input_png
    assert (sent["strength"], sent["num_inference_steps"], sent["width"], sent["height"]) == (0.75, 2, 768, 512)
    assert page.evaluate("document.querySelector('#image').naturalWidth") == 768
    assert page.text_content("#caption").endswith("from the image at strength 0.75")
    page.click("#clear_image")
    assert page.is_hidden("#input") and page.text_content("#steps_hint") == ""
    sent, _ = generate_and_wait(page)
    assert "image" not in sent and "strength" not in sent, "text-to-image again once the image is removed"


# A synthetic event carrying a DataTransfer with the file, as the browser fires for a real drop or paste.
DISPATCH = """([kind, name, type, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type}));
    const event = kind === "paste"
        ? new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true})
        : new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true});
    (kind === "paste" ? document.querySelector("#prompt") : document.querySelector("#output")).dispatchEvent(event);
    return event.defaultPrevented;
}"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_a_dropped_or_pasted_image_is_the_input(page, input_png: bytes, kind: str) -> None:
    page.fill("#prompt", "a watercolour")
    handled = page.evaluate(DISPATCH, [kind, INPUT_NAME, "image/png", base64.b64encode(input_png).decode()])
    assert handled, "the page takes the file: the browser must not open it or paste its name"
    page.wait_for_selector("#input:not([hidden])")
    assert page.input_value("#prompt") == "a watercolour"
    sent, _ = generate_and_wait(page)
    assert base64.b64decode(sent["image"]) == input_png and sent["strength"] == 0.5


def test_dropping_a_file_that_is_no_image_says_so(page) -> None:
    page.evaluate(DISPATCH, ["drop", "notes.txt", "text/plain", base64.b64encode(b"hello").decode()])
    assert page.text_content("#status") == "notes.txt is not an image: drop, paste or pick a PNG, JPEG or WebP file"
    assert page.is_hidden("#input")


def test_a_strength_too_low_for_the_steps_shows_the_services_error(page, input_png: bytes) -> None:
    page.fill("#prompt", "barely changed")
    pick(page, input_png)
    page.select_option("#num_inference_steps", "4")
    set_strength(page, 0.1)  # 4 steps x 0.1 still runs none: the page cannot fix it, the service says why
    assert page.input_value("#num_inference_steps") == "4"
    page.click("#generate")
    page.wait_for_selector("#status.error")
    status = page.text_content("#status")
    assert status.startswith("422: int(num_inference_steps x strength) must be at least 1") and status.endswith("(strength)")
    assert "int(4 x 0.1) = 0" in status
    assert page.is_enabled("#generate")


@pytest.mark.parametrize("keys", ["Control+Enter", "Meta+Enter"])
def test_ctrl_or_cmd_enter_generates(page, keys: str) -> None:
    page.fill("#prompt", "a key press")
    page.focus("#prompt")
    sent, _ = generate_and_wait(page, lambda page: page.keyboard.press(keys))
    assert sent["prompt"] == "a key press"
    assert page.input_value("#prompt") == "a key press", "the shortcut must not also type a line break"


def test_a_wide_screen_puts_the_form_beside_the_input_and_output(browser, tiny_service: ServiceProcess, input_png: bytes) -> None:
    with opened(browser, tiny_service.base_url, "wide-screen", viewport={"width": 1440, "height": 900}) as page:
        page.fill("#prompt", "a wide screen")
        pick(page, input_png)
        generate_and_wait(page)
        form, output, given, made = (box(page, s) for s in ("#form", "#output", "#input", "#result"))
        assert form["x"] + form["width"] <= output["x"] and abs(form["y"] - output["y"]) < 50
        assert given["x"] + given["width"] <= made["x"] and given["y"] == made["y"], "the input beside the output"


def test_a_phone_gets_one_column(browser, tiny_service: ServiceProcess, input_png: bytes) -> None:
    with opened(browser, tiny_service.base_url, "phone", viewport={"width": 390, "height": 844}, is_mobile=True) as page:
        page.fill("#prompt", "a phone-sized page")
        pick(page, input_png)
        generate_and_wait(page)
        form, output, given, made = (box(page, s) for s in ("#form", "#output", "#input", "#result"))
        assert output["y"] >= form["y"] + form["height"] and given["y"] + given["height"] <= made["y"]
        assert page.evaluate("document.documentElement.scrollWidth") <= 390, "nothing wider than the phone"


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colours_follow_the_systems_scheme(browser, tiny_service: ServiceProcess, input_png: bytes, scheme: str) -> None:
    with opened(browser, tiny_service.base_url, f"scheme-{scheme}", viewport={"width": 1280, "height": 800}, color_scheme=scheme) as page:
        page.fill("#prompt", f"a {scheme} page")
        pick(page, input_png)
        generate_and_wait(page)
        background, text = page.evaluate(
            "() => ['backgroundColor', 'color'].map((p) => getComputedStyle(document.body)[p].match(/\\d+/g).slice(0, 3).map(Number))"
        )
        brightness = lambda rgb: sum(rgb) / 3  # noqa: E731
        assert (brightness(background) < 60 < 190 < brightness(text)) if scheme == "dark" else (brightness(text) < 60 < 190 < brightness(background))


# The bytes of the image the page shows, read back from its blob: URL.
SHOWN_IMAGE = """async () => {
    const bytes = new Uint8Array(await (await fetch(document.querySelector("#image").src)).arrayBuffer());
    return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
}"""


@pytest.mark.parametrize("with_image", [False, True], ids=["text", "image"])
def test_copy_as_curl_is_the_pages_request_and_runs(
    browser, tiny_service: ServiceProcess, input_png: bytes, tmp_path: Path, with_image: bool
) -> None:
    """The copied command, run by a real shell and curl, sends the page's very JSON and gets its very image."""
    permissions = ["clipboard-read", "clipboard-write"]
    with opened(browser, tiny_service.base_url, f"copy-as-curl-{'image' if with_image else 'text'}", permissions=permissions) as page:
        page.fill("#prompt", "it's \"quoted\" $HOME `not run`")  # the shell must pass all of it as it is
        page.uncheck("#random_seed")
        page.fill("#seed", "7")
        if with_image:
            pick(page, input_png)
            (tmp_path / INPUT_NAME).write_bytes(input_png)  # where the command runs, as the status says
        page.click("#copy_curl")
        page.wait_for_selector("#curl_box:not([hidden])")
        page.fill("#negative_prompt", "changed")
        assert page.is_hidden("#curl_box"), "a command that no longer matches the form is not left on show"
        page.fill("#negative_prompt", "")
        page.click("#copy_curl")
        page.wait_for_selector("#curl_box:not([hidden])")
        command = page.evaluate("navigator.clipboard.readText()")
        assert command == page.text_content("#curl")
        assert page.text_content("#status") == "copied the curl command" + (f"; run it where {INPUT_NAME} is" if with_image else "")
        assert page.text_content("#curl_note").startswith(f"It reads {INPUT_NAME} ") == with_image
        sent, response = generate_and_wait(page)
        page_image = base64.b64decode(page.evaluate(SHOWN_IMAGE))

    if with_image:  # the part before the pipe writes the body curl reads from stdin
        producer = command.split(" |\n", 1)[0]
        body = subprocess.run(["bash", "-c", producer], cwd=tmp_path, capture_output=True, check=True).stdout
    else:
        arguments = shlex.split(command)
        body = arguments[arguments.index("-d") + 1].encode()
    assert json.loads(body) == sent and body == response.request.post_data_buffer
    subprocess.run(["bash", "-c", command], cwd=tmp_path, check=True, timeout=120)
    assert (tmp_path / "sdxl-turbo.png").read_bytes() == page_image  # same seed, same request: the same PNG
