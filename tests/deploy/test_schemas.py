"""Every built-in object of every render against Kubernetes' own OpenAPI schemas, strictly.

kubernetes-validate carries the API server's schemas per release; its strict variant
refuses any field the schema does not declare, which is what catches a misspelt
``activeDeadlineSecond`` that the API server would drop or refuse. Checked against
the oldest release docs/deploy.md supports and the newest the package knows. Custom
resources (the RayService) have no schema there: test_rayservice checks them against
KubeRay's CRD.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from deploy.render import Resource, render

from .support import ROOT, TARGETS, one, rendered

kv = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)"
)

OLDEST = "1.27"  # docs/deploy.md, "Prerequisites"
CUSTOM_KINDS = {"RayService"}
OTHERS = ("otel", "grafana")


def _renders() -> list[tuple[str, list[Resource]]]:
    out = [(target, rendered(target)) for target in TARGETS]
    return out + [(other, render(ROOT / "deploy" / other)) for other in OTHERS]


def _errors(res: Resource, version: str) -> list[str]:
    try:
        kv.validate(res, version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{res['kind']}/{res['metadata']['name']} ({version}): {where}: {exc.message[:200]}"]
    return []


@pytest.mark.parametrize("version", [OLDEST, "latest"])
def test_every_builtin_object_matches_the_kubernetes_schema_strictly(version: str) -> None:
    release = str(kv.latest_version()) if version == "latest" else version
    checked: set[str] = set()
    errors: list[str] = []
    for where, resources in _renders():
        for res in resources:
            if res["kind"] in CUSTOM_KINDS:
                continue
            errors += [f"{where}: {e}" for e in _errors(res, release)]
            checked.add(res["kind"])
    assert not errors, "\n".join(errors)
    assert {"CronJob", "Deployment", "NetworkPolicy", "Service", "ConfigMap", "Job"} <= checked, checked


def _set(obj: Any, path: list[str | int], value: Any) -> None:
    for part in path[:-1]:
        obj = obj[part]
    obj[path[-1]] = value


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("CronJob", "creditauth-materialize", ["spec", "jobTemplate", "spec", "activeDeadlineSecond"], 60),
        ("CronJob", "creditauth-materialize", ["spec", "concurrencyPolicy"], 7),
        ("Deployment", "creditauth-frontend", ["spec", "template", "spec", "containers", 0, "readinessProbe",
                                                "grpcPort"], 8081),
        ("NetworkPolicy", "creditauth-frontend", ["spec", "ingres"], []),
    ],
    ids=["misspelt-job-field", "wrong-type", "misplaced-probe-field", "misspelt-policy-field"],
)
def test_the_strict_schema_catches_what_the_api_server_would_drop(kind: str, name: str, path: list[str | int],
                                                                  value: Any) -> None:
    res = copy.deepcopy(one(rendered("overlays/prod"), kind, name))
    assert _errors(res, OLDEST) == []
    _set(res, path, value)
    assert _errors(res, OLDEST), f"{kind}/{name}: {path} = {value!r} went through"
