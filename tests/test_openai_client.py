"""The official `openai` Python package against the running service, as a user would call it."""

from __future__ import annotations

import base64
import io

import openai
import pytest
from PIL import Image

from tests.helpers import generate, request
from tests.test_image_to_image_http import b64, encoded, picture


@pytest.fixture(scope="module")
def client(tiny_service) -> openai.OpenAI:
    return openai.OpenAI(base_url=tiny_service.base_url + "/v1", api_key="unused-without-keys", max_retries=0, timeout=120)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_with_nothing_but_the_clients_defaults(client) -> None:
    result = client.images.generate(prompt="a lighthouse at dusk")
    (item,) = result.data
    assert item.url is None and decode(item.b64_json).size == (512, 512) and decode(item.b64_json).format == "PNG"


def test_edit_with_nothing_but_the_clients_defaults(client, tiny_service, tmp_path) -> None:
    """images.edit(image=open(...), prompt=...) as a new user writes it: SDXL Turbo's 2 steps at strength 0.5,
    the image /generate-image makes from the same input with those fields."""
    png = encoded(picture(256, 320, seed=8))
    path = tmp_path / "input.png"
    path.write_bytes(png)
    with path.open("rb") as image:
        result = client.images.edit(image=image, prompt="a watercolour")
    (item,) = result.data
    made = base64.b64decode(item.b64_json)
    assert Image.open(io.BytesIO(made)).size == (256, 320)
    same = generate(tiny_service.base_url, {"prompt": "a watercolour", "image": b64(png), "num_inference_steps": 2,
                                            "strength": 0.5, "seed": item.model_extra["seed"]})
    assert same.status == 200 and same.headers["x-cache"] == "HIT" and same.body == made


def test_edit_urls_serve_the_bytes_the_b64_answer_carries(client, tiny_service) -> None:
    image = ("in.png", encoded(picture(seed=9)), "image/png")
    extras = {"seed": 77, "strength": 0.75}
    as_b64 = client.images.edit(image=image, prompt="by address", extra_body=extras)
    as_url = client.images.edit(image=image, prompt="by address", response_format="url", extra_body=extras)
    url = as_url.data[0].url
    assert url.startswith(tiny_service.base_url + "/images/") and as_url.data[0].b64_json is None
    served = request(tiny_service.base_url, "GET", url.removeprefix(tiny_service.base_url))
    assert served.status == 200 and served.body == base64.b64decode(as_b64.data[0].b64_json)


def test_generate_b64_with_what_wrappers_send_by_default(client) -> None:
    result = client.images.generate(
        model="sdxl-turbo", prompt="a lighthouse", n=2, size="256x256", response_format="b64_json",
        quality="standard", style="vivid", user="someone",
    )
    images = [decode(item.b64_json) for item in result.data]
    assert [image.size for image in images] == [(256, 256)] * 2
    assert result.data[0].b64_json != result.data[1].b64_json


def test_without_a_seed_each_call_is_a_new_image_and_the_seed_reproduces_it(client) -> None:
    first = client.images.generate(prompt="a new one each time", size="256x256", response_format="b64_json")
    second = client.images.generate(prompt="a new one each time", size="256x256", response_format="b64_json")
    assert first.data[0].b64_json != second.data[0].b64_json
    seed = first.data[0].model_extra["seed"]
    again = client.images.generate(prompt="a new one each time", size="256x256", response_format="b64_json", extra_body={"seed": seed})
    assert again.data[0].b64_json == first.data[0].b64_json


def test_urls_are_served_by_the_service(client, tiny_service) -> None:
    result = client.images.generate(prompt="by address", size="auto", response_format="url", extra_body={"seed": 5})
    url = result.data[0].url
    assert url.startswith(tiny_service.base_url + "/images/") and url.endswith(".png")
    reply = request(tiny_service.base_url, "GET", url.removeprefix(tiny_service.base_url))
    assert reply.status == 200 and reply.headers["content-type"] == "image/png"
    assert "immutable" in reply.headers["cache-control"]
    assert reply.image().size == (512, 512)
    key = url.rsplit("/", 1)[1].split(".")[0]
    assert request(tiny_service.base_url, "GET", f"/images/{key}.png", headers={"If-None-Match": f'"{key}"'}).status == 304
    assert request(tiny_service.base_url, "GET", f"/images/{'0' * 64}.png").status == 404


def test_output_format_and_compression(client) -> None:
    result = client.images.generate(prompt="a jpeg", size="256x256", response_format="b64_json",
                                    extra_body={"output_format": "jpeg", "output_compression": 40, "seed": 1})
    assert decode(result.data[0].b64_json).format == "JPEG"


def test_a_bad_field_is_a_bad_request_error_naming_it(client) -> None:
    with pytest.raises(openai.BadRequestError) as failure:
        client.images.generate(prompt="too many", n=99)
    error = failure.value.body
    assert failure.value.status_code == 400 and error["param"] == "n" and error["type"] == "invalid_request_error"


def test_models_list_names_the_served_model(client) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
