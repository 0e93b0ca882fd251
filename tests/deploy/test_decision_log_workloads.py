"""The decision log's workloads: the NATS JetStream StatefulSet and the compactor Deployment.

Every render (base, dev, prod): three servers with JetStream on a claim each, clients and
routes authenticated from Secrets (nothing secret in the render), a PDB, who may reach the
servers, the compactor's command parsed by the real CLI and its settings loaded by the
real loader, and the stream the compactor would create agreeing with the servers and with
the Scorer replicas. Where ``nats-server`` is installed, the rendered nats.conf is checked
by the server itself (``nats-server -t``), with the Secret files in place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import posixpath
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.render import Resource
from deploy.secrets.make_secrets import make_ca
from services.cli.log import log_compact
from services.cli.main import build_parser
from services.decisionlog.sinks.nats import NatsOptions, connect, ensure_stream
from services.errors import ConfigError
from services.settings import Settings, load_settings
from tests.support import free_port

from .netpol import admits, outsider, pods
from .support import (
    SETTINGS_DIR,
    SETTINGS_FILE,
    TARGETS,
    container,
    find,
    matches,
    mounted_settings_doc,
    one,
    port_number,
    quantity,
    rendered,
    secret_file,
    serve_args,
    settings_files,
    template_of,
)

NATS = "creditauth-nats"
HEADLESS = "creditauth-nats-headless"
COMPACTOR = "creditauth-decision-log-compactor"
NATS_CONF = "/etc/nats/nats.conf"
COMPONENT = "app.kubernetes.io/component"
# Who opens connections to the client port: the decision log's writers (Scorer replicas on
# the Ray workers, front ends for their refusals) and the compactor.
NATS_CLIENTS = {"ray-worker", "frontend", "decision-log-compactor"}
# nats-server's size suffixes: a bare letter is decimal, with B (or i) binary.
_SIZE: dict[str, int] = {"": 1, **{p: 1000**n for n, p in enumerate("KMGT", 1)},
         **{p + s: 1024**n for n, p in enumerate("KMGT", 1) for s in "BI"}}


# -- what the render holds ----------------------------------------------------------------------


def _nats(resources: list[Resource]) -> tuple[Resource, dict[str, Any], dict[str, Any]]:
    sts = one(resources, "StatefulSet", NATS)
    tpl = sts["spec"]["template"]
    return sts, tpl, container(tpl, "nats")


def _conf(resources: list[Resource]) -> str:
    """The nats.conf the servers run with: the ConfigMap their config volume names."""
    _, tpl, ctr = _nats(resources)
    assert ctr["command"][-2:] == ["--config", NATS_CONF]
    mount = _mount_of(ctr, NATS_CONF)
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
    text: str = one(resources, "ConfigMap", volume["configMap"]["name"])["data"]["nats.conf"]
    return text


def _mount_of(ctr: dict[str, Any], path: str) -> dict[str, Any]:
    found = [m for m in ctr["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert found, f"{path}: not under any mount of {ctr['name']}"
    mount: dict[str, Any] = max(found, key=lambda m: len(m["mountPath"]))
    return mount


def _value(conf: str, key: str) -> str:
    """A ``key: value`` of nats.conf (the first; comments ignored)."""
    found = re.search(rf"^\s*{re.escape(key)}\s*[:=]?\s*([^\s#]+)", conf, re.MULTILINE)
    assert found, f"nats.conf: no {key}"
    return found.group(1)


def _block(conf: str, name: str) -> str:
    """The text of a top-level ``name { ... }`` block (nested braces included)."""
    start = re.search(rf"^[ \t]*{re.escape(name)}\s*\{{", conf, re.MULTILINE)
    assert start, f"nats.conf: no {name} block"
    depth, i = 1, start.end()
    while depth:
        depth += {"{": 1, "}": -1}.get(conf[i], 0)
        i += 1
    return conf[start.end() : i - 1]


def _env(ctr: dict[str, Any], value: str) -> str:
    """A nats.conf value, with a ``$VAR`` reference resolved from the container's env."""
    if not value.startswith("$"):
        return value
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    assert env.get(value[1:]) is not None, f"{value}: not a literal env value of {ctr['name']}"
    return str(env[value[1:]])


def _bytes(size: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMGT]?[BI]?)", size.upper())
    assert m, f"unparseable size {size!r}"
    return float(m.group(1)) * _SIZE[m.group(2)]


def _compactor(resources: list[Resource]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    tpl = template_of(one(resources, "Deployment", COMPACTOR))
    ctr = container(tpl, "compactor")
    return tpl, ctr, mounted_settings_doc(resources, "Deployment", COMPACTOR, "compactor")


def _compactor_settings(resources: list[Resource]) -> Settings:
    return load_settings(None, _compactor(resources)[2])


# -- the NATS servers ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_three_servers_in_one_cluster_each_routing_to_the_others(target: str) -> None:
    resources = rendered(target)
    sts, tpl, ctr = _nats(resources)
    assert sts["spec"]["replicas"] == 3, "R3 needs three servers"
    headless = one(resources, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert matches({"matchLabels": headless["spec"]["selector"]}, tpl["metadata"]["labels"])
    routes_port = port_number(ctr, "routes")
    assert any(port_number(ctr, p["targetPort"]) == routes_port for p in headless["spec"]["ports"])
    cluster = _block(_conf(resources), "cluster")
    assert int(_value(cluster, "port")) == routes_port
    routes = re.findall(r"nats-route://([\w.-]+):(\d+)", cluster)
    pods_ = [f"{NATS}-{i}.{headless['metadata']['name']}" for i in range(sts["spec"]["replicas"])]
    assert sorted(routes) == sorted((p, str(routes_port)) for p in pods_), routes
    # server_name must differ per server (JetStream refuses two of a name): the pod's name.
    assert _value(_conf(resources), "server_name") == "$SERVER_NAME"
    env = {e["name"]: e for e in ctr["env"]}
    assert env["SERVER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("target", TARGETS)
def test_jetstream_stores_on_a_claim_per_server_larger_than_its_limit(target: str) -> None:
    resources = rendered(target)
    sts, _, ctr = _nats(resources)
    js = _block(_conf(resources), "jetstream")
    store = _value(js, "store_dir")
    mount = _mount_of(ctr, store + "/")
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in claims, f"store_dir {store} is not on a claim template"
    assert not mount.get("readOnly")
    claim = claims[mount["name"]]["spec"]
    assert claim["accessModes"] == ["ReadWriteOnce"]
    max_file = _bytes(_env(ctr, _value(js, "max_file_store")))
    assert max_file < quantity(claim["resources"]["requests"]["storage"]), "JetStream would fill its disk"
    if target != "overlays/dev":  # dev's claims are 10Gi; its stream is sized to them below
        assert max_file >= 100 * 2**30
    # The stream the compactor (or a replica) creates fits on every server: R3 keeps a full
    # copy on each.
    log = _compactor_settings(resources).decision_log
    assert 0 < log.nats_max_bytes <= min(max_file, quantity(claim["resources"]["requests"]["storage"]) * 0.8)


@pytest.mark.parametrize("target", TARGETS)
def test_clients_and_routes_authenticate_with_secret_files_and_nothing_is_a_literal(target: str) -> None:
    resources = rendered(target)
    _, tpl, ctr = _nats(resources)
    conf = _conf(resources)
    # Client users: a file of the creditauth-nats Secret, included relative to nats.conf.
    (include,) = re.findall(r"^include\s+(\S+)", conf, re.MULTILINE)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(NATS_CONF), include.strip("\"'")))
    assert secret_file(tpl, ctr, resolved)[:2] == (NATS, "auth.conf")
    # TLS on the client port and mutual TLS on routes, from the server's own Secret.
    tls, cluster_tls = _block(conf, "tls"), _block(_block(conf, "cluster"), "tls")
    for block in (tls, cluster_tls):
        for key, secret_key in (("cert_file", "tls.crt"), ("key_file", "tls.key")):
            assert secret_file(tpl, ctr, _value(block, key))[:2] == (f"{NATS}-tls", secret_key), key
    assert secret_file(tpl, ctr, _value(cluster_tls, "ca_file"))[:2] == (f"{NATS}-tls", "ca.crt")
    assert _value(cluster_tls, "verify") == "true", "routes: only servers with a certificate of the CA join"
    # Nothing secret in the configuration (comments aside) or the pod.
    settings = re.sub(r"#.*", "", conf)
    assert not re.search(r"\b(authorization|password|pass|token|nkey|users?|accounts)\b", settings), settings
    assert not re.search(r"://[^/\s@]+@", settings), "credentials in a route URL"
    for env in ctr.get("env", []):
        assert "secretKeyRef" not in (env.get("valueFrom") or {}), env["name"]
    # Each Secret volume hands the server only its own keys.
    auth = next(v["secret"] for v in tpl["spec"]["volumes"] if (v.get("secret") or {}).get("secretName") == NATS)
    assert [i["key"] for i in auth["items"]] == ["auth.conf"]


@pytest.mark.parametrize("target", TARGETS)
def test_probes_ask_nats_healthz_on_the_monitoring_port(target: str) -> None:
    resources = rendered(target)
    _, tpl, ctr = _nats(resources)
    monitor = int(_value(_conf(resources), "http_port"))
    assert port_number(ctr, "monitor") == monitor
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = ctr[probe]["httpGet"]
        assert port_number(ctr, get["port"]) == monitor, probe
        assert get["path"].split("?")[0] == "/healthz", probe
    # Lame duck on stop: the pid file the preStop signals is the one nats.conf writes, on a
    # writable volume, and the grace period outlasts the lame-duck duration.
    pid = _value(_conf(resources), "pid_file")
    assert ctr["lifecycle"]["preStop"]["exec"]["command"][-1] == f"ldm={pid}"
    assert not _mount_of(ctr, pid).get("readOnly")
    duration = int(_value(_conf(resources), "lame_duck_duration").rstrip("s"))
    assert tpl["spec"]["terminationGracePeriodSeconds"] > duration


@pytest.mark.parametrize("target", TARGETS)
def test_one_server_per_node_and_one_disruption_at_a_time(target: str) -> None:
    resources = rendered(target)
    _, tpl, _ = _nats(resources)
    labels = tpl["metadata"]["labels"]
    anti = tpl["spec"]["affinity"]["podAntiAffinity"]
    if target == "overlays/dev":  # one node: a preference, or two servers would never schedule
        terms = [t["podAffinityTerm"] for t in anti["preferredDuringSchedulingIgnoredDuringExecution"]]
        assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    else:
        terms = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert any(t["topologyKey"] == "kubernetes.io/hostname" and matches(t["labelSelector"], labels) for t in terms)
    (pdb,) = [p for p in find(resources, "PodDisruptionBudget") if matches(p["spec"]["selector"], labels)]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}


# -- who reaches what ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_only_log_clients_reach_the_client_port_and_only_servers_the_routes(target: str) -> None:
    resources = rendered(target)
    _, _, ctr = _nats(resources)
    inside = {p.labels[COMPONENT]: p for p in pods(resources)}
    assert set(inside) >= NATS_CLIENTS, sorted(NATS_CLIENTS - set(inside))
    ns = inside["nats"].namespace or "default"
    sources = {
        **inside,
        "monitoring": outsider("monitoring", {"app.kubernetes.io/name": "prometheus"}, "monitoring"),
        "lookalike-elsewhere": outsider("lookalike", dict(inside["decision-log-compactor"].labels), "other"),
        "stranger": outsider("stranger", {"app": "stranger"}, ns),
    }
    expected = {
        ("nats", port_number(ctr, "client")): NATS_CLIENTS,
        ("nats", port_number(ctr, "routes")): {"nats"},
        ("nats", port_number(ctr, "monitor")): set(),  # the kubelet probes from the node
        ("decision-log-compactor", 8080): set(),  # it listens on nothing
    }
    for (dst, port), allowed in expected.items():
        got = {name for name, src in sources.items() if admits(resources, src, inside[dst], port)}
        assert got == allowed, f"{dst}:{port}: admitted {sorted(got)}, expected {sorted(allowed)}"


# -- the compactor ------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_compactor_command_parses_with_the_real_cli(target: str) -> None:
    resources = rendered(target)
    _, ctr, _ = _compactor(resources)
    argv = [*ctr["command"], *ctr["args"]]
    assert argv[0] == "creditauth"
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{argv} is refused by the creditauth CLI")
    assert (args.group, args.cmd, args.run) == ("log", "compact", log_compact)
    assert str(args.config) == SETTINGS_FILE
    assert _mount_of(ctr, SETTINGS_FILE)["mountPath"] == SETTINGS_DIR
    # A Deployment runs until SIGTERM: --until-idle would exit, and be restarted, in a loop.
    assert args.until_idle is False
    assert args.nats_url is None and args.stream is None, "the stream comes from the settings, as the replicas'"
    settings = _compactor_settings(resources)
    out = args.out if args.out is not None else settings.decision_log.root(settings.data_dir)
    assert out == settings.decision_log.root(settings.data_dir), "log show|export look where it writes"


@pytest.mark.parametrize("target", TARGETS)
def test_compactor_settings_load_and_name_the_stream_the_servers_serve(target: str) -> None:
    resources = rendered(target)
    sts, _, nats = _nats(resources)
    doc = _compactor(resources)[2]
    log = load_settings(None, doc).decision_log  # unknown keys are refused
    assert log.sink == "nats"
    assert log.nats_replicas == sts["spec"]["replicas"] == 3
    urls = [u.strip() for u in log.nats_url.split(",")]
    client = one(resources, "Service", NATS)
    (port,) = client["spec"]["ports"]
    assert port_number(nats, port["targetPort"]) == port_number(nats, "client")
    for url in urls:
        scheme, host, number = re.fullmatch(r"(\w+)://([\w.-]+):(\d+)", url).groups()  # type: ignore[union-attr]
        assert scheme == "tls", f"{url}: the servers take TLS only"
        assert host.split(".")[0] == NATS and int(number) == port["port"], url
    assert log.nats_user_file and log.nats_password_file and log.nats_tls_ca_file
    with pytest.raises(ConfigError, match="nats_replica"):
        load_settings(None, {**doc, "decision_log": {**doc["decision_log"], "nats_replica": 3}})


@pytest.mark.parametrize("target", TARGETS)
def test_compactor_mounts_exactly_the_secret_files_it_opens(target: str) -> None:
    resources = rendered(target)
    tpl, ctr, doc = _compactor(resources)
    files = dict(settings_files(doc))
    assert set(files) == {
        "decision_log.nats_user_file", "decision_log.nats_password_file", "decision_log.nats_tls_ca_file",
    }, "no id key: the replicas hash the identifiers, the compactor moves rows that hold them"
    opened = set()
    for key, path in files.items():
        name, secret_key, mount = secret_file(tpl, ctr, path)
        assert name == NATS and mount.get("readOnly") is True, key
        opened.add(secret_key)
    secrets = [v["secret"] for v in tpl["spec"]["volumes"] if "secret" in v]
    assert {i["key"] for s in secrets for i in s.get("items", [])} == opened == {"username", "password", "ca.crt"}


@pytest.mark.parametrize("target", TARGETS)
def test_compactor_runs_alone_on_the_front_ends_image_and_writes_to_its_claim(target: str) -> None:
    resources = rendered(target)
    dep = one(resources, "Deployment", COMPACTOR)
    tpl, ctr, _ = _compactor(resources)
    front = container(template_of(one(resources, "Deployment", "creditauth-frontend")), "frontend")
    assert ctr["image"] == front["image"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}, "the lock allows one"
    assert not {"startupProbe", "livenessProbe", "readinessProbe", "ports"} & set(ctr), "nothing to probe"
    out = _compactor_settings(resources).decision_log.root(_compactor_settings(resources).data_dir)
    mount = _mount_of(ctr, f"{out}/x")
    assert mount["mountPath"] == str(out) and not mount.get("readOnly")
    volume = next(v for v in tpl["spec"]["volumes"] if v["name"] == mount["name"])
    claim = one(resources, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["metadata"]["name"] != "creditauth-artifacts", "every Ray pod mounts the artifacts"
    modes = {"overlays/dev": ["ReadWriteOnce"]}.get(target, ["ReadWriteMany"])
    assert claim["spec"]["accessModes"] == modes
    assert tpl["spec"]["terminationGracePeriodSeconds"] >= 60, "SIGTERM writes what it holds first"


# -- the writers --------------------------------------------------------------------------------

STREAM_KEYS = ("nats_url", "nats_stream", "nats_subject", "nats_replicas", "nats_retention", "nats_max_bytes",
               "nats_max_age_s", "nats_duplicate_window_s")


@pytest.mark.parametrize("target", TARGETS)
def test_scorer_replicas_publish_to_the_stream_the_compactor_reads(target: str) -> None:
    """Whichever connects first creates the stream with its own settings: they must agree."""
    resources = rendered(target)
    replicas = load_settings(None, serve_args(resources)).decision_log
    assert replicas.sink == "nats", "the Scorer replicas still write Parquet on their own volumes"
    compactor = _compactor_settings(resources).decision_log
    assert {k: getattr(replicas, k) for k in STREAM_KEYS} == {k: getattr(compactor, k) for k in STREAM_KEYS}
    cluster = one(resources, "RayService")["spec"]["rayClusterConfig"]
    for group in cluster["workerGroupSpecs"]:
        tpl = group["template"]
        ray = tpl["spec"]["containers"][0]
        for key in ("nats_user_file", "nats_password_file", "nats_tls_ca_file"):
            assert secret_file(tpl, ray, str(getattr(replicas, key)))[0] == NATS, key


# -- the server's own check ---------------------------------------------------------------------


PASSWORD = "p" * 32


def _server_files() -> dict[tuple[str, str], str]:
    """Stand-ins for the Secrets' files: a CA, the servers' certificate (server and client
    usage: routes are mutual TLS) for localhost, and the users file."""
    ca = make_ca("test NATS CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NATS)]))
        .issuer_name(ca.cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        (f"{NATS}-tls", "tls.crt"): cert.public_bytes(pem).decode(), (f"{NATS}-tls", "ca.crt"): ca.pem,
        (f"{NATS}-tls", "tls.key"): key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()).decode(),
        (NATS, "auth.conf"): f'authorization {{\n  users: [{{user: "creditauth", password: "{PASSWORD}"}}]\n}}\n',
        (NATS, "username"): "creditauth\n", (NATS, "password"): PASSWORD + "\n",
        (NATS, "ca.crt"): ca.pem,
    }


def _materialise(resources: list[Resource], root: Path, files: dict[tuple[str, str], str]) -> Path:
    """nats.conf and the Secret files it opens under ``root``, laid out as in the pod."""
    _, tpl, ctr = _nats(resources)
    volumes = {v["name"]: v for v in tpl["spec"]["volumes"]}
    for mount in ctr["volumeMounts"]:
        (root / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)  # emptyDirs, the claim
        src = volumes.get(mount["name"], {}).get("secret")
        if src is not None:
            for item in src.get("items") or [{"key": k, "path": k} for (n, k) in files if n == src["secretName"]]:
                path = root / mount["mountPath"].lstrip("/") / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(files[(src["secretName"], item["key"])])
    # Absolute paths move under root; the include stays relative to the file, as in the pod.
    conf = re.sub(r"(?<=[\s:])/(var|data)/", lambda m: f"{root}/{m.group(1)}/", _conf(resources))
    path = root / NATS_CONF.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(conf)
    return path


def _server_env(resources: list[Resource], name: str) -> dict[str, str]:
    """The pod's literal env (sizes), and the name the kubelet gives the pod."""
    env = {e["name"]: e["value"] for e in _nats(resources)[2]["env"] if "value" in e}
    return {**env, "SERVER_NAME": name, "PATH": "/usr/bin:/bin"}


def _nats_server() -> str:
    server = shutil.which("nats-server")
    if server is None:
        pytest.skip("nats-server is not installed: the configuration is checked by the server only where it is")
    return server


@pytest.mark.parametrize("target", ["base", "overlays/dev"])
def test_nats_server_accepts_the_rendered_configuration(target: str, tmp_path: Path) -> None:
    server = _nats_server()
    resources = rendered(target)
    conf = _materialise(resources, tmp_path, _server_files())
    env = _server_env(resources, f"{NATS}-0")

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run([server, "-t", "-c", str(conf)], capture_output=True, text=True, env=env, timeout=30)

    ok = check()
    assert ok.returncode == 0, ok.stderr
    # The check is real: a misspelt key, or the Secret's file missing, is refused.
    conf.write_text(conf.read_text().replace("max_payload", "max_paylod"))
    bad = check()
    assert bad.returncode != 0 and "max_paylod" in bad.stderr
    conf.write_text(conf.read_text().replace("max_paylod", "max_payload"))
    next(tmp_path.rglob("auth.conf")).unlink()
    gone = check()
    assert gone.returncode != 0 and "auth.conf" in gone.stderr


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _start_cluster(resources: list[Resource], root: Path, files: dict[tuple[str, str], str]) -> tuple[
        list[subprocess.Popen[bytes]], list[int]]:
    """Three servers on loopback with the rendered nats.conf: only the ports and the route
    hosts (the pods' DNS names) are changed."""
    server = _nats_server()
    ports = [[free_port() for _ in range(3)] for _ in ("client", "routes", "monitor")]
    procs = []
    for i in range(3):
        conf = _materialise(resources, root / f"s{i}", files)
        text = re.sub(r"^port: 4222", f"port: {ports[0][i]}", conf.read_text(), flags=re.MULTILINE)
        text = re.sub(r"^http_port: 8222", f"http_port: {ports[2][i]}", text, flags=re.MULTILINE)
        text = re.sub(r"^(\s+)port: 6222", rf"\g<1>port: {ports[1][i]}", text, flags=re.MULTILINE)
        text = re.sub(rf"{NATS}-(\d)\.{HEADLESS}:6222", lambda m: f"127.0.0.1:{ports[1][int(m.group(1))]}", text)
        conf.write_text(text)
        env = {**_server_env(resources, f"{NATS}-{i}"), "JS_MAX_FILE_STORE": "1GB"}
        procs.append(subprocess.Popen([server, "-c", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                      stderr=(root / f"s{i}.log").open("w")))
    return procs, ports[0] + ports[2]


def test_three_servers_with_the_rendered_configuration_take_an_r3_stream_from_the_sink(tmp_path: Path) -> None:
    """The rendered nats.conf run by three real servers (routes over mutual TLS), and the
    compactor's rendered settings used by the sink's own code: it authenticates, creates
    the stream with R3 and has a publish acknowledged; a wrong password is refused."""
    resources, files = rendered("base"), _server_files()
    procs, ports = _start_cluster(resources, tmp_path, files)
    try:
        deadline = time.monotonic() + 30
        while not all(_healthy(p) for p in ports[3:]):  # the servers' own health: routed, JetStream up
            assert all(p.poll() is None for p in procs), "a server exited: " + (tmp_path / "s0.log").read_text()
            assert time.monotonic() < deadline, "the cluster did not form in 30 s"
            time.sleep(0.05)
        doc = _compactor(resources)[2]
        for key in ("username", "password", "ca.crt"):
            (tmp_path / key).write_text(files[(NATS, key)])
        doc["decision_log"] |= {
            "nats_url": ",".join(f"tls://localhost:{p}" for p in ports[:3]), "nats_max_bytes": 2**28,
            "nats_user_file": str(tmp_path / "username"), "nats_password_file": str(tmp_path / "password"),
            "nats_tls_ca_file": str(tmp_path / "ca.crt"),
        }
        opts = NatsOptions.from_settings(load_settings(None, doc).decision_log)
        info, ack = asyncio.run(_create_and_publish(opts))
        assert info.config.num_replicas == 3
        assert {info.cluster.leader, *(r.name for r in info.cluster.replicas)} == {f"{NATS}-{i}" for i in range(3)}
        assert ack.stream == opts.stream and ack.seq == 1
        wrong = NatsOptions(**{**opts.__dict__, "password_file": tmp_path / "username"})
        with pytest.raises(Exception, match="Authorization Violation"):
            asyncio.run(_create_and_publish(wrong))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


async def _create_and_publish(opts: NatsOptions) -> tuple[Any, Any]:
    nc = await connect(opts, "test")
    try:
        js = nc.jetstream()
        await ensure_stream(js, opts)
        ack = await js.publish(opts.subject_of("test-writer"), b"x", timeout=5)
        return await js.stream_info(opts.stream), ack
    finally:
        await nc.close()
