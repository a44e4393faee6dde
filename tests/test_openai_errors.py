"""Every /v1 error names the field the client sent, read as the official `openai` client reads it
(`BadRequestError.param`), never a name of the JSON route's rules (`width`) that OpenAI's request lacks."""

from __future__ import annotations

import re

import openai
import pytest

from tests.engines import ControlledEngine
from tests.test_image_to_image_http import encoded, picture

PNG = encoded(picture())
NOT_SUPPORTED = encoded(picture(300, 200))  # no multiple of 8: its own size cannot be the output's

GENERATE = [
    ({"size": "13x7"}, "size"),
    ({"size": "2048x256"}, "size"),
    ({"size": "512x2048"}, "size"),
    ({"size": "big"}, "size"),
    ({"n": 99}, "n"),
    ({"response_format": "jpeg"}, "response_format"),
    ({"output_format": "gif"}, "output_format"),
    ({"output_compression": 101}, "output_compression"),
    ({"prompt": "   "}, "prompt"),
    ({"partial_images": 1}, "partial_images"),
    ({"extra_body": {"quality": {"level": "hd"}}}, "quality"),
    ({"extra_body": {"num_inference_steps": 9}}, "num_inference_steps"),
    ({"extra_body": {"guidance_scale": 50}}, "guidance_scale"),
    ({"extra_body": {"seed": -2}}, "seed"),
    ({"extra_body": {"negative_prompt": 5}}, "negative_prompt"),
    ({"extra_body": {"strength": 0.5}}, "strength"),
]
EDIT = [
    ({"image": b"not an image"}, "image"),
    ({"image": NOT_SUPPORTED}, "image"),
    ({"mask": PNG}, "mask"),
    ({"size": "13x7"}, "size"),
    ({"size": "2048x256"}, "size"),
    ({"n": 9}, "n"),
    ({"response_format": "jpeg"}, "response_format"),
    ({"output_format": "gif"}, "output_format"),
    ({"output_compression": 101}, "output_compression"),
    ({"prompt": ""}, "prompt"),
    ({"extra_body": {"strength": 2}}, "strength"),
    ({"extra_body": {"num_inference_steps": 1}}, "strength"),  # int(1 x 0.5) = 0: both are named in the message
    ({"extra_body": {"seed": "soon"}}, "seed"),
]


@pytest.fixture
async def served(make_client):
    """The official async client against an in-process service whose engine counts what reaches it."""
    engine = ControlledEngine()
    app = await make_client(engine)
    client = openai.AsyncOpenAI(base_url=str(app.make_url("/v1")), api_key="unused", max_retries=0)
    yield client, engine
    await client.close()


def check(failure: pytest.ExceptionInfo[openai.BadRequestError], param: str, engine: ControlledEngine) -> None:
    error = failure.value
    assert error.param == param, error.body
    assert re.search(rf"\b{param}\b", error.body["message"]), "the message speaks of the field the client sent"
    assert engine.requests_seen == 0


@pytest.mark.parametrize(("fields", "param"), GENERATE)
async def test_a_bad_generation_names_the_clients_field(served, fields, param):
    client, engine = served
    with pytest.raises(openai.BadRequestError) as failure:
        await client.images.generate(**{"prompt": "a cat", **fields})
    check(failure, param, engine)


@pytest.mark.parametrize(("fields", "param"), EDIT)
async def test_a_bad_edit_names_the_clients_field(served, fields, param):
    client, engine = served
    fields = {"image": PNG, "prompt": "a cat", **fields}
    files = {name: (f"{name}.png", fields[name], "image/png") for name in ("image", "mask") if name in fields}
    with pytest.raises(openai.BadRequestError) as failure:
        await client.images.edit(**{**fields, **files})
    check(failure, param, engine)


async def test_an_unsupported_input_size_advises_the_clients_field(served):
    client, _ = served
    with pytest.raises(openai.BadRequestError) as failure:
        await client.images.edit(image=("in.png", NOT_SUPPORTED, "image/png"), prompt="a cat")
    message = failure.value.body["message"]
    assert "send size" in message and not re.search(r"\b(width|height)\b", message)
