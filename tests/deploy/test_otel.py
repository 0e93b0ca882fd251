"""deploy/otel: the OpenTelemetry Collector the front ends export to.

No collector binary runs here: the configuration is checked the way the collector
resolves it (every pipeline names defined components, processors in a safe order), and
wired to what the rest of the repository expects: the front ends' ``telemetry``
settings name its Service and port over TLS, and every file its configuration opens is
a key of a Secret mounted read-only in its container.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from deploy.render import Resource, render
from services.settings import load_settings

from .netpol import Pod, admits, outsider, pods
from .podsecurity import violations
from .support import (
    ROOT,
    TARGETS,
    container,
    containers,
    find,
    frontend_settings_doc,
    one,
    port_number,
    quantity,
    rendered,
    secret_file,
)

OTEL = ROOT / "deploy" / "otel"
CONFIG = OTEL / "collector.yaml"
KINDS = ("receivers", "processors", "exporters")
COLLECTOR = "otel-collector"


def _config() -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    assert isinstance(doc, dict)
    return doc


@functools.cache
def _rendered() -> tuple[Resource, ...]:
    return tuple(render(OTEL))


def _collector() -> tuple[list[Resource], dict[str, Any], dict[str, Any]]:
    resources = list(_rendered())
    tpl = one(resources, "Deployment", COLLECTOR)["spec"]["template"]
    return resources, tpl, container(tpl, COLLECTOR)


def _files(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(dotted key, path) of every ``*_file`` option in the configuration."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith("_file"):
                found.append((where, str(value)))
            else:
                found += _files(value, where)
    return found


def test_every_pipeline_names_defined_components_and_every_component_is_used() -> None:
    config = _config()
    pipelines = config["service"]["pipelines"]
    assert {"traces", "metrics"} <= set(pipelines)
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for name, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{name}: a pipeline needs both ends"
        for kind in KINDS:
            for component in pipeline.get(kind, []):
                assert component in (config.get(kind) or {}), f"pipeline {name}: {kind[:-1]} {component} is not defined"
                used[kind].add(component)
    for kind in KINDS:
        unused = set(config.get(kind) or {}) - used[kind]
        assert not unused, f"{kind} defined but in no pipeline (the collector refuses nothing, it just idles): {unused}"
    for ext in config["service"].get("extensions", []):
        assert ext in config.get("extensions", {}), f"extension {ext} is not defined"
    assert set(config.get("extensions", {})) == set(config["service"].get("extensions", []))


def test_memory_limiter_first_and_batch_last_in_every_pipeline() -> None:
    config = _config()
    for name, pipeline in config["service"]["pipelines"].items():
        types = [p.split("/")[0] for p in pipeline["processors"]]
        assert types[0] == "memory_limiter", f"{name}: the limiter must refuse data before anything buffers it"
        assert types[-1] == "batch", f"{name}: batch last, just before the exporters"
    limiter = config["processors"]["memory_limiter"]
    assert 0 < limiter["limit_percentage"] + limiter["spike_limit_percentage"] <= 100


def test_traces_go_to_an_otlp_backend_over_tls_and_metrics_to_prometheus() -> None:
    config = _config()
    pipelines = config["service"]["pipelines"]
    traces = [e.split("/")[0] for e in pipelines["traces"]["exporters"]]
    metrics = [e.split("/")[0] for e in pipelines["metrics"]["exporters"]]
    assert "otlp" in traces and "prometheus" in metrics
    for name, exporter in config["exporters"].items():
        if name.split("/")[0] == "otlp":
            tls = exporter.get("tls") or {}
            assert not tls.get("insecure") and tls.get("ca_file"), f"{name}: export over TLS, checked against a CA"


def test_the_receiver_takes_tls_only_with_bounded_messages() -> None:
    grpc = _config()["receivers"]["otlp"]["protocols"]
    assert set(grpc) == {"grpc"}, "only the protocol the front ends speak (OTLP/gRPC)"
    tls = grpc["grpc"]["tls"]
    assert tls["cert_file"] and tls["key_file"]
    assert float(tls.get("min_version", "1.2")) >= 1.2
    # The front ends' exporters present no client certificate (services/telemetry.py: root
    # certificates only): requiring one would refuse every export.
    assert "client_ca_file" not in tls
    assert 0 < grpc["grpc"]["max_recv_msg_size_mib"] <= 64


def test_every_file_the_configuration_opens_is_a_key_of_a_mounted_secret() -> None:
    _, tpl, ctr = _collector()
    files = _files(_config())
    assert {"receivers.otlp.protocols.grpc.tls.cert_file", "receivers.otlp.protocols.grpc.tls.key_file"} <= {
        k for k, _ in files
    }
    for key, path in files:
        name, secret_key, mount = secret_file(tpl, ctr, path)
        assert mount.get("readOnly") is True, f"{key}: {mount['mountPath']}"
        assert name.startswith("otel-"), f"{key}: {name} is not the collector's Secret"
        assert secret_key == path.rsplit("/", 1)[1]


def test_the_collector_runs_the_mounted_configuration() -> None:
    resources, tpl, ctr = _collector()
    (flag,) = [a for a in ctr["args"] if a.startswith("--config=")]
    path = flag.removeprefix("--config=")
    directory, _, key = path.rpartition("/")
    mount = next(m for m in ctr["volumeMounts"] if m["mountPath"] == directory)
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(resources, "ConfigMap", volume["configMap"]["name"])
    assert yaml.safe_load(cm["data"][key]) == _config()


@pytest.mark.parametrize("target", TARGETS)
def test_the_front_ends_settings_reach_the_receiver(target: str) -> None:
    """otlp_endpoint names the collector's Service, its port and TLS; otlp_ca_file is mounted."""
    apps = rendered(target)
    telemetry = load_settings(None, frontend_settings_doc(apps)).telemetry
    if telemetry.otlp_endpoint is None:
        pytest.skip(f"{target} exports no telemetry (otlp_endpoint: null)")
    url = urlparse(telemetry.otlp_endpoint)
    assert url.scheme == "https", "the receiver takes TLS only"
    resources, _, ctr = _collector()
    svc = one(resources, "Service", COLLECTOR)
    assert url.hostname in {f"{COLLECTOR}.{svc['metadata']['namespace']}.svc",
                            f"{COLLECTOR}.{svc['metadata']['namespace']}.svc.cluster.local"}
    (port,) = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
    receiver = _config()["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    assert port_number(ctr, port["targetPort"]) == int(receiver.rsplit(":", 1)[1])
    front = one(apps, "Deployment", "creditauth-frontend")["spec"]["template"]
    assert telemetry.otlp_ca_file is not None
    assert secret_file(front, container(front, "frontend"), str(telemetry.otlp_ca_file))[:2] == (
        "creditauth-otlp-ca", "ca.crt"
    )


def test_the_collector_pod_is_restricted_and_sized() -> None:
    _, tpl, _ = _collector()
    assert violations(tpl) == []
    for ctr in containers(tpl):
        assert ctr["securityContext"].get("readOnlyRootFilesystem") is True
        res = ctr["resources"]
        for kind in ("cpu", "memory"):
            assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), kind
    assert tpl["spec"]["automountServiceAccountToken"] is False


def test_prometheus_scrapes_the_exporter_port() -> None:
    _, tpl, ctr = _collector()
    endpoint = _config()["exporters"]["prometheus"]["endpoint"]
    port = int(endpoint.rsplit(":", 1)[1])
    assert int(tpl["metadata"]["annotations"]["prometheus.io/port"]) == port
    assert port_number(ctr, "prom-metrics") == port


def test_only_front_ends_export_and_only_prometheus_scrapes() -> None:
    resources, tpl, ctr = _collector()
    ns = one(resources, "Service", COLLECTOR)["metadata"]["namespace"]
    collector = Pod("collector", dict(tpl["metadata"]["labels"]), ns, {"kubernetes.io/metadata.name": ns},
                    tuple(ctr["ports"]))
    prometheus = outsider("prometheus", {"app.kubernetes.io/name": "prometheus"}, ns)
    otlp, scrape = 4317, port_number(ctr, "prom-metrics")
    for target in ("overlays/dev", "overlays/prod"):
        apps = pods(rendered(target))
        front = next(p for p in apps if p.labels.get("app.kubernetes.io/component") == "frontend")
        assert admits(resources, front, collector, otlp), target
        assert not admits(resources, front, collector, scrape), target
        others = [p for p in apps if p is not front]
        assert others and not any(admits(resources, p, collector, otlp) for p in others), target
    lookalike = outsider("lookalike", dict(front.labels), "elsewhere")
    assert not admits(resources, lookalike, collector, otlp)
    assert admits(resources, prometheus, collector, scrape) and not admits(resources, prometheus, collector, otlp)
    assert find(resources, "NetworkPolicy", COLLECTOR)
