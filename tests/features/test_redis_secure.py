"""Locked doors: every Redis connection authenticates as an ACL user over verified TLS,
and a hostile server cannot crash or exhaust a client.

A private ``redis-server`` is started on a loopback port with TLS only (certificates made
here with ``cryptography``: a CA, a server certificate for 127.0.0.1/localhost, a client
certificate the server demands), the ``default`` user disabled and one ACL user with a
password. A plain socket thread plays a hostile server for the parser bounds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import resource
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from features import FeatureSettings, OnlineStoreUnavailable, catalog
from features.errors import FeatureConfigError
from features.stores import layout, open_backend
from features.stores.redis import RedisBackend, _resp, _resp_build
from features.stores.redis.client import RedisClient, RespConnection
from features.stores.redis.secure import FEAST_PASSWORD_ENV
from tests.conftest import World
from tests.support import free_port, redis_process

USER, PASSWORD = "creditauth-app", "Pw-for.tests_only~42"
TIMEOUT = 1.0
# The least the project needs (docs/security/redis.md); the test adds CLIENT INFO, ACL WHOAMI, DEL.
ACL_COMMANDS = ("-@all +ping +select +client|setname +hmget +hset +mget +get +set +evalsha +script|load "
                "+hget +expire +hdel +scan +unlink +info")


# --- certificates ---------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
           sans: list[x509.GeneralName] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    issuer_name, issuer_key = issuer or (subject, key)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer_name))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _write_pair(d: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    (d / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def _pki(d: Path) -> None:
    """ca.pem, server.pem/.key (127.0.0.1, localhost), client.pem/.key, rogue-ca.pem."""
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    _write_pair(d, "ca", _issue("creditauth test CA", ca_key, None), ca_key)
    _write_pair(d, "rogue-ca", _issue("someone else's CA", rogue_key, None), rogue_key)
    for stem, sans in (("server", [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       ("client", None)):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_pair(d, stem, _issue(stem, key, ("creditauth test CA", ca_key), sans), key)


# --- the secured server -----------------------------------------------------------------


@dataclass(frozen=True)
class Secured:
    port: int
    pki: Path
    password_file: Path

    def settings(self, **kw: object) -> FeatureSettings:
        base: dict[str, object] = {
            "online_store": "redis", "redis_url": f"rediss://127.0.0.1:{self.port}/0",
            "project": f"sec{uuid.uuid4().hex[:8]}", "timeout_s": TIMEOUT,
            "redis_username": USER, "redis_password_file": self.password_file,
            "redis_tls_ca_file": self.pki / "ca.pem", "redis_tls_cert_file": self.pki / "client.pem",
            "redis_tls_key_file": self.pki / "client.key",
        }
        base.update(kw)
        return FeatureSettings(**{k: v for k, v in base.items() if v is not None})




@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    d = tmp_path_factory.mktemp("redis-tls")
    _pki(d)
    port = free_port()
    (d / "redis.conf").write_text(
        f"port 0\ntls-port {port}\nbind 127.0.0.1\nsave \"\"\nappendonly no\n"
        f"tls-cert-file {d / 'server.pem'}\ntls-key-file {d / 'server.key'}\n"
        f"tls-ca-cert-file {d / 'ca.pem'}\ntls-auth-clients yes\n"
        f"user default off\nuser {USER} on >{PASSWORD} ~* &* {ACL_COMMANDS} +client|info +acl|whoami +del\n"
    )
    password_file = d / "redis-password"
    password_file.write_text(PASSWORD + "\n")  # as `echo` or a Secret editor leaves it
    with redis_process([str(d / "redis.conf")]):
        yield Secured(port, d, password_file)


def _flows(ids: list[str]) -> pl.DataFrame:
    cols: dict[str, object] = {"merchant_id": ids}
    for j, (f, _) in enumerate(catalog.FLOWS.fields):
        cols[f] = [float(i * 10 + j) + 0.5 for i in range(len(ids))]
    cols["event_timestamp"] = [dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)] * len(ids)
    return pl.DataFrame(cols)


def test_every_part_works_as_the_acl_user_over_tls(secured: Secured) -> None:
    backend = open_backend(secured.settings())
    assert isinstance(backend, RedisBackend)
    ids = ["M00000001", "M00000002", "M00000003"]
    writer = backend.writer()
    assert writer.write(catalog.FLOWS, _flows(ids), layout.entity_keys(ids)) == 3 * len(catalog.FLOWS.fields)
    writer.close()
    batch = backend.reader(tag_bytes=8).read([*ids, "UNKNOWN"])
    first = catalog.MATRIX_COLUMNS.index(catalog.FLOWS.fields[0][0])
    assert batch.matrix[:3, first].tolist() == [0.5, 10.5, 20.5]
    assert batch.found.tolist() == [True, True, True, False]
    velocity = backend.velocity()
    assert velocity.record(["M00000001"]).apps_1h.tolist() == [1]
    assert velocity.record(["M00000001", "M00000002"]).apps_1h.tolist() == [2, 1]
    idem = backend.idempotency(window_s=60)
    assert idem.save(["app-1"], [b"rec"]) == {}
    assert idem.save(["app-1"], [b"other"]) == {"app-1": b"rec"}
    assert idem.lookup(["app-1", "app-2"]) == {"app-1": b"rec"}
    # The connections are the ACL user's (the default user is off: nothing else gets in).
    info = backend.client.command(b"CLIENT", b"INFO")
    assert isinstance(info, bytes) and f" user={USER} ".encode() in info
    backend.drop_project()


def test_feast_sdk_path_authenticates_over_tls_without_the_password_on_disk(
    secured: Secured, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.infra.online_stores.redis import RedisOnlineStore
    from feast.repo_config import load_repo_config

    from features.feast_repo import feature_store_yaml

    s = secured.settings(data_dir=tmp_path)
    text = feature_store_yaml(s)
    assert PASSWORD not in text and f"${{{FEAST_PASSWORD_ENV}}}" in text
    assert FEAST_PASSWORD_ENV not in os.environ  # our processes never carry the password in the environment
    (tmp_path / "feature_store.yaml").write_text(text)
    # Feast's own loader and client, as its CLI runs with the variable set by the operator.
    monkeypatch.setenv(FEAST_PASSWORD_ENV, PASSWORD)
    config = load_repo_config(tmp_path, tmp_path / "feature_store.yaml")
    client = RedisOnlineStore()._get_client(config.online_store)
    assert client.acl_whoami() == USER
    assert client.set(f"{s.project}:feast-probe", b"1") and client.delete(f"{s.project}:feast-probe") == 1
    client.close()


def test_feast_materialize_writes_through_the_secured_server(secured: Secured, world: World, tmp_path: Path) -> None:
    """``feast materialize`` (the SDK's own Redis client) against the ACL + TLS server."""
    from features.feast_repo import apply, open_store

    shutil.copytree(world.data_dir / "offline", tmp_path / "offline")
    s = secured.settings(data_dir=tmp_path)
    apply(s)
    assert PASSWORD not in (s.repo_dir / "feature_store.yaml").read_text()
    open_store(s).materialize(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc),
                              dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc))
    backend = RedisBackend(s)
    batch = backend.reader(tag_bytes=8).read(["M00000005", "UNKNOWN"])
    assert batch.found.tolist() == [True, False]  # written by Feast, read by ours
    backend.drop_project()


def test_wrong_or_missing_credentials_are_config_errors(secured: Secured, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    with pytest.raises(FeatureConfigError, match="rejected the credentials"):
        open_backend(secured.settings(redis_password_file=wrong)).velocity().record(["M1"])
    with pytest.raises(FeatureConfigError, match="requires authentication"):
        RedisClient(secured.settings(redis_username=None, redis_password_file=None)).command(b"PING")
    missing = tmp_path / "absent" / "password"
    with pytest.raises(FeatureConfigError, match=f"redis_password_file {missing}"):
        _ = RedisBackend(secured.settings(redis_password_file=missing)).client  # built: read now
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(FeatureConfigError, match="is empty"):
        RedisClient(secured.settings(redis_password_file=empty))


def test_an_untrusted_server_certificate_is_a_config_error(secured: Secured) -> None:
    client = RedisClient(secured.settings(redis_tls_ca_file=secured.pki / "rogue-ca.pem"))
    with pytest.raises(FeatureConfigError, match=r"TLS certificate not trusted.*redis_tls_ca_file"):
        client.command(b"PING")
    # By name as well as by address: the certificate names both.
    assert RedisClient(secured.settings(redis_url=f"rediss://localhost:{secured.port}/0")).command(b"PING") == b"PONG"


def test_a_certificate_for_another_host_is_refused(secured: Secured, tmp_path: Path) -> None:
    """A server whose certificate the CA signed, but for another name: host name checking is on."""
    import ssl

    ca_key = serialization.load_pem_private_key((secured.pki / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    _write_pair(tmp_path, "other", _issue("other", key, ("creditauth test CA", ca_key),
                                          [x509.DNSName("other.example")]), key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "other.pem", tmp_path / "other.key")
    srv = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, contextlib.suppress(OSError):
            ctx.wrap_socket(conn, server_side=True).recv(1)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        port = srv.getsockname()[1]
        client = RedisClient(secured.settings(redis_url=f"rediss://127.0.0.1:{port}/0"))
        with pytest.raises(FeatureConfigError, match=r"not trusted \(IP address mismatch"):
            client.command(b"PING")
    finally:
        srv.close()
        t.join(timeout=5)


def test_plaintext_against_the_tls_port_fails_within_the_timeout(secured: Secured) -> None:
    s = secured.settings(redis_url=f"redis://127.0.0.1:{secured.port}/0", redis_tls_ca_file=None,
                         redis_tls_cert_file=None, redis_tls_key_file=None)
    t0 = time.monotonic()
    with pytest.raises(OnlineStoreUnavailable):
        RedisClient(s).command(b"PING")
    assert time.monotonic() - t0 < TIMEOUT + 0.5


def test_settings_refuse_contradictions_without_reading_any_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"redis_tls_ca_file.*rediss://"):
        FeatureSettings(redis_url="redis://h:1/0", redis_tls_ca_file=tmp_path / "nowhere.pem")
    with pytest.raises(ValidationError, match="redis_password_file"):
        FeatureSettings(redis_url="redis://:pw@h:1/0", redis_password_file=tmp_path / "pw")
    with pytest.raises(ValidationError, match="redis_tls_key_file"):
        FeatureSettings(redis_url="rediss://h:1/0", redis_tls_key_file=tmp_path / "k")
    # Files that do not exist here are fine until a client is built (the Secret is elsewhere).
    s = FeatureSettings(redis_url="rediss://h:1/0", redis_password_file=tmp_path / "pw",
                        redis_tls_ca_file=tmp_path / "ca.pem")
    with pytest.raises(FeatureConfigError, match=r"redis_tls_ca_file .*ca\.pem"):
        RedisClient(s.model_copy(update={"redis_password_file": None}))


# --- a hostile server -------------------------------------------------------------------


class Hostile:
    """Answers each request it receives with the next canned reply; records hang-ups."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = list(replies)
        self.hung_up = threading.Event()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._srv.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._srv.accept()
        with conn:
            try:
                while conn.recv(65536):
                    if self.replies:
                        conn.sendall(self.replies.pop(0))
            except ConnectionResetError:
                pass  # closed with our reply unread: the kernel answers with a reset, not a FIN
        self.hung_up.set()  # the client closed its end: it dropped the connection

    def close(self) -> None:
        self._srv.close()
        self._thread.join(timeout=5)


HOSTILE = {
    "bulk 2^63-1": b"$9223372036854775807\r\n",
    "bulk 2^63 (overflow)": b"$9223372036854775808\r\n",
    "nested 10,000 deep": b"*1\r\n" * 10_000 + b":1\r\n",
    "array 2^62": b"*4611686018427387904\r\n",
    "bulk 500 MiB, never sent": b"$524288000\r\n",
    "negative count": b"*-7\r\n",
    "non-digit length": b"$12x\r\nabc\r\n",
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_reply_is_a_typed_error_and_drops_the_connection(case: str) -> None:
    server = Hostile([HOSTILE[case]])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        s = FeatureSettings(online_store="redis", redis_url=f"redis://127.0.0.1:{server.port}/0", timeout_s=5.0)
        conn = RespConnection(s)
        t0 = time.monotonic()
        with pytest.raises(OnlineStoreUnavailable, match="refuses"):
            conn.call(_resp_build.encode_command([b"GET", b"k"]), _resp.ReplyCollector(1))
        assert time.monotonic() - t0 < 2.0  # refused on sight, not after the 5 s deadline
        assert server.hung_up.wait(5)
    finally:
        server.close()
    # ru_maxrss is in KiB: nothing near the sizes the replies claim was allocated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 100 * 1024


def test_a_hostile_hmget_reply_is_refused_by_the_reader() -> None:
    nf = len(catalog.MATRIX_COLUMNS) + 1 + len(catalog.ALL_VIEWS)  # the reader's fields
    server = Hostile([b"+OK\r\n", b"*%d\r\n$9223372036854775807\r\n" % nf])
    try:
        s = FeatureSettings(online_store="redis", redis_url=f"redis://127.0.0.1:{server.port}/0")
        reader = open_backend(s).reader(tag_bytes=8)
        with pytest.raises(OnlineStoreUnavailable, match="over the limit"):
            reader.read(["M00000001"])
        assert server.hung_up.wait(5)
    finally:
        server.close()
