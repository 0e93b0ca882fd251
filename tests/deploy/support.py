"""Helpers for the offline checks of deploy/: rendering, lookups, quantities, schemas."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.protocols
import pytest
import yaml

from deploy.render import Resource, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = ("base", "overlays/dev", "overlays/prod")
OVERLAYS = ("overlays/dev", "overlays/prod")
# ../shared beside the repository (CI clones the repo with shared/ next to it).
SHARED = ROOT.parent / "shared"
RAYSERVICE_CRD = SHARED / "k8s" / "crds" / "ray.io_rayservices.yaml"
SETTINGS_DIR = "/etc/creditauth"
SETTINGS_FILE = f"{SETTINGS_DIR}/settings.yaml"
RAY_CLIENT_PORT = 10001
# Where pods find the Secrets they mount (each under its own directory).
SECRETS_DIR = "/var/run/creditauth"


@functools.cache
def _rendered(target: str) -> tuple[Resource, ...]:
    return tuple(render(K8S / target))


def rendered(target: str) -> list[Resource]:
    """A fresh deep copy of the render of ``target`` (tests may mutate it)."""
    return copy.deepcopy(list(_rendered(target)))


def find(resources: list[Resource], kind: str, name: str | None = None) -> list[Resource]:
    return [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]


def one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = find(resources, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# -- pods ---------------------------------------------------------------------------------


# Kinds whose pods come from one template: spec.template, or a CronJob's Job's.
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")


def template_of(res: Resource) -> dict[str, Any]:
    """The pod template of a workload of WORKLOAD_KINDS."""
    spec = res["spec"]["jobTemplate"]["spec"] if res["kind"] == "CronJob" else res["spec"]
    template: dict[str, Any] = spec["template"]
    return template


def pod_templates(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(description, pod template) for every workload, Ray head and worker groups included."""
    for res in resources:
        kind, name = res["kind"], res["metadata"]["name"]
        if kind in WORKLOAD_KINDS:
            yield f"{kind}/{name}", template_of(res)
        elif kind == "RayService":
            cluster = res["spec"]["rayClusterConfig"]
            yield f"{kind}/{name} head", cluster["headGroupSpec"]["template"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"{kind}/{name} worker {group['groupName']}", group["template"]


def admitted_pod_templates(resources: list[Resource]) -> Iterator[tuple[str, dict[str, Any]]]:
    """pod_templates, with the containers KubeRay adds to Ray pods as the API server will see them.

    Mirrors ray-operator/controllers/ray/common/pod.go (KubeRay commit feeaf72): the head
    gets an ``autoscaler`` container built from ``autoscalerOptions`` (its securityContext,
    volumeMounts and resources; KubeRay mounts ``ray-logs`` at /tmp/ray into it), and
    every worker a ``wait-gcs-ready`` init container that copies the Ray container's
    securityContext and volume mounts.
    """
    cluster_of = {r["metadata"]["name"]: r["spec"]["rayClusterConfig"] for r in resources if r["kind"] == "RayService"}
    for what, original in pod_templates(resources):
        if not what.startswith("RayService/"):
            yield what, original
            continue
        tpl = copy.deepcopy(original)
        cluster = cluster_of[what.split()[0].split("/", 1)[1]]
        ray = tpl["spec"]["containers"][0]
        if what.endswith(" head") and cluster.get("enableInTreeAutoscaling"):
            opts = cluster.get("autoscalerOptions") or {}
            mounts = list(opts.get("volumeMounts") or [])
            if not any(m["mountPath"] == "/tmp/ray" for m in mounts):
                mounts.append({"name": "ray-logs", "mountPath": "/tmp/ray"})
            autoscaler = {"name": "autoscaler", "image": ray["image"], "volumeMounts": mounts}
            for key in ("securityContext", "resources", "env"):
                if key in opts:
                    autoscaler[key] = copy.deepcopy(opts[key])
            tpl["spec"]["containers"].append(autoscaler)
        elif " worker " in what:
            init = {
                "name": "wait-gcs-ready",
                "image": ray["image"],
                "securityContext": copy.deepcopy(ray.get("securityContext")),
                "volumeMounts": copy.deepcopy(ray.get("volumeMounts", [])),
                "resources": {"requests": (fixed := {"cpu": "200m", "memory": "256Mi"}), "limits": dict(fixed)},
            }
            tpl["spec"].setdefault("initContainers", []).append(init)
        yield what, tpl


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(template: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in template["spec"]["containers"] if c["name"] == name]
    assert len(found) == 1, f"no single container {name!r}"
    return found[0]


def port_number(ctr: dict[str, Any], port: int | str) -> int:
    """A container port by number or by name (as Services, probes and policies use them)."""
    for p in ctr.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"container {ctr['name']} declares no port {port!r}")


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selects_anything(selector: dict[str, Any], resources: list[Resource]) -> list[str]:
    return [
        what
        for what, tpl in pod_templates(resources)
        if matches(selector, tpl.get("metadata", {}).get("labels", {}))
    ]


# -- quantities ---------------------------------------------------------------------------

_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def quantity(q: str | int | float) -> float:
    """A Kubernetes resource quantity ("500m", "2", "8Gi", "1G") as a number."""
    m = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(q))
    assert m and m.group(2) in _SUFFIX, f"unparseable quantity {q!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


# -- settings and Serve config ------------------------------------------------------------


def serve_config(rayservice: Resource) -> dict[str, Any]:
    raw = rayservice["spec"].get("serveConfigV2")
    assert isinstance(raw, str), "serveConfigV2 must be a YAML string"
    doc = yaml.safe_load(raw)
    assert isinstance(doc, dict), "serveConfigV2 must hold a YAML mapping"
    return doc


def serve_args(resources: list[Resource]) -> dict[str, Any]:
    """The Scorer replicas' settings document: the args of the RayService's one application."""
    args: dict[str, Any] = serve_config(one(resources, "RayService"))["applications"][0]["args"]
    return args


def ray_cluster(resources: list[Resource]) -> dict[str, Any]:
    cluster: dict[str, Any] = one(resources, "RayService")["spec"]["rayClusterConfig"]
    return cluster


def mounted_settings_doc(resources: list[Resource], kind: str, name: str, ctr: str) -> dict[str, Any]:
    """The settings YAML a workload's container mounts at /etc/creditauth (from a ConfigMap)."""
    tpl = template_of(one(resources, kind, name))
    mount = next(m for m in container(tpl, ctr)["volumeMounts"] if m["mountPath"] == SETTINGS_DIR)
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(resources, "ConfigMap", volume["configMap"]["name"])
    doc = yaml.safe_load(cm["data"]["settings.yaml"])
    assert isinstance(doc, dict)
    return doc


def frontend_settings_doc(resources: list[Resource]) -> dict[str, Any]:
    """The settings YAML the front-end Deployment mounts at /etc/creditauth."""
    return mounted_settings_doc(resources, "Deployment", "creditauth-frontend", "frontend")


def settings_files(doc: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, value) of every ``*_file`` setting in a settings document, lists included."""
    found: list[tuple[str, str]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_file") and value is not None:
                found.append((where, str(value)))
            else:
                found += settings_files(value, where)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += settings_files(item, f"{path}[{i}]")
    return found


def secret_file(template: dict[str, Any], ctr: dict[str, Any], path: str) -> tuple[str, str, dict[str, Any]]:
    """(Secret name, key, mount) behind ``path`` in a container, or AssertionError.

    The path must lie in a volumeMount of a ``secret`` volume and name one of its keys
    (the projected ``items`` where the volume lists them).
    """
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in ctr.get("volumeMounts", []):
        root = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(root):
            continue
        rel = path[len(root):]
        volume = volumes[mount["name"]]
        source = volume.get("secret")
        assert source is not None, f"{path}: volume {mount['name']} is not a Secret"
        items = source.get("items")
        keys = {i["path"]: i["key"] for i in items} if items else None
        key = keys.get(rel) if keys is not None else rel
        assert key is not None, f"{path}: {rel} is not among the items of {source['secretName']}"
        return source["secretName"], key, mount
    raise AssertionError(f"{path}: not under any volume mounted in container {ctr['name']}")


def pyproject() -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# -- CRD schemas ------------------------------------------------------------------------------


@functools.cache
def _rayservice_schema() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(RAYSERVICE_CRD.read_text(), Loader=loader)
    for version in crd["spec"]["versions"]:
        if version["name"] == "v1":
            return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]
    raise AssertionError(f"{RAYSERVICE_CRD}: no v1 version")


def rayservice_schema() -> dict[str, Any]:
    if not RAYSERVICE_CRD.is_file():
        pytest.skip(
            f"KubeRay RayService CRD not found at {RAYSERVICE_CRD} "
            "(the shared/ folder beside the repository): schema checks skipped"
        )
    return _rayservice_schema()


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    schema = {"rayservice": rayservice_schema, "pod": pod_template_schema, "service": service_schema}[kind]()
    return jsonschema.Draft7Validator(schema)


def validate(value: Any, kind: str) -> None:
    """jsonschema validation against a (cached) CRD-derived schema: rayservice, pod or service."""
    rayservice_schema()  # skips when the CRD is absent
    _validator(kind).validate(value)


def pod_template_schema() -> dict[str, Any]:
    """Kubernetes' PodTemplateSpec schema, as embedded in the RayService CRD."""
    spec = rayservice_schema()["properties"]["spec"]["properties"]
    return spec["rayClusterConfig"]["properties"]["headGroupSpec"]["properties"]["template"]  # type: ignore[no-any-return]


def service_schema() -> dict[str, Any]:
    """Kubernetes' Service schema, as embedded in the RayService CRD (spec.serveService)."""
    return rayservice_schema()["properties"]["spec"]["properties"]["serveService"]  # type: ignore[no-any-return]


def pruned_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the API server would silently drop (structural-schema pruning).

    A CRD schema rarely says additionalProperties: false, so jsonschema accepts a
    misspelt field, and Kubernetes then prunes it without a word: a typo such as
    ``minReplica`` would vanish. This walks the object against the schema and lists
    every field the schema does not declare.
    """
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            where = f"{path}.{key}"
            if path == "" and key == "metadata":
                continue  # ObjectMeta is validated by the API server itself
            if props is not None and key in props:
                found += pruned_fields(sub, props[key], where)
            elif isinstance(extra, dict):
                found += pruned_fields(sub, extra, where)
            elif extra is not True:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            found += pruned_fields(sub, schema["items"], f"{path}[{i}]")
    return found
