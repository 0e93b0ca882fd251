"""What the rendered NetworkPolicies let through: Kubernetes' ingress semantics, offline.

A pod is isolated for ingress once any policy of its namespace selects it with
``Ingress`` among its policy types; it then admits a connection only if some rule of
some selecting policy admits it (policies add up, there is no deny rule). A rule
admits a source when its ``ports`` (absent: all) hold the port and its ``from``
(absent or empty: everyone) holds a peer matching the source: ``podSelector`` alone
means pods of the policy's own namespace, ``namespaceSelector`` alone every pod of the
namespaces it selects, both together pods matching both. ``ipBlock`` peers match no pod
here (pod IPs are not known offline).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deploy.render import Resource

from .support import matches, pod_templates

POLICY_SPEC_KEYS = {"podSelector", "policyTypes", "ingress", "egress"}
RULE_KEYS = {"from", "ports"}
PEER_KEYS = {"podSelector", "namespaceSelector", "ipBlock"}
PORT_KEYS = {"port", "endPort", "protocol"}
PROTOCOLS = {"TCP", "UDP", "SCTP"}


@dataclass
class Pod:
    """A source or destination: its labels and its namespace's name and labels."""

    what: str
    labels: dict[str, str]
    namespace: str | None
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[dict[str, Any], ...] = ()  # container ports, to resolve named policy ports


def namespace_labels(resources: list[Resource], namespace: str | None) -> dict[str, str]:
    """Labels of the render's Namespace, plus the name label every cluster sets on it."""
    labels: dict[str, str] = {}
    for ns in resources:
        if ns["kind"] == "Namespace" and ns["metadata"]["name"] == namespace:
            labels.update(ns["metadata"].get("labels") or {})
    if namespace is not None:
        labels["kubernetes.io/metadata.name"] = namespace
    return labels


def render_namespace(resources: list[Resource]) -> str | None:
    names = {r["metadata"].get("namespace") for r in resources if r["kind"] != "Namespace"}
    assert len(names) == 1, f"one namespace per render, found {names}"
    name: str | None = names.pop()
    return name


def pods(resources: list[Resource]) -> list[Pod]:
    """Every pod template of the render, as a NetworkPolicy peer."""
    namespace = render_namespace(resources)
    ns_labels = namespace_labels(resources, namespace)
    return [
        Pod(
            what=what,
            labels=dict((tpl.get("metadata") or {}).get("labels") or {}),
            namespace=namespace,
            namespace_labels=ns_labels,
            ports=tuple(p for c in tpl["spec"]["containers"] for p in c.get("ports") or []),
        )
        for what, tpl in pod_templates(resources)
    ]


def outsider(what: str, labels: dict[str, str], namespace: str, namespace_labels: dict[str, str] | None = None) -> Pod:
    """A pod that is not part of the render (a caller, Prometheus, the KubeRay operator)."""
    return Pod(what, labels, namespace, {**(namespace_labels or {}), "kubernetes.io/metadata.name": namespace})


def policies(resources: list[Resource]) -> list[Resource]:
    return [r for r in resources if r["kind"] == "NetworkPolicy"]


def _ingress(policy: Resource) -> bool:
    spec = policy["spec"]
    return "Ingress" in spec.get("policyTypes", ["Ingress"])


def selecting(resources: list[Resource], dst: Pod) -> list[Resource]:
    """The ingress policies that isolate ``dst``."""
    return [
        p
        for p in policies(resources)
        if _ingress(p)
        and p["metadata"].get("namespace") == dst.namespace
        and matches(p["spec"]["podSelector"], dst.labels)
    ]


def _port_number(spec: int | str, dst: Pod) -> int | None:
    if isinstance(spec, int):
        return spec
    for p in dst.ports:
        if p.get("name") == spec:
            return int(p["containerPort"])
    return None  # a named port the pod does not declare matches nothing


def _port_matches(entry: dict[str, Any], port: int, protocol: str, dst: Pod) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    if "port" not in entry:
        return True
    first = _port_number(entry["port"], dst)
    if first is None:
        return False
    return first <= port <= int(entry.get("endPort", first))


def _peer_matches(peer: dict[str, Any], policy_namespace: str | None, src: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    ns_selector = peer.get("namespaceSelector")
    if ns_selector is None:
        in_namespace = src.namespace == policy_namespace
    else:
        in_namespace = matches(ns_selector, src.namespace_labels)
    pod_selector = peer.get("podSelector")
    return in_namespace and (pod_selector is None or matches(pod_selector, src.labels))


def _rule_admits(rule: dict[str, Any], policy: Resource, src: Pod, dst: Pod, port: tuple[int, str]) -> bool:
    ports = rule.get("ports")
    if ports and not any(_port_matches(p, *port, dst) for p in ports):
        return False
    peers = rule.get("from")
    if not peers:
        return True
    return any(_peer_matches(peer, policy["metadata"].get("namespace"), src) for peer in peers)


def admits(resources: list[Resource], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether a connection from ``src`` to ``dst``'s ``port`` gets through."""
    selected = selecting(resources, dst)
    if not selected:
        return True
    return any(
        _rule_admits(rule, policy, src, dst, (port, protocol))
        for policy in selected
        for rule in policy["spec"].get("ingress") or []
    )


def shape_errors(policy: Resource) -> list[str]:
    """Fields the API server would reject or silently drop (no NetworkPolicy schema offline)."""
    name = policy["metadata"]["name"]
    spec = policy["spec"]
    errors = [f"{name}: unknown spec key {k}" for k in set(spec) - POLICY_SPEC_KEYS]
    if "podSelector" not in spec:
        errors.append(f"{name}: spec.podSelector is required")
    for t in spec.get("policyTypes", []):
        if t not in ("Ingress", "Egress"):
            errors.append(f"{name}: policy type {t}")
    for i, rule in enumerate(spec.get("ingress") or []):
        errors += [f"{name}: ingress[{i}] unknown key {k}" for k in set(rule) - RULE_KEYS]
        for peer in rule.get("from") or []:
            errors += [f"{name}: ingress[{i}] peer key {k}" for k in set(peer) - PEER_KEYS]
            if "ipBlock" in peer and len(peer) > 1:
                errors.append(f"{name}: ingress[{i}] ipBlock cannot be combined with selectors")
        for p in rule.get("ports") or []:
            errors += [f"{name}: ingress[{i}] port key {k}" for k in set(p) - PORT_KEYS]
            if p.get("protocol", "TCP") not in PROTOCOLS:
                errors.append(f"{name}: ingress[{i}] protocol {p.get('protocol')}")
            if "endPort" in p and not (isinstance(p.get("port"), int) and p["endPort"] >= p["port"]):
                errors.append(f"{name}: ingress[{i}] endPort needs a numeric port <= endPort")
    return errors
