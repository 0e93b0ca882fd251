"""Locked doors, offline: Pod Security restricted, Secrets as files, TLS Redis.

NetworkPolicies: test_netpolicies.py.

Every render (base, dev, prod) gets every check that applies to it. Nothing here needs a
cluster; the live Redis check needs a local ``redis-server`` built with TLS and skips
without one.
"""

from __future__ import annotations

import copy
import re
import shutil
import socket
import ssl
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.render import Resource
from deploy.secrets import make_secrets
from services.settings import load_settings
from tests.support import free_port

from .netpol import render_namespace
from .podsecurity import violations
from .support import (
    OVERLAYS,
    ROOT,
    SECRETS_DIR,
    TARGETS,
    admitted_pod_templates,
    container,
    containers,
    find,
    frontend_settings_doc,
    mounted_settings_doc,
    one,
    pod_templates,
    port_number,
    ray_cluster,
    rendered,
    secret_file,
    serve_args,
    settings_files,
    template_of,
)

FRONTEND = "creditauth-frontend"
# The one Secret that reaches a container as an environment variable: KubeRay hands the
# Ray token to Ray containers that way, and Ray client reads the same variable.
SECRET_ENV_ALLOWED = {"RAY_AUTH_TOKEN"}


def _overlay_of(target: str) -> str:
    return "dev" if target == "base" else target.rsplit("/", 1)[-1]


@cache
def _generated(overlay: str, namespace: str) -> make_secrets.Plan:
    """The Secrets make_secrets would write for an overlay (nothing is written)."""
    given = {"gcs-redis-password-file": "gcs-" + "x" * 30} if overlay == "prod" else {}
    return make_secrets.build(make_secrets.Plan(namespace=namespace, overlay=overlay, self_signed=True, given=given))


def _plan(target: str) -> make_secrets.Plan:
    resources = rendered(target)
    return _generated(_overlay_of(target), render_namespace(resources) or "creditauth")


# -- Pod Security: restricted ---------------------------------------------------------------------


@pytest.mark.parametrize("target", OVERLAYS)
def test_namespace_enforces_the_restricted_profile(target: str) -> None:
    labels = one(rendered(target), "Namespace")["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
    assert labels.get("pod-security.kubernetes.io/enforce-version", "latest") == "latest"


@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_meets_the_restricted_profile(target: str) -> None:
    """Including the containers KubeRay adds (autoscaler sidecar, wait-gcs-ready)."""
    seen = []
    for what, tpl in admitted_pod_templates(rendered(target)):
        assert violations(tpl) == [], what
        seen.append(what)
    assert any("head" in w for w in seen) and any("worker" in w for w in seen)


@pytest.mark.parametrize("target", TARGETS)
def test_kuberay_added_containers_are_modelled(target: str) -> None:
    admitted = dict(admitted_pod_templates(rendered(target)))
    head = next(t for w, t in admitted.items() if w.endswith(" head"))
    assert [c["name"] for c in head["spec"]["containers"]] == ["ray-head", "autoscaler"]
    worker = next(t for w, t in admitted.items() if " worker " in w)
    assert [c["name"] for c in worker["spec"]["initContainers"]] == ["wait-gcs-ready"]


def _set(obj: Any, path: str, value: Any) -> None:
    """Set (``_DELETE``: remove) a dotted path; list indices are numbers, ``-`` appends."""
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if isinstance(obj, list) else obj.setdefault(part, {})
    if value is _DELETE:
        del obj[last]
    elif last == "-":
        obj.append(value)
    else:
        obj[last] = value


_DELETE = object()
SC = "spec.containers.0.securityContext"
MUTATIONS = [
    ("spec.hostNetwork", True, "hostNetwork"),
    ("spec.hostPID", True, "hostPID"),
    ("spec.hostIPC", True, "hostIPC"),
    (f"{SC}.privileged", True, "privileged"),
    (f"{SC}.capabilities.add", ["SYS_ADMIN"], "capabilities.add"),
    (f"{SC}.capabilities.add", ["CHOWN"], "only NET_BIND_SERVICE"),
    (f"{SC}.capabilities.drop", ["NET_RAW"], "must include ALL"),
    (f"{SC}.allowPrivilegeEscalation", True, "allowPrivilegeEscalation"),
    (f"{SC}.allowPrivilegeEscalation", _DELETE, "allowPrivilegeEscalation"),
    ("spec.securityContext.runAsNonRoot", False, "runAsNonRoot"),
    (f"{SC}.runAsNonRoot", False, "runAsNonRoot"),
    ("spec.securityContext.runAsUser", 0, "runAsUser"),
    (f"{SC}.runAsUser", 0, "runAsUser"),
    ("spec.securityContext.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
    ("spec.securityContext.seccompProfile", _DELETE, "seccompProfile"),
    (f"{SC}.seccompProfile", {"type": "Unconfined"}, "seccompProfile"),
    (f"{SC}.seLinuxOptions", {"type": "spc_t"}, "seLinuxOptions"),
    (f"{SC}.procMount", "Unmasked", "procMount"),
    (f"{SC}.appArmorProfile", {"type": "Unconfined"}, "appArmorProfile"),
    ("metadata.annotations.container.apparmor.security.beta.kubernetes.io/frontend", "unconfined", "AppArmor"),
    ("spec.securityContext.sysctls", [{"name": "kernel.msgmax", "value": "1"}], "safe sysctl"),
    ("spec.containers.0.ports.0.hostPort", 50051, "hostPort"),
    ("spec.volumes.-", {"name": "host", "hostPath": {"path": "/"}}, "hostPath"),
    ("spec.volumes.-", {"name": "nfs", "nfs": {"server": "x", "path": "/"}}, "volume type"),
    ("spec.initContainers", [{"name": "init", "image": "busybox:1.36"}], "initContainers[init]"),
]


@pytest.mark.parametrize(("path", "value", "message"), MUTATIONS, ids=[f"{m[0]}={m[1]!r}"[:60] for m in MUTATIONS])
def test_the_checker_catches_each_rule(path: str, value: Any, message: str) -> None:
    tpl = copy.deepcopy(one(rendered("overlays/prod"), "Deployment", FRONTEND)["spec"]["template"])
    assert violations(tpl) == []
    if path.startswith("metadata.annotations."):
        tpl["metadata"].setdefault("annotations", {})[path.removeprefix("metadata.annotations.")] = value
    else:
        _set(tpl, path, value)
    found = violations(tpl)
    assert any(message in v for v in found), found


def test_baseline_is_a_subset_of_restricted() -> None:
    tpl = copy.deepcopy(one(rendered("overlays/prod"), "Deployment", FRONTEND)["spec"]["template"])
    tpl["spec"]["containers"][0]["securityContext"]["capabilities"] = {"add": ["CHOWN"]}
    del tpl["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"]
    assert violations(tpl, "baseline") == []
    assert len(violations(tpl, "restricted")) == 3


@pytest.mark.parametrize("target", TARGETS)
def test_root_filesystems_are_read_only_and_writes_go_to_empty_dirs(target: str) -> None:
    resources = rendered(target)
    # A StatefulSet's claim templates are volumes of its pods, by the template's name.
    claims = {
        f"StatefulSet/{s['metadata']['name']}": {
            c["metadata"]["name"] for c in s["spec"].get("volumeClaimTemplates", [])
        }
        for s in find(resources, "StatefulSet")
    }
    for what, tpl in admitted_pod_templates(resources):
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        volumes |= {name: {"persistentVolumeClaim": {"claimName": name}} for name in claims.get(what, ())}
        assert tpl["spec"]["securityContext"].get("runAsUser", 0) != 0, what
        assert tpl["spec"]["securityContext"].get("runAsGroup", 0) != 0, what
        for ctr in containers(tpl):
            where = f"{what}/{ctr['name']}"
            assert ctr["securityContext"].get("readOnlyRootFilesystem") is True, where
            writable = [m for m in ctr.get("volumeMounts", []) if not m.get("readOnly")]
            for m in writable:
                source = volumes[m["name"]]
                assert "emptyDir" in source or "persistentVolumeClaim" in source, f"{where}: {m['mountPath']}"
            home = next((e["value"] for e in ctr.get("env", []) if e["name"] == "HOME"), None)
            if home is not None:
                assert any(home.startswith(m["mountPath"]) for m in writable), f"{where}: HOME {home} is read-only"
            if what.startswith(("RayService", "Job/", "CronJob/")) or ctr["name"] == "frontend":
                assert any(m["mountPath"] == "/tmp" for m in writable), f"{where}: Ray and Python need /tmp"


# -- Secrets are files ------------------------------------------------------------------------------


# Settings sections whose *_file paths a scheduled command opens (None: all of them). A
# CronJob shares the front ends' settings ConfigMap but should mount only the Secrets
# its command reads, not the front end's TLS key or JWT key.
COMMAND_READS: dict[tuple[str, str], frozenset[str] | None] = {
    ("features", "materialize"): frozenset({"features"}),
    ("warnings", "scan"): frozenset(),  # offline files only: no Redis, no Ray, no listener
}
Reader = tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], "frozenset[str] | None"]


def _cronjob_readers(resources: list[Resource]) -> list[Reader]:
    out: list[Reader] = []
    for cron in find(resources, "CronJob"):
        tpl = template_of(cron)
        name = cron["metadata"]["name"]
        ctr = tpl["spec"]["containers"][0]
        argv = [*ctr.get("command", []), *ctr.get("args", [])]
        command = (argv[1], argv[2])
        assert command in COMMAND_READS, f"CronJob {name}: {command}: add it to COMMAND_READS"
        doc = mounted_settings_doc(resources, "CronJob", name, ctr["name"])
        out.append((f"CronJob {name}", doc, tpl, ctr, COMMAND_READS[command]))
    return out


def _settings_readers(resources: list[Resource]) -> list[Reader]:
    """(what, settings document, pod template, container, sections whose files it opens)
    for every process that reads settings."""
    out: list[Reader] = []
    dep = one(resources, "Deployment", FRONTEND)["spec"]["template"]
    out.append(("front end", frontend_settings_doc(resources), dep, container(dep, "frontend"), None))
    cluster = ray_cluster(resources)
    for group in cluster["workerGroupSpecs"]:
        tpl = group["template"]
        ray = tpl["spec"]["containers"][0]
        out.append((f"Scorer replicas ({group['groupName']})", serve_args(resources), tpl, ray, None))
    for job in find(resources, "Job"):
        tpl = job["spec"]["template"]
        name = job["metadata"]["name"]
        ctr = tpl["spec"]["containers"][0]
        out.append((f"Job {name}", mounted_settings_doc(resources, "Job", name, ctr["name"]), tpl, ctr, None))
    return out + _cronjob_readers(resources)


@pytest.mark.parametrize("target", TARGETS)
def test_every_settings_file_is_a_key_of_a_mounted_secret(target: str) -> None:
    resources = rendered(target)
    checked = 0
    for what, doc, tpl, ctr, reads in _settings_readers(resources):
        load_settings(None, doc)
        for key, path in settings_files(doc):
            if reads is not None and key.split(".")[0] not in reads:
                continue
            assert path.startswith(f"{SECRETS_DIR}/"), f"{what}: {key} = {path}"
            name, secret_key, mount = secret_file(tpl, ctr, path)
            assert mount.get("readOnly") is True, f"{what}: {mount['mountPath']} must be read-only"
            assert secret_key in make_secrets.SECRETS[name], f"{what}: {key} -> {name}/{secret_key}: no such key"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("target", TARGETS)
def test_settings_carry_every_security_key(target: str) -> None:
    resources = rendered(target)
    front = dict(settings_files(frontend_settings_doc(resources)))
    assert {
        "security.tls.cert_file", "security.tls.key_file", "security.tls.client_ca_file",
        "security.jwt[0].key_file", "features.redis_password_file", "features.redis_tls_ca_file",
        "ray.channel_secret_file", "telemetry.otlp_ca_file",
    } <= set(front)
    replicas = dict(settings_files(serve_args(resources)))
    assert {"features.redis_password_file", "features.redis_tls_ca_file", "ray.channel_secret_file"} <= set(replicas)
    for what, doc, *_ in _settings_readers(resources):
        features = load_settings(None, doc).features
        assert features.online_store == "redis", what
        assert features.redis_url.startswith("rediss://"), f"{what}: Redis without TLS"
        assert features.redis_username == make_secrets.REDIS_USERNAME, what


@pytest.mark.parametrize("target", TARGETS)
def test_nothing_listens_or_connects_in_plaintext_but_probes(target: str) -> None:
    resources = rendered(target)
    front = load_settings(None, frontend_settings_doc(resources))
    assert front.security.refusal() is None
    assert front.security.plaintext is False and front.security.tls is not None
    assert front.security.tls.client_ca_file is not None, "callers authenticate with certificates"
    for listener in front.security.listeners:
        if listener.plaintext:
            assert listener.health and not listener.authorization and not listener.reflection, listener
    assert not front.ray.channel_plaintext and front.ray.channel_secret_file
    replicas = load_settings(None, serve_args(resources))
    assert not replicas.ray.channel_plaintext and replicas.ray.channel_secret_file == front.ray.channel_secret_file
    if front.telemetry.otlp_endpoint is not None:
        assert front.telemetry.otlp_endpoint.startswith("https://")


@pytest.mark.parametrize("target", TARGETS)
def test_kubelet_probes_use_the_plaintext_health_listener(target: str) -> None:
    resources = rendered(target)
    front = load_settings(None, frontend_settings_doc(resources))
    ctr = container(one(resources, "Deployment", FRONTEND)["spec"]["template"], "frontend")
    health = {lst.port: lst for lst in front.security.listeners if lst.plaintext and lst.health}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = port_number(ctr, ctr[probe]["grpc"]["port"])
        assert port in health, f"{probe}: the kubelet cannot speak TLS to {port}"
        assert health[port].host == "0.0.0.0", "the kubelet probes the pod's address"
    assert port_number(ctr, "health") in health


def _referenced_secrets(resources: list[Resource]) -> dict[str, set[str]]:
    """Secret name -> keys, for every reference in the render (volumes, env, KubeRay options)."""
    refs: dict[str, set[str]] = {}
    for _, tpl in pod_templates(resources):
        for vol in tpl["spec"].get("volumes", []):
            if "secret" in vol:
                src = vol["secret"]
                items = src.get("items")
                keys = {i["key"] for i in items} if items else set(make_secrets.SECRETS.get(src["secretName"], ("?",)))
                refs.setdefault(src["secretName"], set()).update(keys)
        for ctr in containers(tpl):
            for env in ctr.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
    for rs in find(resources, "RayService"):
        cluster = rs["spec"]["rayClusterConfig"]
        if "authOptions" in cluster:
            refs.setdefault(cluster["authOptions"]["secretName"], set()).add("auth_token")
        password = ((cluster.get("gcsFaultToleranceOptions") or {}).get("redisPassword") or {}).get("valueFrom")
        if password:
            ref = password["secretKeyRef"]
            refs.setdefault(ref["name"], set()).add(ref["key"])
    return refs


@pytest.mark.parametrize("target", OVERLAYS)
def test_make_secrets_writes_exactly_what_the_overlay_references(target: str) -> None:
    refs = _referenced_secrets(rendered(target))
    overlay = _overlay_of(target)
    assert set(refs) == set(make_secrets.OVERLAY_SECRETS[overlay])
    plan = _plan(target)
    for name, keys in refs.items():
        assert keys <= set(plan.secrets[name]), f"{name}: {sorted(keys - set(plan.secrets[name]))} not written"


@pytest.mark.parametrize("target", TARGETS)
def test_secret_volumes_are_read_only_and_private(target: str) -> None:
    for what, tpl in pod_templates(rendered(target)):
        secret_volumes = {v["name"]: v["secret"] for v in tpl["spec"].get("volumes", []) if "secret" in v}
        for name, src in secret_volumes.items():
            mode = src.get("defaultMode", 0o644)
            assert mode & 0o137 == 0, f"{what}: volume {name} mode {mode:o} (want 0440 or stricter)"
        for ctr in containers(tpl):
            for m in ctr.get("volumeMounts", []):
                if m["name"] in secret_volumes:
                    assert m.get("readOnly") is True, f"{what}/{ctr['name']}: {m['mountPath']}"
                    assert m["mountPath"].startswith(f"{SECRETS_DIR}/"), m["mountPath"]
            for env in ctr.get("env", []):
                if (env.get("valueFrom") or {}).get("secretKeyRef"):
                    assert env["name"] in SECRET_ENV_ALLOWED, f"{what}/{ctr['name']}: {env['name']} from a Secret"


def _values(plan: make_secrets.Plan) -> list[str]:
    """Every generated secret value, and every line of the multi-line ones (a PEM body line
    pasted on its own is still a leak)."""
    out: set[str] = set()
    for data in plan.secrets.values():
        for value in data.values():
            out.add(value.strip())
            out |= {line.strip() for line in value.splitlines() if len(line.strip()) >= 16 and "-----" not in line}
    out |= {line.strip() for v in plan.private.values() for line in v.splitlines() if "-----" not in line}
    return sorted(v for v in out if len(v) >= 16)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@pytest.mark.parametrize("target", TARGETS)
def test_no_secret_value_in_any_config_map_or_serve_config(target: str) -> None:
    resources = rendered(target)
    assert not find(resources, "Secret"), "Secrets are created from outside git, never rendered"
    values = _values(_plan(target))
    assert len(values) > 20
    documents = [s for cm in find(resources, "ConfigMap") for s in _strings(cm.get("data", {}))]
    documents += [rs["spec"]["serveConfigV2"] for rs in find(resources, "RayService")]
    documents.append(yaml.safe_dump_all(resources))  # and anywhere else in the render
    for doc in documents:
        leaked = [v for v in values if v in doc]
        assert not leaked, f"generated secret material found in the render: {leaked[0][:12]}..."


CREDENTIAL_KEY = re.compile(r"(password|passwd|secret|token|private_?key|api_?key)$", re.IGNORECASE)


def _credential_shaped(doc: Any, path: str = "") -> list[str]:
    found = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}"
            if CREDENTIAL_KEY.search(str(key)) and value not in (None, "", False):
                found.append(where)
            found += _credential_shaped(value, where)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            found += _credential_shaped(item, f"{path}[{i}]")
    return found


@pytest.mark.parametrize("target", TARGETS)
def test_settings_hold_paths_never_credentials(target: str) -> None:
    resources = rendered(target)
    for what, doc, *_ in _settings_readers(resources):
        assert _credential_shaped(doc) == [], what
    for text in [s for cm in find(resources, "ConfigMap") for s in _strings(cm["data"])] + [
        rs["spec"]["serveConfigV2"] for rs in find(resources, "RayService")
    ]:
        assert "-----BEGIN" not in text, "PEM material in a ConfigMap or serveConfigV2"
        assert not re.search(r"\w+://[^/\s:@]*:[^/\s@]+@", text), "a URL with credentials"
    for what, tpl in pod_templates(resources):
        for ctr in containers(tpl):
            for env in ctr.get("env", []):
                if CREDENTIAL_KEY.search(env["name"]):
                    assert "value" not in env, f"{what}/{ctr['name']}: {env['name']} is a literal"
            argv = " ".join(map(str, [*ctr.get("command", []), *ctr.get("args", [])]))
            assert not re.search(r"--(requirepass|pass|password|masterauth)\b", argv), f"{what}: {argv[:80]}"


def test_the_repository_holds_no_key_material() -> None:
    for root in ("deploy", "docs", "tests/deploy"):
        for path in (ROOT / root).rglob("*"):
            if path.is_file() and path.suffix in {".yaml", ".yml", ".md", ".py", ".txt", ".pem", ".crt", ".key", ""}:
                text = path.read_text(errors="replace")
                assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----\n[A-Za-z0-9+/]", text), path
                if path.suffix in {".yaml", ".yml"}:
                    for doc in yaml.safe_load_all(text):
                        if isinstance(doc, dict) and doc.get("kind") == "Secret":
                            pytest.fail(f"{path}: a Secret manifest in git")


# -- Redis: TLS and an ACL user ----------------------------------------------------------------------


def _redis(resources: list[Resource]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    tpl = one(resources, "Deployment", "feast-redis")["spec"]["template"]
    ctr = container(tpl, "redis")
    args = ctr["args"]
    assert len(args) % 2 == 0
    return tpl, ctr, dict(zip(args[::2], args[1::2], strict=True))


def test_dev_redis_speaks_tls_only_and_reads_its_users_from_the_secret() -> None:
    resources = rendered("overlays/dev")
    tpl, ctr, opts = _redis(resources)
    assert opts["--port"] == "0", "no plaintext port"
    assert int(opts["--tls-port"]) == port_number(ctr, "redis")
    svc = one(resources, "Service", "feast-redis")
    assert port_number(ctr, svc["spec"]["ports"][0]["targetPort"]) == int(opts["--tls-port"])
    assert secret_file(tpl, ctr, opts["--aclfile"])[:2] == ("creditauth-redis", "users.acl")
    assert secret_file(tpl, ctr, opts["--tls-cert-file"])[:2] == ("creditauth-redis-server-tls", "tls.crt")
    assert secret_file(tpl, ctr, opts["--tls-key-file"])[:2] == ("creditauth-redis-server-tls", "tls.key")
    assert not {"--requirepass", "--user", "--masterauth"} & set(opts)
    # Clients connect to the Service by the name the server certificate carries.
    host = re.sub(r"^rediss://([^:/]+).*", r"\1", load_settings(None, serve_args(resources)).features.redis_url)
    assert host == "feast-redis"


def test_prod_reaches_the_managed_redis_by_its_certificate_name() -> None:
    resources = rendered("overlays/prod")
    for what, doc, *_ in _settings_readers(resources):
        host = re.sub(r"^rediss://([^:/]+).*", r"\1", load_settings(None, doc).features.redis_url)
        assert "." in host, f"{what}: an in-namespace alias would not match the managed certificate"
        assert not find(resources, "Service", host.split(".")[0]), f"{what}: {host} is shadowed by a Service"


def test_acl_file_disables_the_default_user_and_stores_only_a_hash() -> None:
    acl = make_secrets.redis_acl("creditauth", "s3cret-password-value")
    assert "s3cret-password-value" not in acl
    lines = acl.splitlines()
    assert lines[0].startswith("user default off")
    commands = re.escape(make_secrets.REDIS_COMMANDS)
    # Channels: only the operator controls' notifications (SUBSCRIBE/PUBLISH).
    assert re.fullmatch(rf"user creditauth on #[0-9a-f]{{64}} ~\* resetchannels &\*:controls:\* -@all {commands}",
                        lines[1])
    # Exactly the commands docs/security/redis.md lists as all the project sends.
    doc = (ROOT / "docs" / "security" / "redis.md").read_text()
    if "-@all +ping" in doc:
        listed = re.search(r"-@all (\+ping[^\n]*)", doc)
        assert listed and listed.group(1).split() == make_secrets.REDIS_COMMANDS.split()




def _resp(*parts: str) -> bytes:
    out = f"*{len(parts)}\r\n"
    for p in parts:
        out += f"${len(p.encode())}\r\n{p}\r\n"
    return out.encode()


def _ask(sock: socket.socket, *parts: str) -> bytes:
    sock.sendall(_resp(*parts))
    return sock.recv(4096)


@pytest.fixture
def dev_redis(tmp_path: Path) -> Any:
    """The dev Redis container's own arguments, run locally, with its Secret files as make_secrets writes them."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: the live TLS/ACL check is skipped")
    resources = rendered("overlays/dev")
    tpl, ctr, _ = _redis(resources)
    plan = _generated("dev", render_namespace(resources) or "creditauth-dev")
    args = [str(a) for a in ctr["args"]]
    for i, arg in enumerate(args):
        if arg.startswith(f"{SECRETS_DIR}/"):
            name, key, _ = secret_file(tpl, ctr, arg)
            local = tmp_path / name / key
            local.parent.mkdir(exist_ok=True)
            local.write_text(plan.secrets[name][key])
            args[i] = str(local)
    port = free_port()
    args[args.index("--tls-port") + 1] = str(port)
    log = tmp_path / "redis.log"
    proc = subprocess.Popen([server, *args, "--dir", str(tmp_path), "--bind", "127.0.0.1", "--logfile", str(log)])
    try:
        deadline = time.monotonic() + 30  # observed state: the port accepts
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    out = log.read_text() if log.exists() else ""
                    if "TLS" in out and ("not supported" in out or "Bad directive" in out):
                        pytest.skip("this redis-server was built without TLS")
                    pytest.fail(f"redis-server exited: {out[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail("redis-server did not start listening")
                time.sleep(0.05)
        yield port, plan.secrets["creditauth-redis"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_dev_redis_admits_only_the_acl_user_over_verified_tls(dev_redis: Any) -> None:
    port, creds = dev_redis
    ctx = ssl.create_default_context(cadata=creds["ca.crt"])

    def tls(hostname: str = "feast-redis") -> ssl.SSLSocket:
        return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname=hostname)

    with tls() as s:  # the name the settings use verifies against the CA the Secret holds
        assert _ask(s, "PING").startswith(b"-NOAUTH")
        assert _ask(s, "AUTH", "default", "").startswith(b"-WRONGPASS")
        assert _ask(s, "AUTH", creds["username"], creds["password"] + "x").startswith(b"-WRONGPASS")
        assert _ask(s, "AUTH", creds["username"], creds["password"]) == b"+OK\r\n"
        assert _ask(s, "PING") == b"+PONG\r\n"
        assert _ask(s, "SET", "k", "v") == b"+OK\r\n"
        assert _ask(s, "HSET", "h", "f", "v") == b":1\r\n"
        assert _ask(s, "INFO", "server").startswith(b"$")
        denied_commands = [("CONFIG", "GET", "maxmemory"), ("FLUSHALL",), ("KEYS", "*"), ("ACL", "LIST"), ("DEL", "k")]
        for denied in denied_commands:
            assert _ask(s, *denied).startswith(b"-NOPERM"), denied
    with pytest.raises(ssl.SSLCertVerificationError):
        tls("redis.example.com")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as plain:
        plain.sendall(_resp("PING"))
        try:
            reply = plain.recv(64)
        except ConnectionResetError:
            reply = b""
        assert b"PONG" not in reply and b"NOAUTH" not in reply
