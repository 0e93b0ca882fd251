"""Write the Kubernetes Secrets an overlay references, outside git.

    python -m deploy.secrets.make_secrets --overlay dev --out ~/creditauth-secrets/dev
    kubectl apply --server-side -f ~/creditauth-secrets/dev/secrets.yaml

The manifests under deploy/k8s only name Secrets; their contents never enter the
repository, a ConfigMap or serveConfigV2. This writes ``<out>/secrets.yaml`` (every Secret
the overlay mounts, as ``stringData``) and, where it generated them, the private halves
callers and operators need (``ca.key``, ``dev-client.key``, ``jwt-issuer.key``), all mode
0600 in a 0700 directory. It refuses a directory inside the repository and an existing
``secrets.yaml`` (rotation is deliberate: ``--force``). It never talks to a cluster.

Anything handed in by flag is used as is (a prod cluster's certificates, the managed
Redis's CA and password, the identity provider's public key, the collector's CA);
anything else is generated. Random values (the channel secret, the Ray token, a Redis
password not handed in) are always fine to generate. Certificate material is generated
only with ``--self-signed`` (the dev default): a private CA for this namespace signs the
front end's and Redis's server certificates and one client certificate (``dev-client``,
the caller that overlays/dev grants).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import secrets
import string
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "k8s" / "overlays"
REDIS_USERNAME = "creditauth"
DEV_CLIENT = "dev-client"

# Every Secret an overlay mounts or names, and its keys. tests/deploy checks this table
# against what each rendered overlay references.
SECRETS: dict[str, tuple[str, ...]] = {
    "creditauth-frontend-tls": ("tls.crt", "tls.key", "ca.crt"),
    "creditauth-channel": ("secret",),
    "creditauth-redis": ("username", "password", "ca.crt", "users.acl"),
    "creditauth-redis-server-tls": ("tls.crt", "tls.key"),
    "creditauth-jwt": ("public.pem",),
    "creditauth-otlp-ca": ("ca.crt",),
    "creditauth-ray-auth": ("auth_token",),
    "creditauth-gcs-redis": ("password",),
    # The decision log: NATS clients' credentials and CA, the servers' users (auth.conf),
    # the servers' certificate (clients and routes), the identifiers' key.
    "creditauth-nats": ("username", "password", "ca.crt", "auth.conf"),
    "creditauth-nats-tls": ("tls.crt", "tls.key", "ca.crt"),
    "creditauth-decision-log-key": ("key",),
}
# dev runs its own Redis (it needs a server certificate); prod uses managed Redis
# instances, one of them for GCS fault tolerance.
OVERLAY_SECRETS: dict[str, tuple[str, ...]] = {
    "dev": tuple(n for n in SECRETS if n != "creditauth-gcs-redis"),
    "prod": tuple(n for n in SECRETS if n != "creditauth-redis-server-tls"),
}
# Services whose names clients verify in a server certificate.
FRONTEND_SERVICES = ("creditauth-frontend", "creditauth-frontend-headless")
REDIS_SERVICES = ("feast-redis",)
# The NATS servers (deploy/k8s/base/nats.yaml): the client Service, the headless one and
# each pod's name under it (routes verify them).
NATS_USERNAME = "creditauth"
NATS_SERVICES = ("creditauth-nats", "creditauth-nats-headless")
NATS_SERVERS = 3


class SecretsError(Exception):
    """The request cannot be satisfied (missing material, unsafe output directory)."""


# Every command the project sends to the online store (docs/security/redis.md); AUTH is
# always allowed.
REDIS_COMMANDS = (
    "+ping +select +client|setname +hmget +hset +mget +get +set +evalsha +script|load "
    "+hget +expire +hdel +scan +unlink +info "
    # Operator controls (features/stores/redis/controls.py): their scripts, the change
    # notification and each replica's subscriber.
    "+hgetall +lrange +rpush +incr +publish +subscribe"
)
# What a Redis password may hold: Feast's connection string is split on "," and "=" and
# its values JSON-decoded (features/stores/redis/secure.py refuses anything else).
FEAST_SAFE_PASSWORD = re.compile(r"[A-Za-z0-9._~+/@%^*!?-]+")
_ALNUM = string.ascii_letters + string.digits


def redis_acl(username: str, password: str) -> str:
    """The Redis ACL file: the default user off, one application user holding the
    password's SHA-256 (never the password itself) and only the project's commands."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return (
        "user default off resetkeys resetchannels -@all\n"
        f"user {username} on #{digest} ~* resetchannels &*:controls:* -@all {REDIS_COMMANDS}\n"
    )


def feast_safe(password: str) -> bool:
    """Whether Feast's connection string carries ``password`` intact (features/stores/redis/secure.py):
    only these characters, and nothing JSON reads as a number, a boolean or null."""
    if not FEAST_SAFE_PASSWORD.fullmatch(password):
        return False
    try:
        json.loads(password)
    except ValueError:
        return True
    return False


def redis_password() -> str:
    """43 letters and digits: 256 bits."""
    while True:
        value = "".join(secrets.choice(_ALNUM) for _ in range(43))
        if feast_safe(value):
            return value


def dns_names(services: Iterable[str], namespace: str) -> list[str]:
    """Every name a pod may use for a Service: short, namespaced and fully qualified."""
    out: list[str] = []
    for svc in services:
        out += [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"]
    return out


# -- certificates ---------------------------------------------------------------------------


def _key_pem(key: Any) -> str:
    return str(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
    )


def _cert_pem(cert: Any) -> str:
    return str(cert.public_bytes(serialization.Encoding.PEM).decode())


@dataclass
class _CA:
    key: Any
    cert: Any

    @property
    def pem(self) -> str:
        return _cert_pem(self.cert)


def make_ca(common_name: str, days: int = 365) -> _CA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _CA(key, cert)


def issue(
    ca: _CA, common_name: str, names: Iterable[str], *, server: bool, client: bool = False, days: int = 90
) -> tuple[str, str]:
    """(certificate PEM, key PEM) signed by ``ca``: a server certificate for ``names`` or a
    client certificate whose identity is ``common_name`` (both, for NATS routes: each
    server dials the others with its own certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    sans: list[Any] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else []
    if client or not server:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def jwt_keypair() -> tuple[str, str]:
    """(public PEM, private PEM) of an ES256 token-signing key."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode(), _key_pem(key)


# -- assembling the Secrets -------------------------------------------------------------------


@dataclass
class Plan:
    namespace: str
    overlay: str
    self_signed: bool
    given: dict[str, str]  # flag name -> file contents handed in
    redis_username: str = REDIS_USERNAME
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    private: dict[str, str] = field(default_factory=dict)  # file name in <out> -> contents
    _ca: _CA | None = field(default=None, repr=False)
    _nats_ca: _CA | None = field(default=None, repr=False)

    def ca(self) -> _CA:
        if self._ca is None:
            self._ca = make_ca(f"creditauth {self.overlay} CA ({self.namespace})")
            self.private["ca.crt"] = self._ca.pem
            self.private["ca.key"] = _key_pem(self._ca.key)
        return self._ca

    def nats_ca(self) -> _CA:
        """The NATS servers' own CA, always generated: only this namespace's creditauth pods
        (clients, and the servers themselves on routes) ever check it. Its key is not kept:
        rotation makes a new CA and certificate together (creditauth-nats and -nats-tls)."""
        if self._nats_ca is None:
            self._nats_ca = make_ca(f"creditauth {self.overlay} NATS CA ({self.namespace})")
        return self._nats_ca

    def material(self, flag: str) -> str | None:
        """A file handed in, or None: generate it (``missing`` has refused where that is not allowed)."""
        return self.given.get(flag)


def _frontend_tls(plan: Plan) -> dict[str, str]:
    cert, key = plan.given.get("frontend-cert"), plan.given.get("frontend-key")
    if (cert is None) != (key is None):
        raise SecretsError("--frontend-cert and --frontend-key go together")
    if cert is None or key is None:
        cert, key = issue(plan.ca(), FRONTEND_SERVICES[0], dns_names(FRONTEND_SERVICES, plan.namespace), server=True)
    client_ca = plan.material("client-ca")
    if client_ca is None:
        client_ca = plan.ca().pem
        plan.private[f"{DEV_CLIENT}.crt"], plan.private[f"{DEV_CLIENT}.key"] = issue(
            plan.ca(), DEV_CLIENT, [DEV_CLIENT], server=False
        )
    return {"tls.crt": cert, "tls.key": key, "ca.crt": client_ca}


def _redis(plan: Plan) -> dict[str, str]:
    password = plan.given.get("redis-password-file", "").strip() or redis_password()
    if not feast_safe(password):
        raise SecretsError(
            "the Redis password may hold only letters, digits and ._~+/@%^*!?-, and must not read as a"
            " JSON number or literal (Feast's connection string)"
        )
    if plan.overlay == "dev":
        # dev runs its own Redis, whose server certificate this CA signs (creditauth-redis-server-tls).
        if "redis-ca" in plan.given:
            raise SecretsError("--redis-ca is for a managed Redis (prod); dev's Redis uses the generated CA")
        ca = plan.ca().pem
    else:
        ca = plan.material("redis-ca") or plan.ca().pem
    return {
        "username": plan.redis_username,
        "password": password,
        "ca.crt": ca,
        "users.acl": redis_acl(plan.redis_username, password),
    }


def _redis_server_tls(plan: Plan) -> dict[str, str]:
    cert, key = issue(plan.ca(), REDIS_SERVICES[0], dns_names(REDIS_SERVICES, plan.namespace), server=True)
    return {"tls.crt": cert, "tls.key": key}


def nats_auth(username: str, password: str) -> str:
    """The NATS servers' client users (nats.conf includes it). nats-server also takes a
    bcrypt hash here; none is made, as the project has no bcrypt: the file is in the Secret."""
    return f'authorization {{\n  users: [\n    {{user: "{username}", password: "{password}"}}\n  ]\n}}\n'


def _nats(plan: Plan) -> dict[str, str]:
    password = secrets.token_hex(32)
    return {
        "username": NATS_USERNAME, "password": password, "ca.crt": plan.nats_ca().pem,
        "auth.conf": nats_auth(NATS_USERNAME, password),
    }


def _nats_tls(plan: Plan) -> dict[str, str]:
    pods = [f"{NATS_SERVICES[0]}-{i}.{NATS_SERVICES[1]}" for i in range(NATS_SERVERS)]
    names = dns_names((*NATS_SERVICES, *pods), plan.namespace)
    cert, key = issue(plan.nats_ca(), NATS_SERVICES[0], names, server=True, client=True)
    return {"tls.crt": cert, "tls.key": key, "ca.crt": plan.nats_ca().pem}


def _decision_log_key(plan: Plan) -> dict[str, str]:
    # The identifiers' HMAC key (decision_log.id_key_file): random, like the channel secret.
    return {"key": secrets.token_hex(32)}


def _jwt(plan: Plan) -> dict[str, str]:
    public = plan.material("jwt-public-key")
    if public is None:
        public, private = jwt_keypair()
        plan.private["jwt-issuer.key"] = private
    return {"public.pem": public}


def _otlp(plan: Plan) -> dict[str, str]:
    ca = plan.material("otlp-ca")
    return {"ca.crt": ca if ca is not None else plan.ca().pem}


def _gcs_redis(plan: Plan) -> dict[str, str]:
    # Required (missing): the GCS Redis is managed outside this cluster.
    return {"password": plan.given["gcs-redis-password-file"].strip()}


_BUILDERS = {
    "creditauth-frontend-tls": _frontend_tls,
    "creditauth-channel": lambda plan: {"secret": secrets.token_hex(32)},
    "creditauth-redis": _redis,
    "creditauth-redis-server-tls": _redis_server_tls,
    "creditauth-jwt": _jwt,
    "creditauth-otlp-ca": _otlp,
    "creditauth-ray-auth": lambda plan: {"auth_token": plan.given.get("ray-auth-token-file", "").strip()
                                         or secrets.token_hex(32)},
    "creditauth-gcs-redis": _gcs_redis,
    "creditauth-nats": _nats,
    "creditauth-nats-tls": _nats_tls,
    "creditauth-decision-log-key": _decision_log_key,
}


# Handed-in material an overlay cannot do without: always, or unless --self-signed.
_ALWAYS = {"prod": ("gcs-redis-password-file",)}
_UNLESS_SELF_SIGNED = {
    "dev": ("frontend-cert", "frontend-key", "client-ca", "jwt-public-key", "otlp-ca"),
    "prod": ("frontend-cert", "frontend-key", "client-ca", "jwt-public-key", "otlp-ca", "redis-ca"),
}


def missing(plan: Plan) -> list[str]:
    needed = [*_ALWAYS.get(plan.overlay, ()), *(() if plan.self_signed else _UNLESS_SELF_SIGNED[plan.overlay])]
    return [f"--{flag}" for flag in needed if flag not in plan.given]


def build(plan: Plan) -> Plan:
    lacking = missing(plan)
    if lacking:
        hint = "" if plan.self_signed else " (or --self-signed, for a cluster that may trust a private CA)"
        raise SecretsError(f"{plan.overlay} needs {' '.join(lacking)}{hint}")
    for name in OVERLAY_SECRETS[plan.overlay]:
        data = _BUILDERS[name](plan)
        assert tuple(data) == SECRETS[name], (name, tuple(data))
        plan.secrets[name] = data
    return plan


def manifests(plan: Plan) -> str:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": plan.namespace,
                "labels": {"app.kubernetes.io/part-of": "creditauth"},
            },
            "type": "kubernetes.io/tls" if name.endswith("-tls") else "Opaque",
            "stringData": data,
        }
        for name, data in plan.secrets.items()
    ]

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False)


# -- output -----------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def write(plan: Plan, out: Path, *, force: bool = False) -> list[Path]:
    out = out.expanduser().resolve()
    if _inside(out, ROOT):
        raise SecretsError(f"{out} is inside the repository ({ROOT}): write secrets outside git")
    target = out / "secrets.yaml"
    if target.exists() and not force:
        raise SecretsError(f"{target} exists: rotating secrets is deliberate (--force)")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)
    written = []
    for name, text in {"secrets.yaml": manifests(plan), **plan.private}.items():
        path = out / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        path.chmod(0o600)
        written.append(path)
    return written


def overlay_namespace(overlay: str) -> str:
    kust = yaml.safe_load((OVERLAYS / overlay / "kustomization.yaml").read_text())
    return str(kust["namespace"])


_GIVEN_FLAGS = {
    "frontend-cert": "PEM certificate chain of the front ends (names: the creditauth-frontend Services)",
    "frontend-key": "its PEM private key",
    "client-ca": "PEM CA bundle that signs callers' client certificates (mutual TLS)",
    "jwt-public-key": "PEM public key of the token issuer",
    "redis-ca": "PEM CA bundle Redis's server certificate is checked against",
    "redis-password-file": "file holding the Redis ACL user's password (default: generated)",
    "otlp-ca": "PEM CA bundle of the OpenTelemetry collector",
    "ray-auth-token-file": "file holding the Ray auth token (default: generated)",
    "gcs-redis-password-file": "prod: file holding the GCS fault-tolerance Redis password",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.secrets.make_secrets", description=__doc__.split("\n\n")[0])
    p.add_argument("--overlay", choices=sorted(OVERLAY_SECRETS), required=True, help="which overlay's Secrets")
    p.add_argument("--out", type=Path, required=True, help="output directory, outside the repository")
    p.add_argument("--namespace", help="namespace of the Secrets (default: the overlay's)")
    p.add_argument("--redis-username", default=REDIS_USERNAME,
                   help=f"Redis ACL user (default {REDIS_USERNAME}; must equal features.redis_username)")
    p.add_argument("--self-signed", action=argparse.BooleanOptionalAction, default=None,
                   help="generate missing certificates and keys from a private CA (default: on for dev only)")
    p.add_argument("--force", action="store_true", help="overwrite an existing secrets.yaml (rotation)")
    for flag, help_text in _GIVEN_FLAGS.items():
        p.add_argument(f"--{flag}", type=Path, help=help_text)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    given = {}
    for flag in _GIVEN_FLAGS:
        path = getattr(args, flag.replace("-", "_"))
        if path is not None:
            given[flag] = Path(path).read_text()
    plan = Plan(
        namespace=args.namespace or overlay_namespace(args.overlay),
        overlay=args.overlay,
        self_signed=args.overlay == "dev" if args.self_signed is None else args.self_signed,
        given=given,
        redis_username=args.redis_username,
    )
    try:
        written = write(build(plan), args.out, force=args.force)
    except SecretsError as exc:
        print(f"make_secrets: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    print(
        f"\nnext: kubectl apply --server-side -f {written[0]}   (namespace {plan.namespace})\n"
        "keep this directory out of git; delete what you no longer need.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
