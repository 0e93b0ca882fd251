"""How the client connects: secure by default, TLS and mutual TLS, a bearer token (from a
string or a rotating file), never a token in clear text off this machine."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from creditauth_client import AsyncAuthorizationClient, AuthorizationClient, RetryPolicy, Tls, authorize_request

from services.auth.pki import Authority
from tests.client.scripted import OK, ScriptedServer

REQUEST = authorize_request("app-1", "M00000001", 2_000_000, "CNY")


@pytest.fixture
def plain() -> Iterator[ScriptedServer]:
    server = ScriptedServer([OK]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ca() -> Authority:
    return Authority()


@pytest.fixture
def mtls(ca: Authority) -> Iterator[ScriptedServer]:
    cert = ca.issue("localhost", server=True)
    creds = grpc.ssl_server_credentials([(cert.key, cert.cert)], root_certificates=ca.pem, require_client_auth=True)
    server = ScriptedServer([OK], credentials=creds).start()
    yield server
    server.stop()


def test_token_on_loopback_without_tls(plain: ScriptedServer) -> None:
    with AuthorizationClient(plain.target, insecure=True, token="tok-1") as c:
        c.authorize(REQUEST)

    async def run() -> None:
        async with AsyncAuthorizationClient(plain.target, insecure=True, token="tok-2") as c:
            await c.authorize(REQUEST)

    asyncio.run(run())
    assert [s.metadata.get("authorization") for s in plain.seen] == ["Bearer tok-1", "Bearer tok-2"]


def test_a_rotated_token_file_is_picked_up(plain: ScriptedServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first\n")
    with AuthorizationClient(plain.target, insecure=True, token_file=token) as c:
        c.authorize(REQUEST)
        token.write_text("second\n")
        stat = token.stat()
        os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a visibly newer file
        c.authorize(REQUEST)
    assert [s.metadata.get("authorization") for s in plain.seen] == ["Bearer first", "Bearer second"]


def test_no_token_no_authorization_header(plain: ScriptedServer) -> None:
    with AuthorizationClient(plain.target, insecure=True) as c:
        c.authorize(REQUEST)
    assert "authorization" not in plain.seen[0].metadata


def test_a_token_is_never_sent_in_clear_text_off_this_machine(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only to loopback"):
        AuthorizationClient("203.0.113.7:50051", insecure=True, token="secret")
    with pytest.raises(ValueError, match="no token"):
        AuthorizationClient("127.0.0.1:1", insecure=True, token_file=_empty(tmp_path))
    with pytest.raises(FileNotFoundError):
        AuthorizationClient("127.0.0.1:1", insecure=True, token_file=tmp_path / "absent")


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty"
    path.write_text("  \n")
    return path


def test_mutual_tls_with_a_token(mtls: ScriptedServer, ca: Authority) -> None:
    me = ca.issue("caller-7")
    tls = Tls(root_certificates=ca.pem, certificate_chain=me.cert, private_key=me.key)
    with AuthorizationClient(f"localhost:{mtls.port}", tls=tls, token="tok") as c:
        assert c.authorize(REQUEST).application_id == "app-1"

    async def run() -> None:
        async with AsyncAuthorizationClient(f"localhost:{mtls.port}", tls=tls) as c:
            await c.authorize(REQUEST)

    asyncio.run(run())
    assert [(s.peer_common_name, s.metadata.get("authorization")) for s in mtls.seen] == [
        ("caller-7", "Bearer tok"), ("caller-7", None)]


def test_tls_refusals(mtls: ScriptedServer, ca: Authority, plain: ScriptedServer) -> None:
    once = RetryPolicy(max_attempts=1)
    # No client certificate: the server requires one.
    with AuthorizationClient(f"localhost:{mtls.port}", tls=Tls(root_certificates=ca.pem), retry=once) as c, \
            pytest.raises(grpc.RpcError) as err:
        c.authorize(REQUEST, timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    # A server certificate from another authority.
    other = Authority("someone else")
    me = ca.issue("caller-7")
    with AuthorizationClient(f"localhost:{mtls.port}", tls=Tls(other.pem, me.cert, me.key), retry=once) as c, \
            pytest.raises(grpc.RpcError):
        c.authorize(REQUEST, timeout=5)
    # The default is TLS: it does not talk to a plaintext server.
    with AuthorizationClient(plain.target, retry=once) as c, pytest.raises(grpc.RpcError):
        c.authorize(REQUEST, timeout=5)
    assert mtls.seen == [] and plain.seen == []
    with pytest.raises(ValueError, match="private key"):
        Tls(root_certificates=ca.pem, certificate_chain=me.cert)
    with pytest.raises(ValueError, match="one of"):
        AuthorizationClient(plain.target, insecure=True, tls=Tls())
