"""deploy/: the Kubernetes example and the compose file parse, and name the routes, port, paths and
settings that the service and the image really have (routes from the app's own router)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import yaml

from engines.select import EngineRequest, select_engine
from service.app import create_app
from service.cache import ImageCache
from service.settings import OPTIONS, Settings, env_name, load_settings
from tests.dockerfile_stages import Dockerfile, exec_form, read_dockerfile
from tests.helpers import REPO

KUBERNETES = REPO / "deploy" / "kubernetes.yaml"
COMPOSE = REPO / "deploy" / "compose.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[tuple[str, str]]]:
    """(method, path) of every route the service answers, from the router of a real app."""
    directory = tmp_path_factory.mktemp("routes")
    settings = Settings(model="tiny", engine_dir=directory / "engines", cache_dir=directory / "cache")
    engine = select_engine(EngineRequest(engine="torch", model="tiny", engine_dir=settings.engine_dir))
    cache = ImageCache(settings.cache_dir, settings.cache_size)
    try:
        app = create_app(settings, engine, cache)  # building the app loads no model
        yield {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource}
    finally:
        cache.close()


@pytest.fixture(scope="module")
def image() -> Dockerfile:
    return read_dockerfile()


@pytest.fixture(scope="module")
def image_env(image: Dockerfile) -> dict[str, str]:
    return image.env("gpu")


@pytest.fixture(scope="module")
def kubernetes() -> dict[str, list[dict[str, Any]]]:
    """The documents of kubernetes.yaml by kind."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for document in yaml.safe_load_all(KUBERNETES.read_text()):
        by_kind.setdefault(document["kind"], []).append(document)
    return by_kind


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def only(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (document,) = documents
    return document


def pod_spec(kubernetes: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return only(kubernetes["Deployment"])["spec"]["template"]["spec"]


def container(spec: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    return only([c for c in spec[key] if c["name"] == name])


def configured_settings(kubernetes: dict[str, list[dict[str, Any]]], image_env: dict[str, str]) -> Settings:
    """What the service reads in the pod: the image's ENV, then the ConfigMap's variables."""
    return load_settings([], environ={**image_env, **only(kubernetes["ConfigMap"])["data"]})


def mounts(spec: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """mount path -> the volume's source (claim name, or 'emptyDir')."""
    sources = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName", "emptyDir") for v in spec["volumes"]}
    return {m["mountPath"]: sources[m["name"]] for m in c["volumeMounts"]}


# --- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_example_has_its_parts(kubernetes: dict[str, list[dict[str, Any]]]) -> None:
    assert {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service"} <= kubernetes.keys()


def test_probes_ask_the_routes_the_service_has(
    kubernetes: dict[str, list[dict[str, Any]]], routes: set[tuple[str, str]]
) -> None:
    serve = container(pod_spec(kubernetes), "containers", "serve")
    probes = {kind: serve[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"  # never the model's readiness: a busy pod is alive
    ports = {p["name"]: p["containerPort"] for p in serve["ports"]}
    for probe in probes.values():
        assert ("GET", probe["path"]) in routes
        assert ports.get(probe["port"], probe["port"]) == 5000


def test_container_port_is_the_port_the_service_listens_on(
    kubernetes: dict[str, list[dict[str, Any]]], image: Dockerfile, image_env: dict[str, str]
) -> None:
    settings = configured_settings(kubernetes, image_env)
    serve = container(pod_spec(kubernetes), "containers", "serve")
    assert [p["containerPort"] for p in serve["ports"]] == [settings.port] == [5000]
    assert settings.host == "0.0.0.0"
    assert [i.value for i in image.inherited("gpu", "EXPOSE")] == ["5000"]


def test_service_reaches_the_pods_http_port(kubernetes: dict[str, list[dict[str, Any]]]) -> None:
    deployment, service = only(kubernetes["Deployment"]), only(kubernetes["Service"])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    serve = container(deployment["spec"]["template"]["spec"], "containers", "serve")
    names = {p["name"] for p in serve["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])


def test_init_container_builds_engines_where_serve_reads_them(
    kubernetes: dict[str, list[dict[str, Any]]], image_env: dict[str, str]
) -> None:
    spec = pod_spec(kubernetes)
    build, serve = container(spec, "initContainers", "build-engines"), container(spec, "containers", "serve")
    assert build["args"][0] == "build-engines" and serve["args"] == ["serve"]
    assert build["image"] == serve["image"]
    assert build["envFrom"] == serve["envFrom"]  # the same model, engine dir and settings
    settings = configured_settings(kubernetes, image_env)
    build_mounts, serve_mounts = mounts(spec, build), mounts(spec, serve)
    for path in (str(settings.engine_dir), image_env["HF_HOME"]):
        assert build_mounts[path] == serve_mounts[path] != "emptyDir", path  # persists between pod starts
    claims = {pvc["metadata"]["name"] for pvc in kubernetes["PersistentVolumeClaim"]}
    assert {source for source in {**build_mounts, **serve_mounts}.values() if source != "emptyDir"} <= claims
    assert any(settings.cache_dir.is_relative_to(path) for path in serve_mounts)
    for c in (build, serve):
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_pod_runs_on_the_nvidia_runtime_with_one_gpu_per_container(kubernetes: dict[str, list[dict[str, Any]]]) -> None:
    spec = pod_spec(kubernetes)
    assert spec["runtimeClassName"] == "nvidia"
    for c in (container(spec, "initContainers", "build-engines"), container(spec, "containers", "serve")):
        # Extended resources go in limits (a request, if any, must equal it).
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1


def test_pod_runs_as_the_images_user_and_outlasts_the_drain(
    kubernetes: dict[str, list[dict[str, Any]]], image: Dockerfile, image_env: dict[str, str]
) -> None:
    spec = pod_spec(kubernetes)
    uid, _, gid = image.inherited("gpu", "USER")[-1].value.partition(":")
    context = spec["securityContext"]
    assert context["runAsNonRoot"] is True
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (int(uid), int(gid), int(gid))
    assert spec["terminationGracePeriodSeconds"] > configured_settings(kubernetes, image_env).shutdown_timeout


def test_no_service_variable_can_shadow_a_setting(kubernetes: dict[str, list[dict[str, Any]]]) -> None:
    # Kubernetes gives pods NAME_PORT, NAME_SERVICE_HOST, ... for each Service; SDXL_PORT would break start-up.
    assert pod_spec(kubernetes)["enableServiceLinks"] is False
    settings_variables = {env_name(field) for field in OPTIONS}
    for service in kubernetes["Service"]:
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        assert not {f"{prefix}_PORT", f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT"} & settings_variables


# --- compose ----------------------------------------------------------------------------------


def test_compose_builds_engines_before_serving_them(compose: dict[str, Any]) -> None:
    build, serve = compose["services"]["build-engines"], compose["services"]["serve"]
    assert build["command"][0] == "build-engines" and serve["command"] == ["serve"]
    assert serve["depends_on"]["build-engines"]["condition"] == "service_completed_successfully"
    assert build["image"] == serve["image"] and build["build"]["target"] == serve["build"]["target"] == "gpu"
    assert (COMPOSE.parent / serve["build"]["context"] / "Dockerfile").resolve() == REPO / "Dockerfile"
    assert build["environment"] == serve["environment"]
    for service in (build, serve):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
        # The device request is the whole GPU set-up: no legacy `runtime: nvidia` beside it.
        assert "runtime" not in service


def test_compose_publishes_the_service_port_and_keeps_the_images_healthcheck(
    compose: dict[str, Any], image_env: dict[str, str]
) -> None:
    serve = compose["services"]["serve"]
    settings = load_settings([], environ={**image_env, **serve["environment"]})
    assert [port.rsplit(":", 1)[1] for port in serve["ports"]] == [str(settings.port)]
    assert "healthcheck" not in serve  # the image's HEALTHCHECK (GET /healthz) applies


def test_compose_keeps_model_engines_and_cache_on_named_volumes(compose: dict[str, Any], image: Dockerfile) -> None:
    declared = set(compose["volumes"])
    image_volumes = {v for i in image.inherited("gpu", "VOLUME") for v in exec_form(i.value)}
    for service in compose["services"].values():
        targets = {}
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            assert source in declared, volume
            targets[target] = source
        assert set(targets) == image_volumes


# --- the document -------------------------------------------------------------------------------


def test_deploy_doc_names_every_setting_file_and_job(image_env: dict[str, str]) -> None:
    text = DEPLOY_DOC.read_text()
    missing = [env_name(field) for field in OPTIONS if env_name(field) not in text]
    assert not missing, f"docs/deploy.md does not document {missing}"
    for name in ("deploy/kubernetes.yaml", "deploy/compose.yaml", "docker/smoke.sh", "build-engines", "serve", "HF_HOME"):
        assert name in text, name
    for path in (image_env["HF_HOME"], image_env["SDXL_ENGINE_DIR"], image_env["SDXL_CACHE_DIR"]):
        assert path in text, path
    assert "docs/deploy.md" in (REPO / "README.md").read_text()


def test_deploy_doc_names_what_a_gpu_host_needs(image: Dockerfile) -> None:
    text = DEPLOY_DOC.read_text()
    minimum = image.labels("gpu")["org.sdxl-turbo.nvidia-driver.minimum"]
    assert f"driver {minimum} or newer" in text
    for name in ("NVIDIA Container Toolkit", "runtimeClassName: nvidia", "constraints/gpu.txt", image.root_image("gpu")):
        assert name in text, name
