"""NetworkPolicies, offline: who reaches what, evaluated with Kubernetes' ingress semantics.

Every render (base, dev, prod): the whole matrix of sources and ports that matter, a
default deny for every pod, each policy selecting exactly the pods it is for, Ray's
ports pinned and apart from the direct channel's. The evaluator is tests/deploy/netpol.py,
and its semantics are checked here too.
"""

from __future__ import annotations

from typing import Any

import pytest

from deploy.render import Resource
from services.settings import load_settings

from .netpol import Pod, admits, namespace_labels, outsider, pods, render_namespace, selecting, shape_errors
from .support import (
    RAY_CLIENT_PORT,
    TARGETS,
    find,
    frontend_settings_doc,
    matches,
    port_number,
    quantity,
    ray_cluster,
    rendered,
    serve_args,
    template_of,
)

COMPONENT = "app.kubernetes.io/component"
# Ray's ports that rayStartParams must pin on every group (Ray picks the others at random).
RAY_PORT_PARAMS = (
    "node-manager-port", "object-manager-port", "runtime-env-agent-port", "dashboard-agent-grpc-port",
    "dashboard-agent-listen-port", "metrics-export-port", "min-worker-port", "max-worker-port",
)

RAY = {"ray-head", "ray-worker"}


def _sources(resources: list[Resource]) -> dict[str, Pod]:
    ns = render_namespace(resources)
    here = namespace_labels(resources, ns)
    inside = {p.labels[COMPONENT]: p for p in pods(resources)}
    client = {"creditauth.io/client": "true"}
    front_labels = inside["frontend"].labels
    return {
        **inside,
        "caller": Pod("caller", client, ns, here),
        "caller-elsewhere": outsider("caller-elsewhere", client, "payments", {"creditauth.io/client-access": "true"}),
        "caller-unlabelled-namespace": outsider("caller-unlabelled-namespace", client, "batch"),
        "stranger": Pod("stranger", {"app": "stranger"}, ns, here),
        "frontend-lookalike-elsewhere": outsider("frontend-lookalike-elsewhere", dict(front_labels), "other"),
        "monitoring": outsider("monitoring", {"app.kubernetes.io/name": "prometheus"}, "monitoring"),
        "kuberay": outsider("kuberay", {"app.kubernetes.io/name": "kuberay-operator"}, "kuberay-system"),
    }


def _ray_ports(resources: list[Resource]) -> list[int]:
    """Ray's own listening ports: GCS and dashboard (head) and every pinned rayStartParams port,
    each range by its two ends."""
    cluster = ray_cluster(resources)
    head = cluster["headGroupSpec"]
    ports = [port_number(head["template"]["spec"]["containers"][0], n) for n in ("gcs-server", "dashboard")]
    params = head["rayStartParams"]
    ports += [int(params[p]) for p in RAY_PORT_PARAMS if p != "metrics-export-port"]
    return sorted(set(ports))


def _expected(resources: list[Resource]) -> list[tuple[str, int, set[str]]]:
    """(destination component, port, the sources that may connect) for every port that matters."""
    front = load_settings(None, frontend_settings_doc(resources))
    replicas = load_settings(None, serve_args(resources))
    assert replicas.ray.channel_ports is not None
    lo, hi = replicas.ray.channel_ports
    health = next(lst.port for lst in front.security.listeners if lst.plaintext)
    rows = [
        ("frontend", front.serving.port, {"caller", "caller-elsewhere"}),
        ("frontend", front.telemetry.prometheus_port, {"monitoring"}),
        ("frontend", health, set()),  # kubelet probes come from the node
        ("ray-head", RAY_CLIENT_PORT, {"frontend"}),
        ("ray-head", 8265, RAY | {"kuberay"}),
        ("ray-worker", lo, {"frontend"}),
        ("ray-worker", (lo + hi) // 2, {"frontend"}),
        ("ray-worker", hi, {"frontend"}),
        ("ray-worker", hi + 1, set()),
        ("ray-head", lo, set()),  # no replicas on the head, no channel
        ("ray-worker", 30000, set()),
    ]
    for dst in sorted(RAY):
        rows += [(dst, 8000, {"kuberay"}), (dst, 8080, {"monitoring"})]
        rows += [(dst, port, RAY) for port in _ray_ports(resources) if port != 8265]
    if find(resources, "Job"):
        rows.append(("bootstrap", 8080, set()))
    # Scheduled jobs listen on nothing: nobody reaches them on any port.
    rows += [(component, 8080, set()) for component in _cronjob_components(resources)]
    return rows


def _cronjob_components(resources: list[Resource]) -> list[str]:
    return sorted({template_of(c)["metadata"]["labels"][COMPONENT] for c in find(resources, "CronJob")})


# Who opens connections to the online store: everything that reads or writes features.
STORE_CLIENTS = {"frontend", "ray-head", "ray-worker", "bootstrap", "materialize"}


@pytest.mark.parametrize("target", TARGETS)
def test_who_reaches_what(target: str) -> None:
    """The whole matrix: for each port that matters, exactly the expected sources get in."""
    resources = rendered(target)
    sources = _sources(resources)
    for dst_name, port, allowed in _expected(resources):
        dst = sources[dst_name]
        got = {name for name, src in sources.items() if admits(resources, src, dst, port)}
        assert got == allowed, f"{dst_name}:{port}: admitted {sorted(got)}, expected {sorted(allowed)}"


def test_the_dev_online_store_admits_exactly_its_clients() -> None:
    resources = rendered("overlays/dev")
    sources = _sources(resources)
    present = {name for name in STORE_CLIENTS if name in sources}
    assert present == STORE_CLIENTS, f"missing pods: {sorted(STORE_CLIENTS - present)}"
    got = {name for name, src in sources.items() if admits(resources, src, sources["online-store"], 6379)}
    assert got == STORE_CLIENTS, f"online-store:6379: admitted {sorted(got)}, expected {sorted(STORE_CLIENTS)}"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_isolated_by_default(target: str) -> None:
    resources = rendered(target)
    deny = [
        p for p in find(resources, "NetworkPolicy") if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress")
    ]
    assert len(deny) == 1 and deny[0]["spec"]["policyTypes"] == ["Ingress"]
    for pod in pods(resources):
        assert selecting(resources, pod), pod.what


# Which pods each policy is there for: its selector must select exactly these.
CLAIMS = {
    "creditauth-default-deny": None,  # every pod
    "creditauth-frontend": {"frontend"},
    "creditauth-ray": RAY,
    "creditauth-ray-channel": {"ray-worker"},
    "feast-redis": {"online-store"},
    "creditauth-nats": {"nats"},  # who reaches it: test_decision_log_workloads
}


@pytest.mark.parametrize("target", TARGETS)
def test_policies_select_the_pods_they_claim(target: str) -> None:
    resources = rendered(target)
    everyone = {p.labels[COMPONENT] for p in pods(resources)}
    for policy in find(resources, "NetworkPolicy"):
        name = policy["metadata"]["name"]
        assert name in CLAIMS, f"{name}: add it to CLAIMS"
        got = {p.labels[COMPONENT] for p in pods(resources) if matches(policy["spec"]["podSelector"], p.labels)}
        assert got == (CLAIMS[name] or everyone), f"{name} selects {sorted(got)}"
        # Peers that name this application's pods must name pods of the render.
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                sel = peer.get("podSelector") or {}
                if "namespaceSelector" not in peer and "app.kubernetes.io/name" in (sel.get("matchLabels") or {}):
                    assert any(matches(sel, p.labels) for p in pods(resources)), f"{name}: {sel} selects no pod"
    names = {p["metadata"]["name"] for p in find(resources, "NetworkPolicy")}
    assert {n for n in CLAIMS if n != "feast-redis"} <= names


@pytest.mark.parametrize("target", TARGETS)
def test_policies_are_well_formed(target: str) -> None:
    for policy in find(rendered(target), "NetworkPolicy"):
        assert shape_errors(policy) == []


@pytest.mark.parametrize("target", TARGETS)
def test_ray_pins_its_ports_on_every_group_and_the_channel_stays_apart(target: str) -> None:
    resources = rendered(target)
    cluster = ray_cluster(resources)
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    pinned = [{p: g["rayStartParams"].get(p) for p in RAY_PORT_PARAMS} for g in groups]
    assert all(None not in p.values() for p in pinned), "an unpinned Ray port is random, and blocked"
    assert all(p == pinned[0] for p in pinned), "head and workers must pin the same ports"
    replicas = load_settings(None, serve_args(resources))
    assert replicas.ray.channel_ports is not None
    lo, hi = replicas.ray.channel_ports
    params = pinned[0]
    for port in [*_ray_ports(resources), RAY_CLIENT_PORT, 8000, 8080]:
        assert not lo <= port <= hi, f"channel range overlaps Ray's port {port}"
    assert not (lo <= int(params["max-worker-port"]) and int(params["min-worker-port"]) <= hi)
    # Enough ports for every replica a worker pod can hold, twice over (a roll's surge).
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    per_pod = quantity(worker["resources"]["limits"]["cpu"]) / replicas.ray.replica_num_cpus
    assert hi - lo + 1 >= 2 * per_pod
    # Outside Linux's default ephemeral range, so an outgoing connection never holds one.
    assert hi < 32768


def _pod(labels: dict[str, str], ns: str, ns_labels: dict[str, str] | None = None) -> Pod:
    return Pod("p", labels, ns, {**(ns_labels or {}), "kubernetes.io/metadata.name": ns})


def test_the_evaluator_follows_kubernetes_semantics() -> None:
    def policy(ingress: list[dict[str, Any]] | None, selector: dict[str, Any] | None = None) -> Resource:
        spec: dict[str, Any] = {"podSelector": selector or {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}
        if ingress is not None:
            spec["ingress"] = ingress
        return {"kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "a"}, "spec": spec}

    db = Pod("db", {"app": "db"}, "a", {"kubernetes.io/metadata.name": "a"}, ({"name": "sql", "containerPort": 5432},))
    web_here, web_there = _pod({"app": "web"}, "a"), _pod({"app": "web"}, "b", {"team": "x"})
    assert admits([], web_there, db, 5432), "no policy: not isolated"
    assert not admits([policy(None)], web_here, db, 5432), "selected with no rules: deny"
    pod_only = policy([{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": "sql"}]}])
    assert admits([pod_only], web_here, db, 5432)
    assert not admits([pod_only], web_there, db, 5432), "podSelector alone: own namespace only"
    assert not admits([pod_only], web_here, db, 5433)
    both = policy([{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}},
                              "podSelector": {"matchLabels": {"app": "web"}}}]}])
    assert admits([both], web_there, db, 1) and not admits([both], _pod({"app": "api"}, "b", {"team": "x"}), db, 1)
    either = policy([{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}},
                               {"podSelector": {"matchLabels": {"app": "web"}}}]}])
    assert admits([either], _pod({"app": "api"}, "b", {"team": "x"}), db, 1) and admits([either], web_here, db, 1)
    everyone = policy([{"ports": [{"port": 1000, "endPort": 1010}]}])
    assert admits([everyone], web_there, db, 1010) and not admits([everyone], web_there, db, 1011)
    assert not admits([everyone], web_there, db, 1005, "UDP")
    assert admits([policy(None), everyone], web_there, db, 1000), "policies add up"
    other = policy([{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}], selector={"matchLabels": {"app": "x"}})
    assert admits([other], web_there, db, 1), "a policy selecting other pods does not isolate this one"


def test_an_unlabelled_caller_namespace_or_pod_is_refused() -> None:
    resources = rendered("overlays/prod")
    sources = _sources(resources)
    port = load_settings(None, frontend_settings_doc(resources)).serving.port
    for name in ("caller-unlabelled-namespace", "stranger", "frontend-lookalike-elsewhere"):
        assert not admits(resources, sources[name], sources["frontend"], port), name
