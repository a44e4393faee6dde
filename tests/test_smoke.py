from tests.helpers import EXAMPLE_PROMPT, generate


def test_original_curl_example_returns_a_png(tiny_service):
    reply = generate(tiny_service.base_url, {"prompt": EXAMPLE_PROMPT})
    assert reply.status == 200, reply.body[:500]
    assert reply.headers["content-type"] == "image/png"
    assert reply.image().size == (512, 512)
