"""Locked doors, through real TLS channels into a real front end over the real engine.

Each refusal the issue names: no certificate, an untrusted certificate, an expired or badly
signed token, a caller outside its products or above its amount, an RPC outside its grant;
idempotency scoped per caller; per-listener health and reflection; certificate reload
while calls keep flowing; and a front end that will not start without TLS unless told.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from creditauth.v1 import authorization_pb2 as pb
from creditauth.v1 import authorization_pb2_grpc as pb_grpc
from services.errors import ConfigError
from services.frontend import FrontEnd
from services.runtime import LocalBackend
from services.scoring.factory import build_engine
from services.settings import Settings, load_settings
from tests.conftest import World, feature_settings
from tests.e2e.api_checks import check_decision, request
from tests.e2e.conftest import LoopThread
from tests.pki import Authority, TokenIssuer

pytestmark = pytest.mark.e2e


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = Authority()
        self.rogue = Authority("rogue CA")
        self.server = self.ca.issue("frontend.test", server=True)
        self.cert_file, self.key_file = self.server.write(root, "server")
        self.ca_file = root / "ca.crt"
        self.ca_file.write_bytes(self.ca.pem)
        self.tokens = TokenIssuer()
        self.jwt_key = root / "jwt.pub"
        self.jwt_key.write_bytes(self.tokens.public_pem())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


CALLERS = [
    {"name": "shop-a", "products": ["WORKING_CAPITAL"], "max_amount_minor": {"CNY": 5_000_000}},
    {"name": "shop-b"},
    {"name": "unary-only", "rpcs": ["Authorize"]},
]


def _settings(world: World, pki: Pki, *, mutual: bool, **security: Any) -> Settings:
    tls: dict[str, Any] = {"cert_file": str(pki.cert_file), "key_file": str(pki.key_file), "reload_check_s": 0.05}
    if mutual:
        tls["client_ca_file"] = str(pki.ca_file)
    doc = {
        "tls": tls,
        "callers": CALLERS,
        "jwt": [{"issuer": pki.tokens.issuer, "audience": pki.tokens.audience, "key_file": str(pki.jwt_key),
                 "algorithms": ["ES256"]}],
        **security,
    }
    return load_settings(
        None,
        {"features": feature_settings(world).model_dump(), "serving": {"host": "127.0.0.1", "port": 0},
         "security": doc},
    )


class Served:
    def __init__(self, settings: Settings) -> None:
        self.lt = LoopThread()
        self.settings = settings

        async def up() -> FrontEnd:
            fe = FrontEnd(LocalBackend(build_engine(settings)), settings.serving, settings.security)
            await fe.start()
            return fe

        self.fe: FrontEnd = self.lt.run(up())

    def close(self) -> None:
        self.lt.run(self.fe.stop())
        self.lt.close()


@pytest.fixture(scope="module")
def mtls(world: World, pki: Pki) -> Iterator[Served]:
    s = Served(_settings(world, pki, mutual=True))
    yield s
    s.close()


@pytest.fixture(scope="module")
def tokens(world: World, pki: Pki) -> Iterator[Served]:
    s = Served(_settings(world, pki, mutual=False))
    yield s
    s.close()


def _channel(port: int, pki: Pki, client: tuple[bytes, bytes] | None = None, root: bytes | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=root or pki.ca.pem,
        private_key=client[1] if client else None,
        certificate_chain=client[0] if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])


def _stub(ch: grpc.Channel) -> pb_grpc.CreditAuthorizationStub:
    return pb_grpc.CreditAuthorizationStub(ch)


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _code(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    code: grpc.StatusCode = err.value.code()
    return code


# -- mutual TLS -----------------------------------------------------------------------


def test_mtls_client_certificate_names_the_caller(mtls: Served, pki: Pki) -> None:
    cert = pki.ca.issue("shop-b")
    with _channel(mtls.fe.port, pki, (cert.cert, cert.key)) as ch:
        req = request(0)
        check_decision(_stub(ch).Authorize(req, timeout=30), req.application_id)


def test_mtls_refuses_no_certificate_and_untrusted_certificate(mtls: Served, pki: Pki) -> None:
    # Mutual TLS refuses in the handshake: the caller sees the connection fail (UNAVAILABLE),
    # and nothing reaches the service.
    decided = mtls.fe.batcher.stats.decisions
    with _channel(mtls.fe.port, pki) as ch:
        assert _code(lambda: _stub(ch).Authorize(request(0), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    rogue = pki.rogue.issue("shop-b")
    with _channel(mtls.fe.port, pki, (rogue.cert, rogue.key)) as ch:
        assert _code(lambda: _stub(ch).Authorize(request(0), timeout=10)) == grpc.StatusCode.UNAVAILABLE
    assert mtls.fe.batcher.stats.decisions == decided


def test_mtls_certificate_without_a_grant_is_permission_denied(mtls: Served, pki: Pki) -> None:
    cert = pki.ca.issue("stranger")
    with _channel(mtls.fe.port, pki, (cert.cert, cert.key)) as ch:
        assert _code(lambda: _stub(ch).Authorize(request(0), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED


# -- tokens ---------------------------------------------------------------------------


def test_token_names_the_caller_and_bad_tokens_are_unauthenticated(tokens: Served, pki: Pki) -> None:
    stranger = TokenIssuer(issuer=pki.tokens.issuer)  # same issuer name, another key
    with _channel(tokens.fe.port, pki) as ch:
        stub = _stub(ch)
        req = request(0)
        check_decision(stub.Authorize(req, metadata=_bearer(pki.tokens.token("shop-b")), timeout=30),
                       req.application_id)
        cases = {
            "none": None,
            "expired": pki.tokens.token("shop-b", ttl_s=-120),
            "badly signed": stranger.token("shop-b"),
            "other audience": pki.tokens.token("shop-b", audience="someone-else"),
            "unknown issuer": pki.tokens.token("shop-b", issuer="https://elsewhere"),
            "garbage": "not.a.jwt",
        }
        for name, tok in cases.items():
            meta = _bearer(tok) if tok else None
            code = _code(lambda meta=meta: stub.Authorize(request(0), metadata=meta, timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED, name
        expired = pki.tokens.token("shop-b", ttl_s=-120)
        with pytest.raises(grpc.RpcError) as err:
            stub.Authorize(request(0), metadata=_bearer(expired), timeout=10)
        assert "expired" in (err.value.details() or "")


def test_products_amounts_and_rpcs_outside_the_grant(tokens: Served, pki: Pki) -> None:
    a = _bearer(pki.tokens.token("shop-a"))
    with _channel(tokens.fe.port, pki) as ch:
        stub = _stub(ch)
        with pytest.raises(grpc.RpcError) as err:
            stub.Authorize(request(0, product=pb.PRODUCT_EQUIPMENT), metadata=a, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "EQUIPMENT" in (err.value.details() or "")
        with pytest.raises(grpc.RpcError) as err:
            stub.Authorize(request(0, amount=5_000_001), metadata=a, timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "requested_amount.amount_minor" in (err.value.details() or "")
        assert _code(lambda: stub.Authorize(request(0, currency="USD"), metadata=a, timeout=10)) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # In a batch each refused item fails alone, naming its field.
        ok, too_much = request(0), request(1, amount=9_000_000)
        resp = stub.AuthorizeBatch(pb.AuthorizeBatchRequest(requests=[ok, too_much]), metadata=a, timeout=30)
        check_decision(resp.responses[0], ok.application_id)
        err1 = resp.responses[1].error
        assert err1.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert err1.field == "requests[1].requested_amount.amount_minor"
        # On a stream likewise, in order.
        out = list(stub.AuthorizeStream(iter([request(0, product=pb.PRODUCT_EQUIPMENT), request(1)]), metadata=a,
                                        timeout=30))
        assert out[0].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0] and not out[1].HasField("error")
        # An RPC outside the grant fails the call.
        u = _bearer(pki.tokens.token("unary-only"))
        batch = pb.AuthorizeBatchRequest(requests=[request(0)])
        assert _code(lambda: stub.AuthorizeBatch(batch, metadata=u, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        check_decision(stub.Authorize(ok, metadata=u, timeout=30), ok.application_id)


def test_idempotency_keys_are_scoped_per_caller(tokens: Served, pki: Pki) -> None:
    a, b = _bearer(pki.tokens.token("shop-a")), _bearer(pki.tokens.token("shop-b"))
    with _channel(tokens.fe.port, pki) as ch:
        stub = _stub(ch)
        first = request(0, amount=1_000_000)
        again = pb.AuthorizeRequest()
        again.CopyFrom(first)
        again.requested_amount.amount_minor = 1_500_000  # the same id, asked differently
        ra = stub.Authorize(first, metadata=a, timeout=30)
        rb = stub.Authorize(again, metadata=b, timeout=30)  # another caller: its own id space
        check_decision(rb, first.application_id)
        assert rb.decision_id != ra.decision_id
        # The same caller asking differently under the same id is refused.
        assert _code(lambda: stub.Authorize(again, metadata=a, timeout=10)) == grpc.StatusCode.ALREADY_EXISTS
        assert stub.Authorize(first, metadata=a, timeout=30).decision_id == ra.decision_id


# -- listeners, start-up --------------------------------------------------------------


def test_health_only_listener_and_refusal_to_start_without_tls(world: World, pki: Pki) -> None:
    settings = _settings(
        world, pki, mutual=True, reflection=False,
        listeners=[{"host": "127.0.0.1", "port": 0, "plaintext": True, "health": True}],
    )
    s = Served(settings)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.fe.ports[1]}") as ch:
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            assert _code(lambda: _stub(ch).Authorize(request(0), timeout=10)) == grpc.StatusCode.UNIMPLEMENTED
    finally:
        s.close()
    bare = load_settings(None, {"features": feature_settings(world).model_dump(), "serving": {"port": 0}})
    fe = FrontEnd(LocalBackend(build_engine(bare)), bare.serving, bare.security)
    lt = LoopThread()
    try:
        with pytest.raises(ConfigError, match=r"security\.tls"):
            lt.run(fe.start())
    finally:
        lt.close()


def _served_serial(port: int, ca: bytes) -> int:
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(
        raw, server_hostname="localhost"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class _Load(threading.Thread):
    """Unary calls back to back on one connection; ``after(n)`` waits until n more succeed."""

    def __init__(self, port: int, pki: Pki) -> None:
        super().__init__()
        self.port, self.pki = port, pki
        self.stop, self.failures, self.calls = threading.Event(), [], 0
        self._cond = threading.Condition()

    def run(self) -> None:
        with _channel(self.port, self.pki) as ch:
            stub = _stub(ch)
            while not self.stop.is_set():
                try:
                    stub.Authorize(request(0), timeout=30)
                    with self._cond:
                        self.calls += 1
                        self._cond.notify_all()
                except grpc.RpcError as exc:
                    self.failures.append(exc.code())

    def after(self, n: int, timeout: float = 60) -> bool:
        with self._cond:
            target = self.calls + n
            return self._cond.wait_for(lambda: self.calls >= target, timeout)


def test_certificate_reload_under_load(world: World, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    s = Served(_settings(world, pki, mutual=False, anonymous={"name": "anon"}))
    load = _Load(s.fe.port, pki)
    load.start()
    try:
        assert load.after(5)
        assert _served_serial(s.fe.port, pki.ca.pem) == pki.server.serial
        renewed = pki.ca.issue("frontend.test", server=True)
        # Written as cert-manager does: new files renamed over the old ones.
        for data, path in ((renewed.key, pki.key_file), (renewed.cert, pki.cert_file)):
            tmp = path.with_suffix(".new")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        seen = 0
        for _ in range(2000):  # a bounded poll of observed state: new handshakes see the new one
            seen = _served_serial(s.fe.port, pki.ca.pem)
            if seen == renewed.serial:
                break
        assert seen == renewed.serial
        assert load.after(20), "calls on the open connection stopped after the reload"
    finally:
        load.stop.set()
        load.join(60)
        s.close()
    assert load.failures == []
    assert s.fe.tls[0].reloads >= 1


def test_concurrent_rpcs_are_bounded(world: World) -> None:
    settings = load_settings(
        None,
        {"features": feature_settings(world).model_dump(), "serving": {"port": 0, "max_concurrent_rpcs": 1},
         "security": {"plaintext": True, "anonymous": {"name": "anon"}}},
    )
    s = Served(settings)
    gate = threading.Event()

    def held() -> Iterator[pb.AuthorizeRequest]:
        yield request(0)
        gate.wait(60)  # the stream stays open until the second call has been refused

    try:
        with grpc.insecure_channel(f"127.0.0.1:{s.fe.port}") as ch:
            stub = _stub(ch)
            stream = stub.AuthorizeStream(held(), timeout=60)
            first = next(stream)  # the stream is being served: it holds the one slot
            assert not first.HasField("error")
            assert _code(lambda: stub.Authorize(request(1), timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
            gate.set()
            assert list(stream) == []
    finally:
        gate.set()
        s.close()
