"""deploy/: the Kubernetes fleet, its Redis, its monitoring, the compose file and nginx's config parse,
and name the routes, port, paths, settings and metrics that the service and the image really have
(routes from the app's own router, settings through the service's own parser, metrics from a running
app's /metrics, Redis's and nginx's settings through redis-server and `nginx -t` themselves)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

import build_engines
from engines.select import EngineRequest, select_engine
from service.app import create_app
from service.cache import ImageCache
from service.settings import OPTIONS, Settings, env_name, load_settings
from tests.dockerfile_stages import Dockerfile, exec_form, read_dockerfile
from tests.engines import ControlledEngine
from tests.helpers import REPO
from tests.nginx_server import NGINX, SITE, local_site, nginx_command, write_config
from benchmarks.redis_server import REDIS_SERVER, RedisServer

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes.yaml"
REDIS = DEPLOY / "redis.yaml"
COMPOSE = DEPLOY / "compose.yaml"
DEPLOY_DOC = REPO / "docs" / "deploy.md"
# Variables the containers may set that are not the service's: Hugging Face's own.
HUGGING_FACE_VARIABLES = {"HF_HOME", "HF_HUB_OFFLINE", "HF_TOKEN"}
KUBERNETES_SIZES = {"": 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}

Documents = dict[str, list[dict[str, Any]]]


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


def by_kind(path: Path) -> Documents:
    found: Documents = {}
    for document in yaml.safe_load_all(path.read_text()):
        found.setdefault(document["kind"], []).append(document)
    return found


@pytest.fixture(scope="module")
def kubernetes() -> Documents:
    return by_kind(KUBERNETES)


@pytest.fixture(scope="module")
def redis_manifest() -> Documents:
    return by_kind(REDIS)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def only(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (document,) = documents
    return document


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def container(spec: dict[str, Any], key: str, name: str) -> dict[str, Any]:
    return only([c for c in spec[key] if c["name"] == name])


def serve(kubernetes: Documents) -> dict[str, Any]:
    return container(pod_spec(only(kubernetes["Deployment"])), "containers", "serve")


def build_job(kubernetes: Documents) -> dict[str, Any]:
    return container(pod_spec(only(kubernetes["Job"])), "containers", "build-engines")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def container_env(kubernetes: Documents, c: dict[str, Any]) -> dict[str, str]:
    """What the container's environment holds from the manifest: its ConfigMaps, then its own env."""
    config_maps = {m["metadata"]["name"]: m["data"] for m in kubernetes["ConfigMap"]}
    found: dict[str, str] = {}
    for source in c.get("envFrom", []):
        if "configMapRef" in source:
            found.update(config_maps[source["configMapRef"]["name"]])
    found.update({variable["name"]: variable["value"] for variable in c.get("env", [])})
    return found


def configured_settings(kubernetes: Documents, image_env: dict[str, str], c: dict[str, Any]) -> Settings:
    """What the service reads in the container: its flags after the job name, through the service's own
    parser, and the image's ENV overridden by the manifest's variables."""
    return load_settings(c["args"][1:], environ={**image_env, **container_env(kubernetes, c)})


def mounts(spec: dict[str, Any], c: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """mount path -> (the volume's source: claim name or 'emptyDir', read-only in both mount and volume)."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    found = {}
    for m in c["volumeMounts"]:
        claim = volumes[m["name"]].get("persistentVolumeClaim")
        source = claim["claimName"] if claim else "emptyDir"
        found[m["mountPath"]] = (source, bool(m.get("readOnly")) and bool(claim and claim.get("readOnly")))
    return found


def kubernetes_bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMG]i)?", quantity).groups()  # type: ignore[union-attr]
    return int(number) * KUBERNETES_SIZES[unit or ""]


def image_tag(c: dict[str, Any]) -> str:
    return c["image"].rsplit(":", 1)[1]


# --- Kubernetes: the fleet -------------------------------------------------------------------------


def test_kubernetes_example_has_its_parts(kubernetes: Documents, redis_manifest: Documents) -> None:
    assert {"ConfigMap", "PersistentVolumeClaim", "Job", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= kubernetes.keys()
    assert {"Service", "StatefulSet", "NetworkPolicy"} <= redis_manifest.keys()


def test_the_fleet_rolls_out_without_recreate_and_at_least_two_replicas(kubernetes: Documents) -> None:
    deployment, autoscaler = only(kubernetes["Deployment"]), only(kubernetes["HorizontalPodAutoscaler"])
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    rolling = strategy["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1  # capacity kept, progress possible
    # The autoscaler owns the count: a count in the Deployment would reset the fleet on every apply.
    assert "replicas" not in deployment["spec"]
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert 2 <= autoscaler["spec"]["minReplicas"] < autoscaler["spec"]["maxReplicas"]


def test_old_and_new_replicas_can_run_side_by_side(kubernetes: Documents) -> None:
    """What RollingUpdate needs: every volume a replica mounts is its own (emptyDir) or a claim that
    many pods on many nodes can mount at once, read-only."""
    spec = pod_spec(only(kubernetes["Deployment"]))
    claims = {pvc["metadata"]["name"]: pvc["spec"]["accessModes"] for pvc in kubernetes["PersistentVolumeClaim"]}
    for c in spec["initContainers"] + spec["containers"]:
        for path, (source, read_only) in mounts(spec, c).items():
            if source != "emptyDir":
                assert claims[source] == ["ReadWriteMany"] and read_only, (c["name"], path)


def test_probes_ask_the_routes_the_service_has(kubernetes: Documents, routes: set[tuple[str, str]]) -> None:
    probes = {kind: serve(kubernetes)[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"  # never the model's readiness: a busy pod is alive
    ports = {p["name"]: p["containerPort"] for p in serve(kubernetes)["ports"]}
    for probe in probes.values():
        assert ("GET", probe["path"]) in routes
        assert ports.get(probe["port"], probe["port"]) == 5000


def test_container_port_is_the_port_the_service_listens_on(kubernetes: Documents, image: Dockerfile, image_env: dict[str, str]) -> None:
    settings = configured_settings(kubernetes, image_env, serve(kubernetes))
    assert [p["containerPort"] for p in serve(kubernetes)["ports"]] == [settings.port] == [5000]
    assert settings.host == "0.0.0.0"
    assert [i.value for i in image.inherited("gpu", "EXPOSE")] == ["5000"]


def test_every_variable_and_flag_in_the_manifest_is_one_the_service_reads(kubernetes: Documents, image_env: dict[str, str]) -> None:
    variables = {env_name(field) for field in OPTIONS}
    for c in (serve(kubernetes), build_job(kubernetes)):
        env = container_env(kubernetes, c)
        unknown = {name for name in env if name not in variables | HUGGING_FACE_VARIABLES}
        assert not unknown, f"{c['name']} sets variables nothing reads: {unknown}"
    build_engines.build_parser().parse_args(build_job(kubernetes)["args"][1:])  # an unknown flag exits here
    settings = configured_settings(kubernetes, image_env, serve(kubernetes))  # likewise; a bad value raises SettingsError
    # A replica that cannot run its engines stops, rather than serving slowly behind the same Service.
    assert settings.engine == "tensorrt"
    assert container_env(kubernetes, serve(kubernetes))["HF_HUB_OFFLINE"] == "1"


def test_service_reaches_the_pods_http_port(kubernetes: Documents) -> None:
    deployment, service = only(kubernetes["Deployment"]), only(kubernetes["Service"])
    assert selects(service["spec"]["selector"], pod_labels(deployment))
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels(deployment))
    names = {p["name"] for p in serve(kubernetes)["ports"]}
    assert all(p["targetPort"] in names for p in service["spec"]["ports"])


def test_the_job_builds_engines_where_every_replica_reads_them(kubernetes: Documents, image_env: dict[str, str]) -> None:
    job, deployment = only(kubernetes["Job"]), only(kubernetes["Deployment"])
    build, replica = build_job(kubernetes), serve(kubernetes)
    assert build["args"][0] == "build-engines" and replica["args"] == ["serve"]
    assert build["image"] == replica["image"]
    assert build["envFrom"][0] == replica["envFrom"][0]  # the same model and settings
    # The entrypoint gives build-engines --out $SDXL_ENGINE_DIR: the directory serve reads.
    engine_dir = configured_settings(kubernetes, image_env, replica).engine_dir
    assert container_env(kubernetes, build)["SDXL_ENGINE_DIR"] == str(engine_dir)
    build_mounts, serve_mounts = mounts(pod_spec(job), build), mounts(pod_spec(deployment), replica)
    engines_root = str(engine_dir.parent)
    for path in (engines_root, image_env["HF_HOME"]):
        assert build_mounts[path][0] == serve_mounts[path][0] != "emptyDir", path
        assert build_mounts[path][1] is False and serve_mounts[path][1] is True, path  # the Job writes, serve reads
    cache_dir = configured_settings(kubernetes, image_env, replica).cache_dir
    assert any(cache_dir.is_relative_to(path) and not read_only for path, (_, read_only) in serve_mounts.items())
    # Plans are built for one GPU product: the Job runs where the replicas will.
    assert pod_spec(job)["nodeSelector"] == pod_spec(deployment)["nodeSelector"] != {}
    assert pod_spec(job)["restartPolicy"] == "Never"


def test_a_new_image_gets_its_own_engines_directory_and_job(kubernetes: Documents, image_env: dict[str, str]) -> None:
    """A rolling update never swaps the plans under the old version's replicas still serving."""
    spec = pod_spec(only(kubernetes["Deployment"]))
    wait = container(spec, "initContainers", "wait-for-engines")
    tag = image_tag(serve(kubernetes))
    engine_dir = configured_settings(kubernetes, image_env, serve(kubernetes)).engine_dir
    assert engine_dir.name == tag
    assert only(kubernetes["Job"])["metadata"]["name"].endswith("-" + tag)
    assert wait["image"] == serve(kubernetes)["image"] == build_job(kubernetes)["image"]
    assert container_env(kubernetes, wait)["SDXL_ENGINE_DIR"] == str(engine_dir)


def test_a_replica_waits_until_the_job_has_written_the_manifest(kubernetes: Documents, tmp_path: Path) -> None:
    """The init container's command, run here with sh: it waits while there is no manifest.json, and
    returns at once when there is one."""
    wait = container(pod_spec(only(kubernetes["Deployment"])), "initContainers", "wait-for-engines")
    assert wait["args"][0] == "sh"

    def run() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(wait["args"], env={"SDXL_ENGINE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=2)

    with pytest.raises(subprocess.TimeoutExpired):
        run()
    (tmp_path / "manifest.json").write_text("{}")
    assert run().returncode == 0


def test_pods_run_on_the_nvidia_runtime_with_one_gpu_per_container(kubernetes: Documents) -> None:
    for workload, c in ((only(kubernetes["Job"]), build_job(kubernetes)), (only(kubernetes["Deployment"]), serve(kubernetes))):
        assert pod_spec(workload)["runtimeClassName"] == "nvidia"
        # Extended resources go in limits (a request, if any, must equal it).
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert c["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1


def test_pods_run_as_the_images_user_and_outlast_the_drain(kubernetes: Documents, image: Dockerfile, image_env: dict[str, str]) -> None:
    uid, _, gid = image.inherited("gpu", "USER")[-1].value.partition(":")
    for workload in (only(kubernetes["Job"]), only(kubernetes["Deployment"])):
        context = pod_spec(workload)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (int(uid), int(gid), int(gid))
    spec = pod_spec(only(kubernetes["Deployment"]))
    (pause,) = [int(word) for word in serve(kubernetes)["lifecycle"]["preStop"]["exec"]["command"] if word.isdigit()]
    drain = configured_settings(kubernetes, image_env, serve(kubernetes)).shutdown_timeout
    # The preStop pause, the drain, then about a second to exit (docs/operations.md, Shutdown).
    assert spec["terminationGracePeriodSeconds"] > pause + drain + 1


def test_no_service_variable_can_shadow_a_setting(kubernetes: Documents, redis_manifest: Documents) -> None:
    # Kubernetes gives pods NAME_PORT, NAME_SERVICE_HOST, ... for each Service; SDXL_PORT would break start-up.
    for workload in (only(kubernetes["Deployment"]), only(kubernetes["Job"])):
        assert pod_spec(workload)["enableServiceLinks"] is False
    settings_variables = {env_name(field) for field in OPTIONS}
    for service in kubernetes["Service"] + redis_manifest["Service"]:
        prefix = service["metadata"]["name"].upper().replace("-", "_")
        assert not {f"{prefix}_PORT", f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT"} & settings_variables


def test_the_disruption_budget_covers_the_fleet_and_never_all_of_it(kubernetes: Documents, redis_manifest: Documents) -> None:
    budget, deployment = only(kubernetes["PodDisruptionBudget"]), only(kubernetes["Deployment"])
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selects(selector, pod_labels(deployment))
    assert not selects(selector, pod_labels(only(redis_manifest["StatefulSet"])))
    assert budget["spec"]["maxUnavailable"] < only(kubernetes["HorizontalPodAutoscaler"])["spec"]["minReplicas"]


async def test_the_autoscaler_scales_on_a_gauge_the_service_exports(kubernetes: Documents, make_client) -> None:
    client = await make_client(ControlledEngine())
    exported = dict(re.findall(r"^# TYPE (\S+) (\S+)$", await (await client.get("/metrics")).text(), re.MULTILINE))
    (metric,) = only(kubernetes["HorizontalPodAutoscaler"])["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    assert exported.get(name) == "gauge", f"{name} is not a gauge at /metrics: {sorted(exported)}"
    # The adapter's rule serves that series under that name, per pod.
    (rule,) = yaml.safe_load((DEPLOY / "prometheus-adapter.yaml").read_text())["rules"]["custom"]
    assert rule["seriesQuery"].startswith(name + "{") and rule["name"]["as"] == name
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}


def test_prometheus_scrapes_the_metrics_route_of_every_replica(kubernetes: Documents, redis_manifest: Documents, routes: set[tuple[str, str]]) -> None:
    annotations = only(kubernetes["Deployment"])["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert ("GET", annotations["prometheus.io/path"]) in routes
    assert [int(annotations["prometheus.io/port"])] == [p["containerPort"] for p in serve(kubernetes)["ports"]]
    monitor = only(by_kind(DEPLOY / "servicemonitor.yaml")["ServiceMonitor"])
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert [s["metadata"]["name"] for s in kubernetes["Service"] + redis_manifest["Service"] if selects(selector, s["metadata"]["labels"])] == ["sdxl-turbo"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in only(kubernetes["Service"])["spec"]["ports"]}
    assert ("GET", endpoint["path"]) in routes


# --- Kubernetes: Redis ---------------------------------------------------------------------------


def test_the_replicas_reach_redis_through_its_headless_service(kubernetes: Documents, redis_manifest: Documents, image_env: dict[str, str]) -> None:
    service, redis = only(redis_manifest["Service"]), only(redis_manifest["StatefulSet"])
    url = configured_settings(kubernetes, image_env, serve(kubernetes)).cache_url
    match = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url or "")
    assert match, url
    (port,) = service["spec"]["ports"]
    assert (match.group(1), int(match.group(2))) == (service["metadata"]["name"], port["port"])
    assert service["spec"]["clusterIP"] == "None" and redis["spec"]["serviceName"] == service["metadata"]["name"]
    assert selects(service["spec"]["selector"], pod_labels(redis))
    (c,) = pod_spec(redis)["containers"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {port["targetPort"]: port["port"]}
    # A managed Redis: an optional Secret read after the ConfigMap, so that its SDXL_CACHE_URL wins.
    config_map, secret = serve(kubernetes)["envFrom"]
    assert "configMapRef" in config_map and secret["secretRef"]["optional"] is True


def test_only_the_fleet_may_reach_redis(kubernetes: Documents, redis_manifest: Documents) -> None:
    policy, redis = only(redis_manifest["NetworkPolicy"]), only(redis_manifest["StatefulSet"])
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(redis))
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert selects(source["podSelector"]["matchLabels"], pod_labels(only(kubernetes["Deployment"])))
    assert [p["port"] for p in rule["ports"]] == [p["port"] for p in only(redis_manifest["Service"])["spec"]["ports"]]
    # And the fleet's selectors do not catch Redis.
    for selector in (only(kubernetes["Service"])["spec"]["selector"], only(kubernetes["Deployment"])["spec"]["selector"]["matchLabels"]):
        assert not selects(selector, pod_labels(redis))


def redis_flags(redis_manifest: Documents, compose: dict[str, Any]) -> dict[str, list[str]]:
    (c,) = pod_spec(only(redis_manifest["StatefulSet"]))["containers"]
    command = compose["services"]["redis"]["command"]
    assert command[0] == "redis-server"  # the image's entrypoint takes flags alone too (Kubernetes' args)
    return {"kubernetes": c["args"], "compose": command[1:]}


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (make test installs it)")
@pytest.mark.parametrize("where", ["kubernetes", "compose"])
def test_redis_runs_as_a_cache_with_the_flags_deploy_gives_it(where: str, redis_manifest: Documents, compose: dict[str, Any], tmp_path: Path) -> None:
    """A real redis-server with those flags, asked what it runs with."""
    with RedisServer(tmp_path, redis_flags(redis_manifest, compose)[where]) as server:
        config = server.client().config_get("*")  # decoded by redis-py: str -> str
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert config["save"] == "" and config["appendonly"] == "no"  # nothing persisted: a cache
    assert int(config["maxmemory"]) > 0
    if where == "kubernetes":
        (c,) = pod_spec(only(redis_manifest["StatefulSet"]))["containers"]
        assert int(config["maxmemory"]) < kubernetes_bytes(c["resources"]["limits"]["memory"])


# --- compose ----------------------------------------------------------------------------------


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in compose["services"].items() if service.get("command") == ["serve"]}


def compose_settings(service: dict[str, Any], image_env: dict[str, str]) -> Settings:
    return load_settings(service["command"][1:], environ={**image_env, **service["environment"]})


def test_compose_runs_two_replicas_that_share_redis(compose: dict[str, Any], image_env: dict[str, str]) -> None:
    fleet = replicas(compose)
    assert len(fleet) == 2 and {"redis", "nginx", "build-engines"} <= compose["services"].keys()
    first, second = fleet.values()
    assert first["environment"] == second["environment"]  # the same model, engine and cache
    variables = {env_name(field) for field in OPTIONS} | HUGGING_FACE_VARIABLES
    assert set(first["environment"]) <= variables
    url = compose_settings(first, image_env).cache_url
    assert url == "redis://redis:6379/0"  # the redis service, on Redis's own port (its command sets none)
    assert "--port" not in compose["services"]["redis"]["command"]
    for service in fleet.values():
        assert "redis" in service["depends_on"]
        assert "ports" not in service  # reached through nginx only


def test_compose_builds_engines_before_serving_them(compose: dict[str, Any]) -> None:
    build = compose["services"]["build-engines"]
    assert build["command"][0] == "build-engines"
    for serve_ in replicas(compose).values():
        assert serve_["depends_on"]["build-engines"]["condition"] == "service_completed_successfully"
        assert build["image"] == serve_["image"] and build["build"]["target"] == serve_["build"]["target"] == "gpu"
        assert (COMPOSE.parent / serve_["build"]["context"] / "Dockerfile").resolve() == REPO / "Dockerfile"
        assert build["environment"].items() <= serve_["environment"].items()  # built for the model served
    for service in (build, *replicas(compose).values()):
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == 1
        # The device request is the whole GPU set-up: no legacy `runtime: nvidia` beside it.
        assert "runtime" not in service


def test_compose_keeps_model_engines_and_caches_on_named_volumes(compose: dict[str, Any], image: Dockerfile) -> None:
    declared = set(compose["volumes"])
    image_volumes = {v for i in image.inherited("gpu", "VOLUME") for v in exec_form(i.value)}
    caches = []
    for name, service in replicas(compose).items():
        targets = {}
        for volume in service["volumes"]:
            source, target, *mode = volume.split(":")
            assert source in declared, volume
            targets[target] = source
            # The model and the engines are build-engines'; serve only reads them.
            assert (mode == ["ro"]) == (target != "/data/image-cache"), volume
        assert set(targets) == image_volumes, name
        caches.append(targets["/data/image-cache"])
    assert len(set(caches)) == len(caches), "each replica has its own disk tier"
    build_targets = {volume.split(":")[1] for volume in compose["services"]["build-engines"]["volumes"]}
    assert build_targets == image_volumes - {"/data/image-cache"}


def test_compose_publishes_nginx_and_keeps_the_images_healthcheck(compose: dict[str, Any]) -> None:
    nginx = compose["services"]["nginx"]
    (port,) = nginx["ports"]
    assert port.rsplit(":", 1)[1] == str(nginx_listen_port())
    source, target, mode = only([v for v in nginx["volumes"] if v.startswith("./")]).split(":")
    assert (COMPOSE.parent / source).resolve() == SITE and target == "/etc/nginx/conf.d/default.conf" and mode == "ro"
    assert set(nginx["depends_on"]) == set(replicas(compose))
    for service in replicas(compose).values():
        assert "healthcheck" not in service  # the image's HEALTHCHECK (GET /healthz) applies


# --- nginx ------------------------------------------------------------------------------------


def nginx_directives() -> dict[str, list[str]]:
    """Every `name value;` of deploy/nginx.conf, comments dropped: name -> values in order."""
    found: dict[str, list[str]] = {}
    for name, value in re.findall(r"^\s*(\w+)\s+([^;{}]*);", re.sub(r"#.*", "", SITE.read_text()), re.MULTILINE):
        found.setdefault(name, []).append(value.strip())
    return found


def nginx_listen_port() -> int:
    (listen,) = nginx_directives()["listen"]
    return int(listen)


def nginx_seconds(value: str) -> float:
    return float(re.fullmatch(r"(\d+)s", value).group(1))  # type: ignore[union-attr]


def test_nginx_sends_requests_to_both_replicas_on_the_port_they_listen_on(compose: dict[str, Any], image_env: dict[str, str]) -> None:
    upstreams = dict(server.split(":") for server in nginx_directives()["server"])
    assert upstreams == {name: str(compose_settings(s, image_env).port) for name, s in replicas(compose).items()}


def test_nginx_limits_fit_the_services(compose: dict[str, Any], image_env: dict[str, str]) -> None:
    settings = compose_settings(next(iter(replicas(compose).values())), image_env)
    directives = {name: values[-1] for name, values in nginx_directives().items()}
    body = int(re.fullmatch(r"(\d+)m", directives["client_max_body_size"]).group(1)) * 1024**2  # type: ignore[union-attr]
    # Large enough for the largest input image; a little larger, so that the service's 413 names the field.
    assert settings.max_image_body_bytes < body <= settings.max_image_body_bytes + 1024**2
    assert nginx_seconds(directives["proxy_read_timeout"]) > settings.request_timeout
    assert nginx_seconds(directives["keepalive_timeout"]) < settings.header_timeout
    assert nginx_seconds(directives["client_header_timeout"]) <= settings.header_timeout
    assert nginx_seconds(directives["client_body_timeout"]) <= settings.body_timeout
    assert "http_503" in directives["proxy_next_upstream"].split()  # a draining replica's answer


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make test installs it)")
def test_nginx_accepts_the_config(compose: dict[str, Any], tmp_path: Path) -> None:
    """`nginx -t` on deploy/nginx.conf, its replicas' names moved to loopback (nginx resolves them while testing)."""
    site = local_site(SITE.read_text(), 8080, {name: 5000 for name in replicas(compose)})
    result = subprocess.run(nginx_command(tmp_path, write_config(tmp_path, site), "-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- the document -------------------------------------------------------------------------------


def test_deploy_doc_names_every_setting_file_and_job(image_env: dict[str, str]) -> None:
    text = DEPLOY_DOC.read_text()
    missing = [env_name(field) for field in OPTIONS if env_name(field) not in text]
    assert not missing, f"docs/deploy.md does not document {missing}"
    files = [f"deploy/{path.name}" for path in sorted(DEPLOY.iterdir())]
    for name in (*files, "docker/smoke.sh", "build-engines", "serve", "HF_HOME"):
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
