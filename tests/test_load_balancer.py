"""deploy/compose.yaml's fleet on one machine, with real parts: a real nginx running deploy/nginx.conf
in front of two real service processes (the tiny model) that share one real redis-server started
with compose's own flags."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from service.settings import Settings
from tests.helpers import REPO, ServiceProcess, engine_calls, generate, request
from tests.nginx_server import NGINX, NginxServer
from benchmarks.redis_server import REDIS_SERVER

pytestmark = [
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)"),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make test installs it)"),
]

COMPOSE = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
REPLICAS = sorted(name for name, service in COMPOSE["services"].items() if service.get("command") == ["serve"])


class Fleet:
    def __init__(self, nginx: NginxServer, replicas: dict[str, ServiceProcess]) -> None:
        self.nginx, self.replicas = nginx, replicas

    def answered_by(self, count: int) -> list[str]:
        """The replica that answered each of the last `count` requests through nginx (from nginx's access log)."""
        names = {f"127.0.0.1:{r.port}": name for name, r in self.replicas.items()}
        return [names[address] for address in self.nginx.upstreams()[-count:]]

    def engine_calls(self) -> float:
        return sum(engine_calls(r) for r in self.replicas.values())


@pytest.fixture(scope="module")
def fleet(redis_replicas, tmp_path_factory) -> Iterator[Fleet]:
    """nginx in front of the session's two replicas and their Redis (tests/conftest.py: compose's flags)."""
    assert len(REPLICAS) == 2, REPLICAS
    named = dict(zip(REPLICAS, redis_replicas))
    with NginxServer(tmp_path_factory.mktemp("nginx"), {name: r.port for name, r in named.items()}) as nginx:
        yield Fleet(nginx, named)


def test_an_identical_request_through_nginx_is_a_hit_whichever_replica_answers(fleet):
    before = fleet.engine_calls()
    payload: dict[str, Any] = {"prompt": "a lighthouse behind a load balancer", "seed": 21}
    replies = [generate(fleet.nginx.base_url, payload) for _ in range(4)]
    answered_by = fleet.answered_by(4)
    assert [r.status for r in replies] == [200] * 4, replies[0].body[:300]
    assert [r.headers["x-cache"] for r in replies] == ["MISS", "HIT", "HIT", "HIT"], answered_by
    assert replies[0].image().size == (512, 512) and len({r.body for r in replies}) == 1
    assert set(answered_by) == set(fleet.replicas), f"nginx sent every request to one replica: {answered_by}"
    # The first answer of the replica that did not make the image came from Redis.
    other = next(i for i, name in enumerate(answered_by) if name != answered_by[0])
    assert replies[other].headers["x-cache-tier"] == "redis"
    assert fleet.engine_calls() - before == 1


def test_an_image_url_from_v1_is_served_through_nginx_by_either_replica(fleet):
    reply = request(fleet.nginx.base_url, "POST", "/v1/images/generations",
                    json_body={"prompt": "a url through nginx", "response_format": "url", "seed": 22})
    assert reply.status == 200, reply.body[:300]
    (item,) = reply.json()["data"]
    # Built from the Host nginx passes on: the client's address for nginx, not a replica's.
    assert item["url"].startswith(fleet.nginx.base_url + "/images/"), item["url"]
    path = item["url"].removeprefix(fleet.nginx.base_url)
    images = [request(fleet.nginx.base_url, "GET", path) for _ in range(len(fleet.replicas))]
    assert [i.status for i in images] == [200] * len(fleet.replicas)
    assert len({i.body for i in images}) == 1 and images[0].image().size == (512, 512)


def test_a_body_just_past_the_services_limit_gets_the_services_413_naming_the_field(fleet):
    limit = Settings().max_image_body_bytes
    padding = limit + 1024 - len(b'{"prompt": "x", "image": ""}')
    body = b'{"prompt": "x", "image": "' + b"A" * padding + b'"}'
    reply = request(fleet.nginx.base_url, "POST", "/generate-image", body=body, headers={"Content-Type": "application/json"})
    assert reply.status == 413, reply.body[:300]
    assert reply.headers["content-type"].startswith("application/json"), reply.body[:300]  # the service's, not nginx's page
    error = reply.json()["error"]
    assert error["code"] == "body_too_large" and error["field"] == "image" and str(limit) in error["message"]
