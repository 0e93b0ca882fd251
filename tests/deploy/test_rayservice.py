"""The RayService: valid for the KubeRay CRD, and its Serve config valid for Ray Serve and for us.

Every render (base, dev, prod) gets every check. Checks that read the CRD skip where
../shared is absent; the Serve and settings checks need only the project's venv.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import math
import re
from typing import Any
from urllib.parse import urlparse

import jsonschema
import pytest
from pydantic import BaseModel

from deploy.render import split_image
from services.errors import ConfigError
from services.runtime.seam import app as seam_app
from services.settings import Settings, load_settings

from .support import (
    RAY_CLIENT_PORT,
    TARGETS,
    container,
    find,
    frontend_settings_doc,
    matches,
    one,
    port_number,
    pruned_fields,
    pyproject,
    quantity,
    rayservice_schema,
    rendered,
    serve_config,
    validate,
)

APP_NAME = "creditauth"
IMPORT_PATH = "services.runtime.seam.app:build_app"
RAY_DATA_DIR = "/var/lib/creditauth"


def _rayservice(target: str) -> dict[str, Any]:
    return one(rendered(target), "RayService")


def _app(target: str) -> dict[str, Any]:
    apps = serve_config(_rayservice(target))["applications"]
    assert len(apps) == 1, "one Serve application per RayService"
    return apps[0]  # type: ignore[no-any-return]


def _args(target: str) -> Settings:
    return load_settings(None, _app(target)["args"])


def _scorer(target: str) -> dict[str, Any]:
    deps = {d["name"]: d for d in _app(target)["deployments"]}
    assert set(deps) == {seam_app.DEPLOYMENT}, f"deployments configured: {sorted(deps)}"
    scorer: dict[str, Any] = deps[seam_app.DEPLOYMENT]
    return scorer


def _cluster(target: str) -> dict[str, Any]:
    return _rayservice(target)["spec"]["rayClusterConfig"]  # type: ignore[no-any-return]


def _workers(target: str) -> dict[str, Any]:
    groups = _cluster(target)["workerGroupSpecs"]
    assert len(groups) == 1, "one worker group (scorer)"
    return groups[0]  # type: ignore[no-any-return]


# -- the CRD -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_rayservice_validates_against_the_crd_schema(target: str) -> None:
    rs = _rayservice(target)
    assert rs["apiVersion"] == "ray.io/v1"
    validate(rs, "rayservice")


@pytest.mark.parametrize("target", TARGETS)
def test_no_field_would_be_pruned_by_the_api_server(target: str) -> None:
    assert pruned_fields(_rayservice(target), rayservice_schema()) == []


def test_schema_checks_catch_typos_and_wrong_types() -> None:
    schema = rayservice_schema()
    rs = _rayservice("overlays/prod")
    typo = copy.deepcopy(rs)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 3
    assert pruned_fields(typo, schema) == [".spec.rayClusterConfig.workerGroupSpecs[0].minReplica"]
    wrong = copy.deepcopy(rs)
    wrong["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "24"
    with pytest.raises(jsonschema.ValidationError):
        validate(wrong, "rayservice")


@pytest.mark.parametrize("target", TARGETS)
def test_kuberay_controller_rules(target: str) -> None:
    """Rules KubeRay's controller enforces beyond the schema."""
    cluster = _cluster(target)
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        assert 0 <= g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], g["groupName"]
    for tpl in [cluster["headGroupSpec"]["template"], *(g["template"] for g in groups)]:
        # KubeRay runs Ray in the first container.
        assert tpl["spec"]["containers"][0]["image"]
    if "gcsFaultToleranceOptions" in cluster:
        assert cluster["gcsFaultToleranceOptions"]["redisAddress"]
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        envs = [e["name"] for e in head.get("env", [])]
        assert "RAY_REDIS_ADDRESS" not in envs, "set either gcsFaultToleranceOptions or RAY_REDIS_ADDRESS"


def test_ray_version_matches_the_pinned_and_installed_ray() -> None:
    import ray

    deps = pyproject()["project"]["dependencies"]
    pinned = next(re.sub(r"^ray\[[^\]]*\]==", "", d) for d in deps if d.startswith("ray["))
    for target in TARGETS:
        assert _cluster(target)["rayVersion"] == pinned == ray.__version__, target


# -- serveConfigV2: Ray Serve's schema, then ours ------------------------------------------------


def _unknown_keys(value: Any, model: type[BaseModel], path: str = "") -> list[str]:
    """Keys a Serve schema model does not declare (ServeDeploySchema ignores extras)."""
    if not isinstance(value, dict):
        return []
    found = []
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for key, sub in value.items():
        field = fields.get(key)
        if field is None:
            found.append(f"{path}.{key}")
            continue
        for candidate in _models_in(field.annotation):
            items = sub if isinstance(sub, list) else [sub]
            for i, item in enumerate(items):
                where = f"{path}.{key}[{i}]" if isinstance(sub, list) else f"{path}.{key}"
                found += _unknown_keys(item, candidate, where)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


@pytest.mark.parametrize("target", TARGETS)
def test_serve_config_validates_with_ray_serve_and_has_no_unknown_keys(target: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    doc = serve_config(_rayservice(target))
    ServeDeploySchema.model_validate(doc)
    assert _unknown_keys(doc, ServeDeploySchema) == []


def test_strict_serve_checks_catch_unknown_keys() -> None:
    from ray.serve.schema import ServeDeploySchema

    doc = serve_config(_rayservice("overlays/prod"))
    doc["applications"][0]["deployments"][0]["max_surge_precent"] = 9
    doc["applications"][0]["route_prefx"] = "/x"
    doc["http_option"] = {}
    ServeDeploySchema.model_validate(doc)  # Serve itself lets all three through ...
    assert sorted(_unknown_keys(doc, ServeDeploySchema)) == [  # ... we do not.
        ".applications[0].deployments[0].max_surge_precent",
        ".applications[0].route_prefx",
        ".http_option",
    ]


@pytest.mark.parametrize("target", TARGETS)
def test_application_imports_the_project_builder(target: str) -> None:
    app = _app(target)
    assert app["name"] == APP_NAME
    assert app["import_path"] == IMPORT_PATH
    module, _, attr = app["import_path"].partition(":")
    assert getattr(importlib.import_module(module), attr) is seam_app.build_app
    # The image carries the code: nothing fetched at deploy time.
    assert not set(app.get("runtime_env") or {}) - {"env_vars"}


@pytest.mark.parametrize("target", TARGETS)
def test_args_are_valid_settings(target: str) -> None:
    settings = _args(target)
    assert settings.ray.app_name == APP_NAME


def test_args_with_a_typo_are_refused() -> None:
    args = copy.deepcopy(_app("overlays/prod")["args"])
    args["features"]["redis_ulr"] = args["features"].pop("redis_url")
    with pytest.raises(ConfigError, match="redis_ulr"):
        load_settings(None, args)


QUEUE_DEPTH_POLICY = "services.runtime.autoscale:QueueDepthPolicy"
# Options that belong to args (the app sets them from settings); an override in
# serveConfigV2 would silently replace them (autoscaling_config: the whole policy).
ARGS_OWNED = {"num_replicas", "autoscaling_config", "max_ongoing_requests", "ray_actor_options"}


@pytest.mark.parametrize("target", TARGETS)
def test_deployment_overrides_leave_scaling_and_resources_to_args(target: str) -> None:
    assert not ARGS_OWNED & set(_scorer(target)), sorted(ARGS_OWNED & set(_scorer(target)))


@pytest.mark.parametrize("target", TARGETS)
def test_serve_accepts_the_overrides_for_the_built_application(target: str) -> None:
    """Build the app from args exactly as Serve will (no cluster), then apply the config's
    per-deployment overrides the way Deployment.options validates them."""
    from ray.serve._private.build_app import build_app as serve_build

    app = _app(target)
    settings = _args(target)
    built = serve_build(seam_app.build_app(app["args"]), name=app["name"])
    by_name = {d.name: d for d in built.deployments}
    assert built.ingress_deployment_name == seam_app.DEPLOYMENT
    for override in app["deployments"]:
        deployment = by_name[override["name"]]
        accepted = set(inspect.signature(deployment.options).parameters)
        options = {k: v for k, v in override.items() if k in accepted and k != "name"}
        deployment.options(**options)
    scorer = by_name[seam_app.DEPLOYMENT]
    assert scorer.ray_actor_options is not None
    assert scorer.ray_actor_options["num_cpus"] == settings.ray.replica_num_cpus
    auto = scorer._deployment_config.autoscaling_config
    assert settings.ray.autoscaling is not None and auto is not None
    assert (auto.min_replicas, auto.max_replicas) == (
        settings.ray.autoscaling.min_replicas,
        settings.ray.autoscaling.max_replicas,
    )
    assert auto.policy.policy_function == QUEUE_DEPTH_POLICY
    module, _, attr = QUEUE_DEPTH_POLICY.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


@pytest.mark.parametrize("target", TARGETS)
def test_scorer_autoscaling_is_coherent(target: str) -> None:
    resources = rendered(target)
    settings = _args(target)
    front = load_settings(None, frontend_settings_doc(resources))
    auto = settings.ray.autoscaling
    assert auto is not None, "args.ray.autoscaling: the Scorer scales on queue depth"
    assert 1 <= auto.min_replicas < auto.max_replicas
    # The policy reads the direct channel's queue: handle traffic would be invisible to it.
    assert front.serving.channel == "direct"
    # A replica refuses batches beyond channel_max_inflight: it must be able to hold the target.
    assert auto.target_inflight_decisions <= settings.ray.channel_max_inflight * front.serving.max_batch_size
    # args.ray.replicas is what `serve run` with these args would start without autoscaling.
    assert settings.ray.replicas == auto.min_replicas
    # Ray's autoscaler adds nodes for *logical* demand: 0-CPU replicas would never scale it.
    assert settings.ray.replica_num_cpus > 0


@pytest.mark.parametrize("target", TARGETS)
def test_worker_group_can_hold_max_replicas_plus_surge(target: str) -> None:
    settings = _args(target)
    assert settings.ray.autoscaling is not None
    workers = _workers(target)
    cpus = quantity(container(workers["template"], "ray-worker")["resources"]["limits"]["cpu"])
    per_pod = math.floor(cpus / settings.ray.replica_num_cpus)
    surge = _scorer(target).get("max_surge_percent", 0)
    needed = math.ceil(settings.ray.autoscaling.max_replicas * (1 + surge / 100))
    assert workers["maxReplicas"] * per_pod >= needed, (
        f"{workers['maxReplicas']} workers x {per_pod} replicas < {needed} (max_replicas + surge)"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_max_replicas_is_reachable_from_the_front_ends(target: str) -> None:
    """Each front end keeps at most max_inflight_batches batches of max_batch_size decisions
    in flight and the policy asks for one replica per target_inflight_decisions: more
    replicas than this ceiling are never asked for."""
    resources = rendered(target)
    hpa = one(resources, "HorizontalPodAutoscaler", "creditauth-frontend")
    serving = load_settings(None, frontend_settings_doc(resources)).serving
    auto = _args(target).ray.autoscaling
    assert auto is not None
    ceiling = hpa["spec"]["maxReplicas"] * serving.max_inflight_batches * serving.max_batch_size
    ceiling /= auto.target_inflight_decisions
    assert auto.max_replicas <= ceiling, f"max_replicas {auto.max_replicas} > reachable {ceiling:g}"


@pytest.mark.parametrize("target", TARGETS)
def test_both_autoscalers_are_on(target: str) -> None:
    cluster = _cluster(target)
    assert cluster["enableInTreeAutoscaling"] is True
    workers = _workers(target)
    assert workers["minReplicas"] >= 1 and workers["maxReplicas"] > workers["minReplicas"]
    auto = _args(target).ray.autoscaling
    assert auto is not None and auto.max_replicas > auto.min_replicas


@pytest.mark.parametrize("target", TARGETS)
def test_direct_channel_is_reachable_from_the_front_ends(target: str) -> None:
    resources = rendered(target)
    settings = _args(target)
    front = load_settings(None, frontend_settings_doc(resources))
    # Replicas listen on the pod's own address (unset: the node IP, not every interface)
    # and register the pod IP ...
    assert settings.ray.channel_bind_host is None
    assert settings.ray.channel_advertise_host in (None, "node")
    # ... in the registry actor the front ends look up by app name and Ray namespace.
    assert (front.ray.app_name, front.ray.namespace) == (settings.ray.app_name, settings.ray.namespace)
    # ... on ports of a fixed range, which the worker NetworkPolicy opens to front ends
    # (test_security checks it opens it to nobody else) ...
    assert settings.ray.channel_ports is not None
    front_labels = one(resources, "Deployment", "creditauth-frontend")["spec"]["template"]["metadata"]["labels"]
    worker_labels = _workers(target)["template"]["metadata"]["labels"]
    ranges = [
        (p["port"], p.get("endPort", p["port"]))
        for pol in find(resources, "NetworkPolicy")
        if matches(pol["spec"]["podSelector"], worker_labels)
        for rule in pol["spec"].get("ingress", [])
        if any(matches(peer.get("podSelector", {}), front_labels) for peer in rule.get("from", []))
        for p in rule.get("ports", [])
    ]
    assert tuple(settings.ray.channel_ports) in ranges, ranges
    # ... and both ends hold the same shared secret.
    assert front.ray.channel_secret_file == settings.ray.channel_secret_file is not None


@pytest.mark.parametrize("target", TARGETS)
def test_head_runs_no_replicas_and_serves_ray_clients(target: str) -> None:
    head = _cluster(target)["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ctr = head["template"]["spec"]["containers"][0]
    assert port_number(ctr, "client") == RAY_CLIENT_PORT
    assert _rayservice(target)["spec"]["excludeHeadPodFromServeSvc"] is True


@pytest.mark.parametrize("target", TARGETS)
def test_serve_proxies_can_become_ready(target: str) -> None:
    """KubeRay's worker readiness probe and the RayService's readiness both need Serve's
    HTTP proxy healthy, which needs the proxy enabled and at least one route."""
    doc = serve_config(_rayservice(target))
    assert doc.get("proxy_location", "EveryNode") != "Disabled"
    assert _app(target).get("route_prefix", "/") is not None
    serve_port = doc.get("http_options", {}).get("port", 8000)
    for tpl in [_cluster(target)["headGroupSpec"]["template"], _workers(target)["template"]]:
        assert port_number(tpl["spec"]["containers"][0], "serve") == serve_port


@pytest.mark.parametrize("target", TARGETS)
def test_replicas_read_artifacts_from_the_read_only_volume(target: str) -> None:
    settings = _args(target)
    assert str(settings.data_dir) == RAY_DATA_DIR
    if settings.policy_path is not None:
        assert str(settings.policy_path).startswith(f"{RAY_DATA_DIR}/")
    for tpl in [_cluster(target)["headGroupSpec"]["template"], _workers(target)["template"]]:
        ctr = tpl["spec"]["containers"][0]
        mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == RAY_DATA_DIR)
        assert mount.get("readOnly") is True
        volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert find(rendered(target), "PersistentVolumeClaim", claim), f"no PVC {claim}"


def test_dev_online_store_is_redis_behind_a_service_of_the_render() -> None:
    settings = _args("overlays/dev")
    assert settings.features.online_store == "redis"
    host, port, _ = settings.features.redis_host_port_db()
    svc = one(rendered("overlays/dev"), "Service", host)
    assert port in [p["port"] for p in svc["spec"]["ports"]]


def test_prod_online_store_is_the_managed_redis() -> None:
    """Reached by its own DNS name, over TLS: an ExternalName alias would fail the certificate's
    name check (test_security checks no Service shadows it)."""
    settings = _args("overlays/prod")
    assert settings.features.online_store == "redis"
    host, _, _ = settings.features.redis_host_port_db()
    assert settings.features.redis_url.startswith("rediss://") and host.count(".") >= 2


def test_prod_pins_model_and_policy() -> None:
    settings = _args("overlays/prod")
    assert settings.model_version != "latest", "replicas restarted at different times would diverge"
    assert settings.policy_path is not None
    assert re.fullmatch(r"lgbm-\d{14}-[0-9a-f]+", settings.model_version)


def test_prod_has_gcs_fault_tolerance_behind_a_service() -> None:
    ft = _cluster("overlays/prod")["gcsFaultToleranceOptions"]
    host = ft["redisAddress"].rpartition(":")[0]
    one(rendered("overlays/prod"), "Service", host)


@pytest.mark.parametrize("target", TARGETS)
def test_replica_settings_do_not_bind_a_metrics_port(target: str) -> None:
    # Several replicas share a worker pod; Ray exports replica metrics on 8080.
    assert _args(target).telemetry.prometheus_port == 0


@pytest.mark.parametrize("target", TARGETS)
def test_front_ends_reach_this_rayservice_app(target: str) -> None:
    resources = rendered(target)
    front = load_settings(None, frontend_settings_doc(resources))
    rs = _rayservice(target)
    assert front.ray.app_name == _args(target).ray.app_name == _app(target)["name"]
    assert front.ray.address is not None
    url = urlparse(front.ray.address)
    assert url.scheme == "ray"
    # KubeRay keeps <rayservice>-head-svc pointed at the active cluster across upgrades.
    assert url.hostname == f"{rs['metadata']['name']}-head-svc"
    assert url.port == RAY_CLIENT_PORT


@pytest.mark.parametrize("target", TARGETS)
def test_ray_auth_token_is_shared_with_the_front_ends(target: str) -> None:
    resources = rendered(target)
    auth = _cluster(target)["authOptions"]
    assert auth["mode"] == "token"
    dep = one(resources, "Deployment", "creditauth-frontend")
    env = {e["name"]: e for e in container(dep["spec"]["template"], "frontend")["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    # KubeRay reads the token from key auth_token of authOptions.secretName.
    assert ref == {"name": auth["secretName"], "key": "auth_token"}


@pytest.mark.parametrize("target", TARGETS)
def test_ray_pods_run_the_front_end_image(target: str) -> None:
    """Ray client needs identical Ray and Python versions on both sides: one image."""
    resources = rendered(target)
    front = container(one(resources, "Deployment", "creditauth-frontend")["spec"]["template"], "frontend")
    cluster = _cluster(target)
    for tpl in [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]:
        assert tpl["spec"]["containers"][0]["image"] == front["image"]
    _, tag, digest = split_image(front["image"])
    assert (tag and tag != "latest") or digest


@pytest.mark.parametrize("target", TARGETS)
def test_object_store_fits_shared_memory_and_pod_memory(target: str) -> None:
    workers = _workers(target)
    store = quantity(workers["rayStartParams"]["object-store-memory"])
    spec = workers["template"]["spec"]
    ctr = container(workers["template"], "ray-worker")
    shm_mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == "/dev/shm")
    shm = next(v for v in spec["volumes"] if v["name"] == shm_mount["name"])["emptyDir"]
    assert shm["medium"] == "Memory"
    assert quantity(shm["sizeLimit"]) >= store
    assert store <= 0.3 * quantity(ctr["resources"]["limits"]["memory"])
