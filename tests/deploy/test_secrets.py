"""deploy/secrets/make_secrets.py: the Secrets it writes fit the manifests, and the material works.

Certificates are checked as clients will check them: chains, names, key usages, and a
real mutual-TLS handshake with Python's ssl module between the front end's certificate
and the dev client's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import cast

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.secrets import make_secrets
from services.settings import load_settings

from .support import ROOT, find, frontend_settings_doc, rendered


def _write(tmp_path: Path, overlay: str, *extra: str) -> tuple[Path, dict[str, dict[str, str]]]:
    out = tmp_path / overlay
    assert make_secrets.main(["--overlay", overlay, "--out", str(out), *extra]) == 0
    docs = list(yaml.safe_load_all((out / "secrets.yaml").read_text()))
    return out, {d["metadata"]["name"]: d["stringData"] for d in docs}


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _names(cert: x509.Certificate) -> set[str]:
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(sans.get_values_for_type(x509.DNSName))


def _usage(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _same_key(cert_pem: str, key_pem: str) -> bool:
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    fmt = (serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(key.public_key().public_bytes(*fmt) == _cert(cert_pem).public_key().public_bytes(*fmt))


def test_dev_writes_every_secret_privately_and_outside_git(tmp_path: Path) -> None:
    out, secrets = _write(tmp_path, "dev")
    assert set(secrets) == set(make_secrets.OVERLAY_SECRETS["dev"])
    for name, data in secrets.items():
        assert tuple(data) == make_secrets.SECRETS[name], name
    docs = list(yaml.safe_load_all((out / "secrets.yaml").read_text()))
    namespace = {r["metadata"].get("namespace") for r in rendered("overlays/dev") if r["kind"] != "Namespace"}
    assert {d["metadata"]["namespace"] for d in docs} == namespace
    assert {d["type"] for d in docs if d["metadata"]["name"].endswith("-tls")} == {"kubernetes.io/tls"}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    files = {p.name for p in out.iterdir()}
    assert files == {"secrets.yaml", "ca.crt", "ca.key", "dev-client.crt", "dev-client.key", "jwt-issuer.key"}
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_refuses_the_repository_and_an_existing_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_secrets.main(["--overlay", "dev", "--out", str(ROOT / "deploy" / "secrets" / "out")]) == 1
    assert "inside the repository" in capsys.readouterr().err
    assert not (ROOT / "deploy" / "secrets" / "out").exists()
    out, first = _write(tmp_path, "dev")
    assert make_secrets.main(["--overlay", "dev", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    _, second = _write(tmp_path, "dev", "--force")
    assert first["creditauth-channel"] != second["creditauth-channel"], "rotation makes new values"


def test_random_values_are_long_and_distinct(tmp_path: Path) -> None:
    _, s = _write(tmp_path, "dev")
    values = [
        s["creditauth-channel"]["secret"], s["creditauth-redis"]["password"], s["creditauth-ray-auth"]["auth_token"]
    ]
    assert len(set(values)) == 3
    assert all(len(v) >= 40 and v == v.strip() for v in values)


def test_redis_acl_holds_the_passwords_hash_and_the_settings_user(tmp_path: Path) -> None:
    _, s = _write(tmp_path, "dev")
    redis = s["creditauth-redis"]
    assert redis["password"] not in redis["users.acl"]
    assert f"#{hashlib.sha256(redis['password'].encode()).hexdigest()}" in redis["users.acl"]
    user = load_settings(None, frontend_settings_doc(rendered("overlays/dev"))).features.redis_username
    assert redis["username"] == user
    assert f"user {user} on " in redis["users.acl"]


def test_certificates_chain_to_the_cas_clients_check_and_carry_the_service_names(tmp_path: Path) -> None:
    out, s = _write(tmp_path, "dev")
    resources = rendered("overlays/dev")
    namespace = next(r["metadata"]["namespace"] for r in resources if r["kind"] == "Service")
    ca = _cert((out / "ca.crt").read_text())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    tls = s["creditauth-frontend-tls"]
    front = _cert(tls["tls.crt"])
    front.verify_directly_issued_by(_cert(tls["ca.crt"]))
    assert _same_key(tls["tls.crt"], tls["tls.key"])
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usage(front)
    services = {
        svc["metadata"]["name"] for svc in find(resources, "Service")
        if svc["metadata"]["name"].startswith("creditauth-frontend")
    }
    for svc in services:
        assert {svc, f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"} <= _names(front)
    assert front.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < dt.timedelta(days=91)

    redis_server = _cert(s["creditauth-redis-server-tls"]["tls.crt"])
    redis_server.verify_directly_issued_by(_cert(s["creditauth-redis"]["ca.crt"]))
    assert _same_key(s["creditauth-redis-server-tls"]["tls.crt"], s["creditauth-redis-server-tls"]["tls.key"])
    assert {"feast-redis", f"feast-redis.{namespace}.svc"} <= _names(redis_server)

    client = _cert((out / "dev-client.crt").read_text())
    client.verify_directly_issued_by(_cert(tls["ca.crt"]))
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _usage(client)
    cn = client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    callers = load_settings(None, frontend_settings_doc(resources)).security.callers
    assert cn in {c.name for c in callers}, "dev grants the client make_secrets issues"
    assert s["creditauth-otlp-ca"]["ca.crt"] == (out / "ca.crt").read_text()


def test_front_end_certificate_and_dev_client_complete_a_mutual_tls_handshake(tmp_path: Path) -> None:
    out, s = _write(tmp_path, "dev")
    tls = s["creditauth-frontend-tls"]
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (tmp_path / name).write_text(tls[name])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    server_ctx.load_verify_locations(tmp_path / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    def handshake(client_cert: bool) -> str | None:
        """The client certificate's CN as the server saw it, or None if the handshake failed."""
        seen: list[str | None] = [None]
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                    peer = tls_conn.getpeercert() or {}
                    rdns = cast("tuple[tuple[tuple[str, str], ...], ...]", peer["subject"])
                    subject = dict(x[0] for x in rdns)
                    seen[0] = subject["commonName"]
                    tls_conn.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass
            finally:
                listener.close()

        thread = threading.Thread(target=serve)
        thread.start()
        client_ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
        if client_cert:
            client_ctx.load_cert_chain(out / "dev-client.crt", out / "dev-client.key")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, client_ctx.wrap_socket(
                raw, server_hostname="creditauth-frontend-headless.creditauth-dev.svc"
            ) as conn:
                conn.recv(2)
        except (ssl.SSLError, OSError):
            pass
        thread.join(10)
        return seen[0]

    assert handshake(client_cert=True) == "dev-client"
    assert handshake(client_cert=False) is None


def test_jwt_key_signs_tokens_the_settings_accept(tmp_path: Path) -> None:
    jwt = pytest.importorskip("jwt")
    out, s = _write(tmp_path, "dev")
    issuer = load_settings(None, frontend_settings_doc(rendered("overlays/dev"))).security.jwt[0]
    assert "ES256" in issuer.algorithms
    token = jwt.encode(
        {"iss": issuer.issuer, "aud": issuer.audience, "sub": "dev-client",
         "exp": dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)},
        (out / "jwt-issuer.key").read_text(), algorithm="ES256",
    )
    claims = jwt.decode(token, s["creditauth-jwt"]["public.pem"], algorithms=list(issuer.algorithms),
                        audience=issuer.audience, issuer=issuer.issuer)
    assert claims["sub"] == "dev-client"


def test_prod_takes_material_from_files_and_refuses_to_invent_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert make_secrets.main(["--overlay", "prod", "--out", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    for flag in ("--frontend-cert", "--frontend-key", "--client-ca", "--jwt-public-key", "--redis-ca",
                 "--otlp-ca", "--gcs-redis-password-file"):
        assert flag in err
    assert not (tmp_path / "none").exists()

    # Material from elsewhere (here: a private CA standing in for the organisation's).
    ca = make_secrets.make_ca("org CA")
    cert, key = make_secrets.issue(ca, "creditauth-frontend", ["creditauth-frontend.creditauth.svc"], server=True)
    public, _ = make_secrets.jwt_keypair()
    files = {"frontend-cert": cert, "frontend-key": key, "client-ca": ca.pem, "jwt-public-key": public,
             "redis-ca": ca.pem, "otlp-ca": ca.pem, "redis-password-file": "managed-redis-password-0123456789\n",
             "gcs-redis-password-file": "gcs-password-0123456789\n"}
    args = []
    for flag, text in files.items():
        (tmp_path / flag).write_text(text)
        args += [f"--{flag}", str(tmp_path / flag)]
    out, s = _write(tmp_path, "prod", *args)
    assert set(s) == set(make_secrets.OVERLAY_SECRETS["prod"])
    assert s["creditauth-frontend-tls"] == {"tls.crt": cert, "tls.key": key, "ca.crt": ca.pem}
    assert s["creditauth-jwt"]["public.pem"] == public
    assert s["creditauth-redis"]["password"] == "managed-redis-password-0123456789"
    assert s["creditauth-gcs-redis"]["password"] == "gcs-password-0123456789"
    assert {p.name for p in out.iterdir()} == {"secrets.yaml"}, "nothing generated, nothing private to keep"


@pytest.mark.parametrize("password", ["has,comma", "has=equals", "12345678901234567890", "true", "spa ce"])
def test_a_redis_password_feast_would_misread_is_refused(
    tmp_path: Path, password: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pw").write_text(password)
    out = tmp_path / "out"
    args = ["--overlay", "dev", "--out", str(out), "--redis-password-file", str(tmp_path / "pw")]
    assert make_secrets.main(args) == 1
    assert "Redis password" in capsys.readouterr().err
    assert not out.exists()
    assert make_secrets.feast_safe(make_secrets.redis_password())
